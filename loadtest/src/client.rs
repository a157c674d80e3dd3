//! What one simulated user does, over fms's public interfaces: REST (upload, download,
//! list, login, share, transform, import), tus with interruptions, and the gRPC bulk API
//! ([`crate::grpc`]). Each action returns an [`Outcome`]; the caller times it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};
use std::sync::Mutex;

use crate::grpc::Grpc;
use crate::scenario::{Action, Size};
use crate::stats::{Outcome, Recorder};
use crate::ws::Events;

pub const PASSWORD: &str = "load test password 1";

/// One account of the population.
#[derive(Debug, Clone)]
pub struct User {
    pub index: usize,
    pub name: String,
    pub token: String,
    /// When `token` was issued and how long it lives.
    pub token_at: Instant,
    pub ttl: Duration,
    /// Files it may download (its seed file, what it uploaded, what was shared with it).
    pub files: Vec<String>,
    /// Its seed image (when the scenario transforms).
    pub image: Option<String>,
}

/// Everything the actions share.
pub struct Session {
    pub http: reqwest::Client,
    pub target: String,
    pub grpc: Option<Grpc>,
    pub users: Vec<Arc<Mutex<User>>>,
    /// Set when the scenario has WebSocket subscribers.
    pub events: Option<Arc<Events>>,
    /// The run's clock (started when the load starts, after the set-up).
    pub clock: Arc<Clock>,
    /// Where a session's steps are recorded.
    pub recorder: Arc<Mutex<Recorder>>,
}

/// The run's start, set once the set-up is over; until then time stands at 0.
#[derive(Debug, Default)]
pub struct Clock(std::sync::OnceLock<Instant>);

impl Clock {
    pub fn start(&self, at: Instant) {
        let _ = self.0.set(at);
    }

    pub fn elapsed(&self) -> Duration {
        self.0.get().map_or(Duration::ZERO, Instant::elapsed)
    }
}

/// The kind of a failed request, as the report counts it.
pub fn error_kind(e: &reqwest::Error) -> String {
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

/// `len` bytes of the pseudo-random content `seed` names, from offset `at`: the same bytes
/// whenever asked (a resumed upload sends what it would have sent). 64 KiB blocks, each
/// from its own generator.
pub fn content(seed: u64, at: u64, len: usize) -> Bytes {
    const BLOCK: u64 = 64 << 10;
    let mut out = Vec::with_capacity(len);
    let mut pos = at;
    let end = at + len as u64;
    let mut block = vec![0u8; BLOCK as usize];
    while pos < end {
        let b = pos / BLOCK;
        SmallRng::seed_from_u64(seed ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .fill_bytes(&mut block);
        let from = (pos - b * BLOCK) as usize;
        let to = ((end - b * BLOCK).min(BLOCK)) as usize;
        out.extend_from_slice(&block[from..to]);
        pos = b * BLOCK + to as u64;
    }
    Bytes::from(out)
}

/// `s` as a query-string value: what would end or change it escaped, the rest (`/`, `:`,
/// `=`, `,`, which the operation language uses) as it is.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'/'
            | b':'
            | b'='
            | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A size from the scenario's distribution.
pub fn pick_size(size: &Size, rng: &mut SmallRng) -> u64 {
    let u: f64 = rng.random();
    // Box-Muller: a standard normal from two uniforms.
    let (a, b): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
    size.pick(u, z)
}

/// Send `req` (one HTTP request, counted) and take its answer: the status checked, the
/// body read and counted (not parsed).
async fn call(o: &mut Outcome, req: reqwest::RequestBuilder) -> Option<Bytes> {
    o.http_requests += 1;
    let r = match req
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
    {
        Ok(r) => r,
        Err(e) => {
            o.error = Some(error_kind(&e));
            return None;
        }
    };
    match r.bytes().await {
        Ok(b) => {
            o.bytes_received += b.len() as u64;
            Some(b)
        }
        Err(e) => {
            o.error = Some(error_kind(&e));
            None
        }
    }
}

/// A JSON answer (`Null` if it is not JSON).
fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// Log in as `name`: (token, lifetime).
pub async fn login(
    http: &reqwest::Client,
    target: &str,
    name: &str,
) -> Result<(String, Duration, usize), reqwest::Error> {
    let body = json!({"username": name, "password": PASSWORD});
    let r = http
        .post(format!("{target}/auth/login"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let b = r.bytes().await?;
    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    let token = v["access_token"].as_str().unwrap_or_default().to_string();
    let ttl = Duration::from_secs(v["expires_in"].as_u64().unwrap_or(900));
    Ok((token, ttl, b.len()))
}

impl Session {
    /// The user's token, logging in again when it is within a minute of expiring (the
    /// request counts towards the action that needed it).
    async fn token(&self, u: &Mutex<User>, o: &mut Outcome) -> Result<String, String> {
        let (name, token, fresh) = {
            let u = u.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = u.token_at.elapsed() + Duration::from_secs(60) < u.ttl;
            (u.name.clone(), u.token.clone(), fresh)
        };
        if fresh {
            return Ok(token);
        }
        o.http_requests += 1;
        match login(&self.http, &self.target, &name).await {
            Ok((token, ttl, n)) => {
                o.bytes_received += n as u64;
                let mut u = u.lock().unwrap_or_else(|e| e.into_inner());
                u.token = token.clone();
                u.token_at = Instant::now();
                u.ttl = ttl;
                Ok(token)
            }
            Err(e) => Err(error_kind(&e)),
        }
    }

    /// The token of `user`, refreshed if needed (for the WebSocket subscribers).
    pub async fn current_token(&self, user: usize) -> Option<String> {
        let mut o = Outcome::default();
        self.token(&self.users[user], &mut o).await.ok()
    }

    /// A new file of `user`: kept for later downloads, and expected on its sockets.
    async fn uploaded(&self, user: &Mutex<User>, id: &str) {
        let index = {
            let mut u = user.lock().unwrap_or_else(|e| e.into_inner());
            if u.files.len() < 64 {
                u.files.push(id.to_string());
            }
            u.index
        };
        if let Some(ev) = &self.events {
            ev.expect(id, index, self.clock.elapsed());
        }
    }

    /// Do `action` as user `who`.
    pub async fn act(&self, action: &Action, who: usize, rng: &mut SmallRng) -> Outcome {
        let mut o = Outcome::default();
        let user = &self.users[who];
        // One look at the user: its token (fresh enough?) and a file to read.
        let (token, fresh, file, name, image) = {
            let u = user.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = u.token_at.elapsed() + Duration::from_secs(60) < u.ttl;
            let f = u.files[rng.random_range(0..u.files.len())].clone();
            (u.token.clone(), fresh, f, u.name.clone(), u.image.clone())
        };
        let token = if fresh {
            token
        } else {
            match self.token(user, &mut o).await {
                Ok(t) => t,
                Err(kind) => {
                    o.error = Some(kind);
                    return o;
                }
            }
        };
        let t = &self.target;
        match action {
            Action::Upload { size, .. } => {
                let n = pick_size(size, rng) as usize;
                let body = content(rng.next_u64(), 0, n);
                let r = self
                    .http
                    .post(format!("{t}/api/upload?name=lt.bin"))
                    .bearer_auth(&token)
                    .body(body);
                if let Some(v) = call(&mut o, r).await.map(|b| json_of(&b)) {
                    o.bytes_sent = n as u64;
                    o.file_bytes = n as u64;
                    if let Some(id) = v["id"].as_str() {
                        self.uploaded(user, id).await;
                    }
                }
            }
            Action::Download { range, .. } => {
                let mut req = self
                    .http
                    .get(format!("{t}/api/files/{file}/content"))
                    .bearer_auth(&token);
                if *range {
                    req = req.header("range", "bytes=0-65535");
                }
                call(&mut o, req).await;
            }
            Action::List { .. } => {
                let r = self
                    .http
                    .get(format!("{t}/api/files?limit=50"))
                    .bearer_auth(&token);
                call(&mut o, r).await;
            }
            Action::Login { .. } => {
                o.http_requests += 1;
                match login(&self.http, t, &name).await {
                    Ok((_, _, n)) => o.bytes_received += n as u64,
                    Err(e) => o.error = Some(error_kind(&e)),
                }
            }
            Action::TusUpload {
                size,
                chunk,
                interrupt,
                ..
            } => {
                let n = pick_size(size, rng);
                let cut = rng.random::<f64>() < *interrupt;
                if let Some(id) = self.tus(&mut o, &token, n, chunk.0, cut, rng).await {
                    self.uploaded(user, &id).await;
                }
            }
            Action::Share { .. } => self.share(&mut o, &token, &file, who, rng).await,
            Action::Transform { ops, .. } => {
                let Some(image) = image else {
                    o.error = Some("no_seed_image".into());
                    return o;
                };
                let ops = ops.replace("{n}", &rng.random_range(100..164).to_string());
                let r = self
                    .http
                    .get(format!(
                        "{t}/api/files/{image}/content?transform={}",
                        query_escape(&ops)
                    ))
                    .bearer_auth(&token);
                call(&mut o, r).await;
            }
            Action::Import { url, .. } => self.import(&mut o, &token, url).await,
            Action::GrpcUpload {
                size,
                dedup_aware,
                duplicate,
                ..
            } => match &self.grpc {
                Some(g) => {
                    let n = pick_size(size, rng);
                    let who_index = user.lock().unwrap_or_else(|e| e.into_inner()).index;
                    let plan = crate::grpc::Plan {
                        size: n,
                        dedup_aware: *dedup_aware,
                        duplicate: *duplicate,
                        user: who_index as u64,
                        seed: rng.next_u64(),
                    };
                    match g.upload(&token, &plan, &mut o).await {
                        Ok(id) => self.uploaded(user, &id).await,
                        Err(kind) => o.error = Some(kind),
                    }
                }
                None => o.error = Some("no_grpc_target".into()),
            },
            Action::Register { .. } => {
                let body = json!({
                    "username": format!("ltr-{:016x}", rng.next_u64()),
                    "password": PASSWORD,
                });
                let r = self.http.post(format!("{t}/auth/register")).json(&body);
                call(&mut o, r).await;
            }
            Action::Session { steps, .. } => {
                // Each step is recorded on its own (with its requests and bytes); the
                // session's own outcome carries only its first error.
                for step in steps {
                    let due = self.clock.elapsed();
                    let so = Box::pin(self.act(step, who, rng)).await;
                    self.recorder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(step.name(), due, self.clock.elapsed(), &so);
                    if so.error.is_some() {
                        o.error = so.error;
                        break;
                    }
                }
            }
            Action::GrpcDownload { .. } => match &self.grpc {
                Some(g) => {
                    if let Err(kind) = g.download(&token, &file, &mut o).await {
                        o.error = Some(kind);
                    }
                }
                None => o.error = Some("no_grpc_target".into()),
            },
        }
        o
    }

    /// A tus upload of `n` bytes in `PATCH`es of `chunk`; with `cut`, one `PATCH` is broken
    /// off half-way and the upload resumed from the server's `HEAD`. The new file's id.
    async fn tus(
        &self,
        o: &mut Outcome,
        token: &str,
        n: u64,
        chunk: u64,
        cut: bool,
        rng: &mut SmallRng,
    ) -> Option<String> {
        let t = &self.target;
        let seed = rng.next_u64();
        // "lt.bin", base64.
        o.http_requests += 1;
        let r = self
            .http
            .post(format!("{t}/api/uploads"))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", n.to_string())
            .header("upload-metadata", "filename bHQuYmlu")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let mut created_file = None;
        let location = match r {
            Ok(r) => match r.headers().get("location").and_then(|v| v.to_str().ok()) {
                Some(l) if l.starts_with('/') => {
                    // An empty upload is complete at its creation.
                    created_file = r
                        .headers()
                        .get("fms-file-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    format!("{t}{l}")
                }
                Some(l) if l.starts_with(t.as_str()) => l.to_string(),
                // Only the target is ever contacted.
                _ => {
                    o.error = Some("tus_bad_location".into());
                    return None;
                }
            },
            Err(e) => {
                o.error = Some(error_kind(&e));
                return None;
            }
        };
        let patches = n.div_ceil(chunk).max(1);
        let cut_at = cut.then(|| rng.random_range(0..patches));
        let mut offset = 0u64;
        let mut patch = 0u64;
        let mut stalls = 0;
        let mut file_id = created_file;
        let id_of = |h: &reqwest::header::HeaderMap| {
            h.get("fms-file-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        while offset < n {
            let len = (n - offset).min(chunk) as usize;
            let body = content(seed, offset, len);
            o.http_requests += 1;
            let mut req = self
                .http
                .patch(&location)
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset.to_string())
                .header("content-type", "application/offset+octet-stream");
            let broken = cut_at == Some(patch);
            patch += 1;
            if broken {
                // Half the bytes, then the connection drops: a phone going into a tunnel.
                // The pause lets the half reach the server before the connection breaks
                // (an error at once would abort the request before anything was sent).
                use futures_util::StreamExt;
                let half = body.slice(..len / 2);
                let first = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(half)]);
                let then_drop = futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection dropped (simulated)"))
                });
                req = req
                    .header("content-length", len.to_string())
                    .body(reqwest::Body::wrap_stream(first.chain(then_drop)));
                o.bytes_sent += (len / 2) as u64;
                let _ = req.send().await;
                o.resumes += 1;
            } else {
                req = req.body(body);
                match req.send().await {
                    Ok(r) if r.status().as_u16() == 204 => {
                        o.bytes_sent += len as u64;
                        file_id = id_of(r.headers()).or(file_id);
                        offset = r
                            .headers()
                            .get("upload-offset")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(offset + len as u64);
                        continue;
                    }
                    // Someone (the broken request, still being wound up) holds the upload,
                    // or the offset moved: ask where it is.
                    Ok(r) if matches!(r.status().as_u16(), 409 | 423) => {}
                    Ok(r) => {
                        o.error = Some(format!("http_{}", r.status().as_u16()));
                        return None;
                    }
                    Err(e) => {
                        o.error = Some(error_kind(&e));
                        return None;
                    }
                }
            }
            // Where is the upload? (a broken PATCH keeps what arrived, up to its end)
            stalls += 1;
            if stalls > 200 {
                o.error = Some("tus_no_progress".into());
                return None;
            }
            tokio::time::sleep(Duration::from_millis(if stalls > 1 { 20 } else { 0 })).await;
            o.http_requests += 1;
            match self
                .http
                .head(&location)
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0")
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(r) => {
                    file_id = id_of(r.headers()).or(file_id);
                    if let Some(at) = r
                        .headers()
                        .get("upload-offset")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                    {
                        offset = at;
                    }
                }
                Err(e) => {
                    o.error = Some(error_kind(&e));
                    return None;
                }
            }
        }
        o.file_bytes = n;
        if file_id.is_none() {
            o.error = Some("tus_no_file_id".into());
        }
        file_id
    }

    /// Share one of the user's files with another user of the population, who then reads
    /// its record.
    async fn share(
        &self,
        o: &mut Outcome,
        token: &str,
        file: &str,
        who: usize,
        rng: &mut SmallRng,
    ) {
        if self.users.len() < 2 {
            o.error = Some("share_needs_two_users".into());
            return;
        }
        let other = (who + rng.random_range(1..self.users.len())) % self.users.len();
        let other_name = self.users[other]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone();
        let t = &self.target;
        let r = self
            .http
            .post(format!("{t}/api/files/share"))
            .bearer_auth(token)
            .json(&json!({"file_id": file, "with": other_name, "rights": ["read"]}));
        if call(o, r).await.is_none() {
            return;
        }
        let their = match self.token(&self.users[other], o).await {
            Ok(t) => t,
            Err(kind) => {
                o.error = Some(kind);
                return;
            }
        };
        let r = self
            .http
            .get(format!("{t}/api/files/{file}"))
            .bearer_auth(&their);
        if call(o, r).await.is_some() {
            let mut u = self.users[other].lock().unwrap_or_else(|e| e.into_inner());
            if u.files.len() < 64 && !u.files.iter().any(|f| f == file) {
                u.files.push(file.to_string());
            }
        }
    }

    /// Start an import and follow its job to the end.
    async fn import(&self, o: &mut Outcome, token: &str, url: &str) {
        let t = &self.target;
        let r = self
            .http
            .post(format!("{t}/api/files/download"))
            .bearer_auth(token)
            .json(&json!({"url": url}));
        let Some(job) = call(o, r).await.map(|b| json_of(&b)) else {
            return;
        };
        let Some(id) = job["id"].as_str() else {
            o.error = Some("import_no_job".into());
            return;
        };
        let until = Instant::now() + Duration::from_secs(300);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = self
                .http
                .get(format!("{t}/api/jobs/{id}"))
                .bearer_auth(token);
            let Some(v) = call(o, r).await.map(|b| json_of(&b)) else {
                return;
            };
            match v["state"].as_str() {
                Some("completed") => {
                    o.file_bytes = v["bytes_received"].as_u64().unwrap_or(0);
                    return;
                }
                Some("running" | "queued") => {}
                other => {
                    o.error = Some(format!("import_{}", other.unwrap_or("unknown")));
                    return;
                }
            }
        }
        o.error = Some("import_timeout".into());
    }
}
