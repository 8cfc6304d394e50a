//! The model registry: registered models, versions with signed artifacts and exact
//! lineage, and aliases with the full history of their moves.
//!
//! An artifact is stored once under the tenant's area, named by its SHA-256. Its signature
//! is a C2SP signed note by the server's model-signing key over
//! `lakeledger model artifact\n<tenant>/<model>\nsha256:<hex>\n`, so anyone holding the
//! public key can check a downloaded artifact with standard tooling. Every load checks the
//! hash and the signature before the bytes are used.
//!
//! Knows nothing of serving: alias moves and deletions are announced through
//! [`ModelEvents`], which serving implements. Never imports `http/` or `app/`.

mod aliases;
pub mod onnx;
mod signing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};

use lakeledger_query::tables::TableStore;
use lakeledger_trainer::ModelArtifact;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::catalog::{AliasMove, Held, ModelRecord, ModelVersionRecord, SharedCatalog, not_here};
use crate::platform::locks::KeyedLocks;
use crate::platform::spool::{Spooled, spool};
use crate::platform::time::{now_micros, rfc3339};

pub use aliases::{ModelEvents, MoveAlias};
pub use onnx::OnnxModel;
pub use signing::{ModelSigner, build_id};

/// The model registry service.
pub struct Models {
    catalog: SharedCatalog,
    tables: TableStore,
    signer: ModelSigner,
    /// Per model: alias moves and version state changes happen one at a time.
    locks: Arc<KeyedLocks>,
    /// Told about alias moves and deletions, and asked to warm a version before an alias
    /// points at it (serving).
    events: RwLock<Option<Weak<dyn ModelEvents>>>,
    /// Where artifact downloads are copied (and checked) before they are sent.
    spool_dir: PathBuf,
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
    /// The verifier key the signature was made with: the current key or one listed in
    /// `GET /v1/models/signing-keys` as previous.
    pub signing_key_id: String,
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
        signing_key_id: v.signing_key_id,
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

/// A loaded, verified model of either kind.
pub enum Runnable {
    /// Trained here (or imported in this server's format).
    Native(Arc<ModelArtifact>),
    /// An imported ONNX graph.
    Onnx(Arc<OnnxModel>),
}

impl Runnable {
    /// The columns a caller gives, in the model's order.
    pub fn input_names(&self) -> Vec<String> {
        match self {
            Runnable::Native(a) => a.inputs.iter().map(|c| c.name.clone()).collect(),
            Runnable::Onnx(m) => m.column_names(),
        }
    }

    /// The input columns with whether each is numeric (else categorical text).
    pub fn input_kinds(&self) -> Vec<(String, bool)> {
        use lakeledger_trainer::data::Encoding;
        match self {
            Runnable::Native(a) => a.inputs.iter().map(|c| (c.name.clone(), matches!(c.encoding, Encoding::Standardized { .. }))).collect(),
            Runnable::Onnx(m) => m.description.columns.iter().map(|c| (c.name.clone(), c.elem != onnx::Elem::String)).collect(),
        }
    }
}

/// How an imported artifact is to be read.
#[derive(Debug, Default)]
pub struct ImportOptions {
    /// ONNX: names of the features of a single 2-D input, in order (a signature).
    pub columns: Option<Vec<String>>,
    /// The training set the uploader says the model was trained on (declared, not verified).
    pub training_set_id: Option<String>,
    /// The most bytes an uploaded archive may unpack to.
    pub unpacked_limit: u64,
}

/// What the catalog records of a version besides its artifact.
struct Recorded {
    config: Value,
    metrics: Value,
    backend: String,
}

/// What a new version is made of, besides its artifact.
pub struct NewVersion {
    pub source: &'static str,
    pub training_set_id: Option<String>,
    pub lineage: Value,
    pub job_id: Option<String>,
}

impl Models {
    pub fn new(catalog: SharedCatalog, tables: TableStore, signer: ModelSigner, locks: Arc<KeyedLocks>, spool_dir: PathBuf) -> Arc<Models> {
        Arc::new(Models { catalog, tables, signer, locks, events: RwLock::new(None), spool_dir })
    }

    /// Who is told about alias moves and deletions (serving).
    pub fn set_events(&self, events: Weak<dyn ModelEvents>) {
        *self.events.write().expect("model events") = Some(events);
    }

    fn events(&self) -> Option<Arc<dyn ModelEvents>> {
        self.events.read().expect("model events").as_ref().and_then(Weak::upgrade)
    }

    /// The public key artifacts are signed with.
    pub fn signing_key(&self) -> String {
        self.signer.verifier().encode()
    }

    /// The keys earlier versions may be signed with, oldest first (the current one excluded).
    pub fn previous_signing_keys(&self) -> Vec<String> {
        self.signer.previous().iter().map(|k| k.encode()).collect()
    }

    /// Model versions trained from any of `training_set_ids`, with their model's name.
    pub async fn versions_by_training_sets(&self, tenant_id: &str, training_set_ids: &[String]) -> Result<Vec<(String, ModelVersionRecord)>> {
        self.catalog.model_versions_by_training_sets(tenant_id, training_set_ids).await
    }

    pub async fn create(&self, p: &Principal, req: CreateModel) -> Result<ModelView> {
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
        self.catalog.insert_model(&m).await?;
        self.view(&m).await
    }

    /// The model, created on first use (as training jobs do when they name a new model).
    pub async fn find_or_create(&self, p: &Principal, name: &str) -> Result<ModelRecord> {
        if let Some(m) = self.catalog.model(&p.tenant_id, name).await? {
            return Ok(m);
        }
        match self.create(p, CreateModel { name: name.to_string(), description: String::new(), owner: String::new(), tags: BTreeMap::new() }).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => self.find(p, name).await,
            Err(e) => Err(e),
        }
    }

    pub async fn find(&self, p: &Principal, name: &str) -> Result<ModelRecord> {
        match self.catalog.model(&p.tenant_id, name).await? {
            Some(m) => Ok(m),
            None => Err(not_here(&self.catalog, Held::Model, "model", name, &p.tenant_id).await?),
        }
    }

    async fn view(&self, m: &ModelRecord) -> Result<ModelView> {
        let versions = self.catalog.model_versions(&m.id).await?;
        Ok(ModelView {
            name: m.name.clone(),
            description: m.description.clone(),
            owner: m.owner.clone(),
            tags: m.tags.clone(),
            created_at: rfc3339(m.created_at),
            created_by: m.created_by.clone(),
            latest_version: versions.iter().filter(|v| v.state != "deleted").map(|v| v.version).max(),
            aliases: self.catalog.aliases(&m.id).await?.into_iter().collect(),
        })
    }

    pub async fn get(&self, p: &Principal, name: &str) -> Result<ModelView> {
        self.view(&self.find(p, name).await?).await
    }

    pub async fn list(&self, p: &Principal) -> Result<Vec<ModelView>> {
        let mut out = Vec::new();
        for m in self.catalog.list_models(&p.tenant_id).await? {
            out.push(self.view(&m).await?);
        }
        Ok(out)
    }

    pub async fn versions(&self, p: &Principal, name: &str) -> Result<Vec<ModelVersionView>> {
        let m = self.find(p, name).await?;
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok(self.catalog.model_versions(&m.id).await?.into_iter().map(|v| version_view(&m.name, v, &aliases)).collect())
    }

    async fn version_record(&self, m: &ModelRecord, version: i64) -> Result<ModelVersionRecord> {
        match self.catalog.model_version(&m.id, version).await? {
            Some(v) if v.state != "deleted" => Ok(v),
            _ => Err(Error::NotFound { kind: "model version", name: format!("{}/{version}", m.name) }),
        }
    }

    pub async fn version(&self, p: &Principal, name: &str, version: i64) -> Result<ModelVersionView> {
        let m = self.find(p, name).await?;
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok(version_view(&m.name, self.version_record(&m, version).await?, &aliases))
    }

    /// Stores, signs and registers an artifact trained here as the model's next version.
    pub async fn register(&self, p: &Principal, m: &ModelRecord, artifact: &ModelArtifact, bytes: Vec<u8>, new: NewVersion) -> Result<ModelVersionView> {
        let config = serde_json::to_value(&artifact.training.config).map_err(|e| Error::Internal(e.to_string()))?;
        let metrics = serde_json::to_value(&artifact.training.validation).map_err(|e| Error::Internal(e.to_string()))?;
        self.store(p, m, bytes, "json", Recorded { config, metrics, backend: artifact.training.backend.clone() }, new).await
    }

    async fn store(&self, p: &Principal, m: &ModelRecord, bytes: Vec<u8>, extension: &str, recorded: Recorded, new: NewVersion) -> Result<ModelVersionView> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let location = format!("tenants/{}/models/{}/{sha256}.{extension}", p.tenant, m.id);
        self.tables.put_object(&location, bytes.into()).await?;
        let signature = self.signer.sign(&p.tenant, &m.name, &sha256)?;
        let build_id = signing::build_id_async().await;
        let record = ModelVersionRecord {
            model_id: m.id.clone(),
            version: 0,
            state: "active".into(),
            source: new.source.into(),
            artifact_location: location,
            artifact_sha256: sha256,
            signature,
            signing_key_id: self.signer.verifier().encode(),
            training_set_id: new.training_set_id,
            lineage_json: new.lineage.to_string(),
            config_json: recorded.config.to_string(),
            metrics_json: recorded.metrics.to_string(),
            backend: recorded.backend,
            build_id: build_id.to_string(),
            job_id: new.job_id,
            created_at: now_micros(),
            created_by: p.actor(),
        };
        let version = self.catalog.insert_model_version(&record).await?;
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok(version_view(&m.name, ModelVersionRecord { version, ..record }, &aliases))
    }

    /// Registers an artifact trained elsewhere: this server's artifact format, or an ONNX
    /// model (checked and prepared first: a graph that cannot be served is refused now).
    /// A declared training set is recorded as declared, not verified.
    pub async fn import(&self, p: &Principal, name: &str, bytes: Vec<u8>, options: ImportOptions) -> Result<ModelVersionView> {
        let m = self.find(p, name).await?;
        let declared = options.training_set_id.clone();
        let lineage = match &declared {
            Some(id) => serde_json::json!({"declared": {"training_set_id": id}, "verified": false}),
            None => Value::Null,
        };
        let new = NewVersion { source: "imported", training_set_id: declared, lineage, job_id: None };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            if options.columns.is_some() {
                return Err(Error::Unprocessable("`columns` applies to ONNX models; this server's artifacts name their inputs".into()));
            }
            let artifact = ModelArtifact::from_bytes(&bytes).map_err(|e| Error::Unprocessable(format!("not a lakeledger model artifact: {e}")))?;
            return self.register(p, &m, &artifact, bytes, new).await;
        }
        let mut source = serde_json::json!({"format": "onnx"});
        let (bytes, columns) = if onnx::mlflow::is_archive(&bytes) {
            let uploaded = hex::encode(Sha256::digest(&bytes));
            let limit = options.unpacked_limit;
            let dir = tokio::task::spawn_blocking(move || onnx::mlflow::read(&bytes, limit)).await.map_err(|e| Error::Internal(format!("reading the archive: {e}")))??;
            source = serde_json::json!({"format": "mlflow", "flavors": dir.flavors, "archive_sha256": uploaded});
            (dir.onnx, options.columns.clone().or(dir.columns))
        } else {
            (bytes, options.columns.clone())
        };
        if !onnx::looks_like_onnx(&bytes) {
            return Err(Error::Unprocessable(
                "the body is neither a lakeledger model artifact (JSON), an ONNX model (protobuf) nor an MLflow model directory (tar or zip) with an onnx flavor".into(),
            ));
        }
        let model = {
            let (bytes, columns) = (bytes.clone(), columns.clone());
            // The runtime may fail on a graph it was never meant to see by panicking: that is
            // the graph's fault, answered like any other refusal.
            tokio::task::spawn_blocking(move || OnnxModel::prepare(&bytes, columns.as_deref())).await.map_err(|e| {
                if e.is_panic() {
                    Error::Unprocessable("the ONNX model is refused: the runtime could not prepare this graph".into())
                } else {
                    Error::Internal(format!("preparing the model: {e}"))
                }
            })??
        };
        let d = &model.description;
        let config = serde_json::json!({
            "format": "onnx",
            "producer": {"name": d.producer_name, "version": d.producer_version},
            "uploaded_by": p.actor(),
            "uploaded_as": source,
            "signature": columns,
            "opsets": d.opsets.iter().map(|(domain, v)| serde_json::json!({"domain": domain, "version": v})).collect::<Vec<_>>(),
            "operators": d.operators,
            "inputs": d.inputs,
            "outputs": d.outputs,
            "columns": d.columns.iter().map(|c| serde_json::json!({"name": c.name, "type": c.elem})).collect::<Vec<_>>(),
            "classes": d.classes,
        });
        self.store(p, &m, bytes, "onnx", Recorded { config, metrics: Value::Object(Default::default()), backend: "onnx".into() }, new).await
    }

    /// The artifact's bytes, after checking its hash and signature.
    pub async fn artifact(&self, p: &Principal, name: &str, version: i64) -> Result<(ModelVersionView, Vec<u8>)> {
        let m = self.find(p, name).await?;
        let v = self.version_record(&m, version).await?;
        let bytes = self
            .tables
            .get_object(&v.artifact_location)
            .await?
            .ok_or_else(|| Error::Internal(format!("model {}/{version}: artifact is missing", m.name)))?;
        self.check_artifact(p, &m.name, &v, &hex::encode(Sha256::digest(&bytes)))?;
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok((version_view(&m.name, v, &aliases), bytes.to_vec()))
    }

    /// The artifact as a local copy, for downloads: checked like [`Self::artifact`] before
    /// anything is sent, with a few buffers in memory whatever its size.
    pub async fn artifact_copy(&self, p: &Principal, name: &str, version: i64) -> Result<(ModelVersionView, Spooled)> {
        let m = self.find(p, name).await?;
        let v = self.version_record(&m, version).await?;
        let stream = self
            .tables
            .get_stream(&v.artifact_location)
            .await?
            .ok_or_else(|| Error::Internal(format!("model {}/{version}: artifact is missing", m.name)))?;
        let copy = spool(stream, &self.spool_dir).await?;
        self.check_artifact(p, &m.name, &v, &copy.sha256)?;
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok((version_view(&m.name, v, &aliases), copy))
    }

    /// The stored bytes (by their SHA-256) are what was recorded and signed.
    fn check_artifact(&self, p: &Principal, model: &str, v: &ModelVersionRecord, sha256: &str) -> Result<()> {
        let version = v.version;
        if sha256 != v.artifact_sha256 {
            return Err(Error::Tampered(format!("model {model}/{version}: the artifact does not match its recorded SHA-256")));
        }
        if let Err(why) = self.signer.verify(&v.signature, &v.signing_key_id, &p.tenant, model, &v.artifact_sha256) {
            return Err(Error::Tampered(format!("model {model}/{version}: the artifact is refused: {why}")));
        }
        Ok(())
    }

    /// The version as an ONNX graph: an imported one as it was uploaded, a native one
    /// exported from its (verified) artifact.
    pub async fn onnx(&self, p: &Principal, name: &str, version: i64) -> Result<(ModelVersionView, Vec<u8>)> {
        let (v, bytes) = self.artifact(p, name, version).await?;
        if v.backend == "onnx" {
            return Ok((v, bytes));
        }
        let artifact = ModelArtifact::from_bytes(&bytes).map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))?;
        let exported = onnx::export(&artifact, name, version)?;
        Ok((v, exported))
    }

    /// Loads and checks an artifact, ready to score with.
    pub async fn load(&self, p: &Principal, name: &str, version: i64) -> Result<Runnable> {
        let (v, bytes) = self.artifact(p, name, version).await?;
        if v.backend == "onnx" {
            let columns: Option<Vec<String>> = v.config.get("signature").cloned().and_then(|s| serde_json::from_value(s).ok());
            let model = tokio::task::spawn_blocking(move || OnnxModel::prepare(&bytes, columns.as_deref()))
                .await
                .map_err(|e| Error::Internal(format!("preparing the model: {e}")))?
                // It was prepared at registration; failing now means the bytes changed.
                .map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))?;
            return Ok(Runnable::Onnx(Arc::new(model)));
        }
        ModelArtifact::from_bytes(&bytes).map(|a| Runnable::Native(Arc::new(a))).map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))
    }

    pub async fn set_state(&self, p: &Principal, name: &str, version: i64, to: &str) -> Result<ModelVersionView> {
        let m = self.find(p, name).await?;
        let lock = self.locks.get(&m.id);
        let _guard = lock.lock().await;
        self.version_record(&m, version).await?;
        if to == "deleted" {
            let users: Vec<String> = self.catalog.aliases(&m.id).await?.into_iter().filter(|(_, v)| *v == version).map(|(a, _)| a).collect();
            if !users.is_empty() {
                return Err(Error::Conflict(format!(
                    "version {version} of `{name}` is what alias(es) {} point at; move them first",
                    users.join(", ")
                )));
            }
        }
        self.catalog.set_model_version_state(&m.id, version, to).await?;
        if to == "deleted"
            && let Some(events) = self.events()
        {
            events.version_deleted(&m.id, version);
        }
        let v = self.catalog.model_version(&m.id, version).await?.expect("just updated");
        let aliases = self.catalog.aliases(&m.id).await?;
        Ok(version_view(&m.name, v, &aliases))
    }
}
