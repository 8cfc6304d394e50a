//! Online serving routes: feature vectors, model invocations, canaries. Handlers parse
//! and delegate to `crate::online` and `crate::serving`.

use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::ApiJson;
use crate::platform::audit::{AuditFacts, RequestId};
use crate::identity::{Caller, Principal};
use crate::platform::catalog::Role;
use crate::error::{Error, ErrorBody, Result};
use crate::online::{self, EntityRows, OnlineFeaturesRequest, OnlineFeaturesResponse, RebuildReport};
use crate::serving::{self, CanaryView, ScoringInput, ScoringResponse, StartCanary};
use crate::http::state::AppState;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Writer];

/// The latest feature values of entities, from the online store (Feast's
/// `get-online-features` shape).
#[utoipa::path(post, path = "/v1/online/features", request_body = OnlineFeaturesRequest,
    responses((status = 200, body = OnlineFeaturesResponse), (status = 422, body = ErrorBody)))]
pub async fn features(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<OnlineFeaturesRequest>) -> Result<(Extension<AuditFacts>, axum::Json<OnlineFeaturesResponse>)> {
    p.require(READ, "read online features")?;
    let (response, details) = online::get_online_features(&state, &p.tenant_id, &req)?;
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
    responses((status = 200, body = RebuildReport), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rebuild(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<(Extension<AuditFacts>, axum::Json<RebuildReport>)> {
    p.require(WRITE, "rebuild the online store")?;
    let g = crate::features::find(&state, &p, &name).await?;
    let report = online::rebuild(&state, &g).await?;
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
    Ok(axum::Json(serde_json::json!({"hash": state.entity_hasher.hash(&pairs)})))
}

/// What a scoring request names: a version, or an alias to route.
enum Target {
    Version(i64),
    Alias(String),
}

/// Scores rows with one model version. Takes MLflow's scoring inputs (`dataframe_split`,
/// `dataframe_records`, `instances`, `inputs`, or `text/csv`), or `{"entities": [...]}`
/// to look the inputs up in the online store.
#[utoipa::path(post, path = "/v1/models/{name}/versions/{version}/invocations", params(("name" = String, Path), ("version" = i64, Path)),
    request_body(content = Object, description = "MLflow scoring input, CSV, or {\"entities\": [...]}"),
    responses((status = 200, body = ScoringResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn invoke_version(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path((name, version)): Path<(String, i64)>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    invoke(&state, &p, &id.0, &name, Target::Version(version), &headers, body).await
}

/// Scores rows with the version an alias points at (`name@alias`), following its canary
/// split if it has one. Inputs as for a version.
#[utoipa::path(post, path = "/v1/models/{target}/invocations", params(("target" = String, Path, description = "`model@alias`")),
    request_body(content = Object, description = "MLflow scoring input, CSV, or {\"entities\": [...]}"),
    responses((status = 200, body = ScoringResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn invoke_alias(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path(target): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let Some((name, alias)) = target.split_once('@') else {
        return Err(Error::NotFound {
            kind: "route",
            name: format!("score with /v1/models/{target}@<alias>/invocations or /v1/models/{target}/versions/<n>/invocations"),
        });
    };
    invoke(&state, &p, &id.0, name, Target::Alias(alias.to_string()), &headers, body).await
}

async fn invoke(state: &AppState, p: &Principal, request_id: &str, name: &str, target: Target, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    p.require(READ, "score with models")?;
    let started = Instant::now();
    let csv = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/csv"));
    // Parse before routing, so a malformed body never counts against a canary.
    let json: Option<Value> = if csv {
        None
    } else {
        Some(serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?)
    };
    let (version, alias, canary) = match &target {
        Target::Version(v) => (*v, None, None),
        Target::Alias(a) => {
            let route = serving::route(state, p, name, a).await?;
            let (v, c) = serving::pick(&route);
            (v, Some(a.clone()), c)
        }
    };
    let mut facts = AuditFacts { resource_name: Some(name.to_string()), versions_read: vec![version], ..Default::default() };
    if let Some(a) = &alias {
        facts.details.push(("alias".into(), a.clone()));
        facts.details.push(("variant".into(), if canary.is_some() { "canary" } else { "stable" }.into()));
    }
    facts.details.push(("input_sha256".into(), hex::encode(Sha256::digest(&body))));
    let outcome = score(state, p, name, version, json, &body, &mut facts).await;
    let elapsed = started.elapsed();
    let label = format!("{}/{name}", p.tenant);
    let status = match &outcome {
        Ok(_) => "ok".to_string(),
        Err(e) => e.status_and_code().0.as_u16().to_string(),
    };
    metrics::counter!("lakeledger_model_requests_total", "model" => label.clone(), "version" => version.to_string(), "status" => status).increment(1);
    metrics::histogram!("lakeledger_model_request_seconds", "model" => label, "version" => version.to_string()).record(elapsed.as_secs_f64());
    if let Some(c) = &canary {
        let model_id = serving::model_id(state, p, name).await?;
        serving::observe_canary(state, p, name, &model_id, c, outcome.is_err(), elapsed);
    }
    let (response, input, entities) = match outcome {
        Ok(answer) => answer,
        // A refused or failed scoring is recorded with what was tried: version, variant, input hash.
        Err(e) => {
            let mut r = e.into_response();
            r.extensions_mut().insert(facts);
            return Ok(r);
        }
    };
    facts.rows = Some(response.predictions.len() as u64);
    let rate = state.serving.config.inference_log_sample_rate;
    if rate > 0.0 && (rate >= 1.0 || rand::random::<f64>() < rate) {
        let variant = alias.as_ref().map(|_| if canary.is_some() { "canary" } else { "stable" });
        let rows = log_rows(request_id, &response, &input, entities.as_ref(), alias, variant);
        state.inference_log.push(p, name, rows);
    }
    Ok((Extension(facts), axum::Json(response)).into_response())
}

/// One inference-log row per scored row: inputs, entity keys, prediction.
fn log_rows(request_id: &str, response: &ScoringResponse, input: &ScoringInput, entities: Option<&EntityRows>, alias: Option<String>, variant: Option<&'static str>) -> Vec<crate::serving::inference_log::LogRow> {
    let served_at = crate::platform::catalog::now_micros();
    (0..input.rows)
        .map(|r| {
            let row_of = |columns: &[String], values: &[Value]| -> String {
                let width = columns.len();
                let object: serde_json::Map<String, Value> = columns.iter().cloned().zip(values[r * width..(r + 1) * width].iter().cloned()).collect();
                Value::Object(object).to_string()
            };
            let mut prediction = serde_json::json!({"prediction": response.predictions[r]});
            if let Some(p) = &response.probabilities {
                prediction["probabilities"] = Value::Array(p[r].clone());
            }
            crate::serving::inference_log::LogRow {
                request_id: request_id.to_string(),
                row: r as i32,
                served_at,
                version: response.version,
                alias: alias.clone(),
                variant,
                inputs: row_of(&input.columns, &input.values),
                entity: entities.map(|e| row_of(&e.columns, &e.values)),
                prediction: prediction.to_string(),
            }
        })
        .collect()
}

/// `json` is `None` for a CSV body. Returns the answer, the rows scored (model inputs
/// only) and the entity rows when the request named entities.
async fn score(state: &AppState, p: &Principal, name: &str, version: i64, json: Option<Value>, body: &[u8], facts: &mut AuditFacts) -> Result<(ScoringResponse, ScoringInput, Option<EntityRows>)> {
    let model = serving::loaded(state, p, name, version).await?;
    let inputs: Vec<String> = model.artifact.inputs.iter().map(|c| c.name.clone()).collect();
    let mut entity_rows = None;
    let input = match json {
        None => ScoringInput::from_csv(body)?,
        Some(Value::Object(mut map)) if map.contains_key("entities") => {
            if map.len() > 1 {
                return Err(Error::Unprocessable("with `entities`, give nothing else: the inputs come from the online store".into()));
            }
            let entities = EntityRows::parse(&map.remove("entities").unwrap_or(Value::Null))?;
            let serving::EntityInput { input, served, missing } = serving::input_from_entities(state, &p.tenant_id, &inputs, &entities)?;
            facts.details.push(("served".into(), served.iter().map(|(g, v)| format!("{g}@{v}")).collect::<Vec<_>>().join(",")));
            let keys: Vec<String> = entities.columns.iter().filter(|c| !inputs.contains(c)).cloned().collect();
            facts.details.push(("entity_key_hashes".into(), state.entity_hasher.hash_rows(&entities, &keys)));
            if !missing.is_empty() {
                facts.details.push(("features_not_present".into(), missing.join(",")));
            }
            entity_rows = Some(entities);
            input
        }
        Some(v) => ScoringInput::from_mlflow_json(&v, &inputs)?,
    };
    if input.rows == 0 {
        return Err(Error::Unprocessable("there are no rows to score".into()));
    }
    let (matrix, input) = model.encode(input)?;
    let predictions = model.score(matrix, input.rows).await?;
    Ok((model.response(&predictions), input, entity_rows))
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
    t.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|e| Error::BadRequest(format!("`{name}` must be an RFC 3339 time such as 2026-03-01T00:00:00Z: {e}")))
    })
    .transpose()
}

/// Drift of each input between the version's training set and its inference log in a
/// window: PSI, and for numbers the Kolmogorov–Smirnov statistic and p-value.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/drift", params(("name" = String, Path), ("version" = i64, Path), DriftParams),
    responses((status = 200, body = crate::serving::drift::DriftReport), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn drift(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>, Query(q): Query<DriftParams>) -> Result<(Extension<AuditFacts>, axum::Json<crate::serving::drift::DriftReport>)> {
    p.require(READ, "read model drift")?;
    let (since, until) = (micros("since", q.since.as_deref())?, micros("until", q.until.as_deref())?);
    let source = match (q.feature_group, q.from_version) {
        (Some(name), Some(from_version)) => crate::serving::drift::Source::FeatureGroup { name, from_version, to_version: q.to_version },
        (None, None) if q.to_version.is_none() => crate::serving::drift::Source::InferenceLog,
        _ => return Err(Error::BadRequest("give `feature_group` with `from_version` (and optionally `to_version`), or neither".into())),
    };
    let window = crate::serving::drift::Window {
        source,
        since,
        until,
        psi_threshold: q.psi_threshold.unwrap_or(crate::serving::drift::DEFAULT_PSI_THRESHOLD),
        ks_threshold: q.ks_threshold.unwrap_or(crate::serving::drift::DEFAULT_KS_THRESHOLD),
    };
    let report = crate::serving::drift::report(&state, &p, &name, version, window).await?;
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
    Ok(axum::Json(serving::canaries(&state, &p, &name, &alias).await?))
}

/// Splits the alias's traffic: `percent` goes to `version`, with an optional guard that
/// rolls the split back (and says why) when the canary's error rate or latency is too high.
#[utoipa::path(put, path = "/v1/models/{name}/aliases/{alias}/canary", params(("name" = String, Path), ("alias" = String, Path)), request_body = StartCanary,
    responses((status = 201, body = CanaryView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn start_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, ApiJson(req): ApiJson<StartCanary>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<CanaryView>)> {
    p.require(WRITE, "start canaries")?;
    let v = serving::start_canary(&state, &p, &name, &alias, req).await?;
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
    Ok(axum::Json(serving::end_canary(&state, &p, &name, &alias, false, &q.reason).await?))
}

/// Promotes the canary: the alias moves to its version (recorded in the alias history).
#[utoipa::path(post, path = "/v1/models/{name}/aliases/{alias}/canary/promote", params(("name" = String, Path), ("alias" = String, Path), EndParams),
    responses((status = 200, body = CanaryView), (status = 404, body = ErrorBody)))]
pub async fn promote_canary(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, Query(q): Query<EndParams>) -> Result<axum::Json<CanaryView>> {
    p.require(WRITE, "promote canaries")?;
    Ok(axum::Json(serving::end_canary(&state, &p, &name, &alias, true, &q.reason).await?))
}
