//! Probes, metrics and API docs: the operational routes (only metrics needs a key).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::auth::Caller;
use super::error::ErrorBody;
use super::state::AppState;
use crate::error::{Error, Result};

/// The process is alive.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive")))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// The catalog and the table storage answer and the audit ledger takes records; false
/// while shutting down.
#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.check(&state.audit).await;
    if let Err(e) = &report.audit {
        tracing::warn!(error = %e, "readiness: audit ledger cannot take records");
    }
    if let Err(e) = &report.catalog {
        tracing::warn!(error = %e, "readiness: catalog unavailable");
    }
    if let Err(e) = &report.storage {
        tracing::warn!(error = %e, "readiness: storage unavailable");
    }
    let ok = report.ready();
    let body = json!({
        "ready": ok,
        "catalog": report.catalog.is_ok(),
        "storage": report.storage.is_ok(),
        "accepting": report.accepting,
        "audit": report.audit.is_ok(),
        "audit_problem": report.audit.err(),
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format. Labels name tenants, so only
/// operator admins (admins of the default tenant) and the configured scrape token
/// (`--metrics-token-file`) may read them.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, Caller(p): Caller) -> Result<Response> {
    if !(p.is_operator() || p.auth_method == "metrics_token") {
        return Err(Error::Forbidden { role: format!("{} of tenant `{}`", p.role.as_str(), p.tenant), action: "read metrics (operator admins and the scrape token only)".into() });
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response())
}

pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_document())
}

/// API docs over `/openapi.json`: one page built into the binary, which loads nothing
/// from elsewhere (the policy header says so to the browser too), so it works on a
/// network without internet.
pub async fn docs() -> Response {
    let policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";
    ([(header::CONTENT_SECURITY_POLICY, policy)], Html(include_str!("docs.html"))).into_response()
}
