//! Who is calling: tenants, API keys and the principals they stand for, and a cache of
//! recently verified keys so hot paths do not ask the catalog on every request.
//!
//! A key is `llk_` followed by 32 random bytes (base64url); the catalog stores only its
//! SHA-256, so a leaked catalog does not leak keys. Owns no HTTP: the edge turns the
//! `Authorization` header into a call to [`Identity::authenticate`].

mod keys;
pub mod oidc;
pub mod quotas;

use std::sync::Arc;

use lakeledger_audit::{Event, Phase};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::platform::audit::AuditContext;
use crate::platform::catalog::{ApiKey, Held, Role, SharedCatalog, Tenant, not_here};
use crate::platform::changes::{Change, ChangeObserver, Changes};
use crate::platform::time::now_micros;

pub use keys::{KEY_PREFIX, KeyCache, MintedKey, authenticate, hash_secret, mint_key};

/// The tenant created at first start; its admins also manage other tenants.
pub const DEFAULT_TENANT: &str = "default";

/// Who is calling, as established from the API key.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Principal {
    pub key_id: String,
    pub key_name: String,
    pub role: Role,
    pub tenant_id: String,
    pub tenant: String,
    pub auth_method: &'static str,
}

impl Principal {
    /// Operator admins: admins of the default tenant may act on every tenant.
    pub fn is_operator(&self) -> bool {
        self.role == Role::Admin && self.tenant == DEFAULT_TENANT
    }

    /// Refuses unless the role is one of `allowed`. `action` says what was attempted.
    pub fn require(&self, allowed: &[Role], action: &str) -> Result<()> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(Error::Forbidden { role: self.role.as_str().into(), action: action.into() })
        }
    }

    /// A short human-readable actor string for commit metadata and logs.
    pub fn actor(&self) -> String {
        format!("{}/{}", self.tenant, self.key_id)
    }

    /// Names this principal as the actor of `e`.
    pub fn stamp(&self, e: &mut Event) {
        e.actor.principal = Some(self.key_id.clone());
        // A token's principal is `<issuer>#<subject>`.
        e.actor.principal_type = if self.auth_method == "oidc" { "oidc" } else { "api_key" }.into();
        e.actor.tenant = Some(self.tenant.clone());
        e.actor.role = Some(self.role.as_str().to_string());
        e.actor.auth_method = self.auth_method.to_string();
    }

    /// An event this principal causes within the request `ctx` (e.g. the resolved plan of
    /// a query, recorded before anything is read).
    pub fn event(&self, kind: &str, ctx: &AuditContext) -> Event {
        let mut e = Event::new(kind, Phase::Intent);
        self.stamp(&mut e);
        e.source.request_id = Some(ctx.request_id.clone());
        e.resource.tenant = Some(self.tenant.clone());
        e.details.push(("intent_event_id".into(), ctx.event_id.clone()));
        e
    }
}

/// Tenant names become storage path segments, so they are kept simple.
pub fn validate_tenant_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(Error::Unprocessable(format!("tenant name `{name}` must be 1-63 characters of a-z, 0-9 and `-`, not starting with `-`"))) }
}

pub async fn create_tenant(catalog: &SharedCatalog, name: &str) -> Result<Tenant> {
    validate_tenant_name(name)?;
    let tenant = Tenant { id: format!("ten_{}", uuid::Uuid::now_v7().simple()), name: name.to_string(), created_at: now_micros() };
    catalog.create_tenant(&tenant).await?;
    Ok(tenant)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub role: Role,
    /// Defaults to the caller's tenant; other tenants need an operator admin.
    pub tenant: Option<String>,
}

/// Tenants, keys and authentication, over the catalog.
pub struct Identity {
    catalog: SharedCatalog,
    keys: KeyCache,
    oidc: Option<oidc::Oidc>,
    changes: Arc<Changes>,
}

impl ChangeObserver for Identity {
    fn changed(&self, change: &Change) {
        if matches!(change, Change::Keys | Change::Resync) {
            self.keys.clear();
        }
    }
}

impl Identity {
    pub fn new(catalog: SharedCatalog, oidc: Option<oidc::Oidc>, changes: Arc<Changes>) -> Arc<Identity> {
        Arc::new(Identity { catalog, keys: KeyCache::default(), oidc, changes })
    }

    /// Resolves the caller from `Authorization: Bearer …`: an API key (`llk_…`), or a JWT
    /// from the configured identity provider.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal> {
        let token = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim).unwrap_or_default();
        match &self.oidc {
            Some(oidc) if !token.is_empty() && !token.starts_with(KEY_PREFIX) => oidc.authenticate(&self.catalog, token).await,
            _ => self.keys.authenticate(&self.catalog, header).await,
        }
    }

    /// On first start: the default tenant and its first admin key.
    pub async fn bootstrap(&self) -> Result<Option<MintedKey>> {
        if self.catalog.tenant_by_name(DEFAULT_TENANT).await?.is_some() {
            return Ok(None);
        }
        let tenant = match create_tenant(&self.catalog, DEFAULT_TENANT).await {
            Ok(t) => t,
            // Another replica bootstrapped at the same moment.
            Err(Error::AlreadyExists { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(mint_key(&self.catalog, &tenant, "initial admin", Role::Admin, "bootstrap").await?))
    }

    pub async fn create_tenant(&self, p: &Principal, name: &str) -> Result<Tenant> {
        require_operator(p, "create tenants")?;
        create_tenant(&self.catalog, name).await
    }

    /// Every tenant for operator admins; other admins see their own.
    pub async fn tenants(&self, p: &Principal) -> Result<Vec<Tenant>> {
        p.require(&[Role::Admin], "list tenants")?;
        let all = self.catalog.list_tenants().await?;
        Ok(if p.is_operator() { all } else { all.into_iter().filter(|t| t.id == p.tenant_id).collect() })
    }

    pub async fn create_key(&self, p: &Principal, req: CreateKey) -> Result<MintedKey> {
        let tenant = self.target_tenant(p, req.tenant.as_deref(), "create keys").await?;
        mint_key(&self.catalog, &tenant, &req.name, req.role, &p.actor()).await
    }

    /// Keys of a tenant, never their secrets.
    pub async fn keys(&self, p: &Principal, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let tenant = self.target_tenant(p, tenant, "list keys").await?;
        self.catalog.list_keys(&tenant.id).await
    }

    /// The tenant of a live key the caller may manage: its own tenant's (admins), or the
    /// named tenant's (operators). A key elsewhere is not found.
    pub async fn key_tenant(&self, p: &Principal, id: &str, tenant: Option<&str>, action: &str) -> Result<Tenant> {
        let tenant = self.target_tenant(p, tenant, action).await?;
        let live = self.catalog.list_keys(&tenant.id).await?.into_iter().any(|k| k.id == id && k.revoked_at.is_none());
        if live { Ok(tenant) } else { Err(not_here(&self.catalog, Held::Key, "key", id, &tenant.id).await?) }
    }

    /// Revokes a key; it stops working here at once, and on other replicas as soon as
    /// they hear of it.
    pub async fn revoke_key(&self, p: &Principal, id: &str, tenant: Option<&str>) -> Result<()> {
        let tenant = self.target_tenant(p, tenant, "revoke keys").await?;
        if self.catalog.revoke_key(&tenant.id, id, now_micros()).await? {
            self.keys.clear();
            self.changes.announce(Change::Keys);
            Ok(())
        } else {
            Err(not_here(&self.catalog, Held::Key, "key", id, &tenant.id).await?)
        }
    }

    /// The tenant a key request is about: the caller's own unless an operator names another.
    /// A tenant by name, for an admin of it or an operator; operators only with
    /// `operators_only`.
    pub async fn tenant_named(&self, p: &Principal, name: &str, action: &str, operators_only: bool) -> Result<Tenant> {
        if operators_only {
            require_operator(p, action)?;
        }
        let t = self.target_tenant(p, Some(name), action).await?;
        // The caller's own tenant comes back without its creation time; read it whole.
        self.catalog.tenant_by_id(&t.id).await?.ok_or_else(|| Error::NotFound { kind: "tenant", name: name.into() })
    }

    async fn target_tenant(&self, p: &Principal, tenant: Option<&str>, action: &str) -> Result<Tenant> {
        p.require(&[Role::Admin], action)?;
        match tenant {
            None => Ok(Tenant { id: p.tenant_id.clone(), name: p.tenant.clone(), created_at: 0 }),
            Some(name) if name == p.tenant => Ok(Tenant { id: p.tenant_id.clone(), name: p.tenant.clone(), created_at: 0 }),
            Some(name) => {
                require_operator(p, action)?;
                self.catalog.tenant_by_name(name).await?.ok_or_else(|| Error::NotFound { kind: "tenant", name: name.into() })
            }
        }
    }
}

fn require_operator(p: &Principal, action: &str) -> Result<()> {
    p.require(&[Role::Admin], action)?;
    if !p.is_operator() {
        return Err(Error::Forbidden { role: format!("admin of tenant `{}`", p.tenant), action: action.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_path_safe() {
        assert!(validate_tenant_name("acme-ml").is_ok());
        for bad in ["", "Acme", "a/b", "-x", "a_b", &"x".repeat(64)] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
