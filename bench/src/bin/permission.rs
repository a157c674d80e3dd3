//! Permission service throughput and latency over gRPC, each number next to its baseline
//! measured in the same run (the standard gRPC health check on the same server, same
//! concurrency: the cost of the RPC itself).
//!
//! Data: 100,000 users, 250,000 files, 1,000,000 grants (the target), one user with
//! 10,000 accessible files. Measured: CheckPermission answered by the database (cache off)
//! and from a warm cache, ListAccessible's first page for the 10,000-file user, and a full
//! walk of that user's pages.
//!
//! `scripts/bench.sh permission [--backend postgres|embedded] [--seconds N] [--concurrency N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use fms_permission::Permissions;
use fms_permission::model::Right;
use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::grpc::{self, GrpcServices};
use fms_proto::permission::v1 as pb;
use fms_proto::permission::v1::permission_service_client::PermissionServiceClient;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// `postgres` (needs FMS_BENCH_POSTGRES_URL: a superuser URL; a fresh database is
    /// created) or `embedded`.
    #[arg(long, default_value = "postgres")]
    backend: String,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[arg(long, default_value_t = 250_000)]
    files: usize,
    #[arg(long, default_value_t = 1_000_000)]
    grants: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Calls in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn id(rng: &mut SmallRng) -> String {
    uuid::Uuid::from_u128(rng.random()).to_string()
}

/// A measured load: calls per second and latency percentiles in microseconds.
#[derive(Debug)]
struct Load {
    rate: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    errors: u64,
}

impl Load {
    fn json(&self) -> serde_json::Value {
        json!({"per_sec": self.rate.round(), "p50_us": self.p50, "p99_us": self.p99,
               "p999_us": self.p999, "max_us": self.max, "errors": self.errors})
    }
    fn row(&self, name: &str, baseline: Option<&Load>) {
        let ratio = baseline.map_or(String::new(), |b| format!("{:.2}", self.rate / b.rate));
        println!(
            "| {name} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} |",
            self.rate,
            ratio,
            self.p50 as f64 / 1000.0,
            self.p99 as f64 / 1000.0,
            self.p999 as f64 / 1000.0,
            self.errors
        );
    }
}

/// Run `call` from `concurrency` tasks for `secs`; each task gets its own index.
async fn load<F, Fut>(secs: f64, concurrency: usize, call: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0;
            let mut i = 0u64;
            while Instant::now() < end {
                let s = Instant::now();
                if !call(t, i).await {
                    errors += 1;
                }
                h.saturating_record(s.elapsed().as_micros() as u64);
                i += 1;
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        all.add(h).unwrap();
        errors += e;
    }
    Load {
        rate: all.len() as f64 / start.elapsed().as_secs_f64(),
        p50: all.value_at_quantile(0.5),
        p99: all.value_at_quantile(0.99),
        p999: all.value_at_quantile(0.999),
        max: all.max(),
        errors,
    }
}

const ROUNDS: usize = 3;

/// The run with the median rate.
fn median(mut runs: Vec<Load>) -> Load {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    runs.swap_remove(runs.len() / 2)
}

async fn serve(perms: Arc<Permissions>, stop: CancellationToken) -> Vec<Channel> {
    let (routes, health) =
        grpc::routes(GrpcServices::new().with(fms_permission::grpc::Service::server(perms)))
            .await
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(
        listener,
        routes,
        health,
        "fms-bench-permission",
        stop,
        Duration::from_secs(1),
    ));
    let mut channels = Vec::new();
    // Several HTTP/2 connections, as several picker replicas would open.
    for _ in 0..4 {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    channels
}

async fn insert_users(db: &Db, users: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    for chunk in users.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO users (id, username, email, password_hash, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, NULL, 'x', 0)", 2 * i + 1, 2 * i + 2));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for u in chunk {
            q = q.bind(u).bind(format!("bench-{u}"));
        }
        q.execute(&db.pool).await?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    match args.backend.as_str() {
        "postgres" => {
            let admin = std::env::var("FMS_BENCH_POSTGRES_URL")
                .map_err(|_| "FMS_BENCH_POSTGRES_URL is not set (scripts/bench.sh sets it)")?;
            cfg.database.url = fms_platform::db::create_database(&admin, "bench").await?;
        }
        "embedded" => {}
        other => return Err(format!("unknown backend {other}").into()),
    }
    let db = Db::connect(&cfg.database, &cfg.data_dir).await?;
    fms_auth::store::AuthStore::open(db.clone()).await?;

    // --- data ---
    let t = Instant::now();
    let mut rng = SmallRng::seed_from_u64(42);
    let users: Vec<String> = (0..args.users).map(|_| id(&mut rng)).collect();
    let files: Vec<String> = (0..args.files).map(|_| id(&mut rng)).collect();
    insert_users(&db, &users).await?;
    let heavy = users[0].clone();
    let mut owned = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        // The heavy user owns 2,000 files; the rest are spread over everyone else.
        let owner = if i < 2000 {
            heavy.clone()
        } else {
            users[rng.random_range(1..users.len())].clone()
        };
        owned.push((f.clone(), owner));
    }
    let mut grants = Vec::with_capacity(args.grants);
    for f in files.iter().skip(2000).take(8000) {
        grants.push((f.clone(), heavy.clone(), Right::Read));
    }
    while grants.len() < args.grants {
        let f = &files[rng.random_range(0..files.len())];
        let u = &users[rng.random_range(1..users.len())];
        let right = match rng.random_range(0..10) {
            0..=6 => Right::Read,
            7 => Right::Write,
            8 => Right::Delete,
            _ => Right::Share,
        };
        grants.push((f.clone(), u.clone(), right));
    }
    let perms = fms_permission::start(&cfg, db.clone(), CancellationToken::new()).await?;
    perms.store().bulk_load(&owned, &grants).await?;
    // The steady state autovacuum would reach: statistics for the planner, visibility map
    // for index-only scans.
    if args.backend == "postgres" {
        sqlx::query("VACUUM ANALYZE").execute(&db.pool).await?;
    } else {
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }
    let load_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} users, {} files, {} grants into {} in {load_secs:.0}s",
        users.len(),
        files.len(),
        grants.len(),
        args.backend
    );
    // Checks: 80% pairs that were granted (allowed), 20% random pairs (almost all denied).
    let mut sample = Vec::with_capacity(200_000);
    for _ in 0..160_000 {
        let (f, u, r) = &grants[rng.random_range(0..grants.len())];
        sample.push((u.clone(), f.clone(), *r));
    }
    for _ in 0..40_000 {
        sample.push((
            users[rng.random_range(0..users.len())].clone(),
            files[rng.random_range(0..files.len())].clone(),
            Right::Read,
        ));
    }
    let sample = Arc::new(sample);

    let stop = CancellationToken::new();
    let cached = serve(perms.clone(), stop.clone()).await;
    let mut uncached_cfg = cfg.clone();
    uncached_cfg.permission.cache_entries = 0;
    let uncached_perms = fms_permission::start(&uncached_cfg, db.clone(), stop.clone()).await?;
    let uncached = serve(uncached_perms, stop.clone()).await;
    let c = args.concurrency;

    let health_load = |channels: Vec<Channel>| {
        load(args.seconds, c, move |t, _| {
            let ch = channels[t % channels.len()].clone();
            async move {
                tonic_health::pb::health_client::HealthClient::new(ch)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            }
        })
    };
    let check_load = |channels: Vec<Channel>| {
        let sample = sample.clone();
        load(args.seconds, c, move |t, i| {
            let ch = channels[t % channels.len()].clone();
            let (u, f, r) = sample[(t * 7919 + i as usize * 104_729) % sample.len()].clone();
            async move {
                PermissionServiceClient::new(ch)
                    .check_permission(pb::CheckPermissionRequest {
                        user_id: u,
                        file_id: f,
                        right: r.to_proto(),
                        at_least_as_fresh: 0,
                    })
                    .await
                    .is_ok()
            }
        })
    };
    // Warm the cache: every sampled pair once.
    let t = Instant::now();
    for (u, f, r) in sample.iter() {
        perms.check(u, f, *r, 0).await?;
    }
    eprintln!(
        "cache warmed with {} decisions in {:.1}s",
        perms.cache().len(),
        t.elapsed().as_secs_f64()
    );
    // Baseline and measurements interleaved, three rounds, medians: a noisy neighbour
    // slows both sides of a ratio alike.
    let (mut baselines, mut dbs, mut hits) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        baselines.push(health_load(cached.clone()).await);
        dbs.push(check_load(uncached.clone()).await);
        hits.push(check_load(cached.clone()).await);
    }
    let baseline = median(baselines);
    let db_checks = median(dbs);
    let cached_checks = median(hits);

    // Writes: every upload creates an owner; writers are serialized by the revision row.
    let create_channels = cached.clone();
    let owners = Arc::new(users[1..1001].to_vec());
    let creates = load(args.seconds, c, move |t, i| {
        let ch = create_channels[t % create_channels.len()].clone();
        let owner = owners[(t + i as usize) % owners.len()].clone();
        async move {
            PermissionServiceClient::new(ch)
                .create_owner(pb::CreateOwnerRequest {
                    file_id: format!("new-{t}-{i}"),
                    user_id: owner,
                })
                .await
                .is_ok()
        }
    })
    .await;

    let list_channels = cached.clone();
    let h = heavy.clone();
    let first_page = load(args.seconds, 4, move |t, _| {
        let ch = list_channels[t % list_channels.len()].clone();
        let user = h.clone();
        async move {
            PermissionServiceClient::new(ch)
                .list_accessible(pb::ListAccessibleRequest {
                    user_id: user,
                    right: 0,
                    page_token: String::new(),
                    page_size: 100,
                    at_least_as_fresh: 0,
                })
                .await
                .is_ok_and(|r| r.into_inner().files.len() == 100)
        }
    })
    .await;
    // Walk all 10,000 files, 100 at a time.
    let mut client = PermissionServiceClient::new(cached[0].clone());
    let t = Instant::now();
    let (mut token, mut total, mut pages) = (String::new(), 0usize, 0usize);
    loop {
        let page = client
            .list_accessible(pb::ListAccessibleRequest {
                user_id: heavy.clone(),
                right: 0,
                page_token: token,
                page_size: 100,
                at_least_as_fresh: 0,
            })
            .await?
            .into_inner();
        total += page.files.len();
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let walk = t.elapsed();
    stop.cancel();

    println!(
        "\nPermission service, {} backend: {} users, {} files, {} grants; {} calls in flight over 4 HTTP/2 connections; {:.0}s each, medians of {ROUNDS} interleaved rounds\n",
        args.backend,
        users.len(),
        files.len(),
        grants.len(),
        c,
        args.seconds
    );
    println!("| measurement | calls/s | ratio to baseline | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    baseline.row("baseline: gRPC health check", None);
    db_checks.row("CheckPermission, database (cache off)", Some(&baseline));
    cached_checks.row("CheckPermission, warm cache", Some(&baseline));
    first_page.row(
        "ListAccessible first page (100 of 10,000), 4 in flight",
        Some(&baseline),
    );
    creates.row(
        "CreateOwner (a write: one transaction each)",
        Some(&baseline),
    );
    println!(
        "\nListAccessible, all {total} files of the 10,000-file user in {pages} pages: {:.0} ms ({:.2} ms/page)",
        walk.as_secs_f64() * 1000.0,
        walk.as_secs_f64() * 1000.0 / pages as f64
    );
    if let Some(path) = args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({
                "backend": args.backend,
                "users": users.len(), "files": files.len(), "grants": grants.len(),
                "concurrency": c, "seconds": args.seconds, "load_seconds": load_secs.round(),
                "baseline_health": baseline.json(),
                "check_database": db_checks.json(),
                "check_cached": cached_checks.json(),
                "list_first_page": first_page.json(),
                "create_owner": creates.json(),
                "list_walk": {"files": total, "pages": pages, "ms": (walk.as_secs_f64() * 1000.0).round()},
            }))?,
        )?;
    }
    Ok(())
}
