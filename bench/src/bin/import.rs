//! Import throughput: `POST /api/files/download` of a file on a local HTTP server over
//! loopback, next to its baselines measured in the same run on the same bytes: a plain
//! `curl -o /dev/null` of the same URL (the fetch ceiling; the target is import >= 80% of
//! it) and a plain upload of as many new bytes with curl (what storing costs without
//! fetching). `fms serve` runs as a process of its own (its peak RSS is reported); the source
//! server runs in this one. Every import and upload is content nobody stores yet, so nothing
//! deduplicates.
//!
//! `scripts/bench.sh import [--size-mib N] [--runs N] [--json F]`

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[path = "../stack.rs"]
mod stack;

use stack::BoxError;

#[derive(Debug, Parser)]
struct Args {
    /// Size of each file imported, downloaded and uploaded.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Rounds; each measures every mode once, in a rotating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Files are written, hashed and served in pieces of this size.
const PIECE: usize = 1 << 20;

/// How often a running import's job is polled.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    CurlDownload,
    Import,
    Upload,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::CurlDownload, Mode::Import, Mode::Upload];

    fn label(self) -> &'static str {
        match self {
            Mode::CurlDownload => "curl -o /dev/null of the source (baseline)",
            Mode::Import => "fms import (POST /api/files/download)",
            Mode::Upload => "fms plain upload with curl (storage baseline)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::CurlDownload => "curl_download",
            Mode::Import => "import",
            Mode::Upload => "upload",
        }
    }
}

/// A file of pseudo-random bytes on disk, and its BLAKE3 (the store's content hash).
#[derive(Debug, Clone)]
struct DataFile {
    path: PathBuf,
    blake3: String,
}

/// Write `size` pseudo-random (incompressible) bytes from `seed` to `path`, a piece at a time.
fn generate(path: &Path, size: u64, seed: u64) -> std::io::Result<DataFile> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut file = std::fs::File::create(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut piece = vec![0u8; PIECE];
    let mut left = size;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        rng.fill_bytes(&mut piece[..n]);
        hasher.update(&piece[..n]);
        file.write_all(&piece[..n])?;
        left -= n as u64;
    }
    Ok(DataFile {
        path: path.to_path_buf(),
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// The body of the file at `path`, read from disk a piece at a time on a blocking thread
/// (never whole in memory; a few pieces in flight).
fn file_body(path: PathBuf) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut piece = Vec::with_capacity(PIECE);
            match (&mut file).take(PIECE as u64).read_to_end(&mut piece) {
                Ok(0) => return,
                Ok(_) => {
                    // An error here: the client went away.
                    if tx.blocking_send(Ok(Bytes::from(piece))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    }))
}

/// The source: `GET /f/{i}` is `files[i]`, with Content-Length and a strong ETag.
async fn serve_source(
    State(files): State<Arc<Vec<DataFile>>>,
    axum::extract::Path(i): axum::extract::Path<usize>,
) -> Response {
    let Some(f) = files.get(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = match std::fs::metadata(&f.path) {
        Ok(m) => m.len(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{}\"", &f.blake3[..32])),
        ],
        file_body(f.path.clone()),
    )
        .into_response()
}

/// Start the source on a loopback port: its base URL.
async fn start_source(files: Vec<DataFile>) -> Result<String, BoxError> {
    let app = axum::Router::new()
        .route("/f/{i}", axum::routing::get(serve_source))
        .with_state(Arc::new(files));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("source server stopped: {e}");
        }
    });
    Ok(format!("http://{addr}"))
}

/// `fms serve` in a process of its own; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Peak resident memory so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> Result<u64, BoxError> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmHWM in /proc/{pid}/status").into())
    }
}

/// The `fms` binary built beside this one (`cargo build -p fms`).
fn fms_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("fms");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p fms` (scripts/bench.sh does)",
            p.display()
        )
        .into())
    }
}

/// Start `fms serve` on a fresh data dir in `dir` (no quota, 64 GiB files, imports from
/// loopback allowed); wait until it says where it listens. Its log goes to `dir/fms.log`.
async fn start_fms(dir: &Path) -> Result<Server, BoxError> {
    let log_path = dir.join("fms.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(fms_binary()?)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .env("FMS_DATA_DIR", dir.join("data"))
        .env("FMS_DOWNLOADER__ALLOW", r#"["127.0.0.0/8"]"#)
        .env("FMS_DOWNLOADER__MAX_SIZE", "64GiB")
        .env("FMS_PICKER__QUOTA", "0")
        .env("FMS_PICKER__MAX_FILE_SIZE", "64GiB")
        // The embedded database, whatever the caller's environment says.
        .env_remove("FMS_DATABASE__URL")
        .env_remove("FMS_REDIS__URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log_path)?;
        if let Some(url) = text
            .lines()
            .find_map(|l| l.strip_prefix("fms: HTTP on "))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return Ok(Server {
                url: url.to_string(),
                child,
            });
        }
        let gone = child.try_wait()?;
        if gone.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let why = gone.map_or("did not start within 60 s".to_string(), |s| {
                format!("exited ({s})")
            });
            return Err(format!("fms serve {why}; its log:\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Write back what earlier measurements left dirty in the page cache, so one measurement's
/// writeback does not land in the next one's time.
async fn settle() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Exit 2 with the install command if there is no `curl`.
fn require_curl() {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("curl is needed for the baselines; install it with:\n  apt-get install -y curl");
        std::process::exit(2);
    }
}

/// Run `curl -sS --noproxy '*' <args>`: the time from spawn to exit, and its stdout.
async fn curl(args: Vec<String>) -> Result<(Duration, String), BoxError> {
    let (took, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*"])
            .args(&args)
            .stdin(Stdio::null());
        let t = Instant::now();
        let out = cmd.output();
        (t.elapsed(), out)
    })
    .await?;
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `curl -o /dev/null` of `url`; checks it got `size` bytes with a 200.
async fn curl_download(url: &str, size: u64) -> Result<Duration, BoxError> {
    let (took, out) = curl(vec![
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} %{size_download}".into(),
        url.into(),
    ])
    .await?;
    if out.trim() != format!("200 {size}") {
        return Err(format!("curl download of {url}: got `{out}` (status, bytes)").into());
    }
    Ok(took)
}

/// Upload `file` as the raw body of `POST /api/upload` with curl (streamed from disk);
/// checks the stored file is those bytes.
async fn curl_upload(
    base: &str,
    token: &str,
    file: &DataFile,
    name: &str,
    size: u64,
) -> Result<Duration, BoxError> {
    let (took, out) = curl(vec![
        "-X".into(),
        "POST".into(),
        // -T streams the file; --data-binary @file would read it whole into memory first.
        "-T".into(),
        file.path.to_string_lossy().into_owned(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        "-H".into(),
        "Content-Type: application/octet-stream".into(),
        // No 100-continue round trip.
        "-H".into(),
        "Expect:".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        format!("{base}/api/upload?name={name}"),
    ])
    .await?;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    if status != "201" {
        return Err(format!("upload of {name}: status {status}: {body}").into());
    }
    let stored: Value = serde_json::from_str(body)?;
    check_stored(&stored, file, size, name)?;
    Ok(took)
}

/// The file record `f` holds `size` bytes hashing to `want`'s.
fn check_stored(f: &Value, want: &DataFile, size: u64, what: &str) -> Result<(), BoxError> {
    if f["size"].as_u64() != Some(size) || f["content_hash"].as_str() != Some(&want.blake3) {
        return Err(format!("{what}: stored file is not the source's bytes: {f}").into());
    }
    Ok(())
}

/// Import `src_url` as `name`: the time from the POST to the job's `completed`, and the job.
async fn import(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    src_url: &str,
    name: &str,
) -> Result<(Duration, Value), BoxError> {
    let t = Instant::now();
    let r = c
        .post(format!("{base}/api/files/download"))
        .bearer_auth(token)
        .json(&json!({"url": src_url, "name": name}))
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(format!("POST /api/files/download: {status}: {text}").into());
    }
    let job: Value = serde_json::from_str(&text)?;
    let id = job["id"]
        .as_str()
        .ok_or_else(|| format!("no job id in {job}"))?;
    loop {
        let j: Value = c
            .get(format!("{base}/api/jobs/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match j["state"].as_str() {
            Some("completed") => return Ok((t.elapsed(), j)),
            Some("failed") => return Err(format!("import of {src_url} failed: {j}").into()),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// One import, timed, then checked: the stored file holds the source's bytes.
async fn timed_import(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    (src_url, want): (&str, &DataFile),
    name: &str,
    size: u64,
) -> Result<Duration, BoxError> {
    let (took, job) = import(c, base, token, src_url, name).await?;
    let file_id = job["file_id"]
        .as_str()
        .ok_or_else(|| format!("completed job without file_id: {job}"))?;
    let f: Value = c
        .get(format!("{base}/api/files/{file_id}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    check_stored(&f, want, size, name)?;
    Ok(took)
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    require_curl();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let size = args.size_mib << 20;
    let runs = args.runs as usize;
    // Declared first so it is removed last, after the server using it has stopped.
    let dir = tempfile::tempdir_in(std::env::var("FMS_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;

    // One distinct file per round to import (and download with curl), one to upload.
    eprintln!(
        "writing {} files of {} MiB to {} ({} MiB, and as much again stored by fms)",
        2 * runs,
        args.size_mib,
        dir.path().display(),
        2 * args.runs * args.size_mib
    );
    let base_dir = dir.path().to_path_buf();
    let (sources, uploads) = tokio::task::spawn_blocking(move || {
        let mut sources = Vec::new();
        let mut uploads = Vec::new();
        for round in 0..runs as u64 {
            sources.push(generate(
                &base_dir.join(format!("src-{round}.bin")),
                size,
                2 * round + 1,
            )?);
            uploads.push(generate(
                &base_dir.join(format!("up-{round}.bin")),
                size,
                2 * round + 2,
            )?);
        }
        Ok::<_, std::io::Error>((sources, uploads))
    })
    .await??;

    let source = start_source(sources.clone()).await?;
    let server = start_fms(dir.path()).await?;
    let c = stack::client()?;
    let token = stack::login(&c, &server.url, "bench").await?;

    let mut results: Vec<(Mode, Vec<f64>)> = Mode::ALL.iter().map(|m| (*m, vec![])).collect();
    for round in 0..runs {
        eprintln!("round {} of {runs}", round + 1);
        let src_url = format!("{source}/f/{round}");
        // Each mode goes first in turn, so whatever drifts over a run hits all alike.
        let mut order = Mode::ALL;
        order.rotate_left(round % Mode::ALL.len());
        for mode in order {
            settle().await;
            let took = match mode {
                Mode::CurlDownload => curl_download(&src_url, size).await?,
                Mode::Import => {
                    let name = format!("bench-{round}.bin");
                    let src = (src_url.as_str(), &sources[round]);
                    timed_import(&c, &server.url, &token, src, &name, size).await?
                }
                Mode::Upload => {
                    let name = format!("up-{round}.bin");
                    curl_upload(&server.url, &token, &uploads[round], &name, size).await?
                }
            };
            let rate = mibps(size, took);
            eprintln!("  {}: {rate:.0} MiB/s", mode.key());
            if let Some((_, v)) = results.iter_mut().find(|(m, _)| *m == mode) {
                v.push(rate);
            }
        }
    }
    let peak_rss_kib = server.peak_rss_kib()?;
    drop(server);

    let med = |mode: Mode| {
        results
            .iter()
            .find(|(m, _)| *m == mode)
            .map_or(0.0, |(_, v)| median(v))
    };
    let vs_curl = med(Mode::Import) / med(Mode::CurlDownload);
    let vs_upload = med(Mode::Import) / med(Mode::Upload);
    println!(
        "\nImport of {} MiB from a local HTTP server over loopback (MiB/s, medians of {runs} rounds, modes interleaved)\n",
        args.size_mib
    );
    println!("| mode | median MiB/s | runs (MiB/s) |");
    println!("|---|---:|---|");
    let mut modes = serde_json::Map::new();
    for (mode, v) in &results {
        let each: Vec<String> = v.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {} | {:.0} | {} |",
            mode.label(),
            median(v),
            each.join(", ")
        );
        modes.insert(
            mode.key().into(),
            json!({"median_mib_s": median(v), "runs_mib_s": v}),
        );
    }
    println!(
        "\nimport / curl download: {vs_curl:.2} (target >= 0.80{})",
        if vs_curl >= 0.8 { ", met" } else { ", NOT met" }
    );
    println!("import / plain upload: {vs_upload:.2}");
    println!(
        "fms serve peak RSS (VmHWM): {:.0} MiB",
        peak_rss_kib as f64 / 1024.0
    );
    if let Some(path) = &args.json {
        let out = json!({
            "size_mib": args.size_mib,
            "runs": runs,
            "modes": modes,
            "import_vs_curl_download": vs_curl,
            "import_vs_upload": vs_upload,
            "server_peak_rss_kib": peak_rss_kib,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
