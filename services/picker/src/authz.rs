//! The picker's view of the permission service: in this process (`fms serve`) or over gRPC
//! (split deployment). Either way a failure to decide is an error, never an allow.

use std::sync::Arc;

use fms_permission::model::{Right, Rights};
use fms_permission::{Error as PermError, GrantSpec, Permissions};
use fms_proto::permission::v1 as pb;
use pb::permission_service_client::PermissionServiceClient;
use tonic::transport::Channel;

/// Why the permission service did not answer yes or no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error("permission service unavailable: {0}")]
    Unavailable(String),
}

impl From<PermError> for AuthzError {
    fn from(e: PermError) -> Self {
        match e {
            PermError::NotFound(_) | PermError::UnknownUser(_) => AuthzError::NotFound,
            PermError::Denied(m) => AuthzError::Denied(m),
            PermError::Invalid(m) | PermError::Limit(m) | PermError::AlreadyExists(m) => {
                AuthzError::Invalid(m)
            }
            PermError::Unavailable(m) | PermError::Internal(m) => AuthzError::Unavailable(m),
        }
    }
}

impl From<tonic::Status> for AuthzError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::NotFound => AuthzError::NotFound,
            tonic::Code::PermissionDenied => AuthzError::Denied(s.message().to_string()),
            tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => {
                AuthzError::Invalid(s.message().to_string())
            }
            _ => AuthzError::Unavailable(s.message().to_string()),
        }
    }
}

/// One page of a user's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub files: Vec<(String, Rights)>,
    pub next: String,
}

#[derive(Clone, Debug)]
pub enum Authz {
    Local(Arc<Permissions>),
    Remote(PermissionServiceClient<Channel>),
}

fn rights_from_proto(owned: bool, rights: &[i32]) -> Rights {
    let mut r = if owned { Rights::OWNER } else { Rights::NONE };
    for v in rights {
        if let Ok(x) = Right::from_proto(*v, "rights") {
            r = r.union(Rights::of(x));
        }
    }
    r
}

impl Authz {
    pub async fn check(&self, user: &str, file: &str, right: Right) -> Result<bool, AuthzError> {
        match self {
            Authz::Local(p) => Ok(p.check(user, file, right, 0).await?.allowed),
            Authz::Remote(c) => Ok(c
                .clone()
                .check_permission(pb::CheckPermissionRequest {
                    user_id: user.into(),
                    file_id: file.into(),
                    right: right.to_proto(),
                    at_least_as_fresh: 0,
                })
                .await?
                .into_inner()
                .allowed),
        }
    }

    /// Every right `user` holds on `file` (one check per right; cached checks are cheap).
    pub async fn rights(&self, user: &str, file: &str) -> Result<Rights, AuthzError> {
        let mut held = Rights::NONE;
        for r in Right::ALL {
            if self.check(user, file, r).await? {
                held = held.union(Rights::of(r));
            }
        }
        Ok(held)
    }

    pub async fn list(&self, user: &str, token: &str, size: u32) -> Result<Listed, AuthzError> {
        match self {
            Authz::Local(p) => {
                let page = p.list(user, Some(Right::Read), token, size, 0).await?;
                Ok(Listed {
                    files: page
                        .files
                        .into_iter()
                        .map(|f| (f.file_id, f.rights))
                        .collect(),
                    next: page.next_page_token,
                })
            }
            Authz::Remote(c) => {
                let page = c
                    .clone()
                    .list_accessible(pb::ListAccessibleRequest {
                        user_id: user.into(),
                        right: Right::Read.to_proto(),
                        page_token: token.into(),
                        page_size: size,
                        at_least_as_fresh: 0,
                    })
                    .await?
                    .into_inner();
                Ok(Listed {
                    files: page
                        .files
                        .into_iter()
                        .map(|f| {
                            let r = rights_from_proto(f.owned, &f.rights);
                            (f.file_id, r)
                        })
                        .collect(),
                    next: page.next_page_token,
                })
            }
        }
    }

    pub async fn create_owner(&self, file: &str, user: &str) -> Result<u64, AuthzError> {
        match self {
            Authz::Local(p) => Ok(p.create_owner(file, user).await?),
            Authz::Remote(c) => Ok(c
                .clone()
                .create_owner(pb::CreateOwnerRequest {
                    file_id: file.into(),
                    user_id: user.into(),
                })
                .await?
                .into_inner()
                .revision),
        }
    }

    /// Delete `file` and its grants; answers the users who held one (owner included).
    pub async fn delete_object(&self, file: &str) -> Result<Vec<String>, AuthzError> {
        match self {
            Authz::Local(p) => Ok(p.delete_object_holders(file).await?.1),
            Authz::Remote(c) => Ok(c
                .clone()
                .delete_object(pb::DeleteObjectRequest {
                    file_id: file.into(),
                })
                .await?
                .into_inner()
                .holders),
        }
    }

    /// Grant `grant` and revoke `revoke` for `user` on `file`, as `actor`.
    pub async fn update(
        &self,
        actor: &str,
        file: &str,
        user: &str,
        grant: &[Right],
        revoke: &[Right],
    ) -> Result<u64, AuthzError> {
        let spec = |rights: &[Right]| {
            if rights.is_empty() {
                Vec::new()
            } else {
                vec![GrantSpec {
                    user_id: user.into(),
                    rights: rights.to_vec(),
                }]
            }
        };
        match self {
            Authz::Local(p) => Ok(p.update(actor, file, &spec(grant), &spec(revoke)).await?),
            Authz::Remote(c) => {
                let g = |rights: &[Right]| {
                    spec(rights)
                        .into_iter()
                        .map(|s| pb::Grant {
                            user_id: s.user_id,
                            rights: s.rights.iter().map(|r| r.to_proto()).collect(),
                        })
                        .collect()
                };
                Ok(c.clone()
                    .update_permission(pb::UpdatePermissionRequest {
                        actor_id: actor.into(),
                        file_id: file.into(),
                        grants: g(grant),
                        revokes: g(revoke),
                    })
                    .await?
                    .into_inner()
                    .revision)
            }
        }
    }
}
