//! The shared gRPC server: every fms gRPC server answers the standard health protocol
//! (`grpc.health.v1.Health`) and server reflection (v1 and v1alpha, so `buf curl`,
//! `grpcurl` and probes work without the .proto files), carries request ids from
//! `traceparent` / `x-request-id` metadata into its logs, counts calls in Prometheus, and
//! drains in-flight calls on shutdown.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// What a service adds to the gRPC server.
#[derive(Debug, Default)]
pub struct GrpcServices {
    routes: Option<tonic::service::RoutesBuilder>,
    names: Vec<&'static str>,
}

impl GrpcServices {
    pub fn new() -> Self {
        GrpcServices {
            routes: Some(tonic::service::RoutesBuilder::default()),
            names: Vec::new(),
        }
    }

    /// Add a tonic service; it is reported SERVING by the health service while up.
    pub fn with<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<axum::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        if let Some(r) = self.routes.as_mut() {
            r.add_service(svc);
        }
        self.names.push(S::NAME);
        self
    }
}

/// A running health reporter: flip services to NOT_SERVING before shutting down.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("names", &self.names)
            .finish()
    }
}

impl Health {
    /// Set every service (and the server as a whole, `""`) to `status`.
    pub async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for n in &self.names {
            self.reporter.set_service_status(*n, status).await;
        }
    }
}

/// Build the routes: `services` plus health and reflection.
pub async fn routes(mut services: GrpcServices) -> Result<(Routes, Health), String> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Reflection advertises only what this server answers: the contracts of services that
    // are not served here (or not built yet) stay out of `list`.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fms_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for n in &services.names {
            b = b.with_service_name(*n);
        }
        b
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let mut builder = services.routes.take().unwrap_or_default();
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let health = Health {
        reporter,
        names: services.names,
    };
    health.set_all(ServingStatus::Serving).await;
    Ok((builder.routes(), health))
}

/// Serve `routes` on `listener` until `shutdown`; then report NOT_SERVING, stop accepting,
/// and give in-flight calls `grace` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    health: Health,
    service: &'static str,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), String> {
    // No Nagle: a response's trailing frames must not wait for the peer's delayed ACK (a
    // 40 ms stall on responses written in more than one segment).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
            })
        },
    );
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_all(ServingStatus::NotServing).await;
        }
    };
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| Observe {
            inner,
            service,
        }))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| e.to_string()),
        () = deadline => {
            tracing::warn!("gRPC shutdown grace period over; closing remaining calls");
            Ok(())
        }
    }
}

/// Per-call span with the request id, and Prometheus counters by method and status.
#[derive(Clone)]
struct Observe<S> {
    inner: S,
    service: &'static str,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Observe<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>
        + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = req.uri().path().to_string();
        let trace_id = crate::http::trace_id_of(req.headers());
        let service = self.service;
        let span = tracing::info_span!("grpc", trace.id = %trace_id, rpc.method = %method);
        let fut = self.inner.call(req);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let resp = fut.await?;
                let labels = vec![("service", service.to_string()), ("grpc_method", method)];
                ::metrics::counter!("grpc_server_started_total", &labels).increment(1);
                let record = move |code: &str| {
                    let mut l = labels;
                    ::metrics::histogram!("grpc_server_handling_seconds", &l)
                        .record(start.elapsed().as_secs_f64());
                    l.push(("grpc_code", code.to_string()));
                    ::metrics::counter!("grpc_server_handled_total", &l).increment(1);
                };
                // Refusals and unary errors are trailers-only responses with the status in
                // the headers; everything else ends with it in the trailers, read as the
                // body finishes (so streams are timed to their end).
                if let Some(code) = resp.headers().get("grpc-status") {
                    record(code.to_str().unwrap_or("unknown"));
                    return Ok(resp);
                }
                Ok(resp.map(|body| {
                    tonic::body::Body::new(Counted {
                        inner: body,
                        record: Some(Box::new(record)),
                    })
                }))
            },
            span,
        ))
    }
}

/// A response body that reports the call's final status code when its trailers pass (or
/// `cancelled` when the client goes away first).
struct Counted {
    inner: tonic::body::Body,
    record: Option<Record>,
}

/// Records a finished call's status code.
type Record = Box<dyn FnOnce(&str) + Send>;

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| {
                t.get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("unknown")
                    .to_string()
            }),
            Poll::Ready(Some(Err(s))) => Some((s.code() as i32).to_string()),
            Poll::Ready(None) => Some("unknown".to_string()),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(record) = self.record.take()
        {
            record(&code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record("cancelled");
        }
    }
}
