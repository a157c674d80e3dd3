//! Auth throughput, each number next to its baseline measured in the same run:
//! - token verification per core (target >= 50k/s) against a bare Ed25519 signature check;
//! - login throughput over HTTP against argon2id hashes/s with the same parameters (login is
//!   bounded by the hash; the ratio shows what the rest of the path costs).
//!
//! `scripts/bench.sh auth [--seconds N] [--clients N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use ed25519_dalek::{Signature, SigningKey, Verifier};
use fms_auth::shared::Shared;
use fms_auth::tokens::{self, TokenService};
use fms_auth::verify::Authenticator;
use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::http::{self, Service};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent HTTP clients for the login measurement.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Calls of `f` per second over `secs`.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // --- verification, one core ---
    let svc = TokenService::new("fms", "fms", Duration::from_secs(900))?;
    let (token, _) = svc.issue_in_session("user-1", "session-1")?;
    let (signing_input, sig_b64) = token.rsplit_once('.').ok_or("token")?;
    let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig_b64)?)?;
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let raw_sig = ed25519_dalek::Signer::sign(&sk, signing_input.as_bytes());
    let vk = sk.verifying_key();
    let _ = sig;
    let ed25519 = rate(args.seconds, || {
        assert!(vk.verify(signing_input.as_bytes(), &raw_sig).is_ok());
    });
    let full = rate(args.seconds, || {
        assert!(tokens::verify(&token, svc.key_set(), svc.expect()).is_ok());
    });
    let auth = Authenticator::local(
        svc.expect().clone(),
        Arc::new(std::sync::RwLock::new(svc.key_set().clone())),
        Shared::local(),
    );
    let cached = rt.block_on(async {
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                assert!(auth.authenticate_token(&token).await.is_ok());
            }
            n += 64;
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    println!("token verification, one core:");
    println!("  Ed25519 signature check alone (baseline) {ed25519:>10.0}/s");
    println!(
        "  full JWT verification                     {full:>10.0}/s  ({:.2} of baseline)",
        full / ed25519
    );
    println!(
        "  Authenticator (cache hit + revocation)    {cached:>10.0}/s  ({:.2}x baseline)",
        cached / ed25519
    );

    // --- login over HTTP vs argon2id alone ---
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let (hashes, logins, workers) = rt.block_on(async {
        let g = &cfg.auth.argon2;
        let hasher = fms_auth::password::Hasher::new(g.memory_kib, g.iterations, g.parallelism, 0)
            .map_err(|e| e.to_string())?;
        let workers = hasher.max_concurrent();
        let phc = hasher
            .hash("correct horse battery staple".into())
            .await
            .map_err(|e| e.to_string())?;
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (h, p) = (hasher.clone(), phc.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let ok = h
                        .verify("correct horse battery staple".into(), p.clone())
                        .await;
                    assert!(matches!(ok, Ok(true)));
                    n += 1;
                }
                n
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.map_err(|e| e.to_string())?;
        }
        let hashes = n as f64 / start.elapsed().as_secs_f64();

        let stop = tokio_util::sync::CancellationToken::new();
        let db = Db::connect(&cfg.database, &cfg.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        let svc = fms_auth::start(&cfg, db, Shared::local(), stop.clone()).await?;
        let app = http::app(
            Service {
                name: "bench",
                checks: Vec::new(),
            },
            fms_auth::api::routes(svc),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(http::serve(
            listener,
            app,
            stop.clone(),
            Duration::from_secs(1),
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let body = json!({"username": "bench", "password": "correct horse battery staple"});
        let r = client
            .post(format!("{url}/auth/register"))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 201 {
            return Err(format!("register: {}", r.status()));
        }
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let (c, u, b) = (client.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let r = c.post(format!("{u}/auth/login")).json(&b).send().await;
                    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
                    n += 1;
                }
                n
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.map_err(|e| e.to_string())?;
        }
        let logins = n as f64 / start.elapsed().as_secs_f64();
        stop.cancel();
        Ok::<_, String>((hashes, logins, workers))
    })?;
    println!(
        "login (argon2id m=19 MiB t=2 p=1, {workers} hashing slots, {} HTTP clients):",
        args.clients
    );
    println!("  argon2id verifications alone (baseline)  {hashes:>10.1}/s");
    println!(
        "  POST /auth/login over HTTP                {logins:>10.1}/s  ({:.2} of baseline)",
        logins / hashes
    );
    if let Some(path) = args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({
                "verify_ed25519_per_s": ed25519,
                "verify_jwt_per_s": full,
                "verify_cached_per_s": cached,
                "argon2id_per_s": hashes,
                "login_per_s": logins,
                "hash_slots": workers,
                "clients": args.clients,
            }))?,
        )?;
    }
    Ok(())
}
