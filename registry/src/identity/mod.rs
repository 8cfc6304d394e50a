//! API keys and principals. A key is `llk_` followed by 32 random bytes (base64url);
//! the catalog stores only its SHA-256, so a leaked catalog does not leak keys.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::platform::catalog::{NewApiKey, Role, SharedCatalog, Tenant, now_micros};
use crate::error::{Error, Result};
use crate::http::state::AppState;

pub const KEY_PREFIX: &str = "llk_";
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
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A freshly minted key: the secret is returned to the caller once.
#[derive(Debug, Serialize, ToSchema)]
pub struct MintedKey {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: Role,
    /// Shown only now; store it safely. Only its hash is kept.
    pub secret: String,
}

pub async fn mint_key(catalog: &SharedCatalog, tenant: &Tenant, name: &str, role: Role, created_by: &str) -> Result<MintedKey> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(Error::Unprocessable("key name must be 1 to 200 characters".into()));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    catalog
        .create_key(&NewApiKey {
            id: id.clone(),
            tenant_id: tenant.id.clone(),
            name: name.to_string(),
            role,
            secret_hash: hash_secret(&secret),
            created_at: now_micros(),
            created_by: created_by.to_string(),
        })
        .await?;
    Ok(MintedKey { id, tenant: tenant.name.clone(), name: name.to_string(), role, secret })
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

/// How long a verified key is trusted without asking the catalog again. Revocations made
/// through this server apply at once (the cache is cleared); through another replica, within
/// this time.
const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
const KEY_CACHE_MAX: usize = 10_000;

/// Keys verified recently, by the SHA-256 of the secret, so the hot serving paths do not
/// read the catalog on every request. Unknown keys are never cached.
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::RwLock<std::collections::HashMap<String, (Principal, std::time::Instant)>>,
    /// Bumped by every clear: a key read from the catalog before a revocation is not
    /// cached after it.
    generation: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// Resolves the caller from `Authorization: Bearer …`.
    pub async fn authenticate(&self, catalog: &SharedCatalog, header: Option<&str>) -> Result<Principal> {
        let token = bearer(header)?;
        let hash = hash_secret(token);
        if let Some((p, at)) = self.entries.read().expect("key cache lock").get(&hash)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let p = lookup(catalog, &hash).await?;
        let mut entries = self.entries.write().expect("key cache lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
            entries.insert(hash, (p.clone(), std::time::Instant::now()));
        }
        Ok(p)
    }

    /// Forgets every key (after a revocation has been written to the catalog).
    pub fn clear(&self) {
        let mut entries = self.entries.write().expect("key cache lock");
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.clear();
    }
}

fn bearer(header: Option<&str>) -> Result<&str> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Error::Unauthenticated)?;
    if !token.starts_with(KEY_PREFIX) {
        return Err(Error::InvalidKey);
    }
    Ok(token)
}

/// Resolves the caller from `Authorization: Bearer …`, asking the catalog.
pub async fn authenticate(catalog: &SharedCatalog, header: Option<&str>) -> Result<Principal> {
    lookup(catalog, &hash_secret(bearer(header)?)).await
}

async fn lookup(catalog: &SharedCatalog, hash: &str) -> Result<Principal> {
    let (key, tenant) = catalog.key_by_hash(hash).await?.ok_or(Error::InvalidKey)?;
    Ok(Principal {
        key_id: key.id,
        key_name: key.name,
        role: key.role,
        tenant_id: tenant.id,
        tenant: tenant.name,
        auth_method: "api_key",
    })
}

/// The authenticated caller. Authentication itself happens once, in the request layer
/// (so that every request, refused ones too, is recorded with its actor); handlers take
/// the result from the request extensions.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self> {
        match parts.extensions.get::<AuthOutcome>() {
            Some(AuthOutcome::Ok(p)) => Ok(Caller(p.clone())),
            Some(AuthOutcome::Failed(e)) => Err(e.to_error()),
            None => Err(Error::Unauthenticated),
        }
    }
}

/// What the request layer found in the `Authorization` header.
#[derive(Clone, Debug)]
pub enum AuthOutcome {
    Ok(Principal),
    Failed(AuthFailure),
}

#[derive(Clone, Copy, Debug)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Unavailable,
}

impl AuthFailure {
    pub fn to_error(self) -> Error {
        match self {
            AuthFailure::Missing => Error::Unauthenticated,
            AuthFailure::Invalid => Error::InvalidKey,
            AuthFailure::Unavailable => Error::Unavailable("the catalog is not reachable; try again".into()),
        }
    }
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

    #[test]
    fn hashes_are_stable_hex() {
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
