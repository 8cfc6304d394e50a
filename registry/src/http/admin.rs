//! Tenants and API keys.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiJson;
use crate::identity::{Caller, MintedKey, Principal, mint_key};
use crate::platform::catalog::{ApiKey, Role, Tenant, now_micros};
use crate::error::{Error, ErrorBody, Result};
use crate::http::state::AppState;

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
pub async fn create_tenant(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<CreateTenant>) -> Result<(StatusCode, axum::Json<Tenant>)> {
    require_operator(&p, "create tenants")?;
    let t = crate::identity::create_tenant(&state.catalog, &req.name).await?;
    Ok((StatusCode::CREATED, axum::Json(t)))
}

/// Lists tenants (operator admins see all; other admins see their own).
#[utoipa::path(get, path = "/v1/tenants", responses((status = 200, body = Vec<Tenant>), (status = 403, body = ErrorBody)))]
pub async fn list_tenants(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<Vec<Tenant>>> {
    p.require(&[Role::Admin], "list tenants")?;
    let all = state.catalog.list_tenants().await?;
    Ok(axum::Json(if p.is_operator() { all } else { all.into_iter().filter(|t| t.id == p.tenant_id).collect() }))
}

fn require_operator(p: &Principal, action: &str) -> Result<()> {
    p.require(&[Role::Admin], action)?;
    if !p.is_operator() {
        return Err(Error::Forbidden { role: format!("admin of tenant `{}`", p.tenant), action: action.into() });
    }
    Ok(())
}

/// Resolves the tenant a key request is about: the caller's own unless an operator names another.
async fn target_tenant(state: &AppState, p: &Principal, tenant: Option<&str>, action: &str) -> Result<Tenant> {
    p.require(&[Role::Admin], action)?;
    match tenant {
        None => Ok(Tenant { id: p.tenant_id.clone(), name: p.tenant.clone(), created_at: 0 }),
        Some(name) if name == p.tenant => Ok(Tenant { id: p.tenant_id.clone(), name: p.tenant.clone(), created_at: 0 }),
        Some(name) => {
            require_operator(p, action)?;
            state.catalog.tenant_by_name(name).await?.ok_or_else(|| Error::NotFound { kind: "tenant", name: name.into() })
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub role: Role,
    /// Defaults to the caller's tenant; other tenants need an operator admin.
    pub tenant: Option<String>,
}

/// Mints an API key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey,
    responses((status = 201, body = MintedKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_key(State(state): State<AppState>, Caller(p): Caller, ApiJson(req): ApiJson<CreateKey>) -> Result<(StatusCode, axum::Json<MintedKey>)> {
    let tenant = target_tenant(&state, &p, req.tenant.as_deref(), "create keys").await?;
    let key = mint_key(&state.catalog, &tenant, &req.name, req.role, &p.actor()).await?;
    Ok((StatusCode::CREATED, axum::Json(key)))
}

#[derive(Deserialize, IntoParams)]
pub struct TenantParam {
    /// Another tenant's name (operator admins only).
    pub tenant: Option<String>,
}

/// Lists keys of a tenant (never their secrets).
#[utoipa::path(get, path = "/v1/keys", params(TenantParam), responses((status = 200, body = Vec<ApiKey>), (status = 403, body = ErrorBody)))]
pub async fn list_keys(State(state): State<AppState>, Caller(p): Caller, Query(q): Query<TenantParam>) -> Result<axum::Json<Vec<ApiKey>>> {
    let tenant = target_tenant(&state, &p, q.tenant.as_deref(), "list keys").await?;
    Ok(axum::Json(state.catalog.list_keys(&tenant.id).await?))
}

/// Revokes a key; it stops working at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path), TenantParam),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(State(state): State<AppState>, Caller(p): Caller, Path(id): Path<String>, Query(q): Query<TenantParam>) -> Result<StatusCode> {
    let tenant = target_tenant(&state, &p, q.tenant.as_deref(), "revoke keys").await?;
    if state.catalog.revoke_key(&tenant.id, &id, now_micros()).await? {
        state.keys.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound { kind: "key", name: id })
    }
}
