//! The shared service wrapper over real sockets: health, readiness, metrics, request ids,
//! JSON errors, body limits, graceful shutdown; and the ECS log format.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use fms_platform::http::{Check, Service, app, serve};
use fms_platform::{ApiError, ApiJson};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 request on a fresh connection: (status, lower-cased headers, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hdrs, raw[split + 4..].to_vec())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Echo {
    text: String,
}

fn routes() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route(
            "/echo",
            post(|ApiJson(e): ApiJson<Echo>| async move { ApiJson(e) }),
        )
        .route(
            "/teapot",
            get(|| async { Err::<(), _>(ApiError::unavailable("busy", 7)) }),
        )
        .route(
            "/slow/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        )
        .layer(DefaultBodyLimit::max(1024))
}

/// Start the app on a free port in a runtime of its own; returns its address, the shutdown
/// token and a handle that ends when the server has stopped.
fn start(
    ready: Arc<Mutex<bool>>,
    grace: Duration,
) -> (SocketAddr, CancellationToken, std::thread::JoinHandle<()>) {
    let check: Check = Arc::new(move || {
        let ok = *ready.lock().unwrap();
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err("database unreachable".to_string())
            }
        })
    });
    let service = Service {
        name: "test",
        checks: vec![("database", check)],
    };
    let token = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = token.clone();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, app(service, routes()), t, grace)
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), token, handle)
}

#[test]
fn health_readiness_metrics_and_errors() {
    let ready = Arc::new(Mutex::new(false));
    let (addr, token, handle) = start(ready.clone(), Duration::from_secs(5));

    let (st, _, body) = http(addr, "GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["status"],
        "ok"
    );

    let (st, _, body) = http(addr, "GET", "/readyz", &[], b"");
    assert_eq!(st, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_ready");
    assert_eq!(v["checks"]["database"], "database unreachable");
    *ready.lock().unwrap() = true;
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").0, 200);

    // Unknown routes: the JSON error shape, and a request id on every response.
    let (st, h, body) = http(addr, "GET", "/nope", &[], b"");
    assert_eq!(st, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
    assert_eq!(header(&h, "x-request-id").unwrap().len(), 32);

    // A W3C traceparent's trace id is kept; a sane x-request-id too; junk is replaced.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, h, _) = http(addr, "GET", "/hello", &[("traceparent", tp)], b"");
    assert_eq!(
        header(&h, "x-request-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let (_, h, _) = http(addr, "GET", "/hello", &[("x-request-id", "abc-123")], b"");
    assert_eq!(header(&h, "x-request-id"), Some("abc-123"));
    let (_, h, _) = http(addr, "GET", "/hello", &[("x-request-id", "<script>")], b"");
    assert_ne!(header(&h, "x-request-id"), Some("<script>"));

    // JSON bodies: good, malformed, wrong type, too large.
    let (st, _, body) = http(
        addr,
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        br#"{"text":"hey"}"#,
    );
    assert_eq!(
        (
            st,
            serde_json::from_slice::<Value>(&body).unwrap()["text"].clone()
        ),
        (200, Value::from("hey"))
    );
    let (st, _, body) = http(
        addr,
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        b"{nope",
    );
    assert_eq!(st, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "bad_request"
    );
    let (st, _, _) = http(
        addr,
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        br#"{"txt":"x"}"#,
    );
    assert_eq!(st, 400);
    let (st, _, _) = http(
        addr,
        "POST",
        "/echo",
        &[("content-type", "text/plain")],
        br#"{"text":"x"}"#,
    );
    assert_eq!(st, 415);
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(4000));
    let (st, _, body) = http(
        addr,
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        big.as_bytes(),
    );
    assert_eq!(st, 413, "{}", String::from_utf8_lossy(&body));
    let (st, h, _) = http(addr, "GET", "/teapot", &[], b"");
    assert_eq!((st, header(&h, "retry-after")), (503, Some("7")));

    // Per-endpoint metrics by route template, status and method.
    let (st, h, body) = http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    for needle in [
        r#"http_requests_total{service="test",route="/hello",method="GET",status="200"} 3"#,
        r#"http_requests_total{service="test",route="unmatched",method="GET",status="404"} 1"#,
        r#"http_requests_total{service="test",route="/echo",method="POST",status="413"} 1"#,
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    token.cancel();
    handle.join().unwrap();
}

#[test]
fn shutdown_drains_in_flight_requests_then_stops_accepting() {
    let (addr, token, handle) = start(Arc::new(Mutex::new(true)), Duration::from_secs(5));
    let slow = std::thread::spawn(move || http(addr, "GET", "/slow/400", &[], b""));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    token.cancel();
    let (st, _, body) = slow.join().unwrap();
    assert_eq!(
        (st, body.as_slice()),
        (200, b"done".as_slice()),
        "the in-flight request finished"
    );
    handle.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn shutdown_grace_period_bounds_the_wait() {
    let (addr, token, handle) = start(Arc::new(Mutex::new(true)), Duration::from_millis(300));
    let stuck = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /slow/20000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // cut off when the server gives up
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    token.cancel();
    handle.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "server waited {:?}",
        t.elapsed()
    );
    stuck.join().unwrap();
}

#[test]
fn logs_are_ecs_json_lines_with_the_request_trace_id() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let layer = fms_platform::logging::layer("picker", true, move || out.clone());
    let subscriber =
        tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request", trace.id = "0af7651916cd43dd8448eb211c80319c");
        let _g = span.enter();
        tracing::warn!(file.size = 42u64, "upload refused");
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["log.level"], "WARN");
    assert_eq!(line["message"], "upload refused");
    assert_eq!(line["service.name"], "picker");
    assert_eq!(line["trace.id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(line["file.size"], 42);
    assert!(line["@timestamp"].as_str().unwrap().ends_with('Z'));
}
