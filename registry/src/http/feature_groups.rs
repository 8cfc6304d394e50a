//! Feature group routes. Handlers parse and delegate to `crate::features`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Extension;
use axum::body::Body;
use futures::TryStreamExt;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lakeledger_query::formats::OutputFormat;
use lakeledger_query::ingest::IngestFormat;
use lakeledger_query::tables::WriteMode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiJson;
use super::auth::Caller;
use crate::platform::catalog::Role;
use super::error::ErrorBody;
use crate::error::{Error, Result};
use crate::features::{
    CreateFeatureGroup, EvolveSchema, FeatureGroupView, IngestResult, Ingested, ReadSpec, UpdateFeatureGroup, VacuumReport, VacuumRequest,
    VersionView, parse_key_filters,
};
use super::audit_layer::AuditFacts;
use crate::identity::Principal;
use crate::platform::audit::AuditContext;
use super::state::AppState;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Writer];

/// Creates a feature group and its Delta table (version 0).
#[utoipa::path(post, path = "/v1/feature-groups", request_body = CreateFeatureGroup,
    responses((status = 201, body = FeatureGroupView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    ApiJson(req): ApiJson<CreateFeatureGroup>,
) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<FeatureGroupView>)> {
    p.require(WRITE, "create feature groups")?;
    let view = state.features.create(&p, req, &ctx).await?;
    let facts = AuditFacts {
        resource_name: Some(view.name.clone()),
        versions_written: view.current_version.into_iter().collect(),
        ..Default::default()
    };
    Ok((StatusCode::CREATED, Extension(facts), axum::Json(view)))
}

#[derive(Deserialize, IntoParams)]
pub struct ListParams {
    /// Include archived groups.
    #[serde(default)]
    pub include_archived: bool,
}

/// Lists the tenant's feature groups.
#[utoipa::path(get, path = "/v1/feature-groups", params(ListParams), responses((status = 200, body = Vec<FeatureGroupView>)))]
pub async fn list(State(state): State<AppState>, Caller(p): Caller, Query(q): Query<ListParams>) -> Result<axum::Json<Vec<FeatureGroupView>>> {
    p.require(READ, "read feature groups")?;
    Ok(axum::Json(state.features.list(&p, q.include_archived).await?))
}

/// One feature group: schema, current version, row count.
#[utoipa::path(get, path = "/v1/feature-groups/{name}", params(("name" = String, Path)),
    responses((status = 200, body = FeatureGroupView), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<axum::Json<FeatureGroupView>> {
    p.require(READ, "read feature groups")?;
    Ok(axum::Json(state.features.get(&p, &name).await?))
}

/// Updates description, owner or tags.
#[utoipa::path(patch, path = "/v1/feature-groups/{name}", params(("name" = String, Path)), request_body = UpdateFeatureGroup,
    responses((status = 200, body = FeatureGroupView), (status = 404, body = ErrorBody),
        (status = 507, description = "turning online serving on: the group does not fit the online store's memory budget", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateFeatureGroup>,
) -> Result<axum::Json<FeatureGroupView>> {
    p.require(WRITE, "change feature groups")?;
    Ok(axum::Json(state.features.update(&p, &name, req).await?))
}

/// Evolves the schema: new nullable feature columns become a new version; type changes,
/// key changes and dropped columns are refused with 409 naming the column.
#[utoipa::path(put, path = "/v1/feature-groups/{name}/schema", params(("name" = String, Path)), request_body = EvolveSchema,
    responses((status = 200, body = FeatureGroupView), (status = 409, body = ErrorBody)))]
pub async fn evolve(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EvolveSchema>,
) -> Result<(Extension<AuditFacts>, axum::Json<FeatureGroupView>)> {
    p.require(WRITE, "change feature groups")?;
    let view = state.features.evolve(&p, &name, req, &ctx).await?;
    let facts = AuditFacts { versions_written: view.current_version.into_iter().collect(), ..Default::default() };
    Ok((Extension(facts), axum::Json(view)))
}

/// Archives a group: it stays readable at every version but takes no more writes.
#[utoipa::path(post, path = "/v1/feature-groups/{name}/archive", params(("name" = String, Path)),
    responses((status = 200, body = FeatureGroupView), (status = 404, body = ErrorBody)))]
pub async fn archive(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<axum::Json<FeatureGroupView>> {
    p.require(WRITE, "archive feature groups")?;
    Ok(axum::Json(state.features.archive(&p, &name).await?))
}

/// The version history: version, commit time, operation, rows added, actor.
#[utoipa::path(get, path = "/v1/feature-groups/{name}/versions", params(("name" = String, Path)),
    responses((status = 200, body = Vec<VersionView>), (status = 404, body = ErrorBody)))]
pub async fn versions(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<axum::Json<Vec<VersionView>>> {
    p.require(READ, "read feature groups")?;
    Ok(axum::Json(state.features.history(&p, &name).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct IngestParams {
    /// `append` (default), `upsert` (by entity keys + event time) or `overwrite`.
    pub mode: Option<String>,
}

/// Ingests rows (JSON, NDJSON, CSV, Parquet or Arrow IPC by `Content-Type`) as one new version.
/// With an `Idempotency-Key` header the rows are written at most once: a retry with the same
/// key (same group and mode) gets the first result again, marked `Idempotent-Replayed: true`;
/// 409 while the first attempt is still in progress.
#[utoipa::path(post, path = "/v1/feature-groups/{name}/data", params(("name" = String, Path), IngestParams,
        ("Idempotency-Key" = Option<String>, Header, description = "write at most once per key (1 to 255 visible ASCII characters; kept a day)")),
    request_body(content = String, description = "rows", content_type = "application/json"),
    responses((status = 201, body = IngestResult), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    Path(name): Path<String>,
    Query(q): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Extension<AuditFacts>, [(&'static str, &'static str); 1], axum::Json<IngestResult>)> {
    p.require(WRITE, "ingest data")?;
    let mode = match q.mode.as_deref() {
        None => WriteMode::Append,
        Some(m) => WriteMode::parse(m)
            .ok_or_else(|| Error::BadRequest(format!("mode `{m}` is not one of append, upsert, overwrite")))?,
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = IngestFormat::from_content_type(content_type)
        .ok_or_else(|| Error::UnsupportedMediaType(content_type.to_string()))?;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > state.limits.max_body_bytes
    {
        return Err(Error::PayloadTooLarge { limit: state.limits.max_body_bytes });
    }
    state.quotas.check_ingest(&p).await?;
    state.quotas.check_storage(&p).await?;
    // The bytes received count against the tenant's daily limit, whatever the outcome.
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let body = Body::from_stream(body.into_data_stream().inspect_ok(move |chunk| {
        counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }));
    let result = ingest_counted(&state, &p, &ctx, &name, mode, format, &headers, body).await;
    // The write's own answer stands: failing it now would make a client retry rows that
    // were committed. A count that cannot be kept is logged; the day's total runs short.
    if let Err(e) = state.quotas.count_ingest(&p, received.load(Ordering::Relaxed)).await {
        tracing::warn!(error = %e, tenant = %p.tenant, "could not count an ingest's bytes against the tenant's daily limit");
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn ingest_counted(
    state: &AppState,
    p: &Principal,
    ctx: &AuditContext,
    name: &str,
    mode: WriteMode,
    format: IngestFormat,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Extension<AuditFacts>, [(&'static str, &'static str); 1], axum::Json<IngestResult>)> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map_err(|_| Error::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into()))?),
        None => None,
    };
    let Some(key) = key else {
        let result = state.features.ingest(p, name, mode, format, body, ctx).await?;
        let facts = AuditFacts { versions_written: vec![result.version], rows: Some(result.rows), ..Default::default() };
        return Ok((StatusCode::CREATED, Extension(facts), [("idempotent-replayed", "false")], axum::Json(result)));
    };
    let Ingested { result, replayed } = state.features.ingest_once(p, name, mode, format, body, ctx, key).await?;
    let mut facts = AuditFacts { rows: Some(result.rows), details: vec![("idempotency_key".into(), key.to_string())], ..Default::default() };
    if replayed {
        // Nothing was written by this request: it is answered with the first one's result.
        facts.versions_read = vec![result.version];
        facts.details.push(("idempotent_replay".into(), "true".into()));
    } else {
        facts.versions_written = vec![result.version];
    }
    Ok((StatusCode::CREATED, Extension(facts), [("idempotent-replayed", if replayed { "true" } else { "false" })], axum::Json(result)))
}

#[derive(Deserialize, IntoParams)]
pub struct ReadParams {
    /// Read exactly this version.
    pub version: Option<i64>,
    /// Read the version current at this RFC 3339 time (resolved through recorded commit times).
    pub as_of: Option<String>,
    /// Return at most this many rows.
    pub limit: Option<usize>,
    /// `json`, `ndjson`, `csv`, `arrow` or `parquet`; overrides `Accept`.
    pub format: Option<String>,
}

/// Streams the rows of a version. Filter by entity keys with `key.<column>=v1,v2`.
#[utoipa::path(get, path = "/v1/feature-groups/{name}/data", params(("name" = String, Path), ReadParams),
    responses((status = 200, description = "rows in the negotiated format"), (status = 404, body = ErrorBody), (status = 406, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(name): Path<String>,
    Query(q): Query<ReadParams>,
    Query(all): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response> {
    p.require(READ, "read data")?;
    let format = match q.format.as_deref() {
        Some(f) => OutputFormat::from_name(f).ok_or_else(|| Error::BadRequest(format!("format `{f}` is not one of json, ndjson, csv, arrow, parquet")))?,
        None => OutputFormat::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())).ok_or(Error::NotAcceptable)?,
    };
    let group = state.features.find(&p, &name).await?;
    let spec = ReadSpec {
        version: q.version,
        as_of: q.as_of,
        filters: parse_key_filters(&group.schema, &all)?,
        limit: q.limit,
    };
    let (version, body): (_, Body) = state.features.read(&group, spec, format).await?;
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert("x-lakeledger-version", HeaderValue::from(version.version));
    response.extensions_mut().insert(AuditFacts { versions_read: vec![version.version], ..Default::default() });
    Ok(response)
}

/// Deletes data files that left the table longer ago than the retention, keeping every
/// file a live training set read. Admins only.
#[utoipa::path(post, path = "/v1/feature-groups/{name}/vacuum", params(("name" = String, Path)), request_body = VacuumRequest,
    responses((status = 200, body = VacuumReport), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn vacuum(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<VacuumRequest>,
) -> Result<(Extension<AuditFacts>, axum::Json<VacuumReport>)> {
    p.require(&[Role::Admin], "vacuum feature groups")?;
    let report = state.features.vacuum(&p, &name, req).await?;
    let facts = AuditFacts {
        details: vec![
            ("dry_run".into(), report.dry_run.to_string()),
            ("retention_hours".into(), report.retention_hours.to_string()),
            ("files_deleted".into(), report.deleted.len().to_string()),
            ("files_kept_for_training_sets".into(), report.kept.len().to_string()),
        ],
        ..Default::default()
    };
    Ok((Extension(facts), axum::Json(report)))
}
