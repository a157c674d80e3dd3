//! Picker HTTP throughput, each number next to its baselines measured in the same run:
//! the engine's own ingest and read rates (no HTTP), and an HTTP server on the same stack
//! that discards the body (the HTTP ceiling). Server and client share this machine's cores,
//! as they do in every number here.
//!
//! `scripts/bench.sh picker [--size-mib N] [--parallel N] [--each-mib N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[path = "../stack.rs"]
mod stack;

#[derive(Debug, Parser)]
struct Args {
    /// Size of the single-stream upload and download.
    #[arg(long, default_value_t = 512)]
    size_mib: usize,
    /// Parallel streams in the parallel measurement.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Size of each parallel stream.
    #[arg(long, default_value_t = 32)]
    each_mib: usize,
    /// Size of the uploads timed for the dedup-privacy comparison.
    #[arg(long, default_value_t = 16)]
    privacy_mib: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn data(mib: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; mib << 20];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

/// Write back what earlier measurements left dirty in the page cache, so one measurement's
/// writeback does not land in the next one's time.
async fn settle() {
    let _ = tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// One round of every measurement (MiB/s).
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    engine_ingest: f64,
    ceiling_up: f64,
    http_up: f64,
    engine_par: f64,
    http_par: f64,
    engine_read: f64,
    ceiling_down: f64,
    http_down: f64,
    /// Upload of bytes nobody stores (ms).
    fresh_ms: f64,
    /// The same bytes uploaded by another user: deduplicated, which must not show (ms).
    cross_ms: f64,
}

/// One upload's wall time in ms.
async fn timed_upload(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    body: Bytes,
) -> Result<f64, Box<dyn std::error::Error>> {
    settle().await;
    let t = Instant::now();
    c.post(format!("{url}/api/upload?name=privacy.bin"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

async fn round(
    args: &Args,
    seed: u64,
    store: &fms_engine::Store,
    c: &reqwest::Client,
    url: &str,
    (token, other): (&str, &str),
) -> Result<Round, Box<dyn std::error::Error>> {
    let size = args.size_mib << 20;

    // --- dedup privacy (reliability test 40): another user's copy must not make it faster ---
    let private = data(args.privacy_mib, seed + 7);
    let fresh_ms = timed_upload(c, url, other, private.clone()).await?;
    let cross_ms = timed_upload(c, url, token, private).await?;
    let engine_data = data(args.size_mib, seed + 1);
    let http_data = data(args.size_mib, seed + 2);
    let discard_data = data(args.size_mib, seed + 3);

    // --- single stream ---
    let st = store.clone();
    let d = engine_data.clone();
    settle().await;
    let t = Instant::now();
    let engine_id = tokio::task::spawn_blocking(move || -> Result<_, fms_engine::Error> {
        let mut w = st.writer()?;
        for piece in d.chunks(256 * 1024) {
            w.write_bytes(d.slice_ref(piece))?;
        }
        Ok(w.finish()?.id)
    })
    .await??;
    let engine_ingest = mbps(size, t.elapsed());

    settle().await;
    let t = Instant::now();
    let r = c
        .post(format!("{url}/discard"))
        .body(discard_data.clone())
        .send()
        .await?;
    assert_eq!(r.text().await?, size.to_string());
    let ceiling_up = mbps(size, t.elapsed());

    settle().await;
    let t = Instant::now();
    let r = c
        .post(format!("{url}/api/upload?name=big"))
        .bearer_auth(token)
        .body(http_data.clone())
        .send()
        .await?;
    let f: Value = r.json().await?;
    let http_up = mbps(size, t.elapsed());
    let id = f["id"].as_str().ok_or("upload failed")?.to_string();

    let st = store.clone();
    settle().await;
    let t = Instant::now();
    let read = tokio::task::spawn_blocking(move || -> Result<usize, fms_engine::Error> {
        let mut n = 0;
        for b in st.read(engine_id)? {
            n += b?.len();
        }
        Ok(n)
    })
    .await??;
    assert_eq!(read, size);
    let engine_read = mbps(size, t.elapsed());

    settle().await;
    let t = Instant::now();
    let mut r = c.get(format!("{url}/ceiling")).send().await?;
    let mut n = 0;
    while let Some(b) = r.chunk().await? {
        n += b.len();
    }
    assert_eq!(n, size);
    let ceiling_down = mbps(size, t.elapsed());

    settle().await;
    let t = Instant::now();
    let mut r = c
        .get(format!("{url}/api/files/{id}/content"))
        .bearer_auth(token)
        .send()
        .await?;
    let mut n = 0;
    while let Some(b) = r.chunk().await? {
        n += b.len();
    }
    assert_eq!(n, size);
    let http_down = mbps(size, t.elapsed());

    // --- parallel streams ---
    let each = args.each_mib << 20;
    let total = each * args.parallel;
    let sets: Vec<Bytes> = (0..args.parallel as u64)
        .map(|i| data(args.each_mib, seed + 100 + i))
        .collect();
    let http_sets: Vec<Bytes> = (0..args.parallel as u64)
        .map(|i| data(args.each_mib, seed + 1000 + i))
        .collect();
    settle().await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for d in sets {
        let st = store.clone();
        tasks.push(tokio::task::spawn_blocking(
            move || -> Result<(), fms_engine::Error> {
                let mut w = st.writer()?;
                for piece in d.chunks(256 * 1024) {
                    w.write_bytes(d.slice_ref(piece))?;
                }
                w.finish()?;
                Ok(())
            },
        ));
    }
    for t in tasks {
        t.await??;
    }
    let engine_par = mbps(total, t.elapsed());
    let token = Arc::new(token.to_string());
    settle().await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, d) in http_sets.into_iter().enumerate() {
        let (c, url, token) = (c.clone(), url.to_string(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(format!("{url}/api/upload?name=p{i}"))
                .bearer_auth(token.as_str())
                .body(d)
                .send()
                .await?;
            r.error_for_status().map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let http_par = mbps(total, t.elapsed());
    Ok(Round {
        engine_ingest,
        ceiling_up,
        http_up,
        engine_par,
        http_par,
        engine_read,
        ceiling_down,
        http_down,
        fresh_ms,
        cross_ms,
    })
}

const ROUNDS: usize = 3;

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The HTTP ceiling: same server stack, body read and dropped.
    let extra = axum::Router::new().route(
        "/discard",
        post(|body: axum::body::Body| async move {
            let mut s = body.into_data_stream();
            let mut n = 0usize;
            while let Some(Ok(b)) = s.next().await {
                n += b.len();
            }
            n.to_string()
        }),
    );
    // The download ceiling: the same stack serving bytes from memory, in 64 KiB frames.
    let ceiling_data = data(args.size_mib, 4);
    let extra = extra.route(
        "/ceiling",
        axum::routing::get(move || {
            let d = ceiling_data.clone();
            async move {
                let frames: Vec<Result<Bytes, std::io::Error>> = (0..d.len())
                    .step_by(64 * 1024)
                    .map(|i| Ok(d.slice(i..(i + 64 * 1024).min(d.len()))))
                    .collect();
                axum::body::Body::from_stream(futures_util::stream::iter(frames))
            }
        }),
    );
    let sut = stack::start(extra).await?;
    let store = sut.picker.engine.store().clone();
    let url = sut.url.clone();
    let c = stack::client()?;
    let token = stack::login(&c, &url, "bench").await?;
    let other = stack::login(&c, &url, "bench2").await?;

    let mut rounds = Vec::new();
    for r in 0..ROUNDS {
        eprintln!("round {} of {ROUNDS}", r + 1);
        rounds.push(round(&args, r as u64 * 10_000, &store, &c, &url, (&token, &other)).await?);
    }
    let med = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let engine_ingest = med(|r| r.engine_ingest);
    let ceiling_up = med(|r| r.ceiling_up);
    let http_up = med(|r| r.http_up);
    let engine_par = med(|r| r.engine_par);
    let http_par = med(|r| r.http_par);
    let engine_read = med(|r| r.engine_read);
    let ceiling_down = med(|r| r.ceiling_down);
    let http_down = med(|r| r.http_down);
    let fresh_ms = med(|r| r.fresh_ms);
    let cross_ms = med(|r| r.cross_ms);
    // Server and client share the cores: when reading and sending each cost CPU, the best
    // a download can do is both costs added (harmonic combination).
    let both_down = 1.0 / (1.0 / engine_read + 1.0 / ceiling_down);
    let both_up = 1.0 / (1.0 / engine_ingest + 1.0 / ceiling_up);
    drop(sut);

    println!(
        "\nPicker over HTTP/1.1 on loopback, embedded database, one {} MiB stream and {} x {} MiB in parallel (MiB/s, medians of {ROUNDS} interleaved rounds; ratios to the engine and to the HTTP ceiling)\n",
        args.size_mib, args.parallel, args.each_mib
    );
    println!("| measurement | MiB/s | vs engine | vs HTTP ceiling |");
    println!("|---|---:|---:|---:|");
    println!("| engine ingest, one stream (baseline) | {engine_ingest:.0} | 1 | |");
    println!("| HTTP ceiling: upload to a discarding route | {ceiling_up:.0} | | 1 |");
    println!(
        "| POST /api/upload, one stream | {http_up:.0} | {:.2} | {:.2} |",
        http_up / engine_ingest,
        http_up / ceiling_up
    );
    println!(
        "| (engine ingest and HTTP receive costs added: {both_up:.0} MiB/s; upload reaches {:.2} of it) | | | |",
        http_up / both_up
    );
    println!(
        "| engine ingest, {} writers (baseline) | {engine_par:.0} | 1 | |",
        args.parallel
    );
    println!(
        "| POST /api/upload, {} streams | {http_par:.0} | {:.2} | |",
        args.parallel,
        http_par / engine_par
    );
    println!("| engine read, one stream (baseline) | {engine_read:.0} | 1 | |");
    println!("| HTTP ceiling: download from memory, 64 KiB frames | {ceiling_down:.0} | | 1 |");
    println!(
        "| GET /api/files/:id/content, one stream | {http_down:.0} | {:.2} | {:.2} |",
        http_down / engine_read,
        http_down / ceiling_down
    );
    println!(
        "| (engine read and HTTP send costs added: {both_down:.0} MiB/s; download reaches {:.2} of it) | | | |",
        http_down / both_down
    );
    println!(
        "\nDedup privacy: {} MiB uploads, median ms of {ROUNDS} rounds\n",
        args.privacy_mib
    );
    println!("| upload | ms | vs fresh |");
    println!("|---|---:|---:|");
    println!("| bytes nobody stores (baseline) | {fresh_ms:.0} | 1 |");
    println!(
        "| the same bytes, already stored by another user | {cross_ms:.0} | {:.2} |",
        cross_ms / fresh_ms
    );
    if let Some(path) = args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({
                "size_mib": args.size_mib, "parallel": args.parallel, "each_mib": args.each_mib,
                "engine_ingest_mibps": engine_ingest.round(), "http_ceiling_upload_mibps": ceiling_up.round(),
                "http_upload_mibps": http_up.round(), "engine_parallel_mibps": engine_par.round(),
                "http_parallel_upload_mibps": http_par.round(), "engine_read_mibps": engine_read.round(),
                "http_download_mibps": http_down.round(), "http_ceiling_download_mibps": ceiling_down.round(),
                "privacy_mib": args.privacy_mib, "fresh_upload_ms": fresh_ms.round(),
                "cross_user_dedup_upload_ms": cross_ms.round(),
                "rounds": ROUNDS,
            }))?,
        )?;
    }
    Ok(())
}
