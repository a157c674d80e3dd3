//! WebSocket fan-out: many authenticated sockets, events published at a set delivery rate,
//! publish-to-receive latency and memory per socket — our notification service next to a
//! minimal tokio-tungstenite broadcast server (no auth, no history, no per-user routing: the
//! ceiling) driven by the same clients in the same run.
//!
//! Each side runs in a process of its own (`--only <which>`) that holds the server ends of the
//! sockets only; the client ends live in a second process it starts (`--clients <url>`), which
//! records publish-to-receive latency (`"t"` in each event: microseconds since the epoch at
//! publish, comparable across the two processes on one machine) and reports it on stdout. So
//! each process needs about one descriptor per socket, and memory per socket is the server's.
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
    /// Be the clients of a server at this URL: open `--connections` sockets, print `ready`,
    /// read `expect N` on stdin, wait for N deliveries (30 s at most) and print a `Report`.
    #[arg(long, hide = true)]
    clients: Option<String>,
    /// Bearer tokens for `--clients`, one a line (socket `i` uses line `i % lines`).
    #[arg(long, hide = true)]
    tokens_file: Option<std::path::PathBuf>,
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

/// What the clients process reports when the deliveries have landed (or 30 s have passed).
#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    received: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// When it stopped waiting, microseconds since the epoch.
    done_us: u64,
}

/// The `--clients` process: open the sockets, say `ready`, wait for `expect N`, report.
async fn client_process(args: &Args, url: &str) -> Result<(), BoxError> {
    use std::io::Write;
    let tokens: Vec<String> = match &args.tokens_file {
        Some(p) => std::fs::read_to_string(p)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let seen = seen();
    let _tasks = clients(url, &tokens, args.connections, seen.clone()).await?;
    let (expect_tx, expect_rx) = tokio::sync::oneshot::channel::<u64>();
    // The server process talks on stdin; its end closing (it failed or was stopped) ends us.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        match line
            .trim()
            .strip_prefix("expect ")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => {
                let _ = expect_tx.send(n);
            }
            None => std::process::exit(1),
        }
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let expected = expect_rx.await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done_us = now_us();
    let received = seen.received.load(Ordering::Relaxed);
    let h = seen
        .latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| Histogram::new(3).unwrap());
    let report = Report {
        received,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        done_us,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    Ok(())
}

/// The clients process as seen from the server's: started with `spawn`, killed (if still
/// running) when dropped, so its sockets never outlive the run.
struct ClientProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ClientProcess {
    /// Start `n` clients of `url` and wait until every socket is open.
    async fn spawn(
        url: &str,
        tokens_file: Option<&std::path::Path>,
        n: usize,
    ) -> Result<Self, BoxError> {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["--clients", url])
            .args(["--connections", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(f) = tokens_file {
            cmd.arg("--tokens-file").arg(f);
        }
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("clients process without pipes".into());
        };
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            stdin,
            lines,
        };
        match me.lines.recv().await.as_deref() {
            Some("ready") => Ok(me),
            other => Err(format!("clients process did not connect (said {other:?})").into()),
        }
    }

    /// Tell it how many deliveries to wait for; its report once they landed.
    async fn finish(&mut self, expected: u64) -> Result<Report, BoxError> {
        use std::io::Write;
        writeln!(self.stdin, "expect {expected}")?;
        self.stdin.flush()?;
        let line = self
            .lines
            .recv()
            .await
            .ok_or("clients process ended without a report")?;
        let report = serde_json::from_str(&line)?;
        let _ = tokio::task::block_in_place(|| self.child.wait());
        Ok(report)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Publish at `rate` deliveries/s for `seconds` through `publish(user index, t)`; wait for
/// the deliveries to land at the clients; report.
async fn drive<F, Fut>(
    args: &Args,
    per_user: usize,
    clients: &mut ClientProcess,
    rss_before: u64,
    mut publish: F,
) -> Result<Outcome, BoxError>
where
    F: FnMut(usize, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rss_connected = rss_kib();
    let events_per_s = (args.rate / per_user as u64).max(1);
    let total = events_per_s * args.seconds;
    let start_us = now_us();
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
    let r = clients.finish(expected).await?;
    let took = r.done_us.saturating_sub(start_us).max(1) as f64 / 1e6;
    Ok(Outcome {
        delivered_per_s: r.received as f64 / took,
        p50_ms: r.p50_us as f64 / 1000.0,
        p99_ms: r.p99_us as f64 / 1000.0,
        p999_ms: r.p999_us as f64 / 1000.0,
        kib_per_socket: rss_connected.saturating_sub(rss_before) as f64 / args.connections as f64,
        expected,
        received: r.received,
    })
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
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, tokens.join("\n"))?;
    let rss_before = rss_kib();
    let mut clients = ClientProcess::spawn(
        &format!("ws://{addr}/ws"),
        Some(&tokens_file),
        args.connections,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_user = args.connections / args.users;
    let mut n = 0u64;
    let out = drive(args, per_user, &mut clients, rss_before, |u, t| {
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
    drop(clients);
    stop.cancel();
    out
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
    let rss_before = rss_kib();
    let mut clients =
        ClientProcess::spawn(&format!("ws://{addr}/"), None, args.connections).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_user = args.connections / args.users;
    let out = drive(args, per_user, &mut clients, rss_before, |u, t| {
        let _ = channels[u]
            .send(format!(r#"{{"id":1,"type":"bench.event","data":{{"t":{t}}}}}"#).into());
        async {}
    })
    .await;
    // Close every socket: the clients process, the acceptor, and with the channels gone the
    // server side of each connection.
    drop(clients);
    acceptor.abort();
    drop(channels);
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    // The server ends of the sockets live in one process, the client ends in another: each
    // needs one descriptor per socket, plus some for the rest (database, pipes, listener).
    // Checked in every process (the limit is inherited), so the clamp is announced once, here.
    const SPARE_FDS: usize = 256;
    let limit = open_files_limit();
    if limit < args.connections + SPARE_FDS {
        let fit = limit.saturating_sub(SPARE_FDS);
        if args.only.is_none() && args.clients.is_none() {
            eprintln!(
                "open files limited to {limit} per process: {fit} sockets instead of {} \
                 (each process needs one descriptor per socket plus {SPARE_FDS}; raise `ulimit -n`)",
                args.connections
            );
        }
        args.connections = fit;
    }
    if let Some(url) = args.clients.clone() {
        return client_process(&args, &url).await;
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
        "| server | delivered/s | received / expected | p50 ms | p99 ms | p99.9 ms | RSS KiB per socket (server) |"
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
