//! Running a scenario against a target: accounts, seed files and subscribers first (not
//! measured), the server's `/metrics` read, the load (open or closed loop; steady, ramp or
//! steps, with the capacity search stopping at the first step that breaks the SLO),
//! `/metrics` read again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};
use std::sync::Mutex;

use crate::client::{self, Session, User};
use crate::grpc::Grpc;
use crate::scenario::{Action, Mode, Scenario, Slo};
use crate::schedule::{Profile, Steps};
use crate::stats::{ActionStats, Outcome, Recorder};
use crate::ws::{self, Events};

/// Where the load goes: nothing else is contacted.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`: REST, tus, WebSocket, `/metrics`.
    pub http: String,
    /// `http://host:port` of the gRPC API (bulk actions only).
    pub grpc: Option<String>,
    /// More `/metrics` to read before and after (name, `http://host:port`): each service of
    /// a split deployment, for what each one spent.
    pub metrics: Vec<(String, String)>,
}

/// Server counters at a moment.
pub type Scrape = BTreeMap<String, f64>;

/// One step of a step profile.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub rate: f64,
    /// The step's span (since the start) and the server's counters at both ends.
    pub from: Duration,
    pub to: Duration,
    pub server_before: Scrape,
    pub server_after: Scrape,
    /// This process's CPU seconds over the step.
    pub client_cpu: f64,
    /// Requests due in the step not answered when it was judged.
    pub unanswered: u64,
    /// `Some` once judged against the SLO: `Err(why)` if broken.
    pub verdict: Option<Result<(), String>>,
}

/// What the capacity search found.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// The highest step rate that held the SLO.
    pub held: Option<f64>,
    /// The first step that broke it, and why.
    pub broke: Option<(f64, String)>,
    /// What ran out first at that step (or the last step, if none broke).
    pub saturated: String,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub elapsed: Duration,
    pub recorder: Recorder,
    /// Server counters before and after (name -> value summed over labels).
    pub server_before: Scrape,
    pub server_after: Scrape,
    /// This process's CPU seconds over the load.
    pub client_cpu: f64,
    pub client_cpus: f64,
    pub steps: Vec<StepInfo>,
    pub capacity: Option<Capacity>,
    /// WebSocket (re)connections made, when there were subscribers.
    pub ws_connects: u64,
    /// The `--metrics` services' counters before and after (name, before, after).
    pub services: Vec<(String, Scrape, Scrape)>,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

/// Progress, about once a second.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub requests: u64,
    pub errors: u64,
    /// Completions per second over the last second, and their p99 (ms).
    pub rate: f64,
    pub p99_ms: f64,
    pub in_flight: u64,
    /// The step and its offered rate, with steps.
    pub step: Option<(usize, f64)>,
}

/// This process's CPU seconds (user + system), from `/proc/self/stat`.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The server's counters, summed over labels.
pub async fn scrape(c: &reqwest::Client, target: &str) -> Result<Scrape, String> {
    let text = c
        .get(format!("{target}/metrics"))
        .send()
        .await
        .map_err(|e| format!("/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("/metrics: {e}"))?;
    let mut out = BTreeMap::new();
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
            // The API's own routes: what the load sends (not /metrics, /healthz, /ws).
            if route.starts_with("/api/") || route.starts_with("/auth/") {
                *out.entry("http_requests_total:api".to_string())
                    .or_insert(0.0) += v;
            }
        }
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    Ok(out)
}

/// A 1024x768 PNG, different for each `seed` (gradients and noise: photo-like work for
/// the resizer, and a cache key of its own per user).
fn seed_image(seed: u64) -> Result<Vec<u8>, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let img = image::RgbImage::from_fn(1024, 768, |x, y| {
        let n: u8 = rng.random_range(0..24);
        image::Rgb([
            ((x / 4) as u8).wrapping_add(n),
            ((y / 3) as u8).wrapping_add(n),
            (((x + y) / 7) as u8).wrapping_add(seed as u8),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| format!("seed image: {e}"))?;
    Ok(out.into_inner())
}

async fn upload(
    c: &reqwest::Client,
    target: &str,
    token: &str,
    name: &str,
    body: Vec<u8>,
) -> Result<String, String> {
    let r = c
        .post(format!("{target}/api/upload?name={name}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("seed upload: {e}"))?;
    let f: Value = r.json().await.map_err(|e| format!("seed upload: {e}"))?;
    Ok(f["id"].as_str().ok_or("seed upload: no id")?.to_string())
}

async fn setup_user(
    c: &reqwest::Client,
    target: &str,
    s: &Scenario,
    i: usize,
    run: &str,
) -> Result<User, String> {
    let name = format!("lt-{run}-{i}");
    let body = json!({"username": name, "password": client::PASSWORD});
    let r = c
        .post(format!("{target}/auth/register"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("register: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("register {name}: {}", r.status()));
    }
    let (token, ttl, _) = client::login(c, target, &name)
        .await
        .map_err(|e| format!("login: {e}"))?;
    let token_at = Instant::now();
    let seed = client::content(i as u64, 0, s.users.seed_size.0 as usize).to_vec();
    let file = upload(c, target, &token, "seed.bin", seed).await?;
    let image = if s
        .actions
        .iter()
        .flat_map(Action::all)
        .any(|a| matches!(a, Action::Transform { .. }))
    {
        let png = tokio::task::spawn_blocking(move || seed_image(i as u64))
            .await
            .map_err(|e| e.to_string())??;
        Some(upload(c, target, &token, "seed.png", png).await?)
    } else {
        None
    };
    Ok(User {
        index: i,
        name,
        token,
        token_at,
        ttl,
        files: vec![file],
        image,
    })
}

/// Run `s` against `target`. `stop` ends the load early (Ctrl-C): what is in flight
/// finishes, the report covers what ran. `capacity` forces the capacity search of a step
/// profile. `progress` is called about once a second.
pub async fn run(
    s: &Scenario,
    target: &Target,
    capacity: bool,
    stop: Arc<AtomicBool>,
    progress: impl Fn(&Progress) + Send + Sync + 'static,
) -> Result<Report, String> {
    let http_target = target.http.trim_end_matches('/').to_string();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(4096)
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    // Accounts, 16 at a time.
    let mut users = Vec::new();
    for batch in (0..s.users.count as usize).collect::<Vec<_>>().chunks(16) {
        let made = futures_util::future::join_all(
            batch
                .iter()
                .map(|&i| setup_user(&c, &http_target, s, i, &run_id)),
        )
        .await;
        for u in made {
            users.push(Arc::new(Mutex::new(u?)));
        }
    }
    let grpc = if s.actions.iter().any(Action::grpc) {
        let address = target
            .grpc
            .as_deref()
            .ok_or("the scenario has gRPC actions: give --grpc")?;
        let token = users[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .token
            .clone();
        let g = Grpc::connect(address, &token).await?;
        if s.actions
            .iter()
            .flat_map(Action::all)
            .any(|a| matches!(a, Action::GrpcUpload { duplicate, .. } if *duplicate > 0.0))
        {
            for u in &users {
                let (token, index) = {
                    let u = u.lock().unwrap_or_else(|e| e.into_inner());
                    (u.token.clone(), u.index)
                };
                g.upload_pool(&token, index as u64).await?;
            }
        }
        Some(g)
    } else {
        None
    };
    let l = &s.load;
    let steps = l.steps.as_ref().map(|st| Steps {
        add: st.add,
        every: st.every.0,
        until: st.until,
    });
    let search = l.steps.as_ref().is_some_and(|st| st.search) || capacity && steps.is_some();
    if capacity && steps.is_none() {
        return Err("--capacity needs a step profile ([load.steps])".into());
    }
    if search && s.slo.is_none() {
        return Err("the capacity search needs an [slo]".into());
    }
    let recorder = Arc::new(std::sync::Mutex::new(match steps {
        Some(st) => Recorder::with_steps(st.every),
        None => Recorder::default(),
    }));
    let clock = Arc::new(client::Clock::default());
    let events = (s.users.subscribers > 0).then(|| {
        Arc::new(Events::new(
            s.users.subscribers,
            clock.clone(),
            recorder.clone(),
        ))
    });
    let session = Arc::new(Session {
        http: c.clone(),
        target: http_target.clone(),
        grpc,
        users,
        events: events.clone(),
        clock: clock.clone(),
        recorder: recorder.clone(),
    });
    let mut sockets = Vec::new();
    if let Some(ev) = &events {
        let url = format!("{}/ws", http_target.replacen("http", "ws", 1));
        for u in 0..session.users.len() {
            sockets.extend(ws::subscribe(session.clone(), ev.clone(), u, url.clone()).await?);
        }
    }
    let before = scrape(&c, &http_target).await?;
    let mut services = Vec::new();
    for (name, url) in &target.metrics {
        let url = url.trim_end_matches('/');
        let b = scrape(&c, url)
            .await
            .map_err(|e| format!("--metrics {name}: {e}"))?;
        services.push((name.clone(), b, Scrape::new()));
    }
    let cpu_before = own_cpu_seconds();
    // The clock starts now (set-up took its time).
    let start = Instant::now();
    clock.start(start);
    let total_weight: u32 = s.actions.iter().map(Action::weight).sum();
    let actions = Arc::new(s.actions.clone());
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    // The capacity search ends the load at the first broken step.
    let search_over = Arc::new(AtomicBool::new(false));
    let profile = Profile {
        rate: l.rate,
        ramp: l.ramp.0,
        duration: l.duration.0,
        steps,
    };
    let step_log: Arc<std::sync::Mutex<Vec<StepInfo>>> = Arc::default();
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
    let record = {
        let (recorder, completed) = (recorder.clone(), completed.clone());
        move |name: &'static str, due: Duration, o: &Outcome| {
            let done = start.elapsed();
            completed.fetch_add(1, Ordering::Relaxed);
            recorder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(name, due, done, o);
        }
    };
    // About once a second: progress; with steps, each step's end scraped and judged.
    let ticker = {
        let (recorder, stop, search_over) = (recorder.clone(), stop.clone(), search_over.clone());
        let (issued, completed, step_log) = (issued.clone(), completed.clone(), step_log.clone());
        let (c, http_target, slo) = (c.clone(), http_target.clone(), s.slo.clone());
        let mut last = before.clone();
        let mut last_cpu = cpu_before;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let now = start.elapsed();
                if let Some(st) = steps {
                    let k = step_log.lock().unwrap_or_else(|e| e.into_inner()).len();
                    let end = (st.every * (k as u32 + 1)).min(profile.duration);
                    // A step is judged a little after its end, when what was due in it
                    // has (mostly) come back.
                    let grace = (st.every / 4).min(Duration::from_secs(5));
                    let started = st.every * (k as u32) < profile.duration;
                    if started && now >= end + grace && !stop.load(Ordering::Relaxed) {
                        let after = scrape(&c, &http_target).await.unwrap_or_default();
                        let cpu = own_cpu_seconds();
                        let mut info = StepInfo {
                            rate: profile.step_rate(k),
                            from: st.every * k as u32,
                            to: end,
                            server_before: std::mem::replace(&mut last, after.clone()),
                            server_after: after,
                            client_cpu: cpu - last_cpu,
                            unanswered: 0,
                            verdict: None,
                        };
                        last_cpu = cpu;
                        {
                            let r = recorder.lock().unwrap_or_else(|e| e.into_inner());
                            let done: u64 = r
                                .steps
                                .get(k)
                                .map_or(0, |m| m.values().map(ActionStats::requests).sum());
                            info.unanswered =
                                r.issued.get(k).copied().unwrap_or(0).saturating_sub(done);
                            if let Some(slo) = &slo {
                                let empty = BTreeMap::new();
                                let v =
                                    judge(r.steps.get(k).unwrap_or(&empty), info.unanswered, slo);
                                if v.is_err() && search {
                                    search_over.store(true, Ordering::Relaxed);
                                }
                                info.verdict = Some(v);
                            }
                        }
                        step_log
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(info);
                    }
                }
                if n.is_multiple_of(4) {
                    let r = recorder.lock().unwrap_or_else(|e| e.into_inner());
                    let second = now.as_secs().saturating_sub(1) as usize;
                    let (rate, p99) = r.seconds.get(second).map_or((0.0, 0.0), |s| {
                        (
                            s.requests as f64,
                            s.latency.value_at_quantile(0.99) as f64 / 1000.0,
                        )
                    });
                    let p = Progress {
                        elapsed: now,
                        requests: r.requests(),
                        errors: r.errors(),
                        rate,
                        p99_ms: p99,
                        in_flight: issued
                            .load(Ordering::Relaxed)
                            .saturating_sub(completed.load(Ordering::Relaxed)),
                        step: steps.map(|_| {
                            let k = profile.step_of(now);
                            (k, profile.step_rate(k))
                        }),
                    };
                    drop(r);
                    progress(&p);
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    match l.mode {
        Mode::Open => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(l.max_in_flight as usize));
            let mut rng = SmallRng::seed_from_u64(1);
            let mut i = 0u64;
            while let Some(due) = profile.due(i) {
                if i >= l.max_requests
                    || stop.load(Ordering::Relaxed)
                    || search_over.load(Ordering::Relaxed)
                {
                    break;
                }
                i += 1;
                tokio::time::sleep_until((start + due).into()).await;
                let a = pick(&mut rng, &actions);
                let who = rng.random_range(0..session.users.len());
                recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .issue(due);
                issued.fetch_add(1, Ordering::Relaxed);
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    record(
                        actions[a].name(),
                        due,
                        &Outcome {
                            error: Some("client_saturated".into()),
                            ..Outcome::default()
                        },
                    );
                    continue;
                };
                let (session, actions, record) = (session.clone(), actions.clone(), record.clone());
                let seed = rng.next_u64();
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut rng = SmallRng::seed_from_u64(seed);
                    let o = session.act(&actions[a], who, &mut rng).await;
                    record(actions[a].name(), due, &o);
                });
                // Finished tasks are reaped as we go.
                while tasks.try_join_next().is_some() {}
            }
        }
        Mode::Closed => {
            let end = start + l.duration.0;
            for v in 0..l.virtual_users {
                let (session, actions, record, stop, issued) = (
                    session.clone(),
                    actions.clone(),
                    record.clone(),
                    stop.clone(),
                    issued.clone(),
                );
                let max = l.max_requests;
                tasks.spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(1000 + u64::from(v));
                    let who = v as usize % session.users.len();
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        if issued.fetch_add(1, Ordering::Relaxed) >= max {
                            return;
                        }
                        let a = pick(&mut rng, &actions);
                        let due = start.elapsed();
                        let o = session.act(&actions[a], who, &mut rng).await;
                        record(actions[a].name(), due, &o);
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let client_cpu = own_cpu_seconds() - cpu_before;
    // Every step that ran is judged (the ticker does it a little after each step's end).
    if let Some(st) = steps {
        let ran = profile.step_of(
            elapsed
                .min(profile.duration)
                .saturating_sub(Duration::from_millis(1)),
        ) + 1;
        let until = Instant::now() + st.every + Duration::from_secs(10);
        while step_log.lock().unwrap_or_else(|e| e.into_inner()).len() < ran
            && !search_over.load(Ordering::Relaxed)
            && !stop.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ticker.abort();
    if let Some(ev) = &events {
        ev.finish(Duration::from_secs(5)).await;
    }
    for t in sockets {
        t.abort();
    }
    let mut after = scrape(&c, &http_target).await?;
    for ((_, url), (name, _, a)) in target.metrics.iter().zip(services.iter_mut()) {
        *a = scrape(&c, url.trim_end_matches('/'))
            .await
            .map_err(|e| format!("--metrics {name}: {e}"))?;
    }
    // The store's totals are recomputed every `picker.stats_interval`: wait (a little) for
    // a set taken after the load.
    let end_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let settle = Instant::now() + Duration::from_secs(35);
    while after.contains_key("engine_stats_timestamp_seconds")
        && after["engine_stats_timestamp_seconds"] < end_wall
        && Instant::now() < settle
        && !stop.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut again = scrape(&c, &http_target).await?;
        for (k, v) in &after {
            // Counters as they were at the load's end; only the store's totals refresh.
            if !k.starts_with("engine_") {
                again.insert(k.clone(), *v);
            }
        }
        after = again;
    }
    let recorder = std::mem::take(&mut *recorder.lock().unwrap_or_else(|e| e.into_inner()));
    let steps_run = std::mem::take(&mut *step_log.lock().unwrap_or_else(|e| e.into_inner()));
    let client_cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let capacity = search.then(|| {
        find_capacity(
            &steps_run,
            &recorder,
            client_cpus,
            same_machine(&http_target),
        )
    });
    Ok(Report {
        scenario: s.name.clone(),
        target: http_target,
        elapsed,
        recorder,
        server_before: before,
        server_after: after,
        client_cpu,
        client_cpus,
        steps: steps_run,
        capacity,
        ws_connects: events.map_or(0, |e| e.connects.load(Ordering::Relaxed)),
        services,
        interrupted: stop.load(Ordering::Relaxed),
    })
}

/// Whether a step (or run) held `slo`: every action's p99, the error rate, and what never
/// came back (more than 1% unanswered when judged breaks it).
pub fn judge(
    actions: &BTreeMap<&'static str, ActionStats>,
    unanswered: u64,
    slo: &Slo,
) -> Result<(), String> {
    let n: u64 = actions.values().map(ActionStats::requests).sum::<u64>() + unanswered;
    let e: u64 = actions.values().map(ActionStats::error_count).sum();
    if n == 0 {
        return Ok(());
    }
    if unanswered as f64 > 0.01 * n as f64 {
        return Err(format!(
            "{unanswered} of {n} requests unanswered at the step's end"
        ));
    }
    let rate = e as f64 / n as f64;
    if rate > slo.error_rate {
        let worst = actions
            .values()
            .flat_map(|a| a.errors.iter())
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.as_str())
            .unwrap_or("");
        return Err(format!(
            "error rate {rate:.4} > {} (mostly {worst})",
            slo.error_rate
        ));
    }
    for (name, a) in actions {
        let p99 = a.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let bound = slo.p99_for(name);
        if p99 > bound {
            return Err(format!("{name} p99 {p99:.1} ms > {bound} ms"));
        }
    }
    Ok(())
}

/// Whether `target` is on this machine (a loopback address).
pub fn same_machine(target: &str) -> bool {
    let host = target
        .split("://")
        .nth(1)
        .unwrap_or(target)
        .split('/')
        .next()
        .unwrap_or("");
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

/// Delta of a counter over a step.
fn delta(a: &Scrape, b: &Scrape, k: &str) -> f64 {
    b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0)
}

/// How busy the server and the client were in `step`: (server CPU share of its CPUs,
/// client CPU share of its CPUs, server CPUs).
pub fn utilisation(step: &StepInfo, client_cpus: f64) -> (f64, f64, f64) {
    let secs = (step.to - step.from).as_secs_f64().max(1e-9);
    let cpus = step
        .server_after
        .get("process_cpus")
        .copied()
        .unwrap_or(1.0)
        .max(1.0);
    let server = delta(
        &step.server_before,
        &step.server_after,
        "process_cpu_seconds_total",
    ) / secs
        / cpus;
    (server, step.client_cpu / secs / client_cpus, cpus)
}

/// The highest rate that held, the first that broke, and what ran out first there.
fn find_capacity(steps: &[StepInfo], r: &Recorder, client_cpus: f64, shared: bool) -> Capacity {
    let held = steps
        .iter()
        .take_while(|s| matches!(s.verdict, Some(Ok(()))))
        .map(|s| s.rate)
        .last();
    let broken_at = steps.iter().position(|s| matches!(s.verdict, Some(Err(_))));
    let broken = broken_at.map(|k| &steps[k]);
    let at = broken_at.or(steps.len().checked_sub(1));
    let saturated = match at {
        None => "nothing measured (no step completed)".to_string(),
        Some(k) => {
            let step = &steps[k];
            let errors: BTreeMap<String, u64> = r.steps.get(k).map_or_else(BTreeMap::new, |m| {
                let mut e = BTreeMap::new();
                for a in m.values() {
                    for (kind, n) in &a.errors {
                        *e.entry(kind.clone()).or_default() += n;
                    }
                }
                e
            });
            saturation(step, &errors, client_cpus, shared)
        }
    };
    Capacity {
        held,
        broke: broken.map(|s| {
            (
                s.rate,
                match &s.verdict {
                    Some(Err(why)) => why.clone(),
                    _ => String::new(),
                },
            )
        }),
        saturated,
    }
}

/// Name what ran out: the client's own limits first (then the numbers say nothing about
/// the server), then the server's CPU, admission limits, the machine they share (`shared`:
/// the target is on this machine).
pub fn saturation(
    step: &StepInfo,
    errors: &BTreeMap<String, u64>,
    client_cpus: f64,
    shared: bool,
) -> String {
    let (server, client, cpus) = utilisation(step, client_cpus);
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let rss = step
        .server_after
        .get("process_resident_memory_bytes")
        .map_or(String::new(), |b| {
            format!(", server memory {:.0} MiB", b / (1u64 << 20) as f64)
        });
    let detail = format!(
        "server CPU {} of {cpus:.0} cores, load generator CPU {} of {client_cpus:.0}{rss}",
        pct(server),
        pct(client)
    );
    let busy: u64 = [
        "http_503",
        "http_429",
        "grpc_unavailable",
        "grpc_resourceexhausted",
    ]
    .iter()
    .filter_map(|k| errors.get(*k))
    .sum();
    let what = if errors.get("client_saturated").copied().unwrap_or(0) > 0 {
        "the load generator's max_in_flight (raise load.max_in_flight)".to_string()
    } else if server >= 0.85 {
        "server CPU".to_string()
    } else if client >= 0.85 {
        "the load generator's CPU (run it on another machine)".to_string()
    } else if busy > 0 {
        format!("server admission limits ({busy} requests refused as busy)")
    } else if shared && server * cpus + client * client_cpus >= 0.85 * client_cpus {
        "the machine's CPU, shared by the server and the load generator".to_string()
    } else {
        "nothing measured at 85%: latency grew first from queueing behind bursts of work \
         (password hashes, uploads) or from waits (disk syncs, locks, the database)"
            .to_string()
    };
    format!("{what} ({detail})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(server_cpu: f64, client_cpu: f64) -> StepInfo {
        let scrape = |cpu: f64| -> Scrape {
            [
                ("process_cpu_seconds_total".to_string(), cpu),
                ("process_cpus".to_string(), 2.0),
            ]
            .into()
        };
        StepInfo {
            rate: 100.0,
            from: Duration::from_secs(10),
            to: Duration::from_secs(20),
            server_before: scrape(5.0),
            server_after: scrape(5.0 + server_cpu * 10.0),
            client_cpu: client_cpu * 10.0,
            unanswered: 0,
            verdict: None,
        }
    }

    #[test]
    fn what_saturated_is_named_from_the_numbers() {
        let none = BTreeMap::new();
        let say = |s: &StepInfo, e: &BTreeMap<String, u64>, shared| saturation(s, e, 2.0, shared);
        // 1.9 of 2 server cores busy.
        assert!(say(&step(1.9, 0.2), &none, false).starts_with("server CPU (server CPU 95% of 2"));
        assert!(say(&step(0.3, 1.8), &none, false).starts_with("the load generator's CPU"));
        assert!(say(&step(1.1, 0.8), &none, true).starts_with("the machine's CPU"));
        assert!(say(&step(1.1, 0.8), &none, false).starts_with("nothing measured at 85%"));
        let busy = [("http_503".to_string(), 7)].into();
        assert!(say(&step(0.5, 0.2), &busy, false).contains("7 requests refused"));
        let own = [("client_saturated".to_string(), 1)].into();
        assert!(say(&step(1.9, 0.2), &own, false).contains("max_in_flight"));
        assert!(same_machine("http://127.0.0.1:8080"));
        assert!(!same_machine("http://fms.example.com"));
    }

    #[test]
    fn a_step_is_judged_on_latency_errors_and_what_never_came_back() {
        let mut slo = Slo {
            p99_ms: 100.0,
            p99_ms_for: Default::default(),
            error_rate: 0.01,
        };
        let mut r = Recorder::default();
        let ok = Outcome::default();
        for i in 0..200u64 {
            r.record(
                "get",
                Duration::ZERO,
                Duration::from_millis(10 + i % 5),
                &ok,
            );
        }
        assert_eq!(judge(&r.actions, 0, &slo), Ok(()));
        let e = judge(&r.actions, 5, &slo).unwrap_err();
        assert!(e.contains("5 of 205 requests unanswered"), "{e}");
        let bad = Outcome {
            error: Some("http_503".into()),
            ..Outcome::default()
        };
        for _ in 0..5 {
            r.record("get", Duration::ZERO, Duration::from_millis(1), &bad);
        }
        let e = judge(&r.actions, 0, &slo).unwrap_err();
        assert!(e.contains("mostly http_503"), "{e}");
        let mut slow = Recorder::default();
        for _ in 0..100 {
            slow.record("put", Duration::ZERO, Duration::from_millis(300), &ok);
        }
        assert!(
            judge(&slow.actions, 0, &slo)
                .unwrap_err()
                .starts_with("put p99 300")
        );
        slo.p99_ms_for.insert("put".into(), 500.0);
        assert_eq!(judge(&slow.actions, 0, &slo), Ok(()), "its own bound");
    }
}
