//! The one mapping from failures to HTTP: `{"error": {"code", "message"}}` with the fitting
//! status. Services turn their domain errors into [`ApiError`] in one `error.rs` each.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error as a client sees it. `code` is a stable machine-readable word; `message` is for
/// people and never carries internal details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "authentication required or invalid",
        )
    }
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
    /// A failure on our side: logged here with its detail, shown to the client without it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                ApiError::bad_request(format!("invalid request: {}", e.body_text()))
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large",
                )
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

/// A JSON body whose every rejection is an [`ApiError`] (axum's own are plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

impl ApiError {
    /// The gRPC form of this error: the status code that fits the HTTP status, and
    /// `google.rpc` details: `ErrorInfo { reason: CODE, domain }` (see
    /// `proto/fms/common/v1/errors.proto`) and `RetryInfo` when the client should retry.
    pub fn to_grpc(&self, domain: &str) -> tonic::Status {
        use tonic::Code;
        use tonic_types::{ErrorDetails, StatusExt};
        let code = match self.status.as_u16() {
            400 | 415 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 410 => Code::NotFound,
            409 => Code::AlreadyExists,
            412 => Code::FailedPrecondition,
            413 | 429 => Code::ResourceExhausted,
            416 => Code::OutOfRange,
            499 => Code::Cancelled,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            501 => Code::Unimplemented,
            _ => Code::Internal,
        };
        let mut details = ErrorDetails::with_error_info(
            self.code.to_ascii_uppercase(),
            domain,
            std::collections::HashMap::<String, String>::new(),
        );
        if let Some(secs) = self.retry_after {
            details.set_retry_info(Some(std::time::Duration::from_secs(secs)));
        }
        tonic::Status::with_error_details(code, self.message.clone(), details)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_grpc("fms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn one_mapping_for_http_and_grpc() {
        let e = ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file");
        let s = e.to_grpc("fms.picker");
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "no such file");
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("NOT_FOUND", "fms.picker")
        );
        let busy = ApiError::unavailable("busy", 3).to_grpc("fms.auth");
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        let retry = busy.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(3)));
        for (status, code) in [
            (400, tonic::Code::InvalidArgument),
            (401, tonic::Code::Unauthenticated),
            (409, tonic::Code::AlreadyExists),
            (413, tonic::Code::ResourceExhausted),
            (429, tonic::Code::ResourceExhausted),
            (500, tonic::Code::Internal),
        ] {
            let e = ApiError::new(StatusCode::from_u16(status).unwrap(), "x", "m");
            assert_eq!(tonic::Status::from(e).code(), code, "{status}");
        }
    }
}
