//! Online serving routes: feature vectors, model invocations, canaries. Handlers parse
//! and delegate to `crate::online` and `crate::serving`.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ScoringBytes};
use super::audit_layer::{AuditFacts, RequestId};
use super::auth::Caller;
use super::error::ErrorBody;
use super::state::AppState;
use crate::error::{Error, Result};
use crate::online::{OnlineFeaturesRequest, OnlineFeaturesResponse, RebuildReport};
use crate::platform::catalog::Role;
use crate::platform::time::parse_micros;
use crate::serving::drift::{DriftReport, Source, Window};
use crate::serving::{CanaryView, Invocation, ScoringBody, ScoringResponse, StartCanary, Target};

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Writer];

/// The latest feature values of entities, from the online store (Feast's
/// `get-online-features` shape).
#[utoipa::path(post, path = "/v1/online/features", request_body = OnlineFeaturesRequest,
    responses((status = 200, body = OnlineFeaturesResponse), (status = 422, body = ErrorBody),
        (status = 507, description = "the group was taken out of the online store to keep to its memory budget", body = ErrorBody)))]
pub async fn features(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<OnlineFeaturesRequest>) -> Result<(Extension<AuditFacts>, axum::Json<OnlineFeaturesResponse>)> {
    p.require(READ, "read online features")?;
    let (response, details) = state.online.get_online_features(&p.tenant_id, &req).await?;
    metrics::counter!("lakeledger_online_requests_total", "tenant" => p.tenant.clone()).increment(1);
    let facts = AuditFacts {
        versions_read: response.metadata.versions.values().copied().collect(),
        rows: Some(response.results.first().map_or(0, |c| c.values.len() as u64)),
        details,
        ..Default::default()
    };
    Ok((Extension(facts), axum::Json(response)))
}

/// Reloads a group's online values from its latest Delta version.
#[utoipa::path(post, path = "/v1/feature-groups/{name}/online/rebuild", params(("name" = String, Path)),
    responses((status = 200, body = RebuildReport), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 507, description = "the group does not fit the online store's memory budget", body = ErrorBody)))]
pub async fn rebuild(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<(Extension<AuditFacts>, axum::Json<RebuildReport>)> {
    p.require(WRITE, "rebuild the online store")?;
    let report = state.online.rebuild_named(&p.tenant_id, &name).await?;
    let facts = AuditFacts { versions_read: vec![report.version], rows: Some(report.rows_read), ..Default::default() };
    Ok((Extension(facts), axum::Json(report)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityHashRequest {
    /// Key columns and values, as sent in `entities`, e.g. `{"customer_id": 42}`.
    #[schema(value_type = Object)]
    pub entity: serde_json::Map<String, Value>,
    /// The order of the key columns as the feature group declares them (default: as given).
    #[serde(default)]
    pub key_columns: Option<Vec<String>>,
}

/// The keyed hash under which audit records name an entity, so an auditor can find the
/// records that served it.
#[utoipa::path(post, path = "/v1/audit/entity-hash", request_body = EntityHashRequest,
    responses((status = 200, description = "{\"hash\": \"…\"}"), (status = 403, body = ErrorBody)))]
pub async fn entity_hash(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<EntityHashRequest>) -> Result<axum::Json<Value>> {
    p.require(&[Role::Admin, Role::Auditor], "compute entity hashes")?;
    let order: Vec<String> = req.key_columns.unwrap_or_else(|| req.entity.keys().cloned().collect());
    let mut pairs = Vec::new();
    for k in &order {
        let v = req.entity.get(k).ok_or_else(|| Error::Unprocessable(format!("key column `{k}` has no value in `entity`")))?;
        pairs.push((k.as_str(), v));
    }
    Ok(axum::Json(serde_json::json!({"hash": state.online.hasher().hash(&pairs)})))
}

/// Scores rows with one model version. Takes MLflow's scoring inputs (`dataframe_split`,
/// `dataframe_records`, `instances`, `inputs`, or `text/csv`), or `{"entities": [...]}`
/// to look the inputs up in the online store.
#[utoipa::path(post, path = "/v1/models/{name}/versions/{version}/invocations", params(("name" = String, Path), ("version" = i64, Path)),
    request_body(content = Object, description = "MLflow scoring input, CSV, or {\"entities\": [...]}"),
    responses((status = 200, body = ScoringResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn invoke_version(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path((name, version)): Path<(String, i64)>, headers: HeaderMap, ScoringBytes(body): ScoringBytes) -> Result<Response> {
    invoke(&state, &p, &id.0, &name, Target::Version(version), &headers, body).await
}

/// Scores rows with the version an alias points at (`name@alias`), following its canary
/// split if it has one. Inputs as for a version.
#[utoipa::path(post, path = "/v1/models/{target}/invocations", params(("target" = String, Path, description = "`model@alias`")),
    request_body(content = Object, description = "MLflow scoring input, CSV, or {\"entities\": [...]}"),
    responses((status = 200, body = ScoringResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn invoke_alias(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path(target): Path<String>, headers: HeaderMap, ScoringBytes(body): ScoringBytes) -> Result<Response> {
    let Some((name, alias)) = target.split_once('@') else {
        return Err(Error::NotFound {
            kind: "route",
            name: format!("score with /v1/models/{target}@<alias>/invocations or /v1/models/{target}/versions/<n>/invocations"),
        });
    };
    invoke(&state, &p, &id.0, name, Target::Alias(alias.to_string()), &headers, body).await
}

async fn invoke(state: &AppState, p: &crate::identity::Principal, request_id: &str, name: &str, target: Target, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    p.require(READ, "score with models")?;
    let csv = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/csv"));
    let body = if csv { ScoringBody::Csv(body) } else { ScoringBody::Json(body) };
    let Invocation { outcome, version, rows, details } = state.serving.invoke(p, request_id, name, target, body).await?;
    let facts = AuditFacts { resource_name: Some(name.to_string()), versions_read: vec![version], rows, details, ..Default::default() };
    Ok(match outcome {
        Ok(response) => (Extension(facts), axum::Json(response)).into_response(),
        // A refused or failed scoring is recorded with what was tried: version, variant, input hash.
        Err(e) => {
            let mut r = e.into_response();
            r.extensions_mut().insert(facts);
            r
        }
    })
}

#[derive(Deserialize, IntoParams)]
pub struct DriftParams {
    /// RFC 3339: inference-log rows at or after (default: all).
    pub since: Option<String>,
    /// RFC 3339: rows before (default: now).
    pub until: Option<String>,
    /// Default 0.2.
    pub psi_threshold: Option<f64>,
    /// Default 0.2 (the KS statistic, not its p-value).
    pub ks_threshold: Option<f64>,
    /// Compare with rows this feature group's commits wrote instead of the inference log
    /// (inputs named `<group>__<feature>`), from `from_version` (exclusive) ...
    pub feature_group: Option<String>,
    pub from_version: Option<i64>,
    /// ... to `to_version` (inclusive; default the latest).
    pub to_version: Option<i64>,
}

fn micros(name: &str, t: Option<&str>) -> Result<Option<i64>> {
    t.map(|t| parse_micros(name, t)).transpose()
}

/// Drift of each input between the version's training set and its inference log in a
/// window: PSI, and for numbers the Kolmogorov–Smirnov statistic and p-value.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/drift", params(("name" = String, Path), ("version" = i64, Path), DriftParams),
    responses((status = 200, body = DriftReport), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn drift(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>, Query(q): Query<DriftParams>) -> Result<(Extension<AuditFacts>, axum::Json<DriftReport>)> {
    p.require(READ, "read model drift")?;
    let (since, until) = (micros("since", q.since.as_deref())?, micros("until", q.until.as_deref())?);
    let source = match (q.feature_group, q.from_version) {
        (Some(name), Some(from_version)) => Source::FeatureGroup { name, from_version, to_version: q.to_version },
        (None, None) if q.to_version.is_none() => Source::InferenceLog,
        _ => return Err(Error::BadRequest("give `feature_group` with `from_version` (and optionally `to_version`), or neither".into())),
    };
    let window = Window {
        source,
        since,
        until,
        psi_threshold: q.psi_threshold.unwrap_or(crate::serving::drift::DEFAULT_PSI_THRESHOLD),
        ks_threshold: q.ks_threshold.unwrap_or(crate::serving::drift::DEFAULT_KS_THRESHOLD),
    };
    let report = state.drift.report(&p, &name, version, window).await?;
    let facts = AuditFacts {
        resource_name: Some(name),
        versions_read: vec![version],
        rows: Some(report.current_rows),
        details: vec![("training_set_id".into(), report.training_set_id.clone()), ("drifted".into(), report.drifted.join(","))],
        ..Default::default()
    };
    Ok((Extension(facts), axum::Json(report)))
}

/// The alias's canaries, open and past.
#[utoipa::path(get, path = "/v1/models/{name}/aliases/{alias}/canary", params(("name" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = Vec<CanaryView>), (status = 404, body = ErrorBody)))]
pub async fn get_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>) -> Result<axum::Json<Vec<CanaryView>>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.serving.canaries(&p, &name, &alias).await?))
}

/// Splits the alias's traffic: `percent` goes to `version`, with an optional guard that
/// rolls the split back (and says why) when the canary's error rate or latency is too high.
#[utoipa::path(put, path = "/v1/models/{name}/aliases/{alias}/canary", params(("name" = String, Path), ("alias" = String, Path)), request_body = StartCanary,
    responses((status = 201, body = CanaryView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn start_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, ApiJson(req): ApiJson<StartCanary>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<CanaryView>)> {
    p.require(WRITE, "start canaries")?;
    let v = state.serving.start_canary(&p, &name, &alias, req).await?;
    let facts = AuditFacts { resource_name: Some(format!("{name}@{alias}")), details: vec![("canary_version".into(), v.version.to_string()), ("percent".into(), v.percent.to_string())], ..Default::default() };
    Ok((StatusCode::CREATED, Extension(facts), axum::Json(v)))
}

#[derive(Deserialize, IntoParams)]
pub struct EndParams {
    /// Why; kept with the canary.
    #[serde(default)]
    pub reason: String,
}

/// Stops the canary: all traffic goes back to the alias's version.
#[utoipa::path(delete, path = "/v1/models/{name}/aliases/{alias}/canary", params(("name" = String, Path), ("alias" = String, Path), EndParams),
    responses((status = 200, body = CanaryView), (status = 404, body = ErrorBody)))]
pub async fn stop_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, Query(q): Query<EndParams>) -> Result<axum::Json<CanaryView>> {
    p.require(WRITE, "stop canaries")?;
    Ok(axum::Json(state.serving.end_canary(&p, &name, &alias, false, &q.reason).await?))
}

/// Promotes the canary: the alias moves to its version (recorded in the alias history).
#[utoipa::path(post, path = "/v1/models/{name}/aliases/{alias}/canary/promote", params(("name" = String, Path), ("alias" = String, Path), EndParams),
    responses((status = 200, body = CanaryView), (status = 404, body = ErrorBody)))]
pub async fn promote_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, Query(q): Query<EndParams>) -> Result<axum::Json<CanaryView>> {
    p.require(WRITE, "promote canaries")?;
    Ok(axum::Json(state.serving.end_canary(&p, &name, &alias, true, &q.reason).await?))
}
