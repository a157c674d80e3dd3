//! The shared HTTP wrapper every service uses: request ids and a tracing span per request,
//! per-endpoint Prometheus metrics, `/healthz`, `/readyz`, `/metrics`, JSON 404s, and a
//! server loop that drains in-flight requests on shutdown.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics;

/// A readiness check: Ok when the dependency it checks is reachable.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a service hands to [`app`].
#[derive(Clone, Default)]
pub struct Service {
    /// `service.name` in logs and the `service` label of metrics.
    pub name: &'static str,
    /// Named readiness checks behind `/readyz`.
    pub checks: Vec<(&'static str, Check)>,
}

/// Wrap a service's routes with the shared endpoints and middleware.
pub fn app(service: Service, routes: Router) -> Router {
    metrics::install();
    let name = service.name;
    let checks = Arc::new(service.checks);
    let ops = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz).with_state(checks))
        .route("/metrics", get(metrics_text));
    // A gRPC-only service has no routes of its own (axum refuses a route layer then).
    let routes = if routes.has_routes() {
        routes.route_layer(middleware::from_fn_with_state(name, tag_route))
    } else {
        routes
    };
    routes
        .merge(ops)
        .fallback(|| async { ApiError::not_found() })
        .layer(middleware::from_fn(close_after_refused_body))
        .layer(middleware::from_fn_with_state(name, observe))
}

/// A request refused with its body unread (401 before an upload, 413, 409, ...): the server
/// closes the connection after answering, so say so (`Connection: close`). Without it a
/// client may reuse the connection for its next request and fail with a broken pipe.
async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let h = request.headers();
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let mut r = next.run(request).await;
    if has_body && (r.status().is_client_error() || r.status().is_server_error()) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn readyz(State(checks): State<Arc<Vec<(&'static str, Check)>>>) -> Response {
    let mut results = serde_json::Map::new();
    let mut failed = Vec::new();
    for (name, check) in checks.iter() {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
        };
        if outcome != "ok" {
            failed.push(*name);
        }
        results.insert((*name).to_string(), json!(outcome));
    }
    if failed.is_empty() {
        axum::Json(json!({"status": "ready", "checks": results})).into_response()
    } else {
        let body = json!({
            "error": {"code": "not_ready", "message": format!("not ready: {}", failed.join(", "))},
            "checks": results,
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}

/// The route template that matched, carried out on the response for [`observe`].
#[derive(Clone)]
struct RouteLabel(String);

async fn tag_route(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut gone = ClientGone {
        service,
        route: route.clone(),
        method: req.method().to_string(),
        answered: false,
    };
    let mut resp = next.run(req).await;
    gone.answered = true;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteLabel(r));
    }
    resp
}

/// A request whose client went away before the answer (the connection dropped mid-upload,
/// a timeout on the client's side) never reaches [`observe`]'s count: it is counted here,
/// when its handler is dropped, with status `499` (as nginx logs it).
struct ClientGone {
    service: &'static str,
    route: Option<String>,
    method: String,
    answered: bool,
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let labels = [
            ("service", self.service.to_string()),
            (
                "route",
                self.route.take().unwrap_or_else(|| "unmatched".into()),
            ),
            ("method", std::mem::take(&mut self.method)),
            ("status", "499".to_string()),
        ];
        ::metrics::counter!("http_requests_total", &labels).increment(1);
    }
}

/// Decrements the in-flight gauge however the request ends (also when it is cancelled).
struct InFlight(&'static str);

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!("http_requests_in_flight", "service" => self.0).decrement(1.0);
    }
}

async fn observe(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let trace_id = trace_id(&req);
    let method = req.method().to_string();
    let bytes_in = content_length(req.headers());
    let span = tracing::info_span!("request", trace.id = %trace_id, http.request.method = %method);
    ::metrics::gauge!("http_requests_in_flight", "service" => service).increment(1.0);
    let guard = InFlight(service);
    let mut resp = next.run(req).instrument(span.clone()).await;
    drop(guard);
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".into());
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    let labels = [
        ("service", service.to_string()),
        ("route", route.clone()),
        ("method", method),
        ("status", status.to_string()),
    ];
    ::metrics::counter!("http_requests_total", &labels).increment(1);
    ::metrics::histogram!("http_request_duration_seconds", &labels[..3])
        .record(elapsed.as_secs_f64());
    if let Some(n) = bytes_in {
        ::metrics::counter!("http_request_bytes_total", &labels[..2]).increment(n);
    }
    if let Some(n) = content_length(resp.headers()) {
        ::metrics::counter!("http_response_bytes_total", &labels[..2]).increment(n);
    }
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        tracing::info!(
            url.path = %route,
            http.response.status_code = status,
            event.duration = elapsed.as_nanos() as u64,
            "request"
        )
    });
    resp
}

fn content_length(h: &axum::http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The trace id of a request: from a W3C `traceparent`, else a sane `x-request-id`, else new.
fn trace_id(req: &Request) -> String {
    trace_id_of(req.headers())
}

/// The trace id carried by headers (or gRPC metadata), else a new one.
pub fn trace_id_of(h: &axum::http::HeaderMap) -> String {
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [_, id, _, _] = parts.as_slice()
            && id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && id.bytes().any(|b| b != b'0')
        {
            return id.to_ascii_lowercase();
        }
    }
    if let Some(id) = h.get("x-request-id").and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return id.to_string();
    }
    new_trace_id()
}

/// 128 bits from the process's random hash keys and a counter, as 32 hex digits.
pub fn new_trace_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let word = |s: &RandomState| {
        let mut h = s.build_hasher();
        h.write_u64(n);
        h.finish()
    };
    format!("{:016x}{:016x}", word(a), word(b))
}

/// Largest HTTP/1 read buffer per connection: bounds what a connection holds while a body
/// streams in (hyper's default grows to ~400 KiB), how far past a size limit an upload is
/// read before its 413, and the size of a request head (431 past it). A 64 KiB bearer
/// token still fits, so it gets the 401 it deserves (reliability test 19).
pub const HTTP1_MAX_BUF: usize = 80 * 1024;

/// A client that has not sent a whole request head within this is disconnected
/// (slow-loris on headers; slow bodies are each handler's idle timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `app` on `listener` (HTTP/1.1 and HTTP/2, upgrades for WebSockets) until `shutdown`
/// is cancelled; then stop accepting, let in-flight requests finish for up to `grace`, and
/// close what is left. Every connection gets TCP_NODELAY, a bounded read buffer
/// ([`HTTP1_MAX_BUF`]), a head timeout ([`HEADER_READ_TIMEOUT`]) and its peer address as a
/// `ConnectInfo<SocketAddr>` extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::Service as _;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(HTTP1_MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().enable_connect_protocol();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // No Nagle: a response's last small segment must not wait for the peer's delayed
        // ACK (a 40 ms stall per response otherwise).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                // A Router is always ready; a clone per request is an Arc clone.
                app.clone().call(req.map(axum::body::Body::new))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = term => {},
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
