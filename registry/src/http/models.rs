//! Model registry and training-job routes. Handlers parse and delegate to
//! `crate::models` and `crate::training::jobs`.

use std::convert::Infallible;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiJson;
use super::audit_layer::AuditFacts;
use crate::platform::audit::AuditContext;
use super::auth::Caller;
use crate::platform::catalog::Role;
use super::error::ErrorBody;
use crate::error::{Error, Result};
use crate::training::{CreateJob, JobView};
use crate::models::{AliasMoveView, CreateModel, ImportOptions, ModelVersionView, ModelView, MoveAlias};
use super::state::AppState;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Writer];

fn facts(name: &str, version: Option<i64>, written: bool) -> Extension<AuditFacts> {
    let versions: Vec<i64> = version.into_iter().collect();
    Extension(AuditFacts {
        resource_name: Some(name.to_string()),
        versions_read: if written { vec![] } else { versions.clone() },
        versions_written: if written { versions } else { vec![] },
        ..Default::default()
    })
}

/// Registers a model (name, description, owner, tags).
#[utoipa::path(post, path = "/v1/models", request_body = CreateModel,
    responses((status = 201, body = ModelView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<CreateModel>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<ModelView>)> {
    p.require(WRITE, "register models")?;
    let m = state.models.create(&p, req).await?;
    Ok((StatusCode::CREATED, facts(&m.name, None, true), axum::Json(m)))
}

/// The tenant's registered models.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = Vec<ModelView>)))]
pub async fn list(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<Vec<ModelView>>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.models.list(&p).await?))
}

/// One model with its latest version and aliases.
#[utoipa::path(get, path = "/v1/models/{name}", params(("name" = String, Path)), responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<axum::Json<ModelView>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.models.get(&p, &name).await?))
}

/// The model-signing keys: the current one and those it replaced, whose signatures on
/// earlier versions are still accepted.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SigningKeys {
    /// C2SP verifier key new versions are signed with.
    pub current: String,
    /// Keys earlier versions may be signed with, oldest first.
    pub previous: Vec<String>,
}

/// Every model-signing key: current and previous (after `lakeledger models rotate-signing-key`).
#[utoipa::path(get, path = "/v1/models/signing-keys", responses((status = 200, body = SigningKeys)))]
pub async fn signing_keys(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<SigningKeys>> {
    p.require(&[Role::Admin, Role::Writer, Role::Reader, Role::Auditor], "read the model-signing keys")?;
    Ok(axum::Json(SigningKeys { current: state.models.signing_key(), previous: state.models.previous_signing_keys() }))
}

/// The public key model artifacts are signed with (C2SP verifier key).
#[utoipa::path(get, path = "/v1/models/signing-key", responses((status = 200, description = "the verifier key, as text")))]
pub async fn signing_key(State(state): State<AppState>, Caller(p): Caller) -> Result<String> {
    p.require(&[Role::Admin, Role::Writer, Role::Reader, Role::Auditor], "read the model-signing key")?;
    Ok(format!("{}\n", state.models.signing_key()))
}

/// Every version of a model, with lineage, metrics and signature.
#[utoipa::path(get, path = "/v1/models/{name}/versions", params(("name" = String, Path)), responses((status = 200, body = Vec<ModelVersionView>)))]
pub async fn versions(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<axum::Json<Vec<ModelVersionView>>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.models.versions(&p, &name).await?))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// ONNX: names of the features of the graph's single 2-D input, comma-separated, in
    /// order (a signature; without it the columns are `<input>[i]`). Name them as the
    /// training set does (`group__feature`) to score by entity key.
    pub columns: Option<String>,
    /// The training set the model was trained on, as the uploader declares it (recorded as
    /// declared, not verified; drift reports compare with it).
    pub training_set_id: Option<String>,
}

/// Registers a model trained elsewhere as a new version, marked `imported`: this server's
/// artifact format (JSON), an ONNX model (scikit-learn, XGBoost, LightGBM converters,
/// PyTorch exports), or an MLflow model directory with an `onnx` flavor as a tar (or
/// .tar.gz) or zip archive (its column signature names the inputs). An ONNX graph is checked and prepared before it is stored: an operator
/// the server cannot run, a shape it cannot serve or a body that is not a model is refused
/// with 422. Stored by SHA-256 and signed like every artifact. With the header
/// `x-lakeledger-artifact-sha256`, a body whose hash differs is refused (422).
#[utoipa::path(post, path = "/v1/models/{name}/versions", params(("name" = String, Path), ImportQuery),
    request_body(content = String, description = "a lakeledger model artifact (application/json), an ONNX model, or an MLflow model directory as a tar or zip archive (application/octet-stream)", content_type = "application/octet-stream"),
    responses((status = 201, body = ModelVersionView), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn import(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>, Query(q): Query<ImportQuery>, headers: axum::http::HeaderMap, body: Body) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<ModelVersionView>)> {
    p.require(WRITE, "register model versions")?;
    state.quotas.check_storage(&p).await?;
    let limit = state.limits.max_model_bytes;
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await.map_err(|_| Error::PayloadTooLarge { limit })?;
    if let Some(declared) = headers.get("x-lakeledger-artifact-sha256") {
        // The uploader's hash of what it sent: a body changed on the way is refused.
        let declared = declared.to_str().unwrap_or_default().trim().to_ascii_lowercase();
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if declared != actual {
            return Err(Error::Unprocessable(format!("the upload's SHA-256 is {actual}, not {declared} as declared in x-lakeledger-artifact-sha256: it was changed on the way")));
        }
    }
    if let Some(id) = &q.training_set_id {
        // Declared, not verified, but it must be one of the caller's training sets.
        state.training_sets.manifest(&p, id).await?;
    }
    let columns = q.columns.map(|c| c.split(',').map(|n| n.trim().to_string()).collect::<Vec<_>>());
    if let Some(empty) = columns.as_ref().and_then(|c| c.iter().position(String::is_empty)) {
        return Err(Error::Unprocessable(format!("`columns`: name {} is empty", empty + 1)));
    }
    let options = ImportOptions { columns, training_set_id: q.training_set_id, unpacked_limit: limit };
    let v = state.models.import(&p, &name, bytes.to_vec(), options).await?;
    Ok((StatusCode::CREATED, facts(&name, Some(v.version), true), axum::Json(v)))
}

/// One version.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}", params(("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, body = ModelVersionView), (status = 404, body = ErrorBody)))]
pub async fn version(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>) -> Result<(Extension<AuditFacts>, axum::Json<ModelVersionView>)> {
    p.require(READ, "read models")?;
    Ok((facts(&name, Some(version), false), axum::Json(state.models.version(&p, &name, version).await?)))
}

/// What form a download takes.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFormat {
    /// The stored artifact, as signed.
    Native,
    /// A model trained here written as an ONNX graph (runnable by onnxruntime); an
    /// imported ONNX model as stored.
    Onnx,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// `native` (default) or `onnx`.
    pub format: Option<ArtifactFormat>,
}

/// The artifact, after its hash and signature are checked (a tampered one is refused).
/// With `format=onnx`, a model trained here is exported as ONNX from that checked artifact;
/// the stored artifact's SHA-256 is in `x-lakeledger-artifact-sha256` either way.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/artifact", params(("name" = String, Path), ("version" = i64, Path), ArtifactQuery),
    responses((status = 200, description = "the artifact"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn artifact(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>, Query(q): Query<ArtifactQuery>) -> Result<Response> {
    p.require(READ, "download model artifacts")?;
    // The stored artifact (an imported ONNX graph may be large) goes out from a checked
    // local copy; an export is built in memory from a model trained here (small).
    let (v, len, body, content_type) = match q.format {
        None | Some(ArtifactFormat::Native) => {
            let (v, copy) = state.models.artifact_copy(&p, &name, version).await?;
            let content_type = if v.backend == "onnx" { "application/octet-stream" } else { "application/json" };
            (v, copy.len, Body::from_stream(copy.into_stream().await?), content_type)
        }
        Some(ArtifactFormat::Onnx) => {
            let (v, bytes) = state.models.onnx(&p, &name, version).await?;
            (v, bytes.len() as u64, Body::from(bytes), "application/octet-stream")
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(sha) = HeaderValue::from_str(&v.artifact_sha256) {
        h.insert("x-lakeledger-artifact-sha256", sha);
    }
    let mut facts = facts(&name, Some(version), false).0;
    if let Some(f) = q.format {
        facts.details.push(("format".into(), format!("{f:?}").to_ascii_lowercase()));
    }
    response.extensions_mut().insert(facts);
    Ok(response)
}

/// Archives a version: it stays readable but takes no aliases.
#[utoipa::path(post, path = "/v1/models/{name}/versions/{version}/archive", params(("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, body = ModelVersionView), (status = 404, body = ErrorBody)))]
pub async fn archive(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>) -> Result<(Extension<AuditFacts>, axum::Json<ModelVersionView>)> {
    p.require(WRITE, "archive model versions")?;
    Ok((facts(&name, Some(version), true), axum::Json(state.models.set_state(&p, &name, version, "archived").await?)))
}

/// Deletes a version; refused while an alias points at it.
#[utoipa::path(delete, path = "/v1/models/{name}/versions/{version}", params(("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, body = ModelVersionView), (status = 409, body = ErrorBody)))]
pub async fn delete_version(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>) -> Result<(Extension<AuditFacts>, axum::Json<ModelVersionView>)> {
    p.require(WRITE, "delete model versions")?;
    Ok((facts(&name, Some(version), true), axum::Json(state.models.set_state(&p, &name, version, "deleted").await?)))
}

/// Model version → training set → feature groups and versions.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/lineage", params(("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, description = "lineage"), (status = 404, body = ErrorBody)))]
pub async fn lineage(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, i64)>) -> Result<axum::Json<serde_json::Value>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.lineage.of_model_version(&p, &name, version).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct LineageParams {
    /// Only training sets that read this version.
    pub version: Option<i64>,
}

/// Feature group (version) → training sets that read it → model versions trained on them.
#[utoipa::path(get, path = "/v1/feature-groups/{name}/lineage", params(("name" = String, Path), LineageParams),
    responses((status = 200, description = "lineage"), (status = 404, body = ErrorBody)))]
pub async fn feature_group_lineage(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>, Query(q): Query<LineageParams>) -> Result<axum::Json<serde_json::Value>> {
    p.require(READ, "read lineage")?;
    Ok(axum::Json(state.lineage.of_feature_group(&p, &name, q.version).await?))
}

/// Points an alias at a version (creating or moving it); the move is kept in its history.
#[utoipa::path(put, path = "/v1/models/{name}/aliases/{alias}", params(("name" = String, Path), ("alias" = String, Path)), request_body = MoveAlias,
    responses((status = 200, body = AliasMoveView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn move_alias(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, ApiJson(req): ApiJson<MoveAlias>) -> Result<(Extension<AuditFacts>, axum::Json<AliasMoveView>)> {
    p.require(WRITE, "move aliases")?;
    let m = state.models.move_alias(&p, &name, &alias, Some(req.version), &req.reason).await?;
    Ok((facts(&name, Some(req.version), true), axum::Json(m)))
}

#[derive(Deserialize, IntoParams)]
pub struct AliasParams {
    /// RFC 3339: the version the alias pointed at then.
    pub at: Option<String>,
    /// Why (when removing).
    pub reason: Option<String>,
}

/// The version an alias points at, now or at `?at=`.
#[utoipa::path(get, path = "/v1/models/{name}/aliases/{alias}", params(("name" = String, Path), ("alias" = String, Path), AliasParams),
    responses((status = 200, body = ModelVersionView), (status = 404, body = ErrorBody)))]
pub async fn get_alias(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, Query(q): Query<AliasParams>) -> Result<(Extension<AuditFacts>, axum::Json<ModelVersionView>)> {
    p.require(READ, "read models")?;
    let at = match q.at.as_deref() {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| Error::BadRequest(format!("at `{t}` is not an RFC 3339 time: {e}")))?
                .timestamp_micros(),
        ),
        None => None,
    };
    let version = state.models.resolve_alias(&p, &name, &alias, at).await?;
    Ok((facts(&name, Some(version), false), axum::Json(state.models.version(&p, &name, version).await?)))
}

/// Removes an alias (kept in its history).
#[utoipa::path(delete, path = "/v1/models/{name}/aliases/{alias}", params(("name" = String, Path), ("alias" = String, Path), AliasParams),
    responses((status = 200, body = AliasMoveView), (status = 404, body = ErrorBody)))]
pub async fn delete_alias(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>, Query(q): Query<AliasParams>) -> Result<axum::Json<AliasMoveView>> {
    p.require(WRITE, "move aliases")?;
    Ok(axum::Json(state.models.move_alias(&p, &name, &alias, None, q.reason.as_deref().unwrap_or("")).await?))
}

/// Every move of an alias: who, when, from, to, why.
#[utoipa::path(get, path = "/v1/models/{name}/aliases/{alias}/history", params(("name" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = Vec<AliasMoveView>), (status = 404, body = ErrorBody)))]
pub async fn alias_history(State(state): State<AppState>, Caller(p): Caller, Path((name, alias)): Path<(String, String)>) -> Result<axum::Json<Vec<AliasMoveView>>> {
    p.require(READ, "read models")?;
    Ok(axum::Json(state.models.alias_history(&p, &name, &alias).await?))
}

/// Starts a training job: 202 with its id; follow it with `GET …/events`.
#[utoipa::path(post, path = "/v1/training-jobs", request_body = CreateJob,
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_job(State(state): State<AppState>, Caller(p): Caller, ctx: AuditContext, ApiJson(req): ApiJson<CreateJob>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<JobView>)> {
    p.require(WRITE, "start training jobs")?;
    state.quotas.check_jobs(&p).await?;
    state.quotas.check_storage(&p).await?;
    let job = state.jobs.create(&p, &ctx, req).await?;
    let facts = AuditFacts { resource_name: Some(job.id.clone()), details: vec![("model".into(), job.model.clone()), ("training_set_id".into(), job.training_set_id.clone())], ..Default::default() };
    Ok((StatusCode::ACCEPTED, Extension(facts), axum::Json(job)))
}

/// The tenant's training jobs, oldest first.
#[utoipa::path(get, path = "/v1/training-jobs", responses((status = 200, body = Vec<JobView>)))]
pub async fn list_jobs(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<Vec<JobView>>> {
    p.require(READ, "read training jobs")?;
    Ok(axum::Json(state.jobs.list(&p).await?))
}

/// A job: state, progress, timings, error, the model version it registered.
#[utoipa::path(get, path = "/v1/training-jobs/{id}", params(("id" = String, Path)), responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_job(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<axum::Json<JobView>> {
    p.require(READ, "read training jobs")?;
    Ok(axum::Json(state.jobs.get(&p, &id).await?))
}

/// Cancels a job (also `DELETE /v1/training-jobs/{id}`).
#[utoipa::path(post, path = "/v1/training-jobs/{id}/cancel", params(("id" = String, Path)), responses((status = 202, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn cancel_job(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<(StatusCode, axum::Json<JobView>)> {
    p.require(WRITE, "cancel training jobs")?;
    Ok((StatusCode::ACCEPTED, axum::Json(state.jobs.cancel(&p, &id).await?)))
}

/// Progress as Server-Sent Events: the current state, then one `job` event per change,
/// ending with the final state.
#[utoipa::path(get, path = "/v1/training-jobs/{id}/events", params(("id" = String, Path)), responses((status = 200, description = "text/event-stream of job states")))]
pub async fn job_events(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    p.require(READ, "read training jobs")?;
    let event = |v: JobView| Ok(Event::default().event("job").json_data(&v).unwrap_or_else(|_| Event::default().event("job")));
    let stream = futures::StreamExt::map(state.jobs.follow(&p, &id).await?, event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
