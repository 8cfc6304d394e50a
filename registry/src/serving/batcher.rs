//! Loaded models and their batchers: a version is verified and loaded once, and each
//! loaded version has a task that scores everything queued at a moment in one pass.

use std::sync::Arc;
use std::time::Instant;

use lakeledger_trainer::ModelArtifact;
use lakeledger_trainer::artifact::{DenseLayer, Predictions};
use lakeledger_trainer::data::{Encoding, RawColumn, Target};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use super::ServingConfig;
use super::inputs::ScoringInput;
use crate::error::{Error, Result};

/// A model version ready to score.
pub struct LoadedModel {
    pub model_id: String,
    pub model: String,
    pub version: i64,
    pub artifact: ModelArtifact,
    pub(super) width: usize,
    pub(super) batcher: mpsc::Sender<Job>,
    /// When a request last used it (ms since the server's clock origin), for eviction.
    pub(super) last_used: std::sync::atomic::AtomicU64,
}

/// The server's clock origin for `last_used`.
pub(super) fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub(super) struct Job {
    matrix: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Predictions>>,
}

pub(super) async fn run_batcher(mut rx: mpsc::Receiver<Job>, layers: Arc<Vec<DenseLayer>>, artifact: ModelArtifact, config: ServingConfig, label: String, version: i64) {
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
