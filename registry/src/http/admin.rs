//! Tenants and API keys.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiJson;
use super::audit_layer::AuditFacts;
use super::auth::Caller;
use super::error::ErrorBody;
use super::state::AppState;
use crate::error::Result;
use crate::identity::{CreateKey, MintedKey, Principal};
use crate::platform::catalog::{ApiKey, KeyLimits, Quotas, Tenant};

/// The caller's identity as the server sees it.
#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = Principal), (status = 401, body = ErrorBody)))]
pub async fn whoami(Caller(p): Caller) -> axum::Json<Principal> {
    axum::Json(p)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
}

/// Creates a tenant (admins of the `default` tenant only).
#[utoipa::path(post, path = "/v1/tenants", request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_tenant(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<CreateTenant>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<Tenant>)> {
    let t = state.identity.create_tenant(&p, &req.name).await?;
    Ok((StatusCode::CREATED, in_tenant(&t.name, &t.name), axum::Json(t)))
}

/// The outcome names the tenant acted on, so that tenant's auditors see what an
/// operator did to it.
fn in_tenant(tenant: &str, resource: &str) -> Extension<AuditFacts> {
    Extension(AuditFacts { resource_name: Some(resource.to_string()), resource_tenant: Some(tenant.to_string()), ..Default::default() })
}

/// Lists tenants (operator admins see all; other admins see their own).
#[utoipa::path(get, path = "/v1/tenants", responses((status = 200, body = Vec<Tenant>), (status = 403, body = ErrorBody)))]
pub async fn list_tenants(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<Vec<Tenant>>> {
    Ok(axum::Json(state.identity.tenants(&p).await?))
}

/// Mints an API key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey,
    responses((status = 201, body = MintedKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_key(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<CreateKey>) -> Result<(StatusCode, Extension<AuditFacts>, axum::Json<MintedKey>)> {
    let k = state.identity.create_key(&p, req).await?;
    Ok((StatusCode::CREATED, in_tenant(&k.tenant, &k.id), axum::Json(k)))
}

#[derive(Deserialize, IntoParams)]
pub struct TenantParam {
    /// Another tenant's name (operator admins only).
    pub tenant: Option<String>,
}

/// Lists keys of a tenant (never their secrets).
#[utoipa::path(get, path = "/v1/keys", params(TenantParam), responses((status = 200, body = Vec<ApiKey>), (status = 403, body = ErrorBody)))]
pub async fn list_keys(State(state): State<AppState>, Caller(p): Caller, Query(q): Query<TenantParam>) -> Result<axum::Json<Vec<ApiKey>>> {
    Ok(axum::Json(state.identity.keys(&p, q.tenant.as_deref()).await?))
}

/// Revokes a key; it stops working at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path), TenantParam),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>, Query(q): Query<TenantParam>) -> Result<StatusCode> {
    state.identity.revoke_key(&p, &id, q.tenant.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A key's own limits (`null`: none beyond its tenant's). Admins read their tenant's keys'
/// limits; operators any tenant's, named by `tenant`.
#[utoipa::path(get, path = "/v1/keys/{id}/limits", params(("id" = String, Path), TenantParam),
    responses((status = 200, body = KeyLimits), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_key_limits(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>, Query(q): Query<TenantParam>) -> Result<(Extension<AuditFacts>, axum::Json<KeyLimits>)> {
    let t = state.identity.key_tenant(&p, &id, q.tenant.as_deref(), "read key limits").await?;
    Ok((in_tenant(&t.name, &id), axum::Json(state.quotas.of_key_id(&id).await?)))
}

/// Sets a key's own limits, within its tenant's (which still apply): request rate and
/// burst across replicas, requests in flight per replica. A key shared by a batch job or
/// a dashboard then cannot take its whole tenant's share. Admins set their tenant's keys'
/// limits; operators any tenant's, named by `tenant`. Over a limit: 429 with `Retry-After`,
/// recorded as denied. Bearer tokens are held to their tenant's limits only.
#[utoipa::path(put, path = "/v1/keys/{id}/limits", params(("id" = String, Path), TenantParam), request_body = KeyLimits,
    responses((status = 200, body = KeyLimits), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_key_limits(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantParam>,
    ApiJson(l): ApiJson<KeyLimits>,
) -> Result<(Extension<AuditFacts>, axum::Json<KeyLimits>)> {
    let t = state.identity.key_tenant(&p, &id, q.tenant.as_deref(), "set key limits").await?;
    if !state.quotas.set_key(&t.id, &id, &l, &p.actor()).await? {
        // Revoked in between.
        return Err(crate::error::Error::NotFound { kind: "key", name: id });
    }
    let mut facts = in_tenant(&t.name, &id);
    facts.0.details.push(("limits".into(), serde_json::to_string(&l).unwrap_or_default()));
    Ok((facts, axum::Json(l)))
}

/// A tenant's limits (`null`: the server's default). Operators read any tenant's; a
/// tenant's admins read their own.
#[utoipa::path(get, path = "/v1/tenants/{name}/quotas", params(("name" = String, Path)),
    responses((status = 200, body = Quotas), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_quotas(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<(Extension<AuditFacts>, axum::Json<Quotas>)> {
    let t = state.identity.tenant_named(&p, &name, "read quotas", false).await?;
    Ok((in_tenant(&t.name, &t.name), axum::Json(state.quotas.of(&t.id).await?)))
}

/// Sets a tenant's limits (operators only): request rate and burst, requests and SQL
/// queries in flight, bytes ingested per day, training jobs at once. Over a limit: 429
/// `quota_exceeded` with `Retry-After`, recorded as denied.
#[utoipa::path(put, path = "/v1/tenants/{name}/quotas", params(("name" = String, Path)), request_body = Quotas,
    responses((status = 200, body = Quotas), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_quotas(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>, ApiJson(q): ApiJson<Quotas>) -> Result<(Extension<AuditFacts>, axum::Json<Quotas>)> {
    let t = state.identity.tenant_named(&p, &name, "set quotas", true).await?;
    state.quotas.set(&t.id, &q, &p.actor()).await?;
    let mut facts = in_tenant(&t.name, &t.name);
    facts.0.details.push(("quotas".into(), serde_json::to_string(&q).unwrap_or_default()));
    Ok((facts, axum::Json(q)))
}
