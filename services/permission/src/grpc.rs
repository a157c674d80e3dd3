//! `fms.permission.v1.PermissionService` over gRPC.

use std::sync::Arc;

use axum::http::StatusCode;
use fms_platform::ApiError;
use fms_proto::permission::v1 as pb;
use pb::permission_service_server::{PermissionService, PermissionServiceServer};
use tonic::{Request, Response, Status};

use crate::model::Right;
use crate::{Error, GrantSpec, Permissions};

/// `google.rpc.ErrorInfo.domain` of this service's errors.
pub const DOMAIN: &str = "fms.permission";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let (status, code, message) = match e {
            Error::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid_argument", m),
            Error::Limit(m) => (StatusCode::BAD_REQUEST, "limit_exceeded", m),
            Error::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Error::UnknownUser(m) => (StatusCode::NOT_FOUND, "user_not_found", m),
            Error::Denied(m) => (StatusCode::FORBIDDEN, "permission_denied", m),
            Error::AlreadyExists(m) => (StatusCode::CONFLICT, "already_exists", m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "permission store unavailable");
                return ApiError::unavailable("permission store unavailable", 1).to_grpc(DOMAIN);
            }
            Error::Internal(m) => return ApiError::internal(m).to_grpc(DOMAIN),
        };
        ApiError::new(status, code, message).to_grpc(DOMAIN)
    }
}

/// The tonic service over a shared [`Permissions`].
#[derive(Debug, Clone)]
pub struct Service(pub Arc<Permissions>);

impl Service {
    pub fn server(perms: Arc<Permissions>) -> PermissionServiceServer<Service> {
        PermissionServiceServer::new(Service(perms))
    }
}

fn specs(grants: Vec<pb::Grant>, field: &str) -> Result<Vec<GrantSpec>, Error> {
    grants
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let rights = g
                .rights
                .iter()
                .map(|r| Right::from_proto(*r, &format!("{field}[{i}].rights")))
                .collect::<Result<_, _>>()?;
            Ok(GrantSpec {
                user_id: g.user_id,
                rights,
            })
        })
        .collect()
}

#[tonic::async_trait]
impl PermissionService for Service {
    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        let r = request.into_inner();
        let right = Right::from_proto(r.right, "right")?;
        let d = self
            .0
            .check(&r.user_id, &r.file_id, right, r.at_least_as_fresh)
            .await?;
        Ok(Response::new(pb::CheckPermissionResponse {
            allowed: d.allowed,
            revision: d.revision,
        }))
    }

    async fn update_permission(
        &self,
        request: Request<pb::UpdatePermissionRequest>,
    ) -> Result<Response<pb::UpdatePermissionResponse>, Status> {
        let r = request.into_inner();
        let grants = specs(r.grants, "grants")?;
        let revokes = specs(r.revokes, "revokes")?;
        let revision = self
            .0
            .update(&r.actor_id, &r.file_id, &grants, &revokes)
            .await?;
        Ok(Response::new(pb::UpdatePermissionResponse { revision }))
    }

    async fn list_accessible(
        &self,
        request: Request<pb::ListAccessibleRequest>,
    ) -> Result<Response<pb::ListAccessibleResponse>, Status> {
        let r = request.into_inner();
        let right = match r.right {
            0 => None,
            v => Some(Right::from_proto(v, "right")?),
        };
        let page = self
            .0
            .list(
                &r.user_id,
                right,
                &r.page_token,
                r.page_size,
                r.at_least_as_fresh,
            )
            .await?;
        Ok(Response::new(pb::ListAccessibleResponse {
            files: page
                .files
                .into_iter()
                .map(|f| pb::AccessibleFile {
                    file_id: f.file_id,
                    owned: f.rights.is_owner(),
                    rights: f.rights.rights().into_iter().map(Right::to_proto).collect(),
                })
                .collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn create_owner(
        &self,
        request: Request<pb::CreateOwnerRequest>,
    ) -> Result<Response<pb::CreateOwnerResponse>, Status> {
        let r = request.into_inner();
        let revision = self.0.create_owner(&r.file_id, &r.user_id).await?;
        Ok(Response::new(pb::CreateOwnerResponse { revision }))
    }

    async fn delete_object(
        &self,
        request: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let r = request.into_inner();
        let (revision, holders) = self.0.delete_object_holders(&r.file_id).await?;
        Ok(Response::new(pb::DeleteObjectResponse {
            revision,
            holders,
        }))
    }
}
