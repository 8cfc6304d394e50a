//! API keys: minting (the secret is shown once, its hash stored), verification against
//! the catalog, and the cache of recently verified keys.

use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::Principal;
use crate::error::{Error, Result};
use crate::platform::catalog::{NewApiKey, Role, SharedCatalog, Tenant};
use crate::platform::time::now_micros;

pub const KEY_PREFIX: &str = "llk_";

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

/// Resolves the caller from `Authorization: Bearer …`, asking the catalog (no cache).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_hex() {
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
