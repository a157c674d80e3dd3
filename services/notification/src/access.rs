//! Access re-checks at delivery: an event published with `recheck_subject` reaches a user
//! only if, when it is about to be written to the socket, the user may read its subject
//! (a file). Asked of the permission service in this process (`fms serve`) or over gRPC.

use std::sync::Arc;

use fms_permission::Permissions;
use fms_permission::model::Right;
use fms_proto::permission::v1 as pb;
use pb::permission_service_client::PermissionServiceClient;
use tonic::transport::Channel;

/// Who decides whether a user may still read a file.
#[derive(Clone, Debug)]
pub enum Access {
    Local(Arc<Permissions>),
    Remote(PermissionServiceClient<Channel>),
}

impl Access {
    /// The permission service at `url` (gRPC), connected lazily.
    pub fn remote(url: &str) -> Result<Access, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("notification.permission_url: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        Ok(Access::Remote(PermissionServiceClient::new(channel)))
    }

    /// Whether `user` may read `file`: `Ok(false)` for a file or user the permission
    /// service does not know, `Err` when it could not decide (the caller must not deliver).
    pub async fn may_read(&self, user: &str, file: &str) -> Result<bool, String> {
        use fms_permission::Error as E;
        match self {
            Access::Local(p) => match p.check(user, file, Right::Read, 0).await {
                Ok(d) => Ok(d.allowed),
                Err(E::NotFound(_) | E::UnknownUser(_) | E::Invalid(_)) => Ok(false),
                Err(e) => Err(e.to_string()),
            },
            Access::Remote(c) => {
                let asked = c
                    .clone()
                    .check_permission(pb::CheckPermissionRequest {
                        user_id: user.into(),
                        file_id: file.into(),
                        right: Right::Read.to_proto(),
                        at_least_as_fresh: 0,
                    })
                    .await;
                match asked {
                    Ok(r) => Ok(r.into_inner().allowed),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::NotFound | tonic::Code::InvalidArgument
                        ) =>
                    {
                        Ok(false)
                    }
                    Err(s) => Err(s.message().to_string()),
                }
            }
        }
    }
}
