//! Loaded models and their batchers: a version is verified and loaded once, and each
//! loaded version has a task that scores everything queued at a moment in one pass.

use std::sync::Arc;
use std::time::Instant;

use lakeledger_trainer::ModelArtifact;
use lakeledger_trainer::artifact::{DenseLayer, Predictions};
use crate::models::onnx::{OnnxModel, Values};
use crate::models::Runnable;
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
    pub runnable: Runnable,
    pub(super) batcher: mpsc::Sender<Job>,
    /// When a request last used it (ms since the server's clock origin), for eviction.
    pub(super) last_used: std::sync::atomic::AtomicU64,
}

/// The server's clock origin for `last_used`.
pub(super) fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Rows ready for a model: the encoded matrix of a native model, or one tensor per input
/// of an ONNX graph (batch axis first).
pub enum Encoded {
    Matrix(Vec<f32>),
    Tensors(Vec<Values>),
}

impl Encoded {
    fn append(&mut self, other: Encoded) {
        match (self, other) {
            (Encoded::Matrix(a), Encoded::Matrix(b)) => a.extend_from_slice(&b),
            (Encoded::Tensors(a), Encoded::Tensors(b)) => a.iter_mut().zip(&b).for_each(|(a, b)| a.extend(b)),
            _ => unreachable!("one model's jobs are encoded one way"),
        }
    }
}

/// What a model gave for some rows.
pub enum Scored {
    Native(Predictions),
    /// One tensor per graph output, batch axis first.
    Onnx(Vec<Values>),
}

impl Scored {
    /// Rows `from..from + rows` of an answer for `total` rows.
    fn rows(&self, from: usize, rows: usize, total: usize) -> Scored {
        match self {
            Scored::Native(p) => Scored::Native(slice(p, from, rows)),
            Scored::Onnx(outputs) => Scored::Onnx(
                outputs
                    .iter()
                    .map(|o| {
                        let width = o.len() / total.max(1);
                        o.slice(from * width, rows * width)
                    })
                    .collect(),
            ),
        }
    }
}

/// What a batcher scores with.
#[derive(Clone)]
pub(super) enum Scorer {
    Native { layers: Arc<Vec<DenseLayer>>, artifact: Arc<ModelArtifact> },
    Onnx(Arc<OnnxModel>),
}

impl Scorer {
    /// Whether a batch is small enough to score on the batcher's own task; bigger ones go
    /// to a blocking thread so that they do not hold a request thread.
    fn is_light(&self, rows: usize) -> bool {
        match self {
            Scorer::Native { layers, .. } => rows * layers.iter().map(|l| l.inputs * l.outputs).sum::<usize>() <= 2_000_000,
            Scorer::Onnx(_) => rows <= 16,
        }
    }

    fn score(&self, input: Encoded, rows: usize) -> Result<Scored> {
        match (self, input) {
            (Scorer::Native { layers, artifact }, Encoded::Matrix(m)) => Ok(Scored::Native(artifact.predict_encoded(layers, &m, rows))),
            (Scorer::Onnx(model), Encoded::Tensors(t)) => model.run(t, rows).map(Scored::Onnx),
            _ => Err(Error::Internal("rows encoded for another kind of model".into())),
        }
    }
}

pub(super) struct Job {
    input: Encoded,
    rows: usize,
    reply: oneshot::Sender<Result<Scored>>,
}

pub(super) async fn run_batcher(mut rx: mpsc::Receiver<Job>, scorer: Scorer, config: ServingConfig, label: String, version: i64) {
    let version_label = version.to_string();
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
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut input: Option<Encoded> = None;
        for j in jobs {
            match &mut input {
                None => input = Some(j.input),
                Some(all) => all.append(j.input),
            }
            sizes.push(j.rows);
            replies.push(j.reply);
        }
        let input = input.expect("a batch has a first job");
        // A panic while scoring fails this batch's requests, not the batcher: later
        // requests to the model are still served.
        let scored = if scorer.is_light(rows) {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score(input, rows))).map_err(|_| ())
        } else {
            let scorer = scorer.clone();
            tokio::task::spawn_blocking(move || scorer.score(input, rows)).await.map_err(|_| ())
        };
        let Ok(scored) = scored else {
            tracing::error!(model = %label, version, rows, "scoring a batch panicked; its requests fail");
            for reply in replies {
                let _ = reply.send(Err(Error::Internal(format!("model {label}/{version}: scoring panicked"))));
            }
            continue;
        };
        let scored = match scored {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(match &e {
                        Error::Unprocessable(_) => Error::Unprocessable(why.clone()),
                        _ => Error::Internal(why.clone()),
                    }));
                }
                continue;
            }
        };
        if replies.len() == 1 {
            let _ = replies.pop().expect("one reply").send(Ok(scored));
            continue;
        }
        let mut offset = 0;
        for (n, reply) in sizes.into_iter().zip(replies) {
            let _ = reply.send(Ok(scored.rows(offset, n, rows)));
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
    pub async fn score(&self, input: Encoded, rows: usize) -> Result<Scored> {
        let (tx, rx) = oneshot::channel();
        self.batcher
            .send(Job { input, rows, reply: tx })
            .await
            .map_err(|_| Error::Unavailable(format!("model {}/{} is being unloaded; retry", self.model, self.version)))?;
        // The batcher answers every job it takes; a dropped reply means the server is
        // stopping.
        rx.await.map_err(|_| Error::Unavailable(format!("model {}/{} stopped scoring; retry", self.model, self.version)))?
    }

    /// Encodes rows for the model, checking every column. Also returns the rows narrowed
    /// to the model's inputs, in its order.
    pub fn encode(&self, input: ScoringInput) -> Result<(Encoded, ScoringInput)> {
        let names = self.runnable.input_names();
        let (encoded, input) = match &self.runnable {
            Runnable::Native(artifact) => {
                let columns = self.columns(artifact, &input)?;
                let rows: Vec<usize> = (0..input.rows).collect();
                let matrix = lakeledger_trainer::data::encode(&artifact.inputs, &columns, &rows).map_err(|e| Error::Unprocessable(e.to_string()))?;
                (Encoded::Matrix(matrix), input)
            }
            Runnable::Onnx(model) => {
                let input = tensor_columns(model, input)?;
                (Encoded::Tensors(model.tensors(&input.columns, &input.values, input.rows)?), input)
            }
        };
        let narrowed = if input.columns == names {
            input
        } else {
            let at: Vec<usize> = names.iter().map(|n| input.columns.iter().position(|c| c == n).expect("checked above")).collect();
            let width = input.columns.len();
            let values = (0..input.rows).flat_map(|r| at.iter().map(move |&i| r * width + i)).map(|i| input.values[i].clone()).collect();
            ScoringInput { columns: names, values, rows: input.rows }
        };
        Ok((encoded, narrowed))
    }

    fn columns(&self, artifact: &ModelArtifact, input: &ScoringInput) -> Result<Vec<RawColumn>> {
        let mut out = Vec::with_capacity(artifact.inputs.len());
        for c in &artifact.inputs {
            let Some(index) = input.columns.iter().position(|n| n == &c.name) else {
                return Err(Error::Unprocessable(format!(
                    "input column `{}` is missing; model {}/{} takes {}",
                    c.name,
                    self.model,
                    self.version,
                    artifact.input_names().join(", ")
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

    /// Predictions in the shape MLflow clients read, plus probabilities for classifiers,
    /// and the same as named tensors for the Open Inference Protocol.
    pub fn response(&self, scored: Scored) -> ScoringResponse {
        let (predictions, probabilities, classes, tensors) = match (scored, &self.runnable) {
            (Scored::Native(p), Runnable::Native(artifact)) => native_answer(&p, &artifact.target),
            (Scored::Onnx(outputs), Runnable::Onnx(model)) => {
                let d = &model.description;
                let rows = outputs.first().map_or(0, |o| o.len() / d.outputs[0].row_width().max(1));
                let (predictions, probabilities) = model.predictions(&outputs, rows);
                let tensors = outputs
                    .into_iter()
                    .zip(&d.outputs)
                    .map(|(values, spec)| OutputTensor { name: spec.name.clone(), shape: spec.shape(rows as i64).into_iter().map(|d| d as usize).collect(), values })
                    .collect();
                let probabilities = probabilities.map(|p| p.iter().map(|row| row.iter().map(|&v| round6(v)).collect()).collect());
                (predictions, probabilities, d.classes.clone().filter(|_| d.probabilities.is_some()), tensors)
            }
            _ => (vec![], None, None, vec![]),
        };
        ScoringResponse { predictions, probabilities, classes, model: self.model.clone(), version: self.version, tensors }
    }
}

type Answer = (Vec<Value>, Option<Vec<Vec<Value>>>, Option<Vec<Value>>, Vec<OutputTensor>);

fn native_answer(p: &Predictions, target: &Target) -> Answer {
    match (p, target) {
        (Predictions::Probabilities { classes, values }, Target::Classes { classes: labels }) => {
            let rows = values.len() / classes.max(&1);
            let mut predictions = Vec::with_capacity(rows);
            let mut probabilities = Vec::with_capacity(rows);
            for row in values.chunks(*classes) {
                let best = crate::models::onnx::argmax(row);
                predictions.push(labels[best].clone());
                probabilities.push(row.iter().map(|&v| round6(v)).collect());
            }
            let tensors = vec![
                OutputTensor { name: "predictions".into(), shape: vec![rows], values: label_values(&predictions) },
                OutputTensor { name: "probabilities".into(), shape: vec![rows, *classes], values: Values::Float(values.clone()) },
            ];
            (predictions, Some(probabilities), Some(labels.clone()), tensors)
        }
        (Predictions::Values(v), _) => {
            let predictions = v.iter().map(|&x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)).collect();
            (predictions, None, None, vec![OutputTensor { name: "predictions".into(), shape: vec![v.len()], values: Values::Double(v.clone()) }])
        }
        _ => (vec![], None, None, vec![]),
    }
}

/// Class labels as a tensor: numbers when every label is one, text otherwise.
pub(super) fn label_values(labels: &[Value]) -> Values {
    if let Some(ints) = labels.iter().map(Value::as_i64).collect::<Option<Vec<_>>>() {
        return Values::Int64(ints);
    }
    if let Some(floats) = labels.iter().map(Value::as_f64).collect::<Option<Vec<_>>>() {
        return Values::Double(floats);
    }
    Values::String(labels.iter().map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string)).collect())
}

/// A named output tensor, for protocols that answer with tensors (the Open Inference
/// Protocol): a graph output of an ONNX model; `predictions` and `probabilities` of a
/// native one.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

/// For an ONNX graph whose input is a tensor of several columns, a column named after the
/// input may hold whole rows of that tensor (MLflow's `inputs` / `instances` tensor forms):
/// spread them into the input's columns.
fn tensor_columns(model: &OnnxModel, input: ScoringInput) -> Result<ScoringInput> {
    let d = &model.description;
    let wide: Vec<(usize, usize)> = input
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| d.inputs.iter().position(|s| &s.name == c && s.row_width() > 1 && !d.columns.iter().any(|k| &k.name == c)).map(|s| (i, s)))
        .collect();
    if wide.is_empty() {
        return Ok(input);
    }
    let width = input.columns.len();
    let mut columns = Vec::new();
    for (i, c) in input.columns.iter().enumerate() {
        match wide.iter().find(|(w, _)| *w == i) {
            Some((_, s)) => columns.extend(d.columns.iter().filter(|k| k.input == *s).map(|k| k.name.clone())),
            None => columns.push(c.clone()),
        }
    }
    let mut values = Vec::with_capacity(input.rows * columns.len());
    for r in 0..input.rows {
        for (i, v) in input.values[r * width..(r + 1) * width].iter().enumerate() {
            match wide.iter().find(|(w, _)| *w == i) {
                Some((_, s)) => {
                    let n = d.inputs[*s].row_width();
                    match v {
                        Value::Array(cells) if cells.len() == n => values.extend(cells.iter().cloned()),
                        other => {
                            return Err(Error::Unprocessable(format!("`{}` row {r}: expected a list of {n} values (the input's width), got {other}", input.columns[i])));
                        }
                    }
                }
                None => values.push(v.clone()),
            }
        }
    }
    Ok(ScoringInput { columns, values, rows: input.rows })
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
    /// The answer as named tensors (not part of the MLflow-shaped body).
    #[serde(skip)]
    pub tensors: Vec<OutputTensor>,
}
