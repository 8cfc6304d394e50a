//! The one error body at the HTTP edge: `{"error": {"code", "message", "error_id"}}`
//! with the status the error's classification gives; 5xx bodies carry only the error id
//! (the detail goes to the log under it), and 503s say when to retry.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

/// Seconds a client should wait before retrying a 503 or 429.
const RETRY_AFTER_SECS: u32 = 1;

/// The error body every endpoint returns.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `feature_group_not_found`.
    pub code: String,
    /// What went wrong; for 5xx errors only a generic sentence.
    pub message: String,
    /// Quote this id when asking an operator; the log holds the detail under it.
    pub error_id: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            Error::QuotaExceeded { retry_after_secs, .. } => *retry_after_secs,
            _ => RETRY_AFTER_SECS as u64,
        };
        let crate::error::Public { status, code, message, error_id } = self.public();
        let cross_tenant = match self {
            Error::NotVisible { kind, name, owners } => Some(CrossTenant { kind, name, owners }),
            _ => None,
        };
        let detail = ErrorDetail { code: code.clone(), message, error_id };
        let protocol = ProtocolError(format!("{} (code {}, error_id {})", detail.message, detail.code, detail.error_id));
        let mut response = (status, Json(ErrorBody { error: detail })).into_response();
        response.extensions_mut().insert(protocol);
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after.into());
        }
        response.extensions_mut().insert(ErrorCode(code));
        if let Some(c) = cross_tenant {
            response.extensions_mut().insert(c);
        }
        response
    }
}

/// On a 404 for an object other tenants hold: which, and whose, for the audit layer to
/// tell their auditors (the body is that of any 404).
#[derive(Clone, Debug)]
pub struct CrossTenant {
    pub kind: &'static str,
    pub name: String,
    pub owners: Vec<String>,
}

/// The error as one line, for protocols whose error body is a string (the Open Inference
/// Protocol's `{"error": "..."}`): message, code and error id.
#[derive(Clone, Debug)]
pub struct ProtocolError(pub String);

/// Rewrites an error body as the Open Inference Protocol has it, `{"error": "<message>"}`
/// (status and headers kept), so that its clients (Triton's among them) can show it.
pub async fn as_inference_protocol_error(mut response: Response) -> Response {
    let Some(ProtocolError(line)) = response.extensions_mut().remove::<ProtocolError>() else { return response };
    let (mut parts, _) = response.into_parts();
    let body = serde_json::json!({"error": line}).to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Attached to error responses so the recording layer can log the code.
#[derive(Clone, Debug)]
pub struct ErrorCode(pub String);
