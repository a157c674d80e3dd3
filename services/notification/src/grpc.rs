//! `fms.notification.v1.NotificationService` (internal): the other services publish here.

use std::sync::Arc;

use fms_proto::notification::v1 as pb;
use pb::notification_service_server::{NotificationService, NotificationServiceServer};
use tonic::{Request, Response, Status};

use crate::{NewEvent, Notifier, PublishError};

/// The gRPC face of a [`Notifier`].
#[derive(Debug, Clone)]
pub struct Service {
    notifier: Arc<Notifier>,
}

impl Service {
    pub fn server(notifier: Arc<Notifier>) -> NotificationServiceServer<Service> {
        NotificationServiceServer::new(Service { notifier })
    }
}

#[tonic::async_trait]
impl NotificationService for Service {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let r = request.into_inner();
        let e = r
            .event
            .ok_or_else(|| Status::invalid_argument("an event is required"))?;
        let time_ms = e
            .time
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            });
        let event = NewEvent {
            event_id: e.id,
            kind: e.r#type,
            source: e.source,
            subject: e.subject,
            time_ms,
            data: if e.data_json.is_empty() {
                "{}".into()
            } else {
                e.data_json
            },
            recheck: e.recheck_subject,
        };
        match self.notifier.publish(&r.user_ids, &event).await {
            Ok(sequences) => Ok(Response::new(pb::PublishResponse { sequences })),
            Err(PublishError::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(PublishError::Db(m)) => {
                tracing::error!(error = %m, "event history write failed");
                Err(Status::unavailable("event history unavailable; retry"))
            }
        }
    }
}
