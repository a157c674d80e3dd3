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
    if let Some(path) = args.json {
        out.insert("size_mib".into(), json!(args.size_mib));
        out.insert("rounds".into(), json!(ROUNDS));
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(out))?)?;
    }
    Ok(())
}
