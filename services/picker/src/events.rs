//! Events for the notification service (`file.uploaded`, `file.shared`, `file.deleted`).
//!
//! Publishing never blocks or fails a request: events go into a bounded queue drained by
//! one task that calls `fms.notification.v1.NotificationService/Publish`. A full queue, a
//! notification service that is down or slow, or none configured: the event is dropped and
//! counted (`picker_events_dropped_total{reason}`), the request goes on.

use std::time::Duration;

use fms_proto::notification::v1 as pb;
use pb::notification_service_client::NotificationServiceClient;
use serde_json::Value;
use tokio::sync::mpsc;

/// Events waiting for the notification service, at most.
const QUEUE: usize = 4096;
/// How long one Publish call may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

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
                match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(request)).await {
                    Ok(Ok(_)) => {
                        metrics::counter!("picker_events_published_total").increment(1);
                        if failing {
                            failing = false;
                            tracing::info!("notification service reachable again");
                        }
                    }
                    Ok(Err(e)) => {
                        dropped("unavailable");
                        if !failing {
                            failing = true;
                            tracing::warn!(error = %e, "notification service unavailable; dropping events");
                        }
                    }
                    Err(_) => {
                        dropped("timeout");
                        failing = true;
                    }
                }
            }
        });
        Ok(Publisher { tx: Some(tx) })
    }

    /// Queue an event for `users`; never waits.
    pub fn publish(&self, kind: &str, users: Vec<String>, subject: &str, data: Value) {
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
        };
        if tx.try_send(Pending { users, event }).is_err() {
            dropped("queue_full");
        }
    }
}
