//! Probes, metrics and API docs: the routes that need no key.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::state::AppState;

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

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, description = "metrics", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_document())
}

/// Interactive API docs over `/openapi.json`.
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html>
  <head>
    <title>lakeledger API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
    <noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
  </body>
</html>
"#,
    )
}
