//! `POST /v1/sql`: time-travel SQL over the caller's feature groups.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lakeledger_query::formats::OutputFormat;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ApiJson;
use super::audit_layer::{AuditFacts, HeldUntilSent};
use crate::platform::audit::AuditContext;
use super::auth::Caller;
use crate::platform::catalog::Role;
use super::error::ErrorBody;
use crate::error::{Error, Result};
use crate::sql::statement_hash;
use super::state::AppState;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];

#[derive(Deserialize, ToSchema)]
pub struct SqlRequest {
    /// One `SELECT` (or `EXPLAIN SELECT`) over feature groups by name, with optional
    /// `VERSION AS OF <n>` or `TIMESTAMP AS OF '<RFC 3339>'` after each.
    pub sql: String,
    /// `json`, `ndjson`, `csv`, `arrow` or `parquet`; overrides `Accept`.
    pub format: Option<String>,
}

/// Runs a read-only SQL statement and streams the result. The statement, its hash and the
/// exact versions it reads are recorded in the audit ledger before it runs.
#[utoipa::path(post, path = "/v1/sql", request_body = SqlRequest,
    responses((status = 200, description = "rows in the negotiated format"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SqlRequest>,
) -> Result<Response> {
    p.require(READ, "run SQL")?;
    // Held until the result has been sent.
    let slot = state.quotas.admit_query(&p).await?;
    let format = match req.format.as_deref() {
        Some(f) => OutputFormat::from_name(f)
            .ok_or_else(|| Error::BadRequest(format!("format `{f}` is not one of json, ndjson, csv, arrow, parquet")))?,
        None => OutputFormat::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())).ok_or(Error::NotAcceptable)?,
    };
    // Refusals name the statement in the outcome record too.
    let refused = |e: Error| -> Response {
        let mut r = e.into_response();
        let facts = AuditFacts {
            details: vec![
                ("sql".into(), req.sql.chars().take(16_384).collect()),
                ("sql_sha256".into(), statement_hash(&req.sql)),
            ],
            ..Default::default()
        };
        r.extensions_mut().insert(facts);
        r
    };
    let (parsed, tables, facts) = match state.sql.prepare(&p, &req.sql).await {
        Ok(x) => x,
        Err(e) => return Ok(refused(e)),
    };
    state.sql.record_query(&p, &ctx, &facts).await?;
    let rows = Arc::new(AtomicU64::new(0));
    let body = match state.sql.run(parsed, tables, format, rows.clone()).await {
        Ok(b) => b,
        Err(e) => return Ok(refused(e)),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert("x-lakeledger-row-limit", HeaderValue::from(state.sql.config().row_limit));
    let versions: Vec<String> = facts.tables.iter().map(|(n, v)| format!("{n}@{v}")).collect();
    if let Ok(v) = HeaderValue::from_str(&versions.join(",")) {
        h.insert("x-lakeledger-versions", v);
    }
    if let Some(slot) = slot {
        response.extensions_mut().insert(HeldUntilSent(Arc::new(slot)));
    }
    response.extensions_mut().insert(AuditFacts {
        versions_read: facts.tables.iter().map(|(_, v)| *v).collect(),
        rows_counter: Some(rows),
        details: facts.details(),
        ..Default::default()
    });
    Ok(response)
}
