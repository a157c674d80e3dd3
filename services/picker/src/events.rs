//! Events for the notification service (`file.uploaded`, `file.shared`, `file.deleted`).
//!
//! Publishing never blocks or fails a request: events go into a bounded queue drained by
//! one task that calls `fms.notification.v1.NotificationService/Publish`, in order. A call
//! that fails for want of the service (down, restarting, slow) is retried with backoff for
//! up to ~5 minutes — Publish is idempotent by event id, so a retry never shows twice — while
//! later events wait in the queue. A full queue, an event the service refuses as invalid, a
//! service gone longer than the retries, or none configured: the event is dropped and counted
//! (`picker_events_dropped_total{reason}`), the request goes on. Events still queued when
//! the process dies are lost (no outbox yet).

use std::time::Duration;

use fms_proto::notification::v1 as pb;
use pb::notification_service_client::NotificationServiceClient;
use serde_json::Value;
use tokio::sync::mpsc;

/// Events waiting for the notification service, at most.
const QUEUE: usize = 4096;
/// How long one Publish call may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per event: backoff from 100 ms doubling to 5 s, ~5 minutes in all.
const PUBLISH_TRIES: u32 = 66;
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Users one Publish may name (the notification service's limit).
const MAX_USERS_PER_PUBLISH: usize = 1000;

#[derive(Debug)]
struct Pending {
    users: Vec<String>,
    event: pb::Event,
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: Option<mpsc::Sender<Pending>>,
}

fn dropped(reason: &'static str) {
    metrics::counter!("picker_events_dropped_total", "reason" => reason).increment(1);
}

impl Publisher {
    /// No notification service: every event is dropped (and counted).
    pub fn none() -> Publisher {
        Publisher { tx: None }
    }

    /// Publish to the notification service at `url` (gRPC).
    pub fn grpc(url: &str) -> Result<Publisher, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("picker.notification_url: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(PUBLISH_TIMEOUT)
            .connect_lazy();
        let mut client = NotificationServiceClient::new(channel);
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let mut failing = false;
            while let Some(p) = rx.recv().await {
                let request = pb::PublishRequest {
                    user_ids: p.users,
                    event: Some(p.event),
                };
                let mut backoff = Duration::from_millis(100);
                for attempt in 1..=PUBLISH_TRIES {
                    let outcome =
                        tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(request.clone()))
                            .await;
                    match outcome {
                        Ok(Ok(_)) => {
                            metrics::counter!("picker_events_published_total").increment(1);
                            if failing {
                                failing = false;
                                tracing::info!("notification service reachable again");
                            }
                            break;
                        }
                        Ok(Err(e)) if e.code() == tonic::Code::InvalidArgument => {
                            dropped("invalid");
                            tracing::error!(error = %e, "notification service refused an event");
                            break;
                        }
                        other => {
                            if !failing {
                                failing = true;
                                let why = match other {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "timed out".into(),
                                };
                                tracing::warn!(error = %why, "notification service unavailable; retrying");
                            }
                            if attempt == PUBLISH_TRIES {
                                dropped("unavailable");
                                break;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                }
            }
        });
        Ok(Publisher { tx: Some(tx) })
    }

    /// Queue an event about the content of file `subject` for `users`: each is told only
    /// if it may still read the file when the event is delivered. Never waits.
    pub fn publish_content(&self, kind: &str, users: Vec<String>, subject: &str, data: Value) {
        self.queue(kind, users, subject, data, true);
    }

    /// Queue an event about access to `subject` (shared, revoked, deleted) for `users`:
    /// told whatever their access is by then. Never waits.
    pub fn publish_access(&self, kind: &str, users: Vec<String>, subject: &str, data: Value) {
        self.queue(kind, users, subject, data, false);
    }

    fn queue(&self, kind: &str, users: Vec<String>, subject: &str, data: Value, recheck: bool) {
        let Some(tx) = &self.tx else {
            dropped("no_notification_service");
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let event = pb::Event {
            id: uuid::Uuid::now_v7().to_string(),
            r#type: kind.to_string(),
            source: "fms.picker".into(),
            subject: subject.to_string(),
            time: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            data_json: data.to_string(),
            recheck_subject: recheck,
        };
        // One Publish names at most 1,000 users; the event id is the same in each part.
        for part in users.chunks(MAX_USERS_PER_PUBLISH) {
            let p = Pending {
                users: part.to_vec(),
                event: event.clone(),
            };
            if tx.try_send(p).is_err() {
                dropped("queue_full");
            }
        }
    }
}
