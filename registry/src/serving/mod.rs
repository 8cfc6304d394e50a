//! Model serving: loaded models (verified at load), alias routes with canary splits,
//! dynamic batching, MLflow-compatible scoring inputs, predictions by entity key, the
//! guard that rolls a bad canary back, the inference log and drift.
//!
//! A request is parsed and encoded (preprocessing from the artifact) on its own task;
//! only the encoded matrix goes to the model's batcher, which scores everything queued at
//! that moment in one pass. Under light load a request is scored alone at once; under
//! heavy load batches grow up to `max_batch_rows`, and `max_batch_wait` can trade a little
//! latency for larger batches.
//!
//! Follows the registry as its [`ModelEvents`] (warm before an alias moves, forget what
//! was deleted); reads the online store and writes the inference log through the
//! feature-writer handle. Never imports `http/` or `app/`.

mod batcher;
mod canary;
pub mod drift;
pub mod inference_log;
mod inputs;
pub mod tensors;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::models::{ModelEvents, Models, Runnable};
use crate::online::{EntityRows, OnlineStore};
use crate::platform::audit::AuditLog;
use crate::platform::catalog::SharedCatalog;
use crate::platform::changes::{Change, ChangeObserver, Changes};
use crate::platform::time::now_micros;

pub use batcher::{Encoded, LoadedModel, OutputTensor, Scored, ScoringResponse};
use batcher::Scorer;
pub use canary::{Canary, CanaryView, Guard, StartCanary};
pub use inference_log::{InferenceLog, LogRow};
pub use inputs::{EntityInput, ScoringInput, input_from_entities, online_inputs};

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Model versions kept loaded; the least recently used goes first.
    pub max_loaded_models: usize,
    pub max_batch_rows: usize,
    pub max_batch_wait: Duration,
    /// Share of scoring requests written to the inference log (0 to 1).
    pub inference_log_sample_rate: f64,
}

/// How long an alias route read from the catalog is trusted before it is read again, so
/// moves made through another replica are picked up. Moves made here apply at once.
const ROUTE_TTL: Duration = Duration::from_secs(1);

/// Where an alias sends traffic.
pub struct Route {
    pub stable: i64,
    pub canary: Option<Arc<Canary>>,
    read_at: Instant,
}

/// What a scoring request names: a version, or an alias to route.
pub enum Target {
    Version(i64),
    Alias(String),
}

/// The body of a scoring request.
pub enum ScoringBody {
    Json(Bytes),
    Csv(Bytes),
    /// Rows already read from another protocol (the Open Inference Protocol), with the
    /// request's bytes for the input hash.
    Rows(ScoringInput, Bytes),
}

/// A scoring body, parsed.
enum Parsed {
    Csv,
    Json(Value),
    Rows(ScoringInput),
}

/// A scoring request's answer and what the audit record says of it: the version that
/// answered (or was tried), alias, variant, input hash, entities served.
pub struct Invocation {
    pub outcome: Result<ScoringResponse>,
    pub version: i64,
    pub rows: Option<u64>,
    pub details: Vec<(String, String)>,
}

/// The serving service: loaded models and alias routes of this server.
pub struct Serving {
    config: ServingConfig,
    catalog: SharedCatalog,
    models: Arc<Models>,
    online: Arc<OnlineStore>,
    audit: Arc<AuditLog>,
    log: Arc<InferenceLog>,
    /// (tenant id, model name) → model id. Models are never renamed or removed.
    model_ids: RwLock<HashMap<(String, String), String>>,
    loaded: RwLock<HashMap<(String, i64), Arc<LoadedModel>>>,
    routes: RwLock<HashMap<(String, String), Arc<Route>>>,
    /// Bumped whenever a route is dropped (an alias moved, a canary changed): a route
    /// read from the catalog before the change is not cached after it.
    routes_generation: AtomicU64,
    /// Bumped whenever a version is dropped (deleted): a load that started before is
    /// not cached after it.
    models_generation: AtomicU64,
    /// One load at a time per process: a burst of first requests loads a version once.
    loading: tokio::sync::Mutex<()>,
    /// Where route and version changes are announced to other replicas.
    changes: Arc<Changes>,
}

impl Serving {
    pub fn new(
        config: ServingConfig,
        catalog: SharedCatalog,
        models: Arc<Models>,
        online: Arc<OnlineStore>,
        audit: Arc<AuditLog>,
        log: Arc<InferenceLog>,
        changes: Arc<Changes>,
    ) -> Arc<Serving> {
        Arc::new(Serving {
            changes,
            config,
            catalog,
            models,
            online,
            audit,
            log,
            model_ids: Default::default(),
            loaded: Default::default(),
            routes: Default::default(),
            routes_generation: AtomicU64::new(0),
            models_generation: AtomicU64::new(0),
            loading: Default::default(),
        })
    }

    /// Drops a version from the cache (it was deleted) here and on the other replicas.
    /// Call after the catalog changed.
    pub fn forget(&self, model_id: &str, version: i64) {
        self.drop_version(model_id, version);
        self.changes.announce(Change::ModelVersion { model_id: model_id.to_string(), version });
    }

    /// Drops an alias route so the next request, here and on the other replicas, reads it
    /// from the catalog. Call after the catalog changed.
    pub fn forget_route(&self, model_id: &str, alias: &str) {
        self.drop_route(model_id, alias);
        self.changes.announce(Change::Route { model_id: model_id.to_string(), alias: alias.to_string() });
    }

    fn drop_version(&self, model_id: &str, version: i64) {
        let mut loaded = self.loaded.write().expect("model cache lock");
        self.models_generation.fetch_add(1, Ordering::SeqCst);
        loaded.remove(&(model_id.to_string(), version));
    }

    fn drop_route(&self, model_id: &str, alias: &str) {
        let mut routes = self.routes.write().expect("route lock");
        self.routes_generation.fetch_add(1, Ordering::SeqCst);
        routes.remove(&(model_id.to_string(), alias.to_string()));
    }

    pub async fn model_id(&self, p: &Principal, name: &str) -> Result<String> {
        let key = (p.tenant_id.clone(), name.to_string());
        if let Some(id) = self.model_ids.read().expect("model id lock").get(&key) {
            return Ok(id.clone());
        }
        let m = self.models.find(p, name).await?;
        self.model_ids.write().expect("model id lock").insert(key, m.id.clone());
        Ok(m.id)
    }

    /// The loaded model, loading (and verifying: hash and signature) it on first use.
    pub async fn loaded(&self, p: &Principal, name: &str, version: i64) -> Result<Arc<LoadedModel>> {
        let id = self.model_id(p, name).await?;
        let key = (id.clone(), version);
        if let Some(m) = self.loaded.read().expect("model cache lock").get(&key) {
            m.last_used.store(batcher::now_ms(), Ordering::Relaxed);
            return Ok(m.clone());
        }
        let _one = self.loading.lock().await;
        if let Some(m) = self.loaded.read().expect("model cache lock").get(&key) {
            return Ok(m.clone());
        }
        let generation = self.models_generation.load(Ordering::SeqCst);
        let started = Instant::now();
        let runnable = self.models.load(p, name, version).await?;
        let scorer = match &runnable {
            Runnable::Native(artifact) => {
                let layers = artifact.dense_layers().map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))?;
                Scorer::Native { layers: Arc::new(layers), artifact: artifact.clone() }
            }
            Runnable::Onnx(model) => Scorer::Onnx(model.clone()),
        };
        let (tx, rx) = mpsc::channel(4096);
        let label = format!("{}/{name}", p.tenant);
        tokio::spawn(batcher::run_batcher(rx, scorer, self.config.clone(), label, version));
        let m = Arc::new(LoadedModel { model_id: id, model: name.to_string(), version, runnable, batcher: tx, last_used: batcher::now_ms().into() });
        let mut loaded = self.loaded.write().expect("model cache lock");
        // A version deleted while it loaded serves this request (it began before the delete
        // finished) but is not kept.
        if self.models_generation.load(Ordering::SeqCst) == generation {
            // Requests holding an evicted model finish with it; its batcher ends with them.
            while loaded.len() >= self.config.max_loaded_models.max(1) {
                let Some(oldest) = loaded.iter().min_by_key(|(_, m)| m.last_used.load(Ordering::Relaxed)).map(|(k, _)| k.clone()) else { break };
                loaded.remove(&oldest);
            }
            loaded.insert(key, m.clone());
        }
        drop(loaded);
        tracing::info!(model = %name, version, ms = started.elapsed().as_millis() as u64, "model loaded and verified");
        Ok(m)
    }

    /// The alias's route: from the cache while fresh, else from the catalog.
    pub async fn route(&self, p: &Principal, name: &str, alias: &str) -> Result<Arc<Route>> {
        let id = self.model_id(p, name).await?;
        let key = (id.clone(), alias.to_string());
        if let Some(r) = self.routes.read().expect("route lock").get(&key)
            && r.read_at.elapsed() < ROUTE_TTL
        {
            return Ok(r.clone());
        }
        let generation = self.routes_generation.load(Ordering::SeqCst);
        let stable = self
            .catalog
            .aliases(&id)
            .await?
            .into_iter()
            .find(|(a, _)| a == alias)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::NotFound { kind: "alias", name: format!("{name}@{alias}") })?;
        let previous = self.routes.read().expect("route lock").get(&key).cloned();
        let canary = match self.catalog.canaries(&id, alias).await?.into_iter().rfind(|c| c.ended_at.is_none()) {
            // Keep the running window of a canary that is still the same one.
            Some(rec) => match previous.as_ref().and_then(|r| r.canary.clone()).filter(|c| c.record.seq == rec.seq) {
                Some(c) => Some(c),
                None => Some(Arc::new(Canary::from_record(rec)?)),
            },
            None => None,
        };
        let r = Arc::new(Route { stable, canary, read_at: Instant::now() });
        let mut routes = self.routes.write().expect("route lock");
        // An alias that moved while its route was read is read again by the next request,
        // never cached stale.
        if self.routes_generation.load(Ordering::SeqCst) == generation {
            routes.insert(key, r.clone());
        }
        Ok(r)
    }

    /// Scores a request with a version or through an alias (following its canary split),
    /// counts it, feeds the canary's guard and the inference log. Errors before a version
    /// is chosen (a body that is not JSON, an unknown alias) are returned as they are;
    /// after that, the outcome carries the error with what was tried.
    #[tracing::instrument(name = "score", skip_all, fields(tenant = %p.tenant, model = %name))]
    pub async fn invoke(self: &Arc<Self>, p: &Principal, request_id: &str, name: &str, target: Target, body: ScoringBody) -> Result<Invocation> {
        let started = Instant::now();
        // Parse before routing, so a malformed body never counts against a canary.
        let (parsed, raw) = match body {
            ScoringBody::Csv(b) => (Parsed::Csv, b),
            ScoringBody::Json(b) => (Parsed::Json(serde_json::from_slice::<Value>(&b).map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?), b),
            ScoringBody::Rows(rows, b) => (Parsed::Rows(rows), b),
        };
        let (version, alias, canary) = match &target {
            Target::Version(v) => (*v, None, None),
            Target::Alias(a) => {
                let route = self.route(p, name, a).await?;
                let (v, c) = canary::pick(&route);
                (v, Some(a.clone()), c)
            }
        };
        let mut details = Vec::new();
        if let Some(a) = &alias {
            details.push(("alias".into(), a.clone()));
            details.push(("variant".into(), if canary.is_some() { "canary" } else { "stable" }.into()));
        }
        details.push(("input_sha256".into(), hex::encode(Sha256::digest(&raw))));
        let outcome = self.score(p, name, version, parsed, &raw, &mut details).await;
        let elapsed = started.elapsed();
        let label = format!("{}/{name}", p.tenant);
        let status = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => e.status_and_code().0.as_u16().to_string(),
        };
        // A name or version that does not exist makes no series: labels stay bounded by
        // what is registered, whatever callers put in URLs.
        let unknown = matches!(&outcome, Err(Error::NotFound { kind: "model" | "model version", .. } | Error::NotVisible { .. }));
        if !unknown {
            metrics::counter!("lakeledger_model_requests_total", "model" => label.clone(), "version" => version.to_string(), "status" => status).increment(1);
            metrics::histogram!("lakeledger_model_request_seconds", "model" => label, "version" => version.to_string()).record(elapsed.as_secs_f64());
        }
        if let Some(c) = &canary {
            let model_id = self.model_id(p, name).await?;
            self.observe_canary(p, name, &model_id, c, outcome.is_err(), elapsed);
        }
        let (response, input, entities) = match outcome {
            Ok(answer) => answer,
            // A refused or failed scoring is recorded with what was tried: version, variant, input hash.
            Err(e) => return Ok(Invocation { outcome: Err(e), version, rows: None, details }),
        };
        let rate = self.config.inference_log_sample_rate;
        if rate > 0.0 && (rate >= 1.0 || rand::random::<f64>() < rate) {
            let variant = alias.as_ref().map(|_| if canary.is_some() { "canary" } else { "stable" });
            let rows = log_rows(request_id, &response, &input, entities.as_ref(), alias, variant);
            self.log.push(p, name, rows);
        }
        let rows = Some(response.predictions.len() as u64);
        Ok(Invocation { outcome: Ok(response), version, rows, details })
    }

    /// Returns the answer, the rows scored (model inputs only) and the entity rows when
    /// the request named entities.
    async fn score(&self, p: &Principal, name: &str, version: i64, parsed: Parsed, body: &[u8], details: &mut Vec<(String, String)>) -> Result<(ScoringResponse, ScoringInput, Option<EntityRows>)> {
        let model = self.loaded(p, name, version).await?;
        let inputs = model.runnable.input_names();
        let mut entity_rows = None;
        let input = match parsed {
            Parsed::Csv => ScoringInput::from_csv(body)?,
            Parsed::Rows(rows) => rows,
            Parsed::Json(Value::Object(mut map)) if map.contains_key("entities") => {
                if map.len() > 1 {
                    return Err(Error::Unprocessable("with `entities`, give nothing else: the inputs come from the online store".into()));
                }
                let entities = EntityRows::parse(&map.remove("entities").unwrap_or(Value::Null))?;
                let EntityInput { input, served, missing } = input_from_entities(&self.online, &p.tenant_id, &inputs, &entities).await?;
                details.push(("served".into(), served.iter().map(|(g, v)| format!("{g}@{v}")).collect::<Vec<_>>().join(",")));
                let keys: Vec<String> = entities.columns.iter().filter(|c| !inputs.contains(c)).cloned().collect();
                details.push(("entity_key_hashes".into(), self.online.hasher().hash_rows(&entities, &keys)));
                if !missing.is_empty() {
                    details.push(("features_not_present".into(), missing.join(",")));
                }
                entity_rows = Some(entities);
                input
            }
            Parsed::Json(v) => ScoringInput::from_mlflow_json(&v, &inputs)?,
        };
        if input.rows == 0 {
            return Err(Error::Unprocessable("there are no rows to score".into()));
        }
        let (encoded, input) = model.encode(input)?;
        let scored = model.score(encoded, input.rows).await?;
        Ok((model.response(scored), input, entity_rows))
    }
}

/// One inference-log row per scored row: inputs, entity keys, prediction.
fn log_rows(request_id: &str, response: &ScoringResponse, input: &ScoringInput, entities: Option<&EntityRows>, alias: Option<String>, variant: Option<&'static str>) -> Vec<LogRow> {
    let served_at = now_micros();
    (0..input.rows)
        .map(|r| {
            let row_of = |columns: &[String], values: &[Value]| -> String {
                let width = columns.len();
                let object: serde_json::Map<String, Value> = columns.iter().cloned().zip(values[r * width..(r + 1) * width].iter().cloned()).collect();
                Value::Object(object).to_string()
            };
            let mut prediction = serde_json::json!({"prediction": response.predictions[r]});
            if let Some(p) = &response.probabilities {
                prediction["probabilities"] = Value::Array(p[r].clone());
            }
            LogRow {
                request_id: request_id.to_string(),
                row: r as i32,
                served_at,
                version: response.version,
                alias: alias.clone(),
                variant,
                inputs: row_of(&input.columns, &input.values),
                entity: entities.map(|e| row_of(&e.columns, &e.values)),
                prediction: prediction.to_string(),
            }
        })
        .collect()
}

impl ChangeObserver for Serving {
    fn changed(&self, change: &Change) {
        match change {
            Change::Route { model_id, alias } => self.drop_route(model_id, alias),
            Change::ModelVersion { model_id, version } => self.drop_version(model_id, *version),
            Change::Resync => {
                let (mut routes, mut loaded) = (self.routes.write().expect("route lock"), self.loaded.write().expect("model cache lock"));
                self.routes_generation.fetch_add(1, Ordering::SeqCst);
                self.models_generation.fetch_add(1, Ordering::SeqCst);
                routes.clear();
                loaded.clear();
            }
            Change::Keys | Change::Group { .. } => {}
        }
    }
}

#[async_trait]
impl ModelEvents for Serving {
    async fn warm(&self, p: &Principal, model: &str, version: i64) -> Result<()> {
        self.loaded(p, model, version).await.map(|_| ())
    }

    fn alias_moved(&self, model_id: &str, alias: &str) {
        self.forget_route(model_id, alias);
    }

    fn version_deleted(&self, model_id: &str, version: i64) {
        self.forget(model_id, version);
    }
}
