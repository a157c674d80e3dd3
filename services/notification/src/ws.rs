//! `GET /ws` (the socket) and `POST /ws/ticket` (a one-use, 30-second ticket for browsers,
//! which cannot set an `Authorization` header on a WebSocket).
//!
//! Frames from the server are JSON text: events (`{"id":7,"type":"file.uploaded",...}`), and
//! `{"type":"gap",...}` when events the client asked for are past the retention. Close codes:
//! 4001 token expired or revoked, 4008 too slow (send queue full), 4000 silent too long,
//! 1013 too many connections, 1011 server error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fms_auth::verify::Authenticator;
use fms_platform::ApiError;
use serde_json::json;

use crate::{Delivered, Notifier};

/// How long a ticket is good for.
const TICKET_TTL: Duration = Duration::from_secs(30);
/// Largest frame a client may send.
const MAX_CLIENT_FRAME: usize = 4096;

struct Ws {
    n: Arc<Notifier>,
    auth: Arc<Authenticator>,
    /// ticket -> (access token, expiry)
    tickets: std::sync::Mutex<HashMap<String, (String, Instant)>>,
}

type Svc = State<Arc<Ws>>;

/// The routes: `/ws` and `/ws/ticket`.
pub fn routes(n: Arc<Notifier>, auth: Arc<Authenticator>) -> Router {
    let state = Arc::new(Ws {
        n,
        auth,
        tickets: std::sync::Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/ws", get(upgrade))
        .route("/ws/ticket", post(ticket))
        .with_state(state)
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn unauthorized(m: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
}

async fn ticket(State(ws): Svc, h: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let token = bearer(&h).ok_or_else(|| unauthorized("a bearer token is required"))?;
    ws.auth
        .authenticate_token(token)
        .await
        .map_err(|_| unauthorized("the token is not valid"))?;
    let t = uuid::Uuid::new_v4().simple().to_string();
    let now = Instant::now();
    if let Ok(mut map) = ws.tickets.lock() {
        map.retain(|_, (_, exp)| *exp > now);
        if map.len() >= 100_000 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                "too many tickets outstanding; retry shortly",
            ));
        }
        map.insert(t.clone(), (token.to_string(), now + TICKET_TTL));
    }
    Ok(Json(
        json!({"ticket": t, "expires_in": TICKET_TTL.as_secs()}),
    ))
}

#[derive(serde::Deserialize)]
struct Params {
    /// The last event id the client saw (resume after it).
    last_event_id: Option<u64>,
    ticket: Option<String>,
}

async fn upgrade(
    State(ws): Svc,
    h: HeaderMap,
    Query(q): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if let Some(origin) = h.get("origin") {
        let origin = origin.to_str().unwrap_or("");
        let allowed = &ws.n.cfg.allowed_origins;
        if !allowed.iter().any(|a| a == "*" || a == origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this Origin may not open the socket (notification.allowed_origins)",
            ));
        }
    }
    let token = match (bearer(&h), &q.ticket) {
        (Some(t), _) => t.to_string(),
        (None, Some(t)) => {
            let entry = ws.tickets.lock().ok().and_then(|mut m| m.remove(t));
            match entry {
                Some((token, exp)) if exp > Instant::now() => token,
                _ => return Err(unauthorized("the ticket is unknown, used or expired")),
            }
        }
        (None, None) => {
            return Err(unauthorized(
                "a bearer token (or a ticket from POST /ws/ticket) is required",
            ));
        }
    };
    let claims = ws
        .auth
        .authenticate_token(&token)
        .await
        .map_err(|_| unauthorized("the token is not valid"))?;
    let last = q.last_event_id.or_else(|| {
        h.get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    let ws = ws.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        // Clients send next to nothing and events are small: the library's 128 KiB read and
        // write buffers per socket would be most of a socket's memory.
        .read_buffer_size(8 << 10)
        .write_buffer_size(16 << 10)
        .on_upgrade(move |socket| async move {
            let user = claims.sub.clone();
            session(socket, ws, token, claims.sub, claims.exp, last).await;
            tracing::debug!(%user, "socket closed");
        })
        .into_response())
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Write event `e` to `user`'s socket if the user may still be told (access re-check).
/// `Ok(false)`: the socket is gone; `Err`: close with this code (access undecidable: the
/// client resumes later and the event is checked again).
async fn forward(
    socket: &mut WebSocket,
    n: &Notifier,
    user: &str,
    e: &Delivered,
) -> Result<bool, (u16, &'static str)> {
    match n.may_deliver(user, e).await {
        Ok(true) => Ok(send_text(socket, e.json()).await),
        Ok(false) => Ok(true),
        Err(why) => {
            tracing::warn!(error = %why, "access re-check failed; closing the socket");
            Err((
                1011,
                "permission service unavailable; reconnect with last_event_id",
            ))
        }
    }
}

/// One socket: catch up from `last`, then live events, heartbeats and token checks.
async fn session(
    mut socket: WebSocket,
    ws: Arc<Ws>,
    token: String,
    user: String,
    exp: u64,
    last: Option<u64>,
) {
    let n = ws.n.clone();
    let Some((id, mut rx)) = n.attach(&user) else {
        close(socket, 1013, "too many connections").await;
        return;
    };
    let reason = run(&mut socket, &ws, &mut rx, &token, &user, exp, last).await;
    n.detach(&user, id);
    if let Some((code, why)) = reason {
        close(socket, code, why).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    socket: &mut WebSocket,
    ws: &Ws,
    rx: &mut tokio::sync::mpsc::Receiver<Arc<Delivered>>,
    token: &str,
    user: &str,
    exp: u64,
    last: Option<u64>,
) -> Option<(u16, &'static str)> {
    let n = &ws.n;
    // Registered first, then the bounds: nothing published from now on can be missed.
    let (first, newest) = match n.bounds(user).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "event history unavailable");
            return Some((1011, "event history unavailable"));
        }
    };
    let mut sent = match last {
        None => newest,
        Some(l) if l > newest => {
            let gap = json!({"type": "gap", "reason": "unknown_id", "last_event_id": l, "next": newest + 1});
            if !send_text(socket, gap.to_string()).await {
                return None;
            }
            newest
        }
        Some(l) => {
            if let Some(f) = first
                && l + 1 < f
            {
                // Events l+1 .. f-1 are past the retention: say so, then send what is kept.
                let gap = json!({"type": "gap", "reason": "retention", "from": l + 1, "to": f - 1});
                if !send_text(socket, gap.to_string()).await {
                    return None;
                }
            } else if first.is_none() && l < newest {
                let gap =
                    json!({"type": "gap", "reason": "retention", "from": l + 1, "to": newest});
                if !send_text(socket, gap.to_string()).await {
                    return None;
                }
                return live(socket, ws, rx, token, user, exp, newest).await;
            }
            l
        }
    };
    // Catch up from the history. What arrives live meanwhile is in the history too: drop it
    // before each page (a copy is only queued after its event is stored).
    loop {
        while rx.try_recv().is_ok() {}
        let page = match n.replay(user, sent).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "event history unavailable");
                return Some((1011, "event history unavailable"));
            }
        };
        if page.is_empty() {
            break;
        }
        for e in page {
            match forward(socket, n, user, &e).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(why) => return Some(why),
            }
            sent = e.id;
        }
    }
    live(socket, ws, rx, token, user, exp, sent).await
}

#[allow(clippy::too_many_arguments)]
async fn live(
    socket: &mut WebSocket,
    ws: &Ws,
    rx: &mut tokio::sync::mpsc::Receiver<Arc<Delivered>>,
    token: &str,
    user: &str,
    exp: u64,
    mut sent: u64,
) -> Option<(u16, &'static str)> {
    let beat = ws.n.cfg.heartbeat.0.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(beat);
    ticker.tick().await;
    let mut heard = Instant::now();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expires = tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now_s)));
    tokio::pin!(expires);
    loop {
        tokio::select! {
            push = rx.recv() => match push {
                Some(e) => {
                    if e.id > sent + 1 {
                        // A number was skipped (a lost Redis message): fetch it first.
                        while sent + 1 < e.id {
                            let page = match ws.n.replay(user, sent).await {
                                Ok(p) => p,
                                Err(_) => return Some((1011, "event history unavailable")),
                            };
                            let Some(last) = page.last().map(|p| p.id) else { break };
                            for old in page.into_iter().filter(|p| p.id < e.id) {
                                match forward(socket, &ws.n, user, &old).await {
                                    Ok(true) => {}
                                    Ok(false) => return None,
                                    Err(why) => return Some(why),
                                }
                                sent = old.id;
                            }
                            if last >= e.id {
                                break;
                            }
                        }
                    }
                    if e.id > sent {
                        match forward(socket, &ws.n, user, &e).await {
                            Ok(true) => {}
                            Ok(false) => return None,
                            Err(why) => return Some(why),
                        }
                        sent = e.id;
                    }
                }
                None => {
                    // Dropped by the publisher: the queue was full.
                    return Some((4008, "too slow: send queue full; reconnect with last_event_id"));
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None => return None,
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(_)) => return None,
            },
            _ = ticker.tick() => {
                if heard.elapsed() > beat * 3 {
                    return Some((4000, "silent too long"));
                }
                if ws.auth.authenticate_token(token).await.is_err() {
                    return Some((4001, "token expired or revoked"));
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return None;
                }
            }
            _ = &mut expires => return Some((4001, "token expired or revoked")),
        }
    }
}
