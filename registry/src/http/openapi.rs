//! The OpenAPI document, generated from the handlers' annotations; the committed copy in
//! `openapi/` is checked against it.

use utoipa::OpenApi;

use super::{admin, audit, feature_groups, inference, models, ops, serving, sql, training_sets};

#[derive(OpenApi)]
#[openapi(
    info(title = "lakeledger", description = "Audit-grade lakehouse feature store and model registry"),
    paths(
        ops::healthz, ops::readyz, ops::metrics,
        admin::whoami, admin::create_tenant, admin::list_tenants, admin::get_quotas, admin::set_quotas, admin::get_key_limits, admin::set_key_limits, admin::create_key, admin::list_keys, admin::revoke_key,
        feature_groups::create, feature_groups::list, feature_groups::get, feature_groups::update,
        feature_groups::evolve, feature_groups::archive, feature_groups::versions,
        feature_groups::ingest, feature_groups::read, feature_groups::vacuum,
        sql::query, training_sets::create, training_sets::list, training_sets::get, training_sets::delete, training_sets::data,
        training_sets::upload_spine, training_sets::get_spine,
        models::create, models::list, models::get, models::signing_key, models::signing_keys, models::versions, models::import, models::version,
        models::artifact, models::archive, models::delete_version, models::lineage, models::feature_group_lineage,
        models::move_alias, models::get_alias, models::delete_alias, models::alias_history,
        serving::features, serving::rebuild, serving::invoke_version, serving::invoke_alias, serving::drift,
        serving::get_canary, serving::start_canary, serving::stop_canary, serving::promote_canary, serving::entity_hash,
        models::create_job, models::list_jobs, models::get_job, models::cancel_job, models::job_events,
        audit::records, audit::checkpoints, audit::latest_checkpoint, audit::inclusion, audit::consistency,
        audit::public_key, audit::export, audit::tlog_checkpoint, audit::tlog_tile,
        inference::live, inference::ready, inference::server_metadata, inference::model_metadata, inference::version_metadata,
        inference::model_ready, inference::version_ready, inference::infer, inference::infer_version,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail, inference::InferenceErrorBody)),
    modifiers(&BearerAuth, &EdgeResponses),
    security(("api_key" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("an API key (llk_…) or a JWT from the configured identity provider").build()),
        );
    }
}

/// The answers the edge itself may give on any operation, before or around its handler:
/// an unknown key, a refused role, an over-limit body, a full server or tenant, the
/// ledger not taking the record, a read over its time limit. Documented on every
/// operation they apply to (unless the operation documents them itself), so that a
/// client generated from the document knows them.
struct EdgeResponses;

impl utoipa::Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The Open Inference Protocol's routes answer errors in its own shape.
            let schema = if path.starts_with("/v2") { "InferenceErrorBody" } else { "ErrorBody" };
            let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
                RefOr::T(ResponseBuilder::new().description(description).content("application/json", Content::new(Some(Ref::from_schema_name(schema)))).build())
            };
            let operations = [
                ("GET", item.get.as_mut()),
                ("PUT", item.put.as_mut()),
                ("POST", item.post.as_mut()),
                ("DELETE", item.delete.as_mut()),
                ("PATCH", item.patch.as_mut()),
            ];
            for (method, op) in operations {
                let Some(op) = op else { continue };
                let public = op.security.as_ref().is_some_and(|s| s.iter().all(|r| *r == Default::default()));
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
                };
                if !public {
                    add("401", "missing, unknown or revoked credentials");
                    add("403", "the caller's role may not do this");
                    add("429", "the tenant has its limit of requests in flight");
                }
                add("503", "the server is at its limit of requests in flight, or the audit ledger or catalog cannot take the request now");
                if op.request_body.is_some() {
                    add("400", "the body is malformed");
                    add("413", "the body is larger than this endpoint accepts");
                    add("415", "the body's content type is not accepted here");
                    add("422", "the body is well-formed but names something invalid or breaks a rule of this endpoint");
                }
                if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add("400", "a path or query parameter is malformed");
                }
                if path.contains('{') || op.request_body.is_some() {
                    add("404", "an object the path or body names does not exist in the caller's tenant");
                }
                if method != "GET" && !public {
                    add("409", "the change conflicts with the object's current state (archived, in use, changed meanwhile)");
                    add("422", "the request breaks a rule of this endpoint");
                }
                if super::audit_layer::interruptible(method, path) {
                    add("504", "the request took longer than the server's time limit");
                }
            }
        }
    }
}

/// The OpenAPI document as pretty JSON with a trailing newline (the committed form).
pub fn openapi_document() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().expect("OpenAPI document serializes");
    s.push('\n');
    s
}
