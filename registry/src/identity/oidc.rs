//! OIDC / JWT bearer tokens beside API keys: RS256, ES256 and EdDSA signatures verified
//! against the identity provider's JWKS (a file or a URL, cached, fetched again when a
//! token names a key id it does not hold), issuer, audience, expiry and not-before checked
//! with a small leeway. Claims map to a tenant and a role, either directly or through the
//! groups the token lists.
//!
//! The caller's identity is the issuer and the subject (`<issuer>#<subject>`: subjects are
//! unique only per issuer); the audit records name both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::Principal;
use crate::error::{Error, Result};
use crate::platform::catalog::{Role, SharedCatalog, Tenant};

/// The `[oidc]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A value the token's `aud` must hold.
    pub audience: String,
    /// Where the provider publishes its keys: `jwks_url` (fetched, cached) or `jwks_file`.
    pub jwks_url: Option<url::Url>,
    pub jwks_file: Option<PathBuf>,
    /// Claims naming the tenant and the role (used when no group mapping matches).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// A claim listing the caller's groups, and what each group grants (first match wins).
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub groups: Vec<GroupGrant>,
    /// Clock skew accepted on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// When a token names an unknown key id the keys are fetched again, at most this often
    /// (so a stream of forged key ids cannot turn the server against the provider).
    #[serde(default = "default_refresh")]
    pub jwks_min_refresh_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupGrant {
    pub group: String,
    pub tenant: String,
    pub role: String,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_role_claim() -> String {
    "role".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_refresh() -> u64 {
    10
}

/// How long fetched keys are used before being fetched again anyway.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
const TENANT_CACHE_TTL: Duration = Duration::from_secs(5);

/// Verifies bearer tokens of one identity provider.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<Option<(JwkSet, Instant)>>,
    tenants: RwLock<HashMap<String, (Tenant, Instant)>>,
}

/// A token's failure, said plainly (RFC 6750 lets the server describe it).
fn invalid(why: impl Into<String>) -> Error {
    Error::InvalidToken(why.into())
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Result<Oidc> {
        match (&settings.jwks_url, &settings.jwks_file) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(Error::BadRequest("[oidc] needs exactly one of jwks_url and jwks_file".into())),
        }
        for g in &settings.groups {
            Role::parse(&g.role).ok_or_else(|| Error::BadRequest(format!("[oidc] group `{}`: role `{}` is not admin, writer, reader or auditor", g.group, g.role)))?;
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Oidc { settings, http, keys: Default::default(), tenants: Default::default() })
    }

    async fn fetch_keys(&self) -> Result<JwkSet> {
        let text = match (&self.settings.jwks_url, &self.settings.jwks_file) {
            (Some(url), _) => {
                let r = self.http.get(url.clone()).send().await.map_err(|e| Error::Unavailable(format!("fetching the JWKS from {url}: {e}")))?;
                if !r.status().is_success() {
                    return Err(Error::Unavailable(format!("fetching the JWKS from {url}: HTTP {}", r.status())));
                }
                r.text().await.map_err(|e| Error::Unavailable(format!("reading the JWKS from {url}: {e}")))?
            }
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| Error::Unavailable(format!("reading the JWKS {}: {e}", path.display())))?,
            (None, None) => unreachable!("checked at start"),
        };
        serde_json::from_str(&text).map_err(|e| Error::Unavailable(format!("the JWKS is not a key set: {e}")))
    }

    /// The key for `kid`, fetching the set again if it is unknown (at most every
    /// `jwks_min_refresh_seconds`) or old.
    async fn key(&self, kid: &str) -> Result<DecodingKey> {
        {
            let keys = self.keys.read().await;
            if let Some((set, at)) = keys.as_ref()
                && at.elapsed() < KEYS_MAX_AGE
                && let Some(jwk) = set.find(kid)
            {
                return DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key `{kid}` in the JWKS is unusable: {e}")));
            }
        }
        let mut keys = self.keys.write().await;
        let fresh = keys.as_ref().is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(self.settings.jwks_min_refresh_seconds));
        if !fresh {
            *keys = Some((self.fetch_keys().await?, Instant::now()));
        }
        let (set, _) = keys.as_ref().expect("just fetched");
        let jwk = set.find(kid).ok_or_else(|| invalid(format!("the token's key id `{kid}` is not in the issuer's key set")))?;
        DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key `{kid}` in the JWKS is unusable: {e}")))
    }

    async fn tenant(&self, catalog: &SharedCatalog, name: &str) -> Result<Tenant> {
        if let Some((t, at)) = self.tenants.read().expect("tenant cache").get(name)
            && at.elapsed() < TENANT_CACHE_TTL
        {
            return Ok(t.clone());
        }
        let t = catalog.tenant_by_name(name).await?.ok_or_else(|| invalid(format!("the token's tenant `{name}` does not exist")))?;
        self.tenants.write().expect("tenant cache").insert(name.to_string(), (t.clone(), Instant::now()));
        Ok(t)
    }

    /// The principal a verified token stands for.
    pub async fn authenticate(&self, catalog: &SharedCatalog, token: &str) -> Result<Principal> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        // Only asymmetric signatures: a shared secret would let anyone holding it mint tokens.
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(invalid(format!("algorithm {:?} is not accepted; use RS256, ES256 or EdDSA", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| invalid("the token names no key id (`kid`)"))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_seconds;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                invalid(match e.kind() {
                    K::ExpiredSignature => "the token has expired".to_string(),
                    K::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                    K::InvalidAudience => format!("the token is not for this audience (`{}`)", self.settings.audience),
                    K::InvalidIssuer => format!("the token is not from the issuer `{}`", self.settings.issuer),
                    K::InvalidSignature => "the token's signature does not verify".to_string(),
                    K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                    other => format!("the token is invalid: {other:?}"),
                })
            })?
            .claims;
        let subject = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| invalid("the token has no subject"))?;
        let (tenant, role) = self.grant(&claims)?;
        let tenant = self.tenant(catalog, &tenant).await?;
        let name = ["preferred_username", "email"].iter().find_map(|c| claims.get(*c).and_then(Value::as_str)).unwrap_or(subject);
        Ok(Principal {
            key_id: format!("{}#{subject}", self.settings.issuer),
            key_name: name.to_string(),
            role,
            tenant_id: tenant.id,
            tenant: tenant.name,
            auth_method: "oidc",
        })
    }

    /// The tenant and role the claims grant: the first configured group the token lists,
    /// else the tenant and role claims.
    fn grant(&self, claims: &serde_json::Map<String, Value>) -> Result<(String, Role)> {
        if let Some(claim) = &self.settings.groups_claim {
            let groups: Vec<&str> = claims.get(claim).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if let Some(g) = self.settings.groups.iter().find(|g| groups.contains(&g.group.as_str())) {
                return Ok((g.tenant.clone(), Role::parse(&g.role).expect("checked at start")));
            }
        }
        let text = |c: &str| claims.get(c).and_then(Value::as_str).map(str::to_string);
        let tenant = text(&self.settings.tenant_claim).ok_or_else(|| invalid(format!("the token grants no tenant (no `{}` claim, and no group it lists is mapped)", self.settings.tenant_claim)))?;
        let role = text(&self.settings.role_claim).ok_or_else(|| invalid(format!("the token grants no role (no `{}` claim)", self.settings.role_claim)))?;
        let role = Role::parse(&role).ok_or_else(|| invalid(format!("the token's role `{role}` is not admin, writer, reader or auditor")))?;
        Ok((tenant, role))
    }
}
