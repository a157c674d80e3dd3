//! WebSocket subscribers: `users.subscribers` sockets per user on `/ws`, each reading the
//! user's events. Every file a measured action uploads should reach each of its owner's
//! sockets as `file.uploaded`; the delay from the upload's answer to the event's arrival is
//! recorded as the action `ws_event` (an event that beats the answer counts as 0), and an
//! event still missing after the run as the error `event_missing`.
//!
//! A socket that closes (token expiry `4001`, a restart) reconnects with the token of the
//! moment and its last event id, so nothing is missed in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::{Clock, Session};
use crate::stats::{Outcome, Recorder};

pub const ACTION: &str = "ws_event";

#[derive(Debug)]
enum Pending {
    /// The upload was answered at `at`; `waiting` sockets have not seen the event.
    Answered { at: Duration, waiting: u32 },
    /// Events that came before the upload's answer.
    Early(Vec<Duration>),
}

/// What the subscribers are waiting for.
pub struct Events {
    per_user: u32,
    clock: Arc<Clock>,
    recorder: Arc<Mutex<Recorder>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Sockets open now, and (re)connections made.
    pub open: AtomicU64,
    pub connects: AtomicU64,
    stop: AtomicBool,
}

impl Events {
    pub fn new(per_user: u32, clock: Arc<Clock>, recorder: Arc<Mutex<Recorder>>) -> Events {
        Events {
            per_user,
            clock,
            recorder,
            pending: Mutex::new(HashMap::new()),
            open: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn record(&self, due: Duration, done: Duration, error: Option<&str>) {
        let o = Outcome {
            error: error.map(str::to_string),
            ..Outcome::default()
        };
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(ACTION, due, done.max(due), &o);
    }

    /// User `_user`'s upload of `file` was answered at `at` (since the start).
    pub fn expect(&self, file: &str, _user: usize, at: Duration) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let early = match p.remove(file) {
            Some(Pending::Early(v)) => v,
            _ => Vec::new(),
        };
        for _ in &early {
            self.record(at, at, None);
        }
        let waiting = self.per_user.saturating_sub(early.len() as u32);
        if waiting > 0 {
            p.insert(file.to_string(), Pending::Answered { at, waiting });
        }
    }

    fn arrived(&self, file: &str) {
        let now = self.clock.elapsed();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_mut(file) {
            Some(Pending::Answered { at, waiting }) => {
                let at = *at;
                *waiting -= 1;
                if *waiting == 0 {
                    p.remove(file);
                }
                drop(p);
                self.record(at, now, None);
            }
            Some(Pending::Early(v)) => v.push(now),
            // Not (yet) known: a set-up upload, or one whose answer is still on its way.
            None => {
                p.insert(file.to_string(), Pending::Early(vec![now]));
            }
        }
    }

    /// Events still expected.
    fn waiting(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| match p {
                Pending::Answered { waiting, .. } => u64::from(*waiting),
                Pending::Early(_) => 0,
            })
            .sum()
    }

    /// Wait up to `grace` for the events still expected; count the rest as missing; close
    /// the sockets.
    pub async fn finish(&self, grace: Duration) {
        let until = Instant::now() + grace;
        while self.waiting() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let now = self.clock.elapsed();
        let missing: Vec<Duration> = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.drain()
                .flat_map(|(_, v)| match v {
                    Pending::Answered { at, waiting } => vec![at; waiting as usize],
                    Pending::Early(_) => Vec::new(),
                })
                .collect()
        };
        for at in missing {
            self.record(at, now, Some("event_missing"));
        }
    }
}

/// Open user `user`'s sockets; they live until [`Events::finish`]. Returns when all are
/// connected once (or failed: the error).
pub async fn subscribe(
    session: Arc<Session>,
    events: Arc<Events>,
    user: usize,
    ws_url: String,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for _ in 0..events.per_user {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (session, events, url) = (session.clone(), events.clone(), ws_url.clone());
        tasks.push(tokio::spawn(async move {
            socket(session, events, user, url, Some(ready_tx)).await;
        }));
        ready_rx
            .await
            .map_err(|_| "a subscriber ended before connecting".to_string())??;
    }
    Ok(tasks)
}

async fn socket(
    session: Arc<Session>,
    events: Arc<Events>,
    user: usize,
    ws_url: String,
    mut ready: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
) {
    let mut last_id: Option<u64> = None;
    let mut failures = 0u32;
    while !events.stop.load(Ordering::Relaxed) {
        let Some(token) = session.current_token(user).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let url = match last_id {
            Some(id) => format!("{ws_url}?last_event_id={id}"),
            None => ws_url.clone(),
        };
        let connected = async {
            let mut req = url.into_client_request().map_err(|e| e.to_string())?;
            let v = format!("Bearer {token}").parse().map_err(|_| "bad token")?;
            req.headers_mut().insert("authorization", v);
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(req),
            )
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
        }
        .await;
        let (mut ws, _) = match connected {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(format!("WebSocket {ws_url}: {e}")));
                    return;
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100 << failures.min(5))).await;
                continue;
            }
        };
        failures = 0;
        events.connects.fetch_add(1, Ordering::Relaxed);
        events.open.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if events.stop.load(Ordering::Relaxed) { break; }
                    continue;
                }
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                        continue;
                    };
                    if let Some(id) = v["id"].as_u64() {
                        last_id = Some(id);
                    }
                    if v["type"] == "file.uploaded"
                        && let Some(f) = v["data"]["file_id"].as_str()
                    {
                        events.arrived(f);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        events.open.fetch_sub(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
    }
}
