//! The OpenAPI document, generated from the handlers' annotations; the committed copy in
//! `openapi/` is checked against it.

use utoipa::OpenApi;

use super::{admin, audit, feature_groups, models, ops, serving, sql, training_sets};

#[derive(OpenApi)]
#[openapi(
    info(title = "lakeledger", description = "Audit-grade lakehouse feature store and model registry"),
    paths(
        ops::healthz, ops::readyz, ops::metrics,
        admin::whoami, admin::create_tenant, admin::list_tenants, admin::create_key, admin::list_keys, admin::revoke_key,
        feature_groups::create, feature_groups::list, feature_groups::get, feature_groups::update,
        feature_groups::evolve, feature_groups::archive, feature_groups::versions,
        feature_groups::ingest, feature_groups::read, feature_groups::vacuum,
        sql::query, training_sets::create, training_sets::list, training_sets::get, training_sets::delete, training_sets::data,
        training_sets::upload_spine, training_sets::get_spine,
        models::create, models::list, models::get, models::signing_key, models::versions, models::import, models::version,
        models::artifact, models::archive, models::delete_version, models::lineage, models::feature_group_lineage,
        models::move_alias, models::get_alias, models::delete_alias, models::alias_history,
        serving::features, serving::rebuild, serving::invoke_version, serving::invoke_alias, serving::drift,
        serving::get_canary, serving::start_canary, serving::stop_canary, serving::promote_canary, serving::entity_hash,
        models::create_job, models::list_jobs, models::get_job, models::cancel_job, models::job_events,
        audit::records, audit::checkpoints, audit::latest_checkpoint, audit::inclusion, audit::consistency,
        audit::public_key, audit::export, audit::tlog_checkpoint, audit::tlog_tile,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail)),
    modifiers(&BearerAuth),
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
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("llk_…").build()),
        );
    }
}

/// The OpenAPI document as pretty JSON with a trailing newline (the committed form).
pub fn openapi_document() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().expect("OpenAPI document serializes");
    s.push('\n');
    s
}
