//! Resumable-upload throughput, each number next to its baselines measured in the same run:
//! the engine's own ingest (no network), our tus endpoint at two PATCH sizes, our gRPC bulk
//! upload, and rustus (a tus server in Rust, crates.io `rustus`) on the same data and PATCH
//! sizes, with `--force-fsync` (the durability we give: every acknowledged byte is on disk)
//! and with its default (no fsync). Unique random data for every measurement, so nothing
//! deduplicates.
//!
//! `scripts/bench.sh tus [--size-mib N] [--rustus PATH]`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fms_proto::picker::v1 as pb;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[path = "../stack.rs"]
mod stack;

#[derive(Debug, Parser)]
struct Args {
    /// Size of each upload.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// The rustus binary (`cargo install rustus`); without it rustus is not measured.
    #[arg(long)]
    rustus: Option<std::path::PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const PATCH_SIZES: [usize; 2] = [8 << 20, 64 << 20];
const ROUNDS: usize = 3;

fn data(mib: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; mib << 20];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

async fn settle() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// One tus upload of `body` in PATCHes of `patch` bytes; the wall time from creation to the
/// last 204 (which, for us, means the file is committed).
async fn tus_upload(
    c: &reqwest::Client,
    base: &str,
    create: &str,
    token: Option<&str>,
    body: &Bytes,
    patch: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let auth = |r: reqwest::RequestBuilder| match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let t = Instant::now();
    let r = auth(c.post(format!("{base}{create}")))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", body.len().to_string())
        .send()
        .await?;
    if r.status() != 201 {
        return Err(format!("create: {}", r.status()).into());
    }
    let loc = r.headers()["location"].to_str()?.to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let mut offset = 0;
    while offset < body.len() {
        let end = (offset + patch).min(body.len());
        let r = auth(c.patch(&url))
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset.to_string())
            .body(body.slice(offset..end))
            .send()
            .await?;
        if r.status() != 204 {
            return Err(format!("PATCH at {offset}: {}", r.status()).into());
        }
        offset = end;
    }
    Ok(t.elapsed())
}

/// A rustus process on a fresh directory; killed when dropped.
struct Rustus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Rustus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn rustus(bin: &std::path::Path, fsync: bool) -> Result<Rustus, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(std::env::var("FMS_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--info-dir")
        .arg(dir.path())
        // rustus takes a PATCH body whole into memory, 256 KiB by default.
        .args(["--max-body-size", &(80u64 << 20).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if fsync {
        cmd.args(["--force-fsync", "true"]);
    }
    let child = cmd.spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..100 {
        if c.request(reqwest::Method::OPTIONS, format!("{url}/files/"))
            .send()
            .await
            .is_ok()
        {
            return Ok(Rustus {
                child,
                url,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("rustus did not start".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let sut = stack::start(axum::Router::new()).await?;
    let store = sut.picker.engine.store().clone();
    let url = sut.url.clone();
    let c = stack::client()?;
    let token = stack::login(&c, &url, "bench").await?;
    let mut g = pb::files_service_client::FilesServiceClient::new(
        tonic::transport::Endpoint::from_shared(sut.grpc.clone())?
            .connect()
            .await?,
    );
    let rustus_fsync = match &args.rustus {
        Some(bin) => Some(rustus(bin, true).await?),
        None => None,
    };
    let rustus_default = match &args.rustus {
        Some(bin) => Some(rustus(bin, false).await?),
        None => None,
    };

    let size = args.size_mib << 20;
    // name -> MiB/s per round.
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |name: String, v: f64| match results.iter_mut().find(|(n, _)| *n == name) {
        Some((_, vs)) => vs.push(v),
        None => results.push((name, vec![v])),
    };
    let mut seed = 1u64;
    let mut next = || {
        seed += 1;
        data(args.size_mib, seed)
    };
    for round in 0..ROUNDS {
        eprintln!("round {} of {ROUNDS}", round + 1);
        let d = next();
        settle().await;
        let st = store.clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || -> Result<(), fms_engine::Error> {
            let mut w = st.writer()?;
            for piece in d.chunks(256 * 1024) {
                w.write_bytes(d.slice_ref(piece))?;
            }
            w.finish()?;
            Ok(())
        })
        .await??;
        record("engine ingest (baseline)".into(), mbps(size, t.elapsed()));
        for patch in PATCH_SIZES {
            let d = next();
            settle().await;
            let took = tus_upload(&c, &url, "/api/uploads", Some(&token), &d, patch).await?;
            record(
                format!("fms tus, {} MiB PATCHes", patch >> 20),
                mbps(size, took),
            );
            if let Some(r) = &rustus_fsync {
                let d = next();
                settle().await;
                let took = tus_upload(&c, &r.url, "/files/", None, &d, patch).await?;
                record(
                    format!("rustus --force-fsync, {} MiB PATCHes", patch >> 20),
                    mbps(size, took),
                );
            }
            if let Some(r) = &rustus_default {
                let d = next();
                settle().await;
                let took = tus_upload(&c, &r.url, "/files/", None, &d, patch).await?;
                record(
                    format!("rustus default (no fsync), {} MiB PATCHes", patch >> 20),
                    mbps(size, took),
                );
            }
        }
        let d = next();
        settle().await;
        let t = Instant::now();
        let mut msgs = vec![pb::UploadRequest {
            msg: Some(pb::upload_request::Msg::Start(pb::UploadStart {
                name: "grpc.bin".into(),
                size: Some(size as u64),
                upload_id: String::new(),
                offset: 0,
                resume: false,
                folder: String::new(),
            })),
        }];
        msgs.extend((0..d.len()).step_by(1 << 20).map(|i| pb::UploadRequest {
            msg: Some(pb::upload_request::Msg::Data(
                d.slice(i..(i + (1 << 20)).min(d.len())),
            )),
        }));
        msgs.push(pb::UploadRequest {
            msg: Some(pb::upload_request::Msg::End(pb::UploadEnd {
                blake3: String::new(),
            })),
        });
        let mut req = tonic::Request::new(futures_util::stream::iter(msgs));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let mut out = g.upload(req).await?.into_inner();
        let mut done = false;
        while let Some(m) = out.message().await? {
            done |= matches!(m.msg, Some(pb::upload_response::Msg::File(_)));
        }
        if !done {
            return Err("gRPC upload did not commit".into());
        }
        record(
            "fms gRPC bulk upload, 1 MiB messages".into(),
            mbps(size, t.elapsed()),
        );
    }
    let dedup = match fms_binary() {
        Some(fms) => Some(push_bench(&fms, &url, &sut.grpc, args.size_mib).await?),
        None => {
            eprintln!("the fms binary is not built next to this one: no push measurement");
            None
        }
    };
    drop(sut);
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let engine = med(&results[0].1);
    let fsync_at = |patch: usize| {
        results
            .iter()
            .find(|(n, _)| *n == format!("rustus --force-fsync, {} MiB PATCHes", patch >> 20))
            .map(|(_, v)| med(v))
    };
    println!(
        "\nResumable uploads of {} MiB over HTTP/1.1 on loopback (MiB/s, medians of {ROUNDS} interleaved rounds)\n",
        args.size_mib
    );
    println!(
        "| measurement | MiB/s | vs engine ingest | vs rustus --force-fsync, same PATCH size |"
    );
    println!("|---|---:|---:|---:|");
    let mut out = serde_json::Map::new();
    for (name, v) in &results {
        let m = med(v);
        let vs_rustus = PATCH_SIZES
            .iter()
            .find(|p| name.starts_with("fms tus") && name.contains(&format!(" {} MiB", *p >> 20)))
            .and_then(|p| fsync_at(*p))
            .map(|r| format!("{:.2}", m / r))
            .unwrap_or_default();
        println!("| {name} | {m:.0} | {:.2} | {vs_rustus} |", m / engine);
        out.insert(name.clone(), json!(m.round()));
    }
    if let Some(d) = &dedup {
        println!(
            "\nRe-upload of a {} MiB file with 1% changed (8 scattered regions) by the `fms push` \
             client, medians of {ROUNDS} rounds\n",
            args.size_mib
        );
        println!("| measurement | wall s | MiB/s of file | bytes sent | vs engine ingest |");
        println!("|---|---:|---:|---:|---:|");
        for (name, secs, sent) in d {
            let rate = args.size_mib as f64 / secs;
            println!(
                "| {name} | {secs:.2} | {rate:.0} | {sent} | {:.2} |",
                rate / engine
            );
            out.insert(
                name.clone(),
                json!({"seconds": secs, "bytes_sent": sent, "mib_s": rate.round()}),
            );
        }
    }
    if let Some(path) = args.json {
        out.insert("size_mib".into(), json!(args.size_mib));
        out.insert("rounds".into(), json!(ROUNDS));
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(out))?)?;
    }
    Ok(())
}

/// The `fms` binary built beside this one (`cargo build -p fms`).
fn fms_binary() -> Option<std::path::PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join("fms");
    p.exists().then_some(p)
}

/// Run `fms` with credentials in `creds`; its stdout as JSON.
async fn fms(
    bin: &std::path::Path,
    creds: &std::path::Path,
    args: &[&str],
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("FMS_CREDENTIALS", creds)
        .env("FMS_PASSWORD", "correct horse battery staple")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        return Err(format!("fms {args:?}: {}", out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// A `size_mib` file pushed once, then re-pushed after changing 1% of it (eight scattered
/// regions, new ones each round): dedup-aware, and with `--no-dedup` as the baseline.
/// Returns (measurement, median wall seconds, median bytes sent).
async fn push_bench(
    bin: &std::path::Path,
    url: &str,
    grpc: &str,
    size_mib: usize,
) -> Result<Vec<(String, f64, u64)>, Box<dyn std::error::Error>> {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir_in(std::env::var("FMS_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let creds = dir.path().join("credentials.json");
    let creds2 = dir.path().join("credentials-2.json");
    let other = dir.path().join("other.bin");
    let file = dir.path().join("big.bin");
    std::fs::write(&file, data(size_mib, 4242))?;
    let size = (size_mib as u64) << 20;
    let file_s = file.to_string_lossy().to_string();
    fms(
        bin,
        &creds,
        &[
            "login",
            "--server",
            url,
            "--grpc",
            grpc,
            "--username",
            "bench",
        ],
    )
    .await?;
    let mut journal = 0;
    let mut push = |extra: &'static [&'static str]| {
        journal += 1;
        let j = dir
            .path()
            .join(format!("journal-{journal}"))
            .to_string_lossy()
            .to_string();
        let mut a: Vec<String> = vec!["push".into(), "--json".into(), "--journal".into(), j];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(file_s.clone());
        a
    };
    let first = push(&[]);
    let v = fms(
        bin,
        &creds,
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    let mut rows: Vec<(String, Vec<f64>, Vec<u64>)> = vec![
        (
            "fms push, first upload (all new)".into(),
            vec![v["seconds"].as_f64().unwrap_or(0.0)],
            vec![v["bytes_sent"].as_u64().unwrap_or(0)],
        ),
        ("fms push, 1% changed, dedup-aware".into(), vec![], vec![]),
        (
            "fms push --no-dedup, 1% changed (baseline)".into(),
            vec![],
            vec![],
        ),
        (
            "another user, dedup-aware: content the first user holds".into(),
            vec![],
            vec![],
        ),
        (
            "another user, dedup-aware: content nobody holds (baseline)".into(),
            vec![],
            vec![],
        ),
    ];
    let mut rng = SmallRng::seed_from_u64(77);
    for _ in 0..ROUNDS {
        let region = (size / 100 / 8) as usize;
        for _ in 0..8 {
            let at = rng.next_u64() % (size - region as u64);
            let mut b = vec![0u8; region];
            rng.fill_bytes(&mut b);
            std::fs::File::options()
                .write(true)
                .open(&file)?
                .write_all_at(&b, at)?;
        }
        settle().await;
        for (i, extra) in [(1usize, &[][..]), (2, &["--no-dedup"][..])] {
            let a = push(extra);
            let v = fms(
                bin,
                &creds,
                &a.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await?;
            rows[i].1.push(v["seconds"].as_f64().unwrap_or(0.0));
            rows[i].2.push(v["bytes_sent"].as_u64().unwrap_or(0));
        }
        // A new user pushes what the first holds, and as much content nobody holds: the
        // first must not be faster (the store keeps one copy, the time must not tell).
        let second = format!("bench-2-{}", rng.next_u64());
        stack::login(&stack::client()?, url, &second).await?;
        let login2 = [
            "login",
            "--server",
            url,
            "--grpc",
            grpc,
            "--username",
            &second,
        ];
        fms(bin, &creds2, &login2).await?;
        std::fs::write(&other, data(size_mib, rng.next_u64()))?;
        settle().await;
        for (i, path) in [(3usize, &file), (4, &other)] {
            let j = dir.path().join(format!("journal-2-{}", rng.next_u64()));
            let (j, p) = (j.to_string_lossy(), path.to_string_lossy());
            let a = ["push", "--json", "--journal", &j, &p];
            let v = fms(bin, &creds2, &a).await?;
            rows[i].1.push(v["seconds"].as_f64().unwrap_or(0.0));
            rows[i].2.push(v["bytes_sent"].as_u64().unwrap_or(0));
        }
    }
    Ok(rows
        .into_iter()
        .map(|(n, mut s, mut b)| {
            s.sort_by(f64::total_cmp);
            b.sort_unstable();
            (n, s[s.len() / 2], b[b.len() / 2])
        })
        .collect())
}
