//! `fms serve` (every service in one process, embedded defaults) and `fms <service>` (one
//! service alone, configured to find the others by address).

use std::sync::Arc;

use fms_auth::shared::Shared;
use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::grpc::{self, GrpcServices};
use fms_platform::http::{self, Check, Service};

/// Which services this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: `fms serve`.
    All,
    /// The auth service alone: `fms auth`.
    Auth,
    /// The permission service alone: `fms permission`.
    Permission,
    /// The picker alone: `fms picker` (auth and permission found by address).
    Picker,
    /// The notification service alone: `fms notification` (auth found by address).
    Notification,
    /// The downloader alone: `fms downloader` (the picker found by address).
    Downloader,
    /// The transformer alone: `fms transformer`.
    Transformer,
}

impl Role {
    fn runs_auth(self) -> bool {
        matches!(self, Role::All | Role::Auth)
    }
    fn runs_permission(self) -> bool {
        matches!(self, Role::All | Role::Permission)
    }
    fn runs_notification(self) -> bool {
        matches!(self, Role::All | Role::Notification)
    }
    fn runs_downloader(self) -> bool {
        matches!(self, Role::All | Role::Downloader)
    }
    fn runs_transformer(self) -> bool {
        matches!(self, Role::All | Role::Transformer)
    }
    fn has_grpc(self) -> bool {
        self.runs_permission()
            || matches!(
                self,
                Role::Picker | Role::Notification | Role::Downloader | Role::Transformer
            )
    }
}

fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A service alone verifies tokens against the auth service's JWKS.
async fn remote_authenticator(
    cfg: &Config,
    shared: Shared,
) -> Result<Arc<fms_auth::verify::Authenticator>, String> {
    if cfg.auth.jwks_url.is_empty() {
        return Err("this service needs auth.jwks_url (FMS_AUTH__JWKS_URL): where the auth service publishes its keys".into());
    }
    let expect = fms_auth::tokens::Expect {
        issuer: cfg.auth.issuer.clone(),
        audience: cfg.auth.audience.clone(),
    };
    fms_auth::verify::Authenticator::remote(expect, &cfg.auth.jwks_url, shared).await
}

/// A split deployment's picker: tokens verified against the auth service's JWKS, access
/// decided by the permission service over gRPC.
async fn remote_dependencies(
    cfg: &Config,
    shared: Shared,
) -> Result<
    (
        Arc<fms_auth::verify::Authenticator>,
        fms_picker::authz::Authz,
    ),
    String,
> {
    if cfg.auth.jwks_url.is_empty() {
        return Err("fms picker needs auth.jwks_url (FMS_AUTH__JWKS_URL): where the auth service publishes its keys".into());
    }
    if cfg.picker.permission_url.is_empty() {
        return Err("fms picker needs picker.permission_url (FMS_PICKER__PERMISSION_URL): the permission service's gRPC address".into());
    }
    let expect = fms_auth::tokens::Expect {
        issuer: cfg.auth.issuer.clone(),
        audience: cfg.auth.audience.clone(),
    };
    let authenticator =
        fms_auth::verify::Authenticator::remote(expect, &cfg.auth.jwks_url, shared).await?;
    let channel = tonic::transport::Endpoint::from_shared(cfg.picker.permission_url.clone())
        .map_err(|e| format!("picker.permission_url: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(5))
        .connect_lazy();
    let client =
        fms_proto::permission::v1::permission_service_client::PermissionServiceClient::new(channel);
    Ok((authenticator, fms_picker::authz::Authz::Remote(client)))
}

/// Run until SIGTERM / SIGINT.
pub fn run(cfg: Config, role: Role) -> Result<(), String> {
    let service_name: &'static str = match role {
        Role::All => "fms",
        Role::Auth => "fms-auth",
        Role::Permission => "fms-permission",
        Role::Picker => "fms-picker",
        Role::Notification => "fms-notification",
        Role::Downloader => "fms-downloader",
        Role::Transformer => "fms-transformer",
    };
    fms_platform::logging::init(service_name, &cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(cfg, role, service_name))
}

async fn serve(mut cfg: Config, role: Role, name: &'static str) -> Result<(), String> {
    let stop = http::shutdown_on_signals();
    // The gRPC listener is bound first: in `fms serve` the picker publishes its events to
    // the notification service on it, as it would to another process.
    let grpc_listener = if role.has_grpc() {
        let listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.grpc_listen))?;
        if role == Role::All {
            // The picker reaches the notification service and the downloader, and the
            // downloader the picker, on this listener, as they would other processes.
            let addr = format!(
                "http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            for url in [
                &mut cfg.picker.notification_url,
                &mut cfg.picker.downloader_url,
                &mut cfg.picker.transformer_url,
                &mut cfg.downloader.picker_url,
            ] {
                if url.is_empty() {
                    *url = addr.clone();
                }
            }
        }
        Some(listener)
    } else {
        None
    };
    let db = Db::connect(&cfg.database, &cfg.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let shared = Shared::from_config(&cfg.redis)
        .await
        .map_err(|e| e.to_string())?;
    if matches!(role, Role::Auth | Role::Picker) && !shared.is_distributed() {
        tracing::warn!(
            "redis.url is empty: revocations and login throttling stay in this process; \
             replicas of this service will not see each other's logouts"
        );
    }
    let mut api = axum::Router::new();
    let mut authenticator = None;
    if role.runs_auth() {
        let auth = fms_auth::start(&cfg, db.clone(), shared.clone(), stop.clone()).await?;
        authenticator = Some(auth.authenticator.clone());
        api = api.merge(fms_auth::api::routes(auth));
    }
    let mut grpc_services = GrpcServices::new();
    let perms = if role.runs_permission() {
        Some(fms_permission::start(&cfg, db.clone(), stop.clone()).await?)
    } else {
        None
    };
    if role.runs_notification() {
        let authenticator = match (&authenticator, role) {
            (Some(a), _) => a.clone(),
            _ => remote_authenticator(&cfg, shared.clone()).await?,
        };
        let access = match &perms {
            Some(p) => fms_notification::access::Access::Local(p.clone()),
            None if cfg.notification.permission_url.is_empty() => {
                return Err("fms notification needs notification.permission_url (FMS_NOTIFICATION__PERMISSION_URL): the permission service's gRPC address".into());
            }
            None => fms_notification::access::Access::remote(&cfg.notification.permission_url)?,
        };
        let notifier =
            fms_notification::start(&cfg, db.clone(), Some(access), stop.clone()).await?;
        grpc_services =
            grpc_services.with(fms_notification::grpc::Service::server(notifier.clone()));
        api = api.merge(fms_notification::ws::routes(notifier, authenticator));
    }
    if role.runs_downloader() {
        if cfg.downloader.picker_url.is_empty() {
            return Err("fms downloader needs downloader.picker_url (FMS_DOWNLOADER__PICKER_URL): the picker's gRPC address".into());
        }
        let d = fms_downloader::start(&cfg, &cfg.downloader.picker_url)?;
        grpc_services = grpc_services.with(fms_downloader::Service::server(d));
    }
    if role.runs_transformer() {
        let t = &cfg.transformer;
        let svc = fms_transformer::service::Service::from_config(
            t,
            fms_transformer::image_ops::Limits::from_config(t),
        );
        grpc_services = grpc_services.with(svc.server());
    }
    if role == Role::Picker {
        let (authenticator, authz) = remote_dependencies(&cfg, shared.clone()).await?;
        let picker = fms_picker::start_with_gc(&cfg, db.clone(), authz, stop.clone()).await?;
        grpc_services = grpc_services
            .with(fms_picker::grpc::Internal::server(picker.clone()))
            .with(fms_picker::files::Files::server(
                picker.clone(),
                authenticator.clone(),
            ));
        api = api.merge(fms_picker::api::routes(picker, authenticator));
    }
    if let Some(perms) = perms {
        grpc_services = grpc_services.with(fms_permission::grpc::Service::server(perms.clone()));
        if role == Role::All
            && let Some(authenticator) = authenticator.clone()
        {
            // The picker asks the permission service in this process.
            let picker = fms_picker::start_with_gc(
                &cfg,
                db.clone(),
                fms_picker::authz::Authz::Local(perms),
                stop.clone(),
            )
            .await?;
            grpc_services = grpc_services
                .with(fms_picker::grpc::Internal::server(picker.clone()))
                .with(fms_picker::files::Files::server(
                    picker.clone(),
                    authenticator.clone(),
                ));
            api = api.merge(fms_picker::api::routes(picker, authenticator));
        }
    }
    let mut checks = Vec::new();
    {
        let db = db.clone();
        checks.push((
            "database",
            check(move || {
                let db = db.clone();
                async move { db.ping().await }
            }),
        ));
    }
    if matches!(role, Role::All | Role::Auth | Role::Picker) {
        // Revocations (and login throttling) live there; the permission service needs no Redis.
        let shared = shared.clone();
        checks.push((
            "shared_state",
            check(move || {
                let s = shared.clone();
                async move { s.ping().await }
            }),
        ));
    }
    let app = http::app(Service { name, checks }, api);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let grace = cfg.shutdown.grace.0;
    let http_task = tokio::spawn(http::serve(listener, app, stop.clone(), grace));
    let grpc_task = if let Some(listener) = grpc_listener {
        let (routes, health) = grpc::routes(grpc_services).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(grpc.address = %addr, "gRPC listening");
        eprintln!("fms: gRPC on {addr}");
        Some(tokio::spawn(grpc::serve(
            listener,
            routes,
            health,
            name,
            stop.clone(),
            grace,
        )))
    } else {
        None
    };
    tracing::info!(http.address = %http_addr, data_dir = %cfg.data_dir.display(), "HTTP listening");
    eprintln!(
        "fms: HTTP on http://{http_addr} (data in {})",
        cfg.data_dir.display()
    );
    let http_result = http_task.await.map_err(|e| e.to_string())?;
    if let Some(t) = grpc_task {
        t.await.map_err(|e| e.to_string())??;
    }
    // Background tasks (key maintenance, purges, resyncs) end with the token.
    stop.cancel();
    db.pool.close().await;
    http_result.map_err(|e| e.to_string())
}
