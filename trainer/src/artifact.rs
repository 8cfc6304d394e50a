//! The model artifact: everything needed to score rows, as one JSON document whose bytes
//! are a pure function of its content (fixed field order, weights as base64 of
//! little-endian `f32`), so its SHA-256 identifies the model.
//!
//! Scoring from an artifact runs here, in plain Rust on the CPU: the same preprocessing as
//! in training, then the layers. Small tabular models need no accelerator to serve.

use arrow::array::RecordBatch;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{self, InputColumn, RawColumn, Target};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::train::TrainConfig;

/// The artifact format this build writes and reads.
pub const FORMAT: &str = "lakeledger-model/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    pub format: String,
    pub label: String,
    pub target: Target,
    /// In order: the columns a scoring request must carry and how each is encoded.
    pub inputs: Vec<InputColumn>,
    pub layers: Vec<Layer>,
    pub training: TrainingSummary,
}

/// One dense layer: `out = in · W + b`, followed by ReLU except after the last layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    /// Row-major `[inputs × outputs]`, base64 of little-endian `f32`.
    pub weights: String,
    /// `[outputs]`, base64 of little-endian `f32`.
    pub bias: String,
}

/// How the model was trained; part of the artifact, so part of its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub config: TrainConfig,
    pub backend: String,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Rows left out because their label was null.
    pub unlabeled_rows: usize,
    pub epochs_run: usize,
    /// The epoch whose weights were kept (best validation loss).
    pub best_epoch: usize,
    pub validation: Metrics,
}

pub(crate) fn encode_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn decode_f32(text: &str, expected: usize, what: &str) -> Result<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Error::InvalidArtifact(format!("{what}: {e}")))?;
    if bytes.len() != expected * 4 {
        return Err(Error::InvalidArtifact(format!("{what}: {} values where {expected} are declared", bytes.len() / 4)));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Decoded layer weights, ready to compute with.
#[derive(Clone, Debug)]
pub struct DenseLayer {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

impl DenseLayer {
    pub fn to_layer(&self) -> Layer {
        Layer { inputs: self.inputs, outputs: self.outputs, weights: encode_f32(&self.weights), bias: encode_f32(&self.bias) }
    }
}

/// Scores: per row, class probabilities or a value.
#[derive(Clone, Debug, PartialEq)]
pub enum Predictions {
    /// Row-major `[rows × classes]`.
    Probabilities { classes: usize, values: Vec<f32> },
    Values(Vec<f64>),
}

impl ModelArtifact {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an artifact always serializes")
    }

    pub fn sha256(&self) -> String {
        hex_string(&Sha256::digest(self.to_bytes()))
    }

    /// Parses and checks an artifact: format, shapes and weight lengths.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelArtifact> {
        let a: ModelArtifact = serde_json::from_slice(bytes).map_err(|e| Error::InvalidArtifact(e.to_string()))?;
        if a.format != FORMAT {
            return Err(Error::InvalidArtifact(format!("format `{}` is not `{FORMAT}`", a.format)));
        }
        a.dense_layers()?;
        Ok(a)
    }

    /// The layers with their weights decoded; checks that consecutive shapes fit.
    pub fn dense_layers(&self) -> Result<Vec<DenseLayer>> {
        let width: usize = self.inputs.iter().map(InputColumn::width).sum();
        let outputs = match &self.target {
            Target::Classes { classes } => classes.len(),
            Target::Value { .. } => 1,
        };
        let mut expected_in = width;
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != expected_in {
                return Err(Error::InvalidArtifact(format!("layer {i} takes {} inputs but receives {expected_in}", l.inputs)));
            }
            out.push(DenseLayer {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: decode_f32(&l.weights, l.inputs * l.outputs, &format!("layer {i} weights"))?,
                bias: decode_f32(&l.bias, l.outputs, &format!("layer {i} bias"))?,
            });
            expected_in = l.outputs;
        }
        if out.is_empty() || expected_in != outputs {
            return Err(Error::InvalidArtifact(format!("the last layer gives {expected_in} outputs where {outputs} are needed")));
        }
        Ok(out)
    }

    /// The names of the columns a scoring request must carry.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|c| c.name.as_str()).collect()
    }

    /// Scores the rows of `batch` (extra columns are ignored).
    pub fn predict(&self, batch: &RecordBatch) -> Result<Predictions> {
        let columns = self.inputs.iter().map(|c| RawColumn::read(batch, &c.name)).collect::<Result<Vec<_>>>()?;
        let rows: Vec<usize> = (0..batch.num_rows()).collect();
        let matrix = data::encode(&self.inputs, &columns, &rows)?;
        Ok(self.predict_encoded(&self.dense_layers()?, &matrix, rows.len()))
    }

    /// Scores an already encoded `[rows × width]` matrix.
    pub fn predict_encoded(&self, layers: &[DenseLayer], matrix: &[f32], rows: usize) -> Predictions {
        let outputs = forward(layers, matrix, rows);
        self.finish(outputs, rows)
    }

    /// Turns raw model outputs into probabilities or values in the label's units.
    pub(crate) fn finish(&self, outputs: Vec<f32>, rows: usize) -> Predictions {
        match &self.target {
            Target::Classes { classes } => {
                let k = classes.len();
                let mut values = outputs;
                for row in values.chunks_mut(k) {
                    softmax(row);
                }
                debug_assert_eq!(values.len(), rows * k);
                Predictions::Probabilities { classes: k, values }
            }
            Target::Value { mean, std } => Predictions::Values(outputs.iter().map(|&v| f64::from(v) * std + mean).collect()),
        }
    }
}

/// Rows scored together: each weight row is read once per block and applied to every row
/// of the block while it is in cache, so a batch costs far less memory traffic than its
/// rows one by one. Each output is still summed in input order, so results do not depend
/// on how rows were batched.
const ROW_BLOCK: usize = 8;

/// The layers in plain Rust: `x · W + b`, ReLU between layers.
pub fn forward(layers: &[DenseLayer], matrix: &[f32], rows: usize) -> Vec<f32> {
    let mut x = matrix.to_vec();
    for (li, l) in layers.iter().enumerate() {
        let mut y = vec![0f32; rows * l.outputs];
        for start in (0..rows).step_by(ROW_BLOCK) {
            let end = (start + ROW_BLOCK).min(rows);
            let out_block = &mut y[start * l.outputs..end * l.outputs];
            for out in out_block.chunks_exact_mut(l.outputs) {
                out.copy_from_slice(&l.bias);
            }
            for i in 0..l.inputs {
                let w = &l.weights[i * l.outputs..(i + 1) * l.outputs];
                for (r, out) in (start..end).zip(out_block.chunks_exact_mut(l.outputs)) {
                    let v = x[r * l.inputs + i];
                    if v == 0.0 {
                        continue;
                    }
                    for (o, wv) in out.iter_mut().zip(w) {
                        *o += v * wv;
                    }
                }
            }
            if li + 1 < layers.len() {
                for o in out_block.iter_mut() {
                    *o = o.max(0.0);
                }
            }
        }
        x = y;
    }
    x
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(inputs: usize, outputs: usize, salt: u32) -> DenseLayer {
        let v = |i: usize| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 8) % 2001) as f32 / 1000.0 - 1.0;
        DenseLayer { inputs, outputs, weights: (0..inputs * outputs).map(v).collect(), bias: (0..outputs).map(|i| v(i + 7)).collect() }
    }

    #[test]
    fn scores_do_not_depend_on_how_rows_are_batched() {
        let layers = [layer(5, 16, 1), layer(16, 16, 2), layer(16, 3, 3)];
        let rows = 21;
        let matrix: Vec<f32> = (0..rows * 5).map(|i| if i % 4 == 0 { 0.0 } else { (i as f32 * 0.37).sin() }).collect();
        let together = forward(&layers, &matrix, rows);
        let alone: Vec<f32> = (0..rows).flat_map(|r| forward(&layers, &matrix[r * 5..(r + 1) * 5], 1)).collect();
        assert_eq!(together.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}
