//! Point-in-time training sets: create, read the manifest, stream the data.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lakeledger_query::formats::{Encoder, OutputFormat};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiJson;
use super::audit_layer::AuditFacts;
use crate::platform::audit::AuditContext;
use super::auth::Caller;
use crate::platform::catalog::Role;
use super::error::ErrorBody;
use crate::error::{Error, Result};
use super::state::AppState;
use crate::features::encoded_body;
use crate::training::{CreateTrainingSet, SpineManifest, TrainingSetManifest};
use lakeledger_query::ingest::IngestFormat;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Writer];

/// Builds a training set: the spine joined, as of each spine time, with features from
/// pinned versions. Written once as Parquet with its manifest.
#[utoipa::path(post, path = "/v1/training-sets", request_body = CreateTrainingSet,
    responses((status = 201, body = TrainingSetManifest), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    ApiJson(req): ApiJson<CreateTrainingSet>,
) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<TrainingSetManifest>)> {
    p.require(WRITE, "create training sets")?;
    state.quotas.check_storage(&p).await?;
    let (manifest, versions) = state.training_sets.create(&p, &ctx, req).await?;
    let facts = AuditFacts { resource_name: Some(manifest.id.clone()), versions_read: versions, rows: Some(manifest.rows), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(facts), axum::Json(manifest)))
}

/// The tenant's training sets (their manifests), oldest first.
#[utoipa::path(get, path = "/v1/training-sets", responses((status = 200, body = Vec<TrainingSetManifest>)))]
pub async fn list(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<Vec<TrainingSetManifest>>> {
    p.require(READ, "read training sets")?;
    Ok(axum::Json(state.training_sets.list(&p).await?))
}

/// Deletes a training set; the feature files it pinned become eligible for vacuum.
#[utoipa::path(delete, path = "/v1/training-sets/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TrainingSetManifest), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<axum::Json<TrainingSetManifest>> {
    p.require(WRITE, "delete training sets")?;
    Ok(axum::Json(state.training_sets.delete(&p, &id).await?))
}

/// The manifest: spine, features, versions, TTLs, rows and the SHA-256 of the data.
#[utoipa::path(get, path = "/v1/training-sets/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TrainingSetManifest), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<axum::Json<TrainingSetManifest>> {
    p.require(READ, "read training sets")?;
    Ok(axum::Json(state.training_sets.manifest(&p, &id).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct DataParams {
    /// `arrow`, `parquet`, `csv`, `json` or `ndjson`; overrides `Accept`.
    pub format: Option<String>,
}

/// The rows, checked against the manifest's SHA-256 before they are sent.
#[utoipa::path(get, path = "/v1/training-sets/{id}/data", params(("id" = String, Path), DataParams),
    responses((status = 200, description = "rows in the negotiated format"), (status = 404, body = ErrorBody)))]
pub async fn data(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<DataParams>,
    headers: HeaderMap,
) -> Result<Response> {
    p.require(READ, "read training sets")?;
    let format = match q.format.as_deref() {
        Some(f) => OutputFormat::from_name(f).ok_or_else(|| Error::BadRequest(format!("format `{f}` is not one of json, ndjson, csv, arrow, parquet")))?,
        None => OutputFormat::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())).ok_or(Error::NotAcceptable)?,
    };
    let (manifest, len, body) = if format == OutputFormat::Parquet {
        let (manifest, copy) = state.training_sets.data(&p, &id).await?;
        (manifest, Some(copy.len), Body::from_stream(copy.into_stream().await?))
    } else {
        let (manifest, stream) = state.training_sets.batches(&p, &id).await?;
        let mut encoder = Encoder::new(format, &stream.schema())?;
        let body = encoded_body(stream, move |batch| match batch {
            Some(b) => encoder.encode(&b),
            None => encoder.finish(),
        });
        (manifest, None, body)
    };
    let mut response = (StatusCode::OK, body).into_response();
    if let Some(len) = len {
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    if let Ok(v) = HeaderValue::from_str(&manifest.sha256) {
        response.headers_mut().insert("x-lakeledger-training-set-sha256", v);
    }
    response.extensions_mut().insert(AuditFacts { resource_name: Some(manifest.id.clone()), rows: Some(manifest.rows), ..Default::default() });
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
pub struct SpineParams {
    /// The spine's time column: RFC 3339 text, dates or timestamps.
    pub time: Option<String>,
}

/// Uploads a spine (label rows: entity keys, a time, labels) in any ingest format, for
/// training sets to use by id. JSON and CSV column types are inferred from the values.
#[utoipa::path(post, path = "/v1/spines", params(SpineParams),
    request_body(content = String, description = "label rows", content_type = "application/json"),
    responses((status = 201, body = SpineManifest), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_spine(
    State(state): State<AppState>,
    Caller(p): Caller,
    ctx: AuditContext,
    Query(q): Query<SpineParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<SpineManifest>)> {
    p.require(WRITE, "upload spines")?;
    state.quotas.check_storage(&p).await?;
    let time = q.time.filter(|t| !t.is_empty()).ok_or_else(|| Error::BadRequest("name the spine's time column with ?time=<column>".into()))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = IngestFormat::from_content_type(content_type).ok_or_else(|| Error::UnsupportedMediaType(content_type.to_string()))?;
    let limit = state.limits.max_spine_bytes;
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| Error::PayloadTooLarge { limit })?;
    let m = state.training_sets.upload_spine(&p, &ctx, format, bytes, time).await?;
    let facts = AuditFacts { resource_name: Some(m.id.clone()), rows: Some(m.rows), details: vec![("sha256".into(), m.sha256.clone())], ..Default::default() };
    Ok((StatusCode::CREATED, Extension(facts), axum::Json(m)))
}

/// An uploaded spine's manifest: columns, rows and the SHA-256 of its stored rows.
#[utoipa::path(get, path = "/v1/spines/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SpineManifest), (status = 404, body = ErrorBody)))]
pub async fn get_spine(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<axum::Json<SpineManifest>> {
    p.require(READ, "read spines")?;
    Ok(axum::Json(state.training_sets.spine_manifest(&p, &id).await?))
}
