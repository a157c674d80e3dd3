//! Running a scenario against a target: accounts and seed files first (not measured), the
//! server's `/metrics` read, the load (open or closed loop), `/metrics` read again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::scenario::{Action, Mode, Scenario};
use crate::schedule::Profile;
use crate::stats::{Outcome, Recorder};

/// One account of the population.
#[derive(Debug, Clone)]
struct User {
    name: String,
    token: String,
    /// Files it may download (its seed file and what it uploaded).
    files: Vec<String>,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub elapsed: Duration,
    pub recorder: Recorder,
    /// Server counters before and after (name -> value summed over labels).
    pub server_before: std::collections::BTreeMap<String, f64>,
    pub server_after: std::collections::BTreeMap<String, f64>,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

const PASSWORD: &str = "load test password 1";
const SEED_BYTES: usize = 256 << 10;

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if let Some(s) = e.status() {
        format!("http_{}", s.as_u16())
    } else {
        "transport".into()
    }
}

fn random_bytes(rng: &mut SmallRng, n: usize) -> bytes::Bytes {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    bytes::Bytes::from(v)
}

async fn setup_user(c: &reqwest::Client, target: &str, i: u32, run: &str) -> Result<User, String> {
    let name = format!("lt-{run}-{i}");
    let body = serde_json::json!({"username": name, "password": PASSWORD});
    let r = c
        .post(format!("{target}/auth/register"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("register: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("register {name}: {}", r.status()));
    }
    let r = c
        .post(format!("{target}/auth/login"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("login: {e}"))?;
    let v: Value = r.json().await.map_err(|e| format!("login: {e}"))?;
    let token = v["access_token"]
        .as_str()
        .ok_or("login: no access_token")?
        .to_string();
    let mut rng = SmallRng::seed_from_u64(u64::from(i));
    let r = c
        .post(format!("{target}/api/upload?name=seed.bin"))
        .bearer_auth(&token)
        .body(random_bytes(&mut rng, SEED_BYTES))
        .send()
        .await
        .map_err(|e| format!("seed upload: {e}"))?;
    let f: Value = r.json().await.map_err(|e| format!("seed upload: {e}"))?;
    let id = f["id"].as_str().ok_or("seed upload: no id")?.to_string();
    Ok(User {
        name,
        token,
        files: vec![id],
    })
}

/// The server's counters, summed over labels.
pub async fn scrape(
    c: &reqwest::Client,
    target: &str,
) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let text = c
        .get(format!("{target}/metrics"))
        .send()
        .await
        .map_err(|e| format!("/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("/metrics: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        // Requests per route family as well: the load's own routes.
        if name == "http_requests_total"
            && let Some(route) = key
                .split("route=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
        {
            *out.entry(format!("http_requests_total:{route}"))
                .or_insert(0.0) += v;
            // The API's own routes: what the load sends (not /metrics, /healthz).
            if route.starts_with("/api/") || route.starts_with("/auth/") {
                *out.entry("http_requests_total:api".to_string())
                    .or_insert(0.0) += v;
            }
        }
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    Ok(out)
}

/// One action by `user`.
async fn act(
    c: &reqwest::Client,
    target: &str,
    action: &Action,
    user: &Mutex<User>,
    rng: &mut SmallRng,
) -> Outcome {
    let (token, file, name) = {
        let u = user.lock().await;
        let f = u.files[rng.random_range(0..u.files.len())].clone();
        (u.token.clone(), f, u.name.clone())
    };
    let mut o = Outcome {
        error: None,
        bytes_sent: 0,
        bytes_received: 0,
    };
    let result = match action {
        Action::Upload { size, .. } => {
            let (u, z): (f64, f64) = (rng.random(), {
                // Box-Muller: a standard normal from two uniforms.
                let (a, b): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
            });
            let n = size.pick(u, z) as usize;
            o.bytes_sent = n as u64;
            let body = random_bytes(rng, n);
            match c
                .post(format!("{target}/api/upload?name=lt.bin"))
                .bearer_auth(&token)
                .body(body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) => {
                        if let Some(id) = v["id"].as_str() {
                            let mut u = user.lock().await;
                            if u.files.len() < 64 {
                                u.files.push(id.to_string());
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        Action::Download { range, .. } => {
            let mut req = c
                .get(format!("{target}/api/files/{file}/content"))
                .bearer_auth(&token);
            if *range {
                req = req.header("range", "bytes=0-65535");
            }
            match req
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(r) => r.bytes().await.map(|b| o.bytes_received = b.len() as u64),
                Err(e) => Err(e),
            }
        }
        Action::List { .. } => match c
            .get(format!("{target}/api/files?limit=50"))
            .bearer_auth(&token)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
        {
            Ok(r) => r.bytes().await.map(|b| o.bytes_received = b.len() as u64),
            Err(e) => Err(e),
        },
        Action::Login { .. } => {
            let body = serde_json::json!({"username": name, "password": PASSWORD});
            match c
                .post(format!("{target}/auth/login"))
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(r) => r.bytes().await.map(|b| o.bytes_received = b.len() as u64),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        o.error = Some(error_kind(&e));
    }
    o
}

/// Run `s` against `target` (`http://host:port`). `stop` ends the load early (Ctrl-C): what
/// is in flight finishes, the report covers what ran. `progress` is called about once a
/// second with (elapsed, requests, errors).
pub async fn run(
    s: &Scenario,
    target: &str,
    stop: Arc<AtomicBool>,
    progress: impl Fn(Duration, u64, u64) + Send + Sync + 'static,
) -> Result<Report, String> {
    let target = target.trim_end_matches('/').to_string();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut users = Vec::new();
    for i in 0..s.users.count {
        users.push(Arc::new(Mutex::new(
            setup_user(&c, &target, i, &run_id).await?,
        )));
    }
    let users = Arc::new(users);
    let before = scrape(&c, &target).await?;
    let recorder = Arc::new(std::sync::Mutex::new(Recorder::default()));
    let total_weight: u32 = s.actions.iter().map(Action::weight).sum();
    let actions = Arc::new(s.actions.clone());
    let start = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let pick = move |rng: &mut SmallRng, actions: &[Action]| -> usize {
        let mut w = rng.random_range(0..total_weight);
        for (i, a) in actions.iter().enumerate() {
            if w < a.weight() {
                return i;
            }
            w -= a.weight();
        }
        actions.len() - 1
    };
    // Progress about once a second.
    let ticker = {
        let (recorder, stop) = (recorder.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let (n, e) = {
                    let r = recorder.lock().unwrap_or_else(|e| e.into_inner());
                    (r.requests(), r.errors())
                };
                progress(start.elapsed(), n, e);
            }
        })
    };
    let record = {
        let recorder = recorder.clone();
        move |name: &'static str, due: Duration, o: &Outcome| {
            let done = start.elapsed();
            recorder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(name, due, done, o);
        }
    };
    let l = &s.load;
    let mut tasks = tokio::task::JoinSet::new();
    match l.mode {
        Mode::Open => {
            let profile = Profile {
                rate: l.rate,
                ramp: l.ramp.0,
                duration: l.duration.0,
            };
            let in_flight = Arc::new(tokio::sync::Semaphore::new(l.max_in_flight as usize));
            let mut rng = SmallRng::seed_from_u64(1);
            let mut i = 0u64;
            while let Some(due) = profile.due(i) {
                if i >= l.max_requests || stop.load(Ordering::Relaxed) {
                    break;
                }
                i += 1;
                tokio::time::sleep_until((start + due).into()).await;
                let a = pick(&mut rng, &actions);
                let user = users[rng.random_range(0..users.len())].clone();
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    record(
                        actions[a].name(),
                        due,
                        &Outcome {
                            error: Some("client_saturated".into()),
                            bytes_sent: 0,
                            bytes_received: 0,
                        },
                    );
                    continue;
                };
                let (c, target, actions, record) =
                    (c.clone(), target.clone(), actions.clone(), record.clone());
                let seed = rng.next_u64();
                issued.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut rng = SmallRng::seed_from_u64(seed);
                    let o = act(&c, &target, &actions[a], &user, &mut rng).await;
                    record(actions[a].name(), due, &o);
                });
                // Finished tasks are reaped as we go.
                while tasks.try_join_next().is_some() {}
            }
        }
        Mode::Closed => {
            let end = start + l.duration.0;
            for v in 0..l.virtual_users {
                let (c, target, actions, record, users, stop, issued) = (
                    c.clone(),
                    target.clone(),
                    actions.clone(),
                    record.clone(),
                    users.clone(),
                    stop.clone(),
                    issued.clone(),
                );
                let max = l.max_requests;
                tasks.spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(1000 + u64::from(v));
                    let user = users[v as usize % users.len()].clone();
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        if issued.fetch_add(1, Ordering::Relaxed) >= max {
                            return;
                        }
                        let a = pick(&mut rng, &actions);
                        let due = start.elapsed();
                        let o = act(&c, &target, &actions[a], &user, &mut rng).await;
                        record(actions[a].name(), due, &o);
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    ticker.abort();
    let after = scrape(&c, &target).await?;
    let recorder = std::mem::take(&mut *recorder.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Report {
        scenario: s.name.clone(),
        target,
        elapsed,
        recorder,
        server_before: before,
        server_after: after,
        interrupted: stop.load(Ordering::Relaxed),
    })
}
