//! WebSocket fan-out: many authenticated sockets, events published at a set delivery rate,
//! publish-to-receive latency and memory per socket — our notification service next to a
//! minimal tokio-tungstenite broadcast server (no auth, no history, no per-user routing: the
//! ceiling) driven by the same clients in the same run.
//!
//! `scripts/bench.sh ws [--connections N] [--users U] [--rate R] [--seconds S]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, Parser)]
struct Args {
    /// Sockets held open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Users they belong to (each event goes to one user's sockets).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Deliveries per second (events x sockets per user).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run one server only and print its outcome as JSON (each side runs in a process of its
    /// own, so memory per socket is measured from a clean start).
    #[arg(long, hide = true)]
    only: Option<String>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// What the clients saw.
struct Seen {
    latency: std::sync::Mutex<Histogram<u64>>,
    received: AtomicU64,
}

/// Open `n` sockets to `url` (`tokens[i % tokens.len()]` as bearer, if any); each records
/// the latency of every event (`"t"` in microseconds since the epoch, anywhere in the text).
async fn clients(
    url: &str,
    tokens: &[String],
    n: usize,
    seen: Arc<Seen>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = url.into_client_request()?;
        if let Some(t) = tokens.get(i % tokens.len().max(1)) {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Text(t) => {
                        let now = now_us();
                        if let Some(at) = t.find("\"t\":") {
                            let digits: String = t[at + 4..]
                                .chars()
                                .take_while(|c| c.is_ascii_digit())
                                .collect();
                            if let Ok(sent) = digits.parse::<u64>() {
                                if let Ok(mut h) = seen.latency.lock() {
                                    let _ = h.record(now.saturating_sub(sent).max(1));
                                }
                                seen.received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Message::Ping(p) => {
                        let _ = tx.send(Message::Pong(p)).await;
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        }));
    }
    Ok(tasks)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Outcome {
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    kib_per_socket: f64,
    expected: u64,
    received: u64,
}

/// Publish at `rate` deliveries/s for `seconds` through `publish(user index, t)`; wait for
/// the deliveries to land; report.
async fn drive<F, Fut>(
    args: &Args,
    per_user: usize,
    seen: &Seen,
    rss_before: u64,
    mut publish: F,
) -> Outcome
where
    F: FnMut(usize, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rss_connected = rss_kib();
    let events_per_s = (args.rate / per_user as u64).max(1);
    let total = events_per_s * args.seconds;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = (start.elapsed().as_secs_f64() * events_per_s as f64) as u64;
        while sent < due.min(total) {
            publish((sent as usize) % args.users, now_us()).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let expected = total * per_user as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let received = seen.received.load(Ordering::Relaxed);
    let h = seen
        .latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| Histogram::new(3).unwrap());
    Outcome {
        delivered_per_s: received as f64 / took,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        kib_per_socket: rss_connected.saturating_sub(rss_before) as f64 / args.connections as f64,
        expected,
        received,
    }
}

fn seen() -> Arc<Seen> {
    Arc::new(Seen {
        latency: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        received: AtomicU64::new(0),
    })
}

/// Ours: auth + notification in this process, sockets through `/ws`, events through
/// `Notifier::publish` (the path gRPC Publish takes).
async fn ours(args: &Args) -> Result<Outcome, BoxError> {
    let dir = tempfile::tempdir_in(std::env::var("FMS_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let mut cfg = fms_platform::Config {
        data_dir: dir.path().to_path_buf(),
        ..fms_platform::Config::default()
    };
    cfg.notification.max_connections = (args.connections * 2) as u32;
    cfg.notification.max_connections_per_user = args.connections as u32;
    let stop = tokio_util::sync::CancellationToken::new();
    let db = fms_platform::db::Db::connect(&cfg.database, &cfg.data_dir).await?;
    let auth = fms_auth::start(
        &cfg,
        db.clone(),
        fms_auth::shared::Shared::local(),
        stop.clone(),
    )
    .await?;
    let notifier = fms_notification::start(&cfg, db, None, stop.clone()).await?;
    let app = fms_platform::http::app(
        fms_platform::http::Service {
            name: "bench",
            checks: vec![],
        },
        fms_notification::ws::routes(notifier.clone(), auth.authenticator.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(fms_platform::http::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    let users: Vec<String> = (0..args.users).map(|i| format!("bench-user-{i}")).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|u| auth.keys.current().issue(u).map(|(t, _)| t))
        .collect::<Result<_, _>>()?;
    let seen = seen();
    let rss_before = rss_kib();
    let _tasks = clients(
        &format!("ws://{addr}/ws"),
        &tokens,
        args.connections,
        seen.clone(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_user = args.connections / args.users;
    let mut n = 0u64;
    let out = drive(args, per_user, &seen, rss_before, |u, t| {
        n += 1;
        let event = fms_notification::NewEvent {
            event_id: format!("e{n}"),
            kind: "bench.event".into(),
            source: "bench".into(),
            subject: String::new(),
            time_ms: (t / 1000) as i64,
            data: format!(r#"{{"t":{t}}}"#),
            recheck: false,
        };
        let notifier = notifier.clone();
        let user = users[u].clone();
        async move {
            if let Err(e) = notifier.publish(&[user], &event).await {
                eprintln!("publish: {e}");
            }
        }
    })
    .await;
    stop.cancel();
    Ok(out)
}

/// The ceiling: accept, broadcast every message to every socket of the user it names.
async fn baseline(args: &Args) -> Result<Outcome, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let channels: Arc<Vec<tokio::sync::broadcast::Sender<Arc<str>>>> = Arc::new(
        (0..args.users)
            .map(|_| tokio::sync::broadcast::channel(1024).0)
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let acceptor = {
        let channels = channels.clone();
        let users = args.users;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % users;
                let mut rx = channels[i].subscribe();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut tx, _rx) = ws.split();
                    while let Ok(m) = rx.recv().await {
                        if tx.send(Message::Text(m.to_string().into())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    let seen = seen();
    let rss_before = rss_kib();
    let tasks = clients(
        &format!("ws://{addr}/"),
        &[],
        args.connections,
        seen.clone(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_user = args.connections / args.users;
    let out = drive(args, per_user, &seen, rss_before, |u, t| {
        let _ = channels[u]
            .send(format!(r#"{{"id":1,"type":"bench.event","data":{{"t":{t}}}}}"#).into());
        async {}
    })
    .await;
    // Close every socket (the next run needs the descriptors): clients, the acceptor, and
    // with the channels gone the server side of each connection.
    for t in tasks {
        t.abort();
    }
    acceptor.abort();
    drop(channels);
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    // Client and server sockets both live in this process.
    let limit = open_files_limit();
    if limit < args.connections * 2 + 256 {
        let fit = (limit.saturating_sub(256)) / 2;
        eprintln!(
            "open files limited to {limit}: {fit} sockets instead of {} (raise `ulimit -n`)",
            args.connections
        );
        args.connections = fit;
    }
    args.users = args.users.clamp(1, args.connections.max(1));
    match args.only.as_deref() {
        Some("baseline") => {
            println!("{}", serde_json::to_string(&baseline(&args).await?)?);
            return Ok(());
        }
        Some(_) => {
            println!("{}", serde_json::to_string(&ours(&args).await?)?);
            return Ok(());
        }
        None => {}
    }
    let run = |which: &str| -> Result<Outcome, BoxError> {
        eprintln!("{which}: {} sockets", args.connections);
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--only", which])
            .args(["--connections", &args.connections.to_string()])
            .args(["--users", &args.users.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("{which} run failed: {}", out.status).into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
    };
    let base = run("baseline")?;
    let ours = run("ours")?;
    println!(
        "\nWebSocket fan-out: {} sockets, {} users ({} sockets each), {} deliveries/s offered for {} s\n",
        args.connections,
        args.users,
        args.connections / args.users,
        args.rate,
        args.seconds
    );
    println!(
        "| server | delivered/s | received / expected | p50 ms | p99 ms | p99.9 ms | RSS KiB per socket (client + server) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut json = serde_json::Map::new();
    for (name, o) in [
        ("tokio-tungstenite broadcast (ceiling)", &base),
        ("fms notification", &ours),
    ] {
        println!(
            "| {name} | {:.0} | {} / {} | {:.2} | {:.2} | {:.2} | {:.1} |",
            o.delivered_per_s,
            o.received,
            o.expected,
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            o.kib_per_socket
        );
        json.insert(
            name.into(),
            serde_json::json!({
                "delivered_per_s": o.delivered_per_s.round(), "received": o.received,
                "expected": o.expected, "p50_ms": o.p50_ms, "p99_ms": o.p99_ms,
                "p999_ms": o.p999_ms, "kib_per_socket": o.kib_per_socket,
            }),
        );
    }
    println!(
        "\nfms vs ceiling: delivered/s {:.2}, p99 {:.2}x",
        ours.delivered_per_s / base.delivered_per_s.max(1.0),
        ours.p99_ms / base.p99_ms.max(0.001)
    );
    if let Some(p) = &args.json {
        json.insert("connections".into(), args.connections.into());
        json.insert("users".into(), args.users.into());
        json.insert("rate".into(), args.rate.into());
        std::fs::write(
            p,
            serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
        )?;
    }
    Ok(())
}
