//! The OpenAPI 3 description of the picker's REST API, generated from the handlers'
//! `#[utoipa::path]` annotations and the schema types below; served at
//! `/api/openapi.json`, with a rendered copy in `docs/api/openapi.json` (kept equal by a
//! test). The schema types mirror the JSON the handlers write; a test compares their
//! property names with real responses.

#![allow(dead_code)]

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A stored file as every endpoint returns it.
#[derive(ToSchema)]
pub struct FileRecord {
    /// UUIDv7; id order is creation order.
    id: String,
    name: String,
    /// Folder it was uploaded under: names joined by `/` (tus `relativePath` metadata, the
    /// bulk API's `folder`); `""` is the top.
    folder: String,
    size: u64,
    /// Sniffed from the bytes; what the client said is ignored.
    content_type: String,
    /// BLAKE3 of the content, hex; the ETag.
    content_hash: String,
    owner_id: String,
    owned: bool,
    shared_with_me: bool,
    /// Rights the caller holds: read, write, delete, share.
    rights: Vec<String>,
    /// RFC 3339.
    created_at: String,
    updated_at: String,
    /// Uploads only: bytes new to the caller's own storage.
    new_bytes: Option<u64>,
}

/// A multipart upload's files.
#[derive(ToSchema)]
pub struct UploadedFiles {
    files: Vec<FileRecord>,
}

/// One page of a listing.
#[derive(ToSchema)]
pub struct FileList {
    items: Vec<FileRecord>,
    /// Pass back as `cursor`; null on the last page.
    next_cursor: Option<String>,
}

/// Set a user's rights on a file to exactly `rights` (empty: revoke all).
#[derive(ToSchema)]
pub struct ShareRequest {
    file_id: String,
    /// Username.
    with: String,
    rights: Vec<String>,
}

#[derive(ToSchema)]
pub struct ShareResult {
    file_id: String,
    with: String,
    rights: Vec<String>,
    /// Permission revision of the change.
    revision: u64,
}

#[derive(ToSchema)]
pub struct RenameRequest {
    name: String,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `quota_exceeded`, ...).
    code: String,
    message: String,
}

/// Every error.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fms picker",
        description = "Upload, list, download, rename, delete and share files. Every route needs a bearer access token from /auth/login.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::api::upload,
        crate::api::list,
        crate::api::file_meta,
        crate::api::content,
        crate::api::rename,
        crate::api::delete_file,
        crate::api::share,
        crate::jobs::start_import,
        crate::transform::start,
        crate::archive::download,
        crate::archive::start,
        crate::jobs::job,
        crate::connect::accounts,
        crate::connect::authorize,
        crate::connect::callback,
        crate::connect::disconnect,
        crate::connect::list,
    ),
    components(schemas(
        FileRecord,
        UploadedFiles,
        FileList,
        ShareRequest,
        crate::jobs::ImportBody,
        crate::transform::TransformBody,
        crate::archive::ArchiveBody,
        crate::archive::Compression,
        ShareResult,
        RenameRequest,
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}
