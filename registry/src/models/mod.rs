//! The model registry: registered models, versions with signed artifacts and exact
//! lineage, aliases with the full history of their moves, and lineage queries both ways.
//!
//! An artifact is stored once under the tenant's area, named by its SHA-256. Its signature
//! is a C2SP signed note by the server's model-signing key over
//! `lakeledger model artifact\n<tenant>/<model>\nsha256:<hex>\n`, so anyone holding the
//! public key can check a downloaded artifact with standard tooling. Every load checks the
//! hash and the signature before the bytes are used.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use lakeledger_audit::{SignerKey, VerifierKey};
use lakeledger_trainer::ModelArtifact;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::identity::Principal;
use crate::platform::catalog::{AliasMove, ModelRecord, ModelVersionRecord, now_micros};
use crate::error::{Error, Result};
use crate::features::rfc3339;
use crate::http::state::AppState;

/// The server's model-signing key and its public half.
pub struct ModelSigner {
    key: SignerKey,
}

impl ModelSigner {
    pub fn load(path: &std::path::Path) -> Result<(ModelSigner, bool)> {
        let (key, created) = lakeledger_audit::key_file(path, "lakeledger-models")?;
        Ok((ModelSigner { key }, created))
    }

    pub fn verifier(&self) -> &VerifierKey {
        self.key.verifier()
    }

    fn statement(tenant: &str, model: &str, sha256: &str) -> String {
        format!("lakeledger model artifact\n{tenant}/{model}\nsha256:{sha256}\n")
    }

    fn sign(&self, tenant: &str, model: &str, sha256: &str) -> Result<String> {
        Ok(self.key.sign_note(&Self::statement(tenant, model, sha256))?)
    }

    /// Checks that `note` is this key's signature over exactly this artifact.
    fn verify(&self, note: &str, tenant: &str, model: &str, sha256: &str) -> bool {
        match lakeledger_audit::note::open_note(note, std::slice::from_ref(self.verifier())) {
            Ok((text, _)) => text == Self::statement(tenant, model, sha256),
            Err(_) => false,
        }
    }
}

/// An identifier of the running binary: its version and the SHA-256 of the executable.
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let digest = std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| hex::encode(&Sha256::digest(bytes)[..8]))
            .unwrap_or_else(|_| "unknown".into());
        format!("lakeledger {} ({digest})", env!("CARGO_PKG_VERSION"))
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub created_by: String,
    pub latest_version: Option<i64>,
    /// Alias → version.
    pub aliases: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelVersionView {
    pub model: String,
    pub version: i64,
    /// `active`, `archived` or `deleted`.
    pub state: String,
    /// `trained` here (with lineage) or `imported` (no lineage claimed).
    pub source: String,
    pub artifact_sha256: String,
    /// C2SP signed note by the model-signing key (see `GET /v1/models/signing-key`).
    pub signature: String,
    pub training_set_id: Option<String>,
    /// Training-set hash and the feature-group versions it pinned.
    #[schema(value_type = Object)]
    pub lineage: Value,
    /// Hyperparameters and seed.
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Object)]
    pub metrics: Value,
    pub backend: String,
    pub build_id: String,
    pub job_id: Option<String>,
    pub aliases: Vec<String>,
    pub created_at: String,
    pub created_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasMoveView {
    pub alias: String,
    pub seq: i64,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub actor: String,
    pub reason: String,
    pub moved_at: String,
}

impl From<AliasMove> for AliasMoveView {
    fn from(m: AliasMove) -> Self {
        AliasMoveView {
            alias: m.alias,
            seq: m.seq,
            from_version: m.from_version,
            to_version: m.to_version,
            actor: m.actor,
            reason: m.reason,
            moved_at: rfc3339(m.moved_at),
        }
    }
}

fn valid_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::Unprocessable(format!(
            "{kind} `{name}` must be 1 to 128 letters, digits, `_`, `-` or `.`, starting with a letter or digit"
        )))
    }
}

pub async fn create(state: &AppState, p: &Principal, req: CreateModel) -> Result<ModelView> {
    valid_name("model name", &req.name)?;
    let now = now_micros();
    let m = ModelRecord {
        id: format!("m_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: p.tenant_id.clone(),
        name: req.name,
        description: req.description,
        owner: req.owner,
        tags: req.tags,
        created_at: now,
        updated_at: now,
        created_by: p.actor(),
    };
    state.catalog.insert_model(&m).await?;
    view(state, &m).await
}

/// The model, created on first use (as training jobs do when they name a new model).
pub async fn find_or_create(state: &AppState, p: &Principal, name: &str) -> Result<ModelRecord> {
    if let Some(m) = state.catalog.model(&p.tenant_id, name).await? {
        return Ok(m);
    }
    match create(state, p, CreateModel { name: name.to_string(), description: String::new(), owner: String::new(), tags: BTreeMap::new() }).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => find(state, p, name).await,
        Err(e) => Err(e),
    }
}

pub async fn find(state: &AppState, p: &Principal, name: &str) -> Result<ModelRecord> {
    state.catalog.model(&p.tenant_id, name).await?.ok_or_else(|| Error::NotFound { kind: "model", name: name.to_string() })
}

async fn view(state: &AppState, m: &ModelRecord) -> Result<ModelView> {
    let versions = state.catalog.model_versions(&m.id).await?;
    Ok(ModelView {
        name: m.name.clone(),
        description: m.description.clone(),
        owner: m.owner.clone(),
        tags: m.tags.clone(),
        created_at: rfc3339(m.created_at),
        created_by: m.created_by.clone(),
        latest_version: versions.iter().filter(|v| v.state != "deleted").map(|v| v.version).max(),
        aliases: state.catalog.aliases(&m.id).await?.into_iter().collect(),
    })
}

pub async fn get(state: &AppState, p: &Principal, name: &str) -> Result<ModelView> {
    view(state, &find(state, p, name).await?).await
}

pub async fn list(state: &AppState, p: &Principal) -> Result<Vec<ModelView>> {
    let mut out = Vec::new();
    for m in state.catalog.list_models(&p.tenant_id).await? {
        out.push(view(state, &m).await?);
    }
    Ok(out)
}

fn version_view(model: &str, v: ModelVersionRecord, aliases: &[(String, i64)]) -> ModelVersionView {
    let json = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
    ModelVersionView {
        model: model.to_string(),
        version: v.version,
        aliases: aliases.iter().filter(|(_, to)| *to == v.version).map(|(a, _)| a.clone()).collect(),
        state: v.state,
        source: v.source,
        artifact_sha256: v.artifact_sha256,
        signature: v.signature,
        training_set_id: v.training_set_id,
        lineage: json(&v.lineage_json),
        config: json(&v.config_json),
        metrics: json(&v.metrics_json),
        backend: v.backend,
        build_id: v.build_id,
        job_id: v.job_id,
        created_at: rfc3339(v.created_at),
        created_by: v.created_by,
    }
}

pub async fn versions(state: &AppState, p: &Principal, name: &str) -> Result<Vec<ModelVersionView>> {
    let m = find(state, p, name).await?;
    let aliases = state.catalog.aliases(&m.id).await?;
    Ok(state.catalog.model_versions(&m.id).await?.into_iter().map(|v| version_view(&m.name, v, &aliases)).collect())
}

async fn version_record(state: &AppState, m: &ModelRecord, version: i64) -> Result<ModelVersionRecord> {
    match state.catalog.model_version(&m.id, version).await? {
        Some(v) if v.state != "deleted" => Ok(v),
        _ => Err(Error::NotFound { kind: "model version", name: format!("{}/{version}", m.name) }),
    }
}

pub async fn version(state: &AppState, p: &Principal, name: &str, version: i64) -> Result<ModelVersionView> {
    let m = find(state, p, name).await?;
    let aliases = state.catalog.aliases(&m.id).await?;
    Ok(version_view(&m.name, version_record(state, &m, version).await?, &aliases))
}

/// What a new version is made of, besides its artifact.
pub struct NewVersion {
    pub source: &'static str,
    pub training_set_id: Option<String>,
    pub lineage: Value,
    pub job_id: Option<String>,
}

/// Stores, signs and registers an artifact as the model's next version.
pub async fn register(state: &AppState, p: &Principal, m: &ModelRecord, artifact: &ModelArtifact, bytes: Vec<u8>, new: NewVersion) -> Result<ModelVersionView> {
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let location = format!("tenants/{}/models/{}/{sha256}.json", p.tenant, m.id);
    state.tables.put_object(&location, bytes.into()).await?;
    let signature = state.model_signer.sign(&p.tenant, &m.name, &sha256)?;
    let record = ModelVersionRecord {
        model_id: m.id.clone(),
        version: 0,
        state: "active".into(),
        source: new.source.into(),
        artifact_location: location,
        artifact_sha256: sha256,
        signature,
        signing_key_id: state.model_signer.verifier().encode(),
        training_set_id: new.training_set_id,
        lineage_json: new.lineage.to_string(),
        config_json: serde_json::to_string(&artifact.training.config).map_err(|e| Error::Internal(e.to_string()))?,
        metrics_json: serde_json::to_string(&artifact.training.validation).map_err(|e| Error::Internal(e.to_string()))?,
        backend: artifact.training.backend.clone(),
        build_id: build_id().to_string(),
        job_id: new.job_id,
        created_at: now_micros(),
        created_by: p.actor(),
    };
    let version = state.catalog.insert_model_version(&record).await?;
    let aliases = state.catalog.aliases(&m.id).await?;
    Ok(version_view(&m.name, ModelVersionRecord { version, ..record }, &aliases))
}

/// Registers an artifact trained elsewhere, in this format. No lineage is claimed.
pub async fn import(state: &AppState, p: &Principal, name: &str, bytes: Vec<u8>) -> Result<ModelVersionView> {
    let artifact = ModelArtifact::from_bytes(&bytes).map_err(|e| Error::Unprocessable(format!("not a lakeledger model artifact: {e}")))?;
    let m = find(state, p, name).await?;
    let new = NewVersion { source: "imported", training_set_id: None, lineage: Value::Null, job_id: None };
    register(state, p, &m, &artifact, bytes, new).await
}

/// The artifact's bytes, after checking its hash and signature.
pub async fn artifact(state: &AppState, p: &Principal, name: &str, version: i64) -> Result<(ModelVersionView, Vec<u8>)> {
    let m = find(state, p, name).await?;
    let v = version_record(state, &m, version).await?;
    let bytes = state
        .tables
        .get_object(&v.artifact_location)
        .await?
        .ok_or_else(|| Error::Internal(format!("model {}/{version}: artifact is missing", m.name)))?;
    if hex::encode(Sha256::digest(&bytes)) != v.artifact_sha256 {
        return Err(Error::Tampered(format!("model {}/{version}: the artifact does not match its recorded SHA-256", m.name)));
    }
    if !state.model_signer.verify(&v.signature, &p.tenant, &m.name, &v.artifact_sha256) {
        return Err(Error::Tampered(format!("model {}/{version}: the artifact's signature does not verify", m.name)));
    }
    let aliases = state.catalog.aliases(&m.id).await?;
    Ok((version_view(&m.name, v, &aliases), bytes.to_vec()))
}

/// Loads and checks an artifact, ready to score with.
pub async fn load(state: &AppState, p: &Principal, name: &str, version: i64) -> Result<ModelArtifact> {
    let (_, bytes) = artifact(state, p, name, version).await?;
    ModelArtifact::from_bytes(&bytes).map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))
}

pub async fn set_state(state: &AppState, p: &Principal, name: &str, version: i64, to: &str) -> Result<ModelVersionView> {
    let m = find(state, p, name).await?;
    let lock = state.group_lock(&m.id);
    let _guard = lock.lock().await;
    version_record(state, &m, version).await?;
    if to == "deleted" {
        let users: Vec<String> = state.catalog.aliases(&m.id).await?.into_iter().filter(|(_, v)| *v == version).map(|(a, _)| a).collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "version {version} of `{name}` is what alias(es) {} point at; move them first",
                users.join(", ")
            )));
        }
    }
    state.catalog.set_model_version_state(&m.id, version, to).await?;
    if to == "deleted" {
        state.serving.forget(&m.id, version);
    }
    let v = state.catalog.model_version(&m.id, version).await?.expect("just updated");
    let aliases = state.catalog.aliases(&m.id).await?;
    Ok(version_view(&m.name, v, &aliases))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveAlias {
    pub version: i64,
    /// Why; kept in the alias history.
    #[serde(default)]
    pub reason: String,
}

pub async fn move_alias(state: &AppState, p: &Principal, name: &str, alias: &str, to: Option<i64>, reason: &str) -> Result<AliasMoveView> {
    valid_name("alias", alias)?;
    if alias.parse::<i64>().is_ok() {
        return Err(Error::Unprocessable(format!("alias `{alias}` would read as a version number")));
    }
    let m = find(state, p, name).await?;
    let lock = state.group_lock(&m.id);
    let _guard = lock.lock().await;
    match to {
        Some(v) => {
            let record = version_record(state, &m, v).await?;
            if record.state != "active" {
                return Err(Error::Conflict(format!("version {v} of `{name}` is {}; only active versions take aliases", record.state)));
            }
            // Verified and loaded before any request is routed to it: the swap never
            // makes a request wait for a load, and a tampered artifact never gets an alias.
            crate::serving::loaded(state, p, name, v).await?;
        }
        None => {
            if !state.catalog.aliases(&m.id).await?.iter().any(|(a, _)| a == alias) {
                return Err(Error::NotFound { kind: "alias", name: format!("{name}@{alias}") });
            }
        }
    }
    // Moves of one alias get strictly increasing times, so "which version at T" has one answer.
    let last = state.catalog.alias_history(&m.id, alias).await?.last().map_or(i64::MIN, |mv| mv.moved_at);
    let at = now_micros().max(last.saturating_add(1));
    let moved = state.catalog.move_alias(&m.id, alias, to, &p.actor(), reason, at).await?;
    state.serving.forget_route(&m.id, alias);
    Ok(moved.into())
}

/// The version `alias` pointed at, now or at `at` (microseconds).
pub async fn resolve_alias(state: &AppState, p: &Principal, name: &str, alias: &str, at: Option<i64>) -> Result<i64> {
    let m = find(state, p, name).await?;
    let not_found = || Error::NotFound { kind: "alias", name: format!("{name}@{alias}") };
    match at {
        None => state.catalog.aliases(&m.id).await?.into_iter().find(|(a, _)| a == alias).map(|(_, v)| v).ok_or_else(not_found),
        Some(t) => state
            .catalog
            .alias_history(&m.id, alias)
            .await?
            .into_iter()
            .rfind(|mv| mv.moved_at <= t)
            .and_then(|mv| mv.to_version)
            .ok_or_else(not_found),
    }
}

pub async fn alias_history(state: &AppState, p: &Principal, name: &str, alias: &str) -> Result<Vec<AliasMoveView>> {
    let m = find(state, p, name).await?;
    let history = state.catalog.alias_history(&m.id, alias).await?;
    if history.is_empty() {
        return Err(Error::NotFound { kind: "alias", name: format!("{name}@{alias}") });
    }
    Ok(history.into_iter().map(Into::into).collect())
}

/// Model version → training set → feature groups and versions.
pub async fn lineage(state: &AppState, p: &Principal, name: &str, version: i64) -> Result<Value> {
    let v = self::version(state, p, name, version).await?;
    let training_set = match &v.training_set_id {
        Some(id) => Some(serde_json::to_value(crate::training::sets::manifest(state, p, id).await?).map_err(|e| Error::Internal(e.to_string()))?),
        None => None,
    };
    Ok(serde_json::json!({
        "model": v.model,
        "version": v.version,
        "source": v.source,
        "artifact_sha256": v.artifact_sha256,
        "training_set": training_set,
        "feature_groups": v.lineage.get("feature_groups").cloned().unwrap_or(Value::Array(vec![])),
    }))
}

/// Feature group version → the training sets that read it and the model versions
/// trained from those.
pub async fn feature_group_lineage(state: &AppState, p: &Principal, group: &str, version: Option<i64>) -> Result<Value> {
    crate::features::find(state, p, group).await?;
    let sets: Vec<_> = crate::training::sets::list(state, p)
        .await?
        .into_iter()
        .filter(|m| m.features.iter().any(|f| f.group == group && version.is_none_or(|v| f.version == v)))
        .collect();
    let ids: Vec<String> = sets.iter().map(|m| m.id.clone()).collect();
    let models = state.catalog.model_versions_by_training_sets(&p.tenant_id, &ids).await?;
    Ok(serde_json::json!({
        "feature_group": group,
        "version": version,
        "training_sets": sets.iter().map(|m| serde_json::json!({
            "id": m.id, "name": m.name, "created_at": m.created_at,
            "versions": m.features.iter().filter(|f| f.group == group).map(|f| f.version).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "model_versions": models.iter().filter(|(_, v)| v.state != "deleted").map(|(name, v)| serde_json::json!({
            "model": name, "version": v.version, "training_set_id": v.training_set_id,
        })).collect::<Vec<_>>(),
    }))
}
