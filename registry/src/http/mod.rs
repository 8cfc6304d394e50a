//! The HTTP edge: routes, the JSON extractor with our error body, the audit layer, the
//! mapping of errors to one body, and the OpenAPI document. Handlers are thin: parse,
//! check the role, call one service, map the result.
//!
//! Sees every domain; no domain sees it.

mod admin;
mod audit;
mod console;
pub mod audit_layer;
pub mod auth;
pub mod error;
mod feature_groups;
mod inference;
mod models;
mod openapi;
mod ops;
mod serving;
mod sql;
pub mod state;
mod training_sets;

pub use openapi::{ApiDoc, openapi_document};
pub use state::{AppState, HttpLimits, Services};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post, put};
use crate::error::Error;

/// JSON bodies of control requests, up to `max_json_body_bytes`; every rejection uses the
/// common error body (413 when too large, 415 without a JSON content type).
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    axum::Json<T>: FromRequest<(), Rejection = JsonRejection>,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.limits.max_json_body_bytes;
        match axum::Json::<T>::from_request(limited(req, limit), &()).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(Error::UnsupportedMediaType("(missing); this endpoint takes application/json".into()))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(Error::Unprocessable(e.body_text())),
            Err(JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)))) => {
                Err(Error::PayloadTooLarge { limit })
            }
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// A whole scoring body, up to `max_scoring_body_bytes`, with the common error body on
/// rejection.
pub struct ScoringBytes(pub Bytes);

impl FromRequest<AppState> for ScoringBytes {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.limits.max_scoring_body_bytes;
        match Bytes::from_request(limited(req, limit), &()).await {
            Ok(b) => Ok(ScoringBytes(b)),
            Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => Err(Error::PayloadTooLarge { limit }),
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// The request with its body cut off at `limit` bytes. (axum's own default limit is
/// turned off in `app::server`, so each extractor states its own.)
fn limited(req: Request, limit: u64) -> Request {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)))
}

/// The Open Inference Protocol's routes, whose errors take the protocol's shape.
fn inference_protocol() -> Router<AppState> {
    Router::new()
        .route("/v2", get(inference::server_metadata))
        .route("/v2/health/live", get(inference::live))
        .route("/v2/health/ready", get(inference::ready))
        .route("/v2/models/{name}", get(inference::model_metadata))
        .route("/v2/models/{name}/ready", get(inference::model_ready))
        .route("/v2/models/{name}/infer", post(inference::infer))
        .route("/v2/models/{name}/versions/{version}", get(inference::version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(inference::version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(inference::infer_version))
        .layer(axum::middleware::map_response(error::as_inference_protocol_error))
}

/// The route table. Every route passes through the recording layer (see `app::server::app`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/docs", get(ops::docs))
        .route("/ui", get(console::index))
        .route("/ui/", get(console::index))
        .route("/ui/{file}", get(console::asset))
        .route("/v1/whoami", get(admin::whoami))
        .route("/v1/tenants", post(admin::create_tenant).get(admin::list_tenants))
        .route("/v1/tenants/{name}/quotas", get(admin::get_quotas).put(admin::set_quotas))
        .route("/v1/keys", post(admin::create_key).get(admin::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/v1/keys/{id}/limits", get(admin::get_key_limits).put(admin::set_key_limits))
        .route("/v1/feature-groups", post(feature_groups::create).get(feature_groups::list))
        .route("/v1/feature-groups/{name}", get(feature_groups::get).patch(feature_groups::update))
        .route("/v1/feature-groups/{name}/schema", put(feature_groups::evolve))
        .route("/v1/feature-groups/{name}/archive", post(feature_groups::archive))
        .route("/v1/feature-groups/{name}/versions", get(feature_groups::versions))
        .route("/v1/feature-groups/{name}/data", post(feature_groups::ingest).get(feature_groups::read))
        .route("/v1/feature-groups/{name}/vacuum", post(feature_groups::vacuum))
        .route("/v1/sql", post(sql::query))
        .route("/v1/training-sets", post(training_sets::create).get(training_sets::list))
        .route("/v1/training-sets/{id}", get(training_sets::get).delete(training_sets::delete))
        .route("/v1/training-sets/{id}/data", get(training_sets::data))
        .route("/v1/feature-groups/{name}/lineage", get(models::feature_group_lineage))
        .route("/v1/models", post(models::create).get(models::list))
        .route("/v1/models/signing-key", get(models::signing_key))
        .route("/v1/models/signing-keys", get(models::signing_keys))
        .route("/v1/models/{name}", get(models::get))
        .route("/v1/models/{name}/versions", get(models::versions).post(models::import))
        .route("/v1/models/{name}/versions/{version}", get(models::version).delete(models::delete_version))
        .route("/v1/models/{name}/versions/{version}/artifact", get(models::artifact))
        .route("/v1/models/{name}/versions/{version}/archive", post(models::archive))
        .route("/v1/models/{name}/versions/{version}/lineage", get(models::lineage))
        .route("/v1/models/{name}/aliases/{alias}", get(models::get_alias).put(models::move_alias).delete(models::delete_alias))
        .route("/v1/models/{name}/aliases/{alias}/history", get(models::alias_history))
        .route("/v1/training-jobs", post(models::create_job).get(models::list_jobs))
        .route("/v1/training-jobs/{id}", get(models::get_job))
        .route("/v1/training-jobs/{id}/cancel", post(models::cancel_job))
        .route("/v1/training-jobs/{id}/events", get(models::job_events))
        .route("/v1/online/features", post(serving::features))
        .route("/v1/feature-groups/{name}/online/rebuild", post(serving::rebuild))
        .route("/v1/models/{name}/versions/{version}/invocations", post(serving::invoke_version))
        .route("/v1/models/{target}/invocations", post(serving::invoke_alias))
        .route("/v1/models/{name}/versions/{version}/drift", get(serving::drift))
        .route("/v1/models/{name}/aliases/{alias}/canary", get(serving::get_canary).put(serving::start_canary).delete(serving::stop_canary))
        .route("/v1/models/{name}/aliases/{alias}/canary/promote", post(serving::promote_canary))
        .route("/v1/audit/entity-hash", post(serving::entity_hash))
        .merge(inference_protocol())
        .route("/v1/spines", post(training_sets::upload_spine))
        .route("/v1/spines/{id}", get(training_sets::get_spine))
        .route("/v1/audit/records", get(audit::records))
        .route("/v1/audit/checkpoints", get(audit::checkpoints))
        .route("/v1/audit/checkpoints/latest", get(audit::latest_checkpoint))
        .route("/v1/audit/proofs/inclusion", get(audit::inclusion))
        .route("/v1/audit/proofs/consistency", get(audit::consistency))
        .route("/v1/audit/public-key", get(audit::public_key))
        .route("/v1/audit/export", post(audit::export))
        .route("/v1/audit/tlog/checkpoint", get(audit::tlog_checkpoint))
        .route("/v1/audit/tlog/tile/{*path}", get(audit::tlog_tile))
}

