//! Model serving: loaded models (verified at load), alias routes with canary splits,
//! dynamic batching, MLflow-compatible scoring inputs, predictions by entity key, and the
//! guard that rolls a bad canary back.
//!
//! A request is parsed and encoded (preprocessing from the artifact) on its own task;
//! only the encoded matrix goes to the model's batcher, which scores everything queued at
//! that moment in one pass. Under light load a request is scored alone at once; under
//! heavy load batches grow up to `max_batch_rows`, and `max_batch_wait` can trade a little
//! latency for larger batches.

pub mod drift;
pub mod inference_log;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lakeledger_trainer::ModelArtifact;
use lakeledger_trainer::artifact::{DenseLayer, Predictions};
use lakeledger_trainer::data::{Encoding, RawColumn, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::identity::Principal;
use crate::platform::catalog::{CanaryRecord, now_micros};
use crate::error::{Error, Result};
use crate::online::{EntityRows, FeatureRef, OnlineStore};
use crate::http::state::AppState;

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Model versions kept loaded; the least recently used goes first.
    pub max_loaded_models: usize,
    pub max_batch_rows: usize,
    pub max_batch_wait: Duration,
    pub inference_log_sample_rate: f64,
    pub inference_log_flush: Duration,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            max_loaded_models: 64,
            max_batch_rows: 256,
            max_batch_wait: Duration::ZERO,
            inference_log_sample_rate: 1.0,
            inference_log_flush: Duration::from_secs(1),
        }
    }
}

/// How long an alias route read from the catalog is trusted before it is read again, so
/// moves made through another replica are picked up. Moves made here apply at once.
const ROUTE_TTL: Duration = Duration::from_secs(1);

/// A model version ready to score.
pub struct LoadedModel {
    pub model_id: String,
    pub model: String,
    pub version: i64,
    pub artifact: ModelArtifact,
    width: usize,
    batcher: mpsc::Sender<Job>,
    /// When a request last used it (ms since the server's clock origin), for eviction.
    last_used: std::sync::atomic::AtomicU64,
}

/// The server's clock origin for `last_used`.
fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

struct Job {
    matrix: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Predictions>>,
}

/// Where an alias sends traffic.
pub struct Route {
    pub stable: i64,
    pub canary: Option<Arc<Canary>>,
    read_at: Instant,
}

/// An open canary with its guard's running window.
pub struct Canary {
    pub record: CanaryRecord,
    pub guard: Guard,
    window: Mutex<GuardWindow>,
    ended: AtomicBool,
}

/// Thresholds that end a canary automatically.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Roll back when the share of failed canary requests in the window exceeds this.
    pub max_error_rate: Option<f64>,
    /// Roll back when the canary's 99th-percentile latency in the window exceeds this.
    pub max_p99_ms: Option<f64>,
    /// Canary requests seen before the guard judges (default 100).
    pub min_requests: Option<u64>,
    /// The most recent canary requests the guard looks at (default 1000).
    pub window: Option<u64>,
}

impl Guard {
    fn check(&self) -> Result<()> {
        if let Some(r) = self.max_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::Unprocessable(format!("guard.max_error_rate must be between 0 and 1, got {r}")));
        }
        if let Some(ms) = self.max_p99_ms
            && !(ms >= 0.0 && ms.is_finite())
        {
            return Err(Error::Unprocessable(format!("guard.max_p99_ms must be a non-negative number, got {ms}")));
        }
        if self.window == Some(0) {
            return Err(Error::Unprocessable("guard.window must be at least 1".into()));
        }
        Ok(())
    }
    fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(100).max(1)
    }
    fn window(&self) -> usize {
        self.window.unwrap_or(1000).max(1) as usize
    }
}

#[derive(Default)]
struct GuardWindow {
    /// (failed, latency in µs), oldest first.
    recent: std::collections::VecDeque<(bool, u64)>,
    seen: u64,
}

impl GuardWindow {
    /// The guard's finding, when a threshold is crossed.
    fn verdict(&self, guard: &Guard) -> Option<String> {
        if self.seen < guard.min_requests() {
            return None;
        }
        let n = self.recent.len() as f64;
        if let Some(max) = guard.max_error_rate {
            let failed = self.recent.iter().filter(|(f, _)| *f).count() as f64;
            if failed / n > max {
                return Some(format!("error rate {:.4} over the last {} canary requests exceeds {max}", failed / n, self.recent.len()));
            }
        }
        if let Some(max) = guard.max_p99_ms {
            let mut l: Vec<u64> = self.recent.iter().map(|(_, l)| *l).collect();
            l.sort_unstable();
            let p99 = l[((l.len() as f64 * 0.99).ceil() as usize).clamp(1, l.len()) - 1] as f64 / 1000.0;
            if p99 > max {
                return Some(format!("p99 latency {p99:.3} ms over the last {} canary requests exceeds {max} ms", self.recent.len()));
            }
        }
        None
    }
}

/// Loaded models and alias routes of this server.
pub struct Serving {
    pub config: ServingConfig,
    /// (tenant id, model name) → model id. Models are never renamed or removed.
    model_ids: RwLock<HashMap<(String, String), String>>,
    models: RwLock<HashMap<(String, i64), Arc<LoadedModel>>>,
    routes: RwLock<HashMap<(String, String), Arc<Route>>>,
    /// Bumped whenever a route is dropped (an alias moved, a canary changed): a route
    /// read from the catalog before the change is not cached after it.
    routes_generation: AtomicU64,
    /// Bumped whenever a version is dropped (deleted): a load that started before is
    /// not cached after it.
    models_generation: AtomicU64,
    /// One load at a time per process: a burst of first requests loads a version once.
    loading: tokio::sync::Mutex<()>,
}

impl Serving {
    pub fn new(config: ServingConfig) -> Serving {
        Serving {
            config,
            model_ids: Default::default(),
            models: Default::default(),
            routes: Default::default(),
            routes_generation: AtomicU64::new(0),
            models_generation: AtomicU64::new(0),
            loading: Default::default(),
        }
    }

    /// Drops a version from the cache (it was deleted). Call after the catalog changed.
    pub fn forget(&self, model_id: &str, version: i64) {
        let mut models = self.models.write().expect("model cache lock");
        self.models_generation.fetch_add(1, Ordering::SeqCst);
        models.remove(&(model_id.to_string(), version));
    }

    /// Drops an alias route so the next request reads it from the catalog. Call after
    /// the catalog changed.
    pub fn forget_route(&self, model_id: &str, alias: &str) {
        let mut routes = self.routes.write().expect("route lock");
        self.routes_generation.fetch_add(1, Ordering::SeqCst);
        routes.remove(&(model_id.to_string(), alias.to_string()));
    }
}

pub async fn model_id(state: &AppState, p: &Principal, name: &str) -> Result<String> {
    let key = (p.tenant_id.clone(), name.to_string());
    if let Some(id) = state.serving.model_ids.read().expect("model id lock").get(&key) {
        return Ok(id.clone());
    }
    let m = crate::models::find(state, p, name).await?;
    state.serving.model_ids.write().expect("model id lock").insert(key, m.id.clone());
    Ok(m.id)
}

/// The loaded model, loading (and verifying: hash and signature) it on first use.
pub async fn loaded(state: &AppState, p: &Principal, name: &str, version: i64) -> Result<Arc<LoadedModel>> {
    let id = model_id(state, p, name).await?;
    let key = (id.clone(), version);
    if let Some(m) = state.serving.models.read().expect("model cache lock").get(&key) {
        m.last_used.store(now_ms(), Ordering::Relaxed);
        return Ok(m.clone());
    }
    let _one = state.serving.loading.lock().await;
    if let Some(m) = state.serving.models.read().expect("model cache lock").get(&key) {
        return Ok(m.clone());
    }
    let generation = state.serving.models_generation.load(Ordering::SeqCst);
    let started = Instant::now();
    let artifact = crate::models::load(state, p, name, version).await?;
    let layers = artifact.dense_layers().map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))?;
    let width = artifact.inputs.iter().map(|c| c.width()).sum();
    let (tx, rx) = mpsc::channel(4096);
    let label = format!("{}/{name}", p.tenant);
    tokio::spawn(run_batcher(rx, Arc::new(layers), artifact.clone(), state.serving.config.clone(), label, version));
    let m = Arc::new(LoadedModel { model_id: id, model: name.to_string(), version, artifact, width, batcher: tx, last_used: now_ms().into() });
    let mut models = state.serving.models.write().expect("model cache lock");
    // A version deleted while it loaded serves this request (it began before the delete
    // finished) but is not kept.
    if state.serving.models_generation.load(Ordering::SeqCst) == generation {
        // Requests holding an evicted model finish with it; its batcher ends with them.
        while models.len() >= state.serving.config.max_loaded_models.max(1) {
            let Some(oldest) = models.iter().min_by_key(|(_, m)| m.last_used.load(Ordering::Relaxed)).map(|(k, _)| k.clone()) else { break };
            models.remove(&oldest);
        }
        models.insert(key, m.clone());
    }
    drop(models);
    tracing::info!(model = %name, version, ms = started.elapsed().as_millis() as u64, "model loaded and verified");
    Ok(m)
}

/// The alias's route: from the cache while fresh, else from the catalog.
pub async fn route(state: &AppState, p: &Principal, name: &str, alias: &str) -> Result<Arc<Route>> {
    let id = model_id(state, p, name).await?;
    let key = (id.clone(), alias.to_string());
    if let Some(r) = state.serving.routes.read().expect("route lock").get(&key)
        && r.read_at.elapsed() < ROUTE_TTL
    {
        return Ok(r.clone());
    }
    let generation = state.serving.routes_generation.load(Ordering::SeqCst);
    let stable = state
        .catalog
        .aliases(&id)
        .await?
        .into_iter()
        .find(|(a, _)| a == alias)
        .map(|(_, v)| v)
        .ok_or_else(|| Error::NotFound { kind: "alias", name: format!("{name}@{alias}") })?;
    let previous = state.serving.routes.read().expect("route lock").get(&key).cloned();
    let canary = match state.catalog.canaries(&id, alias).await?.into_iter().rfind(|c| c.ended_at.is_none()) {
        // Keep the running window of a canary that is still the same one.
        Some(rec) => match previous.as_ref().and_then(|r| r.canary.clone()).filter(|c| c.record.seq == rec.seq) {
            Some(c) => Some(c),
            None => Some(Arc::new(Canary::from_record(rec)?)),
        },
        None => None,
    };
    let r = Arc::new(Route { stable, canary, read_at: Instant::now() });
    let mut routes = state.serving.routes.write().expect("route lock");
    // An alias that moved while its route was read is read again by the next request,
    // never cached stale.
    if state.serving.routes_generation.load(Ordering::SeqCst) == generation {
        routes.insert(key, r.clone());
    }
    Ok(r)
}

impl Canary {
    fn from_record(record: CanaryRecord) -> Result<Canary> {
        let guard: Guard = serde_json::from_str(&record.guard_json).map_err(|e| Error::Internal(format!("canary guard: {e}")))?;
        Ok(Canary { record, guard, window: Default::default(), ended: AtomicBool::new(false) })
    }
}

/// Which version serves a request to an alias, and whether it is the canary.
pub fn pick(route: &Route) -> (i64, Option<Arc<Canary>>) {
    match &route.canary {
        Some(c) if !c.ended.load(Ordering::Relaxed) && rand::random::<f64>() * 100.0 < c.record.percent => (c.record.version, Some(c.clone())),
        _ => (route.stable, None),
    }
}

/// Records a canary request's outcome; rolls the canary back when the guard says so.
pub fn observe_canary(state: &AppState, p: &Principal, name: &str, model_id: &str, canary: &Arc<Canary>, failed: bool, latency: Duration) {
    let verdict = {
        let mut w = canary.window.lock().expect("guard window lock");
        w.seen += 1;
        w.recent.push_back((failed, latency.as_micros() as u64));
        while w.recent.len() > canary.guard.window() {
            w.recent.pop_front();
        }
        w.verdict(&canary.guard)
    };
    let Some(why) = verdict else { return };
    if canary.ended.swap(true, Ordering::SeqCst) {
        return;
    }
    metrics::counter!("lakeledger_model_canary_rollbacks_total", "model" => format!("{}/{name}", p.tenant)).increment(1);
    tracing::warn!(model = %name, alias = %canary.record.alias, version = canary.record.version, reason = %why, "canary rolled back by its guard");
    let (state, p, name, model_id, canary) = (state.clone(), p.clone(), name.to_string(), model_id.to_string(), canary.clone());
    tokio::spawn(async move {
        let reason = format!("rolled back by guard: {why}");
        if let Err(e) = end_canary_recorded(&state, &p, &name, &model_id, &canary.record.alias, &reason, "guard").await {
            tracing::error!(error = %e, model = %name, "recording a canary rollback failed");
        }
    });
}

/// Closes a canary in the catalog, with an audit record, and drops the cached route.
async fn end_canary_recorded(state: &AppState, p: &Principal, name: &str, model_id: &str, alias: &str, reason: &str, by: &str) -> Result<bool> {
    let mut e = lakeledger_audit::Event::new("model_canary.end", lakeledger_audit::Phase::Intent);
    e.actor.principal = Some(by.to_string());
    e.actor.principal_type = if by == "guard" { "system".into() } else { "api_key".into() };
    e.actor.tenant = Some(p.tenant.clone());
    e.resource.kind = Some("model".into());
    e.resource.name = Some(format!("{name}@{alias}"));
    e.resource.tenant = Some(p.tenant.clone());
    e.details.push(("reason".into(), reason.to_string()));
    state.audit.record(&e).await?;
    let ended = state.catalog.end_canary(model_id, alias, now_micros(), reason, by).await?;
    state.serving.forget_route(model_id, alias);
    Ok(ended)
}

async fn run_batcher(mut rx: mpsc::Receiver<Job>, layers: Arc<Vec<DenseLayer>>, artifact: ModelArtifact, config: ServingConfig, label: String, version: i64) {
    let version_label = version.to_string();
    let flops_per_row: usize = layers.iter().map(|l| l.inputs * l.outputs).sum();
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < config.max_batch_rows {
            match rx.try_recv() {
                Ok(j) => {
                    rows += j.rows;
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        if rows < config.max_batch_rows && !config.max_batch_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + config.max_batch_wait;
            while rows < config.max_batch_rows {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => {
                        rows += j.rows;
                        jobs.push(j);
                    }
                    _ => break,
                }
            }
        }
        metrics::histogram!("lakeledger_model_batch_rows", "model" => label.clone(), "version" => version_label.clone()).record(rows as f64);
        let mut matrix = Vec::with_capacity(jobs.iter().map(|j| j.matrix.len()).sum());
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for j in jobs {
            matrix.extend_from_slice(&j.matrix);
            sizes.push(j.rows);
            replies.push(j.reply);
        }
        // A panic while scoring fails this batch's requests, not the batcher: later
        // requests to the model are still served.
        let predictions = if rows * flops_per_row <= 2_000_000 {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| artifact.predict_encoded(&layers, &matrix, rows))).map_err(|_| ())
        } else {
            // Big batches of big models would hold a request thread too long.
            let (layers, artifact) = (layers.clone(), artifact.clone());
            tokio::task::spawn_blocking(move || artifact.predict_encoded(&layers, &matrix, rows)).await.map_err(|_| ())
        };
        let Ok(predictions) = predictions else {
            tracing::error!(model = %label, version, rows, "scoring a batch panicked; its requests fail");
            for reply in replies {
                let _ = reply.send(Err(Error::Internal(format!("model {label}/{version}: scoring panicked"))));
            }
            continue;
        };
        let mut offset = 0;
        for (n, reply) in sizes.into_iter().zip(replies) {
            let _ = reply.send(Ok(slice(&predictions, offset, n)));
            offset += n;
        }
    }
}

fn slice(p: &Predictions, from: usize, rows: usize) -> Predictions {
    match p {
        Predictions::Probabilities { classes, values } => {
            Predictions::Probabilities { classes: *classes, values: values[from * classes..(from + rows) * classes].to_vec() }
        }
        Predictions::Values(v) => Predictions::Values(v[from..from + rows].to_vec()),
    }
}

impl LoadedModel {
    /// Scores encoded rows through the batcher.
    pub async fn score(&self, matrix: Vec<f32>, rows: usize) -> Result<Predictions> {
        debug_assert_eq!(matrix.len(), rows * self.width);
        let (tx, rx) = oneshot::channel();
        self.batcher
            .send(Job { matrix, rows, reply: tx })
            .await
            .map_err(|_| Error::Unavailable(format!("model {}/{} is being unloaded; retry", self.model, self.version)))?;
        // The batcher answers every job it takes; a dropped reply means the server is
        // stopping.
        rx.await.map_err(|_| Error::Unavailable(format!("model {}/{} stopped scoring; retry", self.model, self.version)))?
    }

    /// Encodes rows with the artifact's preprocessing, checking every column. Also
    /// returns the rows narrowed to the model's inputs, in its order.
    pub fn encode(&self, input: ScoringInput) -> Result<(Vec<f32>, ScoringInput)> {
        let columns = self.columns(&input)?;
        let rows: Vec<usize> = (0..input.rows).collect();
        let matrix = lakeledger_trainer::data::encode(&self.artifact.inputs, &columns, &rows).map_err(|e| Error::Unprocessable(e.to_string()))?;
        let names: Vec<String> = self.artifact.inputs.iter().map(|c| c.name.clone()).collect();
        let narrowed = if input.columns == names {
            input
        } else {
            let at: Vec<usize> = names.iter().map(|n| input.columns.iter().position(|c| c == n).expect("checked above")).collect();
            let width = input.columns.len();
            let values = (0..input.rows).flat_map(|r| at.iter().map(move |&i| r * width + i)).map(|i| input.values[i].clone()).collect();
            ScoringInput { columns: names, values, rows: input.rows }
        };
        Ok((matrix, narrowed))
    }

    fn columns(&self, input: &ScoringInput) -> Result<Vec<RawColumn>> {
        let mut out = Vec::with_capacity(self.artifact.inputs.len());
        for c in &self.artifact.inputs {
            let Some(index) = input.columns.iter().position(|n| n == &c.name) else {
                return Err(Error::Unprocessable(format!(
                    "input column `{}` is missing; model {}/{} takes {}",
                    c.name,
                    self.model,
                    self.version,
                    self.artifact.input_names().join(", ")
                )));
            };
            let values = (0..input.rows).map(|r| &input.values[r * input.columns.len() + index]);
            out.push(match &c.encoding {
                Encoding::Standardized { .. } => RawColumn::Numeric(
                    values
                        .enumerate()
                        .map(|(r, v)| match v {
                            Value::Null => Ok(None),
                            Value::Number(n) => Ok(n.as_f64()),
                            Value::Bool(b) => Ok(Some(if *b { 1.0 } else { 0.0 })),
                            other => Err(Error::Unprocessable(format!("column `{}` row {r}: expected a number, got {other}", c.name))),
                        })
                        .collect::<Result<_>>()?,
                ),
                Encoding::OneHot { .. } => RawColumn::Text(
                    values
                        .enumerate()
                        .map(|(r, v)| match v {
                            Value::Null => Ok(None),
                            Value::String(s) => Ok(Some(s.clone())),
                            other => Err(Error::Unprocessable(format!("column `{}` row {r}: expected text, got {other}", c.name))),
                        })
                        .collect::<Result<_>>()?,
                ),
            });
        }
        Ok(out)
    }

    /// Predictions in the shape MLflow clients read, plus probabilities for classifiers.
    pub fn response(&self, p: &Predictions) -> ScoringResponse {
        match (p, &self.artifact.target) {
            (Predictions::Probabilities { classes, values }, Target::Classes { classes: labels }) => {
                let mut predictions = Vec::with_capacity(values.len() / classes.max(&1));
                let mut probabilities = Vec::with_capacity(predictions.capacity());
                for row in values.chunks(*classes) {
                    let best = row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
                    predictions.push(labels[best].clone());
                    probabilities.push(row.iter().map(|&v| round6(v)).collect());
                }
                ScoringResponse { predictions, probabilities: Some(probabilities), classes: Some(labels.clone()), model: self.model.clone(), version: self.version }
            }
            (Predictions::Values(v), _) => ScoringResponse {
                predictions: v.iter().map(|&x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)).collect(),
                probabilities: None,
                classes: None,
                model: self.model.clone(),
                version: self.version,
            },
            _ => ScoringResponse { predictions: vec![], probabilities: None, classes: None, model: self.model.clone(), version: self.version },
        }
    }
}

/// Probabilities are f32; six decimals is all they hold, and it keeps responses short.
fn round6(v: f32) -> Value {
    let x = (f64::from(v) * 1e6).round() / 1e6;
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoringResponse {
    /// Per row: the predicted class label (classifiers) or value (regressors).
    #[schema(value_type = Vec<Object>)]
    pub predictions: Vec<Value>,
    /// Classifiers: per row, the probability of each class in `classes` order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<Vec<Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub classes: Option<Vec<Value>>,
    pub model: String,
    /// The version that answered (for an alias, the one it routed to).
    pub version: i64,
}

/// Rows to score, by column name (row-major values).
#[derive(Debug, Default)]
pub struct ScoringInput {
    pub columns: Vec<String>,
    pub values: Vec<Value>,
    pub rows: usize,
}

impl ScoringInput {
    fn from_records(records: &[Value], what: &str) -> Result<ScoringInput> {
        let rows = EntityRows::from_rows(records, what)?;
        Ok(ScoringInput { columns: rows.columns, values: rows.values, rows: rows.rows })
    }

    fn from_positional(rows: &[Value], inputs: &[String], what: &str) -> Result<ScoringInput> {
        let mut values = Vec::with_capacity(rows.len() * inputs.len());
        for (i, row) in rows.iter().enumerate() {
            match row {
                Value::Array(cells) if cells.len() == inputs.len() => values.extend(cells.iter().cloned()),
                Value::Array(cells) => {
                    return Err(Error::Unprocessable(format!(
                        "{what}[{i}] has {} values; the model takes {} inputs ({})",
                        cells.len(),
                        inputs.len(),
                        inputs.join(", ")
                    )));
                }
                scalar if inputs.len() == 1 => values.push(scalar.clone()),
                _ => return Err(Error::Unprocessable(format!("{what}[{i}] must be a list of {} values or an object", inputs.len()))),
            }
        }
        Ok(ScoringInput { columns: inputs.to_vec(), values, rows: rows.len() })
    }

    /// The MLflow scoring-server JSON inputs: `dataframe_split`, `dataframe_records`,
    /// `instances` or `inputs`. Positional rows follow the model's input order.
    pub fn from_mlflow_json(body: &Value, inputs: &[String]) -> Result<ScoringInput> {
        let Value::Object(map) = body else {
            return Err(Error::Unprocessable("the body must be a JSON object with one of dataframe_split, dataframe_records, instances, inputs".into()));
        };
        if let Some(params) = map.get("params")
            && !(params.is_null() || params.as_object().is_some_and(|o| o.is_empty()))
        {
            return Err(Error::Unprocessable("these models take no `params`".into()));
        }
        let keys: Vec<&str> = map.keys().map(String::as_str).filter(|k| *k != "params").collect();
        let [key] = keys.as_slice() else {
            return Err(Error::Unprocessable(format!(
                "give exactly one of dataframe_split, dataframe_records, instances, inputs (got {})",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
            )));
        };
        let v = &map[*key];
        match (*key, v) {
            ("dataframe_split", Value::Object(split)) => {
                let columns: Vec<String> = match split.get("columns") {
                    Some(Value::Array(c)) => c
                        .iter()
                        .map(|n| n.as_str().map(str::to_string).ok_or_else(|| Error::Unprocessable(format!("dataframe_split.columns: {n} is not a column name"))))
                        .collect::<Result<_>>()?,
                    None => inputs.to_vec(),
                    Some(_) => return Err(Error::Unprocessable("dataframe_split.columns must be a list of names".into())),
                };
                let Some(Value::Array(data)) = split.get("data") else {
                    return Err(Error::Unprocessable("dataframe_split.data must be a list of rows".into()));
                };
                let mut values = Vec::with_capacity(data.len() * columns.len());
                for (i, row) in data.iter().enumerate() {
                    match row {
                        Value::Array(cells) if cells.len() == columns.len() => values.extend(cells.iter().cloned()),
                        _ => {
                            return Err(Error::Unprocessable(format!(
                                "dataframe_split.data[{i}] must be a list of {} values, one per column",
                                columns.len()
                            )));
                        }
                    }
                }
                Ok(ScoringInput { columns, values, rows: data.len() })
            }
            ("dataframe_records", Value::Array(records)) => Self::from_records(records, "dataframe_records"),
            ("instances" | "inputs", Value::Array(rows)) => {
                if rows.iter().all(Value::is_object) && !rows.is_empty() {
                    Self::from_records(rows, key)
                } else {
                    Self::from_positional(rows, inputs, key)
                }
            }
            ("inputs" | "instances", Value::Object(_)) => {
                // Columnar: {"col": [..], ..}
                let rows = EntityRows::parse_named(v, key)?;
                Ok(ScoringInput { columns: rows.columns, values: rows.values, rows: rows.rows })
            }
            (k @ ("dataframe_split" | "dataframe_records" | "instances" | "inputs"), _) => {
                Err(Error::Unprocessable(format!("`{k}` has the wrong shape; see the MLflow scoring protocol")))
            }
            (other, _) => Err(Error::Unprocessable(format!(
                "unknown input `{other}`; give one of dataframe_split, dataframe_records, instances, inputs, or entities"
            ))),
        }
    }

    /// `text/csv` with a header row. Cells that parse as numbers are numbers; empty
    /// cells are null; anything else is text.
    pub fn from_csv(bytes: &[u8]) -> Result<ScoringInput> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::Unprocessable("the CSV body is not UTF-8".into()))?;
        let mut reader = csv_rows(text);
        let header = reader.next().ok_or_else(|| Error::Unprocessable("the CSV body is empty; it needs a header row".into()))?;
        let columns: Vec<String> = header.into_iter().map(|c| c.trim().to_string()).collect();
        let mut values = Vec::new();
        let mut rows = 0;
        for (i, row) in reader.enumerate() {
            if row.len() == 1 && row[0].is_empty() {
                continue;
            }
            if row.len() != columns.len() {
                return Err(Error::Unprocessable(format!("CSV line {} has {} fields; the header has {}", i + 2, row.len(), columns.len())));
            }
            for cell in row {
                values.push(if cell.is_empty() {
                    Value::Null
                } else if let Ok(n) = cell.parse::<f64>() {
                    serde_json::Number::from_f64(n).map_or(Value::String(cell), Value::Number)
                } else {
                    Value::String(cell)
                });
            }
            rows += 1;
        }
        Ok(ScoringInput { columns, values, rows })
    }
}

/// Splits CSV text into rows of fields (RFC 4180 quoting).
fn csv_rows(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    row.push(std::mem::take(&mut field));
                    return Some(row);
                }
                Some('"') if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                Some('"') if quoted => quoted = false,
                Some('"') if field.is_empty() => quoted = true,
                Some(',') if !quoted => row.push(std::mem::take(&mut field)),
                Some('\r') if !quoted => {}
                Some('\n') if !quoted => {
                    row.push(std::mem::take(&mut field));
                    return Some(row);
                }
                Some(c) => field.push(c),
            }
        }
    })
}

/// For predictions by entity: the model inputs that are online features
/// (`group__feature`, as training sets name them) and the groups they come from.
pub fn online_inputs(store: &OnlineStore, tenant_id: &str, inputs: &[String]) -> Vec<Option<FeatureRef>> {
    inputs
        .iter()
        .map(|name| {
            // Group and feature names may themselves hold `__`: try every split.
            name.match_indices("__").find_map(|(i, _)| {
                let (group, feature) = (&name[..i], &name[i + 2..]);
                let g = store.group(tenant_id, group)?;
                let index = g.table.read().expect("online group lock").features.iter().position(|f| f == feature)?;
                Some(FeatureRef { group: g.clone(), index, feature: feature.to_string() })
            })
        })
        .collect()
}

/// Scoring rows built from entity keys.
pub struct EntityInput {
    pub input: ScoringInput,
    /// The online groups and the Delta versions served.
    pub served: Vec<(String, i64)>,
    /// `input[row]=STATUS` for every looked-up value that was not present.
    pub missing: Vec<String>,
}

/// Builds scoring rows from entity keys: online features looked up, other inputs taken
/// from the entity rows.
pub fn input_from_entities(state: &AppState, tenant_id: &str, inputs: &[String], entities: &EntityRows) -> Result<EntityInput> {
    let refs = online_inputs(&state.online, tenant_id, inputs);
    let mut lookups = Vec::new();
    let mut positions = Vec::new();
    for (i, (name, r)) in inputs.iter().zip(refs).enumerate() {
        match r {
            Some(r) => {
                lookups.push(r);
                positions.push(i);
            }
            None if entities.columns.contains(name) => {}
            None => {
                return Err(Error::Unprocessable(format!(
                    "model input `{name}` is not a feature of an online group (`group__feature`) and the entity rows do not carry it"
                )));
            }
        }
    }
    let crate::online::Found { values: found, versions } = crate::online::lookup(&lookups, entities, now_micros())?;
    let mut values = vec![Value::Null; entities.rows * inputs.len()];
    let mut missing = Vec::new();
    for (i, name) in inputs.iter().enumerate() {
        if let Some(k) = positions.iter().position(|&p| p == i) {
            for (r, l) in found[k].iter().enumerate() {
                if l.status != "PRESENT" {
                    missing.push(format!("{name}[{r}]={}", l.status));
                }
                values[r * inputs.len() + i] = l.value.clone();
            }
        } else {
            for r in 0..entities.rows {
                values[r * inputs.len() + i] = entities.get(r, name).cloned().unwrap_or(Value::Null);
            }
        }
    }
    Ok(EntityInput { input: ScoringInput { columns: inputs.to_vec(), values, rows: entities.rows }, served: versions, missing })
}

// ---------------------------------------------------------------------------------------
// Canary management.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCanary {
    pub version: i64,
    /// Share of the alias's traffic sent to `version`, 0 to 100.
    pub percent: f64,
    #[serde(default)]
    pub guard: Guard,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CanaryView {
    pub alias: String,
    pub seq: i64,
    pub version: i64,
    pub percent: f64,
    pub guard: Guard,
    pub started_at: String,
    pub started_by: String,
    pub reason: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

impl CanaryView {
    fn of(c: CanaryRecord) -> CanaryView {
        CanaryView {
            guard: serde_json::from_str(&c.guard_json).unwrap_or_default(),
            alias: c.alias,
            seq: c.seq,
            version: c.version,
            percent: c.percent,
            started_at: crate::features::rfc3339(c.started_at),
            started_by: c.started_by,
            reason: c.reason,
            ended_at: c.ended_at.map(crate::features::rfc3339),
            end_reason: c.end_reason,
            ended_by: c.ended_by,
        }
    }
}

pub async fn start_canary(state: &AppState, p: &Principal, name: &str, alias: &str, req: StartCanary) -> Result<CanaryView> {
    if !(req.percent > 0.0 && req.percent < 100.0) {
        return Err(Error::Unprocessable(format!("percent must be above 0 and below 100, got {}", req.percent)));
    }
    req.guard.check()?;
    let m = crate::models::find(state, p, name).await?;
    let stable = crate::models::resolve_alias(state, p, name, alias, None).await?;
    if stable == req.version {
        return Err(Error::Unprocessable(format!("alias `{alias}` already points at version {stable}; a canary needs another version")));
    }
    let v = crate::models::version(state, p, name, req.version).await?;
    if v.state != "active" {
        return Err(Error::Conflict(format!("version {} of `{name}` is {}; only active versions take traffic", req.version, v.state)));
    }
    // Verified and warm before the first request is routed to it.
    loaded(state, p, name, req.version).await?;
    let record = CanaryRecord {
        alias: alias.to_string(),
        seq: 0,
        version: req.version,
        percent: req.percent,
        guard_json: serde_json::to_string(&req.guard).map_err(|e| Error::Internal(e.to_string()))?,
        started_at: now_micros(),
        started_by: p.actor(),
        reason: req.reason,
        ended_at: None,
        end_reason: None,
        ended_by: None,
    };
    let record = state.catalog.start_canary(&m.id, &record).await?;
    state.serving.forget_route(&m.id, alias);
    Ok(CanaryView::of(record))
}

/// Ends the open canary: `promote` moves the alias to the canary's version first.
pub async fn end_canary(state: &AppState, p: &Principal, name: &str, alias: &str, promote: bool, reason: &str) -> Result<CanaryView> {
    let m = crate::models::find(state, p, name).await?;
    let open = state
        .catalog
        .canaries(&m.id, alias)
        .await?
        .into_iter()
        .rfind(|c| c.ended_at.is_none())
        .ok_or_else(|| Error::NotFound { kind: "canary", name: format!("{name}@{alias}") })?;
    let why = if promote { format!("promoted: {reason}") } else { format!("stopped: {reason}") };
    if promote {
        crate::models::move_alias(state, p, name, alias, Some(open.version), &format!("canary promoted: {reason}")).await?;
    }
    state.catalog.end_canary(&m.id, alias, now_micros(), why.trim_end_matches(": "), &p.actor()).await?;
    state.serving.forget_route(&m.id, alias);
    let ended = state.catalog.canaries(&m.id, alias).await?.into_iter().find(|c| c.seq == open.seq).expect("just ended");
    Ok(CanaryView::of(ended))
}

pub async fn canaries(state: &AppState, p: &Principal, name: &str, alias: &str) -> Result<Vec<CanaryView>> {
    let m = crate::models::find(state, p, name).await?;
    Ok(state.catalog.canaries(&m.id, alias).await?.into_iter().map(CanaryView::of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn every_mlflow_json_shape_gives_the_same_rows() {
        let shapes = [
            json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}),
            json!({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}),
            json!({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}),
            json!({"instances": [[1, "x"], [2, "y"]]}),
            json!({"inputs": {"a": [1, 2], "b": ["x", "y"]}}),
            json!({"inputs": [[1, "x"], [2, "y"]], "params": {}}),
        ];
        for s in shapes {
            let i = ScoringInput::from_mlflow_json(&s, &names()).unwrap();
            assert_eq!(i.rows, 2, "{s}");
            let b = i.columns.iter().position(|c| c == "b").unwrap();
            assert_eq!(i.values[i.columns.len() + b], json!("y"), "{s}");
        }
    }

    #[test]
    fn malformed_inputs_are_named() {
        let err = |v: Value| ScoringInput::from_mlflow_json(&v, &names()).unwrap_err().to_string();
        assert!(err(json!({"instances": [[1]]})).contains("instances[0] has 1 values"));
        assert!(err(json!({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}})).contains("dataframe_split.data[0]"));
        assert!(err(json!({"instances": [], "inputs": []})).contains("exactly one"));
        assert!(err(json!({"rows": []})).contains("unknown input `rows`"));
        assert!(err(json!({"inputs": [[1, 2]], "params": {"t": 1}})).contains("params"));
    }

    #[test]
    fn csv_bodies_parse_with_quotes_and_nulls() {
        let i = ScoringInput::from_csv(b"a,b\n1.5,\"x, y\"\n,z\n").unwrap();
        assert_eq!(i.rows, 2);
        assert_eq!(i.values, vec![json!(1.5), json!("x, y"), Value::Null, json!("z")]);
        assert!(ScoringInput::from_csv(b"a,b\n1\n").unwrap_err().to_string().contains("line 2 has 1 fields"));
    }

    #[test]
    fn the_guard_judges_only_after_enough_requests() {
        let guard = Guard { max_error_rate: Some(0.1), max_p99_ms: None, min_requests: Some(10), window: Some(10) };
        let mut w = GuardWindow::default();
        for i in 0..9 {
            w.seen += 1;
            w.recent.push_back((i % 2 == 0, 100));
            assert!(w.verdict(&guard).is_none());
        }
        w.seen += 1;
        w.recent.push_back((false, 100));
        assert!(w.verdict(&guard).unwrap().contains("error rate 0.5000"));
        let latency = Guard { max_error_rate: None, max_p99_ms: Some(0.05), min_requests: Some(1), window: None };
        let w = GuardWindow { seen: 1, recent: [(false, 100)].into() };
        assert!(w.verdict(&latency).unwrap().contains("p99 latency 0.100 ms"));
    }
}
