//! Training: a seeded train/validation split, mini-batch Adam, validation after every
//! epoch, early stopping on validation loss, and the best epoch's weights kept.

use std::time::Instant;

use arrow::array::RecordBatch;
use burn::nn::loss::{CrossEntropyLossConfig, MseLoss, Reduction};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::artifact::{DenseLayer, FORMAT, ModelArtifact, Predictions, TrainingSummary};
use crate::data::{self, RawColumn, Target};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::model::{Mlp, initial_layers};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Binary or multi-class, by the number of distinct labels.
    Classification,
    Regression,
}

/// Hyperparameters. Zero hidden layers gives logistic (classification) or linear
/// (regression) regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub task: Task,
    #[serde(default = "defaults::hidden_layers")]
    pub hidden_layers: Vec<usize>,
    #[serde(default = "defaults::max_epochs")]
    pub max_epochs: usize,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    /// L2 penalty added to the gradients.
    #[serde(default)]
    pub weight_decay: f64,
    /// Share of labeled rows held out for validation (early stopping and metrics).
    #[serde(default = "defaults::validation_fraction")]
    pub validation_fraction: f64,
    /// Stop after this many epochs without a better validation loss.
    #[serde(default = "defaults::patience")]
    pub patience: usize,
    #[serde(default)]
    pub seed: u64,
    /// Text columns keep at most this many values (the most frequent) as one-hot slots.
    #[serde(default = "defaults::max_categories")]
    pub max_categories: usize,
}

mod defaults {
    pub fn hidden_layers() -> Vec<usize> {
        vec![64, 64]
    }
    pub fn max_epochs() -> usize {
        200
    }
    pub fn batch_size() -> usize {
        32
    }
    pub fn learning_rate() -> f64 {
        1e-3
    }
    pub fn validation_fraction() -> f64 {
        0.2
    }
    pub fn patience() -> usize {
        10
    }
    pub fn max_categories() -> usize {
        50
    }
}

impl TrainConfig {
    pub fn new(task: Task) -> Self {
        serde_json::from_value(serde_json::json!({ "task": task })).expect("defaults deserialize")
    }

    /// Checks every value is in range, naming the first that is not.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.hidden_layers.contains(&0) || self.hidden_layers.len() > 8 || self.hidden_layers.iter().any(|&h| h > 4096) {
            return bad(format!("hidden_layers {:?}: up to 8 layers of 1 to 4096 units", self.hidden_layers));
        }
        if !(1..=100_000).contains(&self.max_epochs) {
            return bad(format!("max_epochs {} is not between 1 and 100000", self.max_epochs));
        }
        if !(1..=1 << 20).contains(&self.batch_size) {
            return bad(format!("batch_size {} is not between 1 and 1048576", self.batch_size));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 10.0) {
            return bad(format!("learning_rate {} is not in (0, 10]", self.learning_rate));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!("weight_decay {} is negative or not a number", self.weight_decay));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!("validation_fraction {} is not strictly between 0 and 1", self.validation_fraction));
        }
        if self.patience == 0 || self.max_categories == 0 {
            return bad("patience and max_categories must be at least 1".into());
        }
        Ok(())
    }
}

/// Where the tensors live while training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeBackend {
    /// Burn's portable CPU backend; reproducible byte for byte with a fixed seed.
    Cpu,
    Wgpu,
    Cuda,
}

impl ComputeBackend {
    pub fn name(self) -> &'static str {
        match self {
            ComputeBackend::Cpu => "cpu",
            ComputeBackend::Wgpu => "wgpu",
            ComputeBackend::Cuda => "cuda",
        }
    }

    /// Whether this build can use the backend.
    pub fn available(self) -> bool {
        match self {
            ComputeBackend::Cpu => true,
            ComputeBackend::Wgpu => cfg!(feature = "wgpu"),
            ComputeBackend::Cuda => cfg!(feature = "cuda"),
        }
    }

    fn device(self) -> Result<Device> {
        match self {
            ComputeBackend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            ComputeBackend::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            ComputeBackend::Cuda => Ok(Device::cuda(0usize)),
            #[allow(unreachable_patterns)]
            other => Err(Error::BackendUnavailable(other.name().to_string())),
        }
    }
}

/// Progress after one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub max_epochs: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation: Metrics,
    pub elapsed_ms: u64,
}

/// A finished training run.
pub struct Trained {
    pub artifact: ModelArtifact,
    pub history: Vec<EpochReport>,
}

/// Trains on the rows of `batch`: `label` is predicted from `inputs`. `on_epoch` sees
/// every epoch's report and returns `false` to cancel.
pub fn train(
    batch: &RecordBatch,
    label: &str,
    inputs: &[String],
    config: &TrainConfig,
    backend: ComputeBackend,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> Result<Trained> {
    config.check()?;
    if inputs.is_empty() {
        return Err(Error::InvalidInput("no input columns".into()));
    }
    if let Some(c) = inputs.iter().find(|c| *c == label) {
        return Err(Error::InvalidInput(format!("the label `{c}` cannot also be an input")));
    }
    let label_array = batch
        .column_by_name(label)
        .ok_or_else(|| Error::InvalidInput(format!("label column `{label}` is missing")))?;

    // Labels, and which rows have one.
    let (target, class_index, values) = match config.task {
        Task::Classification => {
            let (classes, idx) = data::classes_of(label_array, label)?;
            if classes.len() < 2 {
                return Err(Error::InvalidInput(format!("label `{label}` has {} distinct value(s); a classifier needs at least 2", classes.len())));
            }
            (Target::Classes { classes }, idx, Vec::new())
        }
        Task::Regression => (Target::Value { mean: 0.0, std: 1.0 }, Vec::new(), data::values_of(label_array, label)?),
    };
    let labeled: Vec<usize> = (0..batch.num_rows())
        .filter(|&r| match config.task {
            Task::Classification => class_index[r].is_some(),
            Task::Regression => values[r].is_some_and(f64::is_finite),
        })
        .collect();
    let unlabeled_rows = batch.num_rows() - labeled.len();
    if labeled.len() < 4 {
        return Err(Error::InvalidInput(format!("{} labeled rows; at least 4 are needed to train and validate", labeled.len())));
    }

    let mut rng = Rng::new(config.seed);
    let mut order = labeled;
    rng.shuffle(&mut order);
    let n_val = ((order.len() as f64 * config.validation_fraction).round() as usize).clamp(1, order.len() - 1);
    let (val_rows, train_rows) = order.split_at(n_val);
    let (val_rows, train_rows) = (val_rows.to_vec(), train_rows.to_vec());

    let columns = inputs.iter().map(|c| RawColumn::read(batch, c)).collect::<Result<Vec<_>>>()?;
    let encoded_inputs = data::fit(inputs, &columns, &train_rows, config.max_categories);
    let width: usize = encoded_inputs.iter().map(|c| c.width()).sum();
    let train_x = data::encode(&encoded_inputs, &columns, &train_rows)?;
    let val_x = data::encode(&encoded_inputs, &columns, &val_rows)?;

    let target = match target {
        Target::Value { .. } => {
            let present: Vec<f64> = train_rows.iter().map(|&r| values[r].expect("labeled")).collect();
            let mean = present.iter().sum::<f64>() / present.len() as f64;
            let std = (present.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / present.len() as f64).sqrt();
            Target::Value { mean: data::stored(mean), std: data::stored(if std > 1e-12 { std } else { 1.0 }) }
        }
        t => t,
    };
    let outputs = match &target {
        Target::Classes { classes } => classes.len(),
        Target::Value { .. } => 1,
    };
    let mut artifact = ModelArtifact {
        format: FORMAT.into(),
        label: label.to_string(),
        target: target.clone(),
        inputs: encoded_inputs,
        layers: Vec::new(),
        training: TrainingSummary {
            config: config.clone(),
            backend: backend.name().into(),
            train_rows: train_rows.len(),
            validation_rows: val_rows.len(),
            unlabeled_rows,
            epochs_run: 0,
            best_epoch: 0,
            validation: Metrics::default(),
        },
    };

    let sizes: Vec<usize> = std::iter::once(width).chain(config.hidden_layers.iter().copied()).chain(std::iter::once(outputs)).collect();
    let device = backend.device()?.autodiff();
    let mut model = Mlp::from_layers(&initial_layers(&sizes, &mut rng), &device);
    let mut optimizer = AdamConfig::new()
        .with_weight_decay((config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32)))
        .init();

    let evaluate = |layers: &[DenseLayer]| -> (f64, Metrics) {
        let preds = artifact.predict_encoded(layers, &val_x, val_rows.len());
        match (&target, preds) {
            (Target::Classes { classes }, Predictions::Probabilities { values: p, .. }) => {
                let truth: Vec<usize> = val_rows.iter().map(|&r| class_index[r].expect("labeled")).collect();
                let m = metrics::classification(&p, classes.len(), &truth);
                (m.log_loss.unwrap_or(f64::INFINITY), m)
            }
            (Target::Value { std, .. }, Predictions::Values(v)) => {
                let truth: Vec<f64> = val_rows.iter().map(|&r| values[r].expect("labeled")).collect();
                let m = metrics::regression(&v, &truth);
                let rmse = m.rmse.unwrap_or(f64::INFINITY);
                ((rmse / std) * (rmse / std), m)
            }
            _ => unreachable!("predictions follow the target"),
        }
    };

    let started = Instant::now();
    let mut history = Vec::new();
    let mut best: Option<(f64, Vec<DenseLayer>, usize, Metrics)> = None;
    let mut train_order = train_rows.clone();
    let positions: std::collections::HashMap<usize, usize> = train_rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    for epoch in 1..=config.max_epochs {
        rng.shuffle(&mut train_order);
        let mut loss_sum = 0.0;
        for rows in train_order.chunks(config.batch_size) {
            let mut x = Vec::with_capacity(rows.len() * width);
            for r in rows {
                let i = positions[r];
                x.extend_from_slice(&train_x[i * width..(i + 1) * width]);
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows.len(), width]), &device);
            let output = model.forward(x);
            let loss = match &target {
                Target::Classes { .. } => {
                    let y: Vec<i64> = rows.iter().map(|&r| class_index[r].expect("labeled") as i64).collect();
                    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [rows.len()]), &device);
                    CrossEntropyLossConfig::new().init(&device).forward(output, y)
                }
                Target::Value { mean, std } => {
                    let y: Vec<f32> = rows.iter().map(|&r| ((values[r].expect("labeled") - mean) / std) as f32).collect();
                    let y = Tensor::<2>::from_data(TensorData::new(y, [rows.len(), 1]), &device);
                    MseLoss::new().forward(output, y, Reduction::Mean)
                }
            };
            let value: f32 = loss.clone().into_data().try_to_vec::<f32>().map_err(|e| Error::InvalidInput(format!("{e:?}")))?[0];
            loss_sum += f64::from(value) * rows.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
        }
        let layers = model.to_layers()?;
        let (validation_loss, validation) = evaluate(&layers);
        let report = EpochReport {
            epoch,
            max_epochs: config.max_epochs,
            train_loss: loss_sum / train_rows.len() as f64,
            validation_loss,
            validation: validation.clone(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        let keep_going = on_epoch(&report);
        history.push(report);
        if !keep_going {
            return Err(Error::Cancelled);
        }
        let improved = best.as_ref().is_none_or(|(b, ..)| validation_loss < b - 1e-7);
        if improved {
            best = Some((validation_loss, layers, epoch, validation));
        } else if epoch - best.as_ref().map_or(0, |b| b.2) >= config.patience {
            break;
        }
    }
    let (_, layers, best_epoch, validation) = best.expect("at least one epoch ran");
    artifact.layers = layers.iter().map(DenseLayer::to_layer).collect();
    artifact.training.epochs_run = history.len();
    artifact.training.best_epoch = best_epoch;
    artifact.training.validation = validation;
    Ok(Trained { artifact, history })
}

/// Scores rows with burn on `backend` (rather than the plain-Rust path serving uses), to
/// check an accelerator against the CPU.
pub fn score_on(artifact: &ModelArtifact, batch: &RecordBatch, backend: ComputeBackend) -> Result<Predictions> {
    let layers = artifact.dense_layers()?;
    let columns = artifact.inputs.iter().map(|c| RawColumn::read(batch, &c.name)).collect::<Result<Vec<_>>>()?;
    let rows: Vec<usize> = (0..batch.num_rows()).collect();
    let x = data::encode(&artifact.inputs, &columns, &rows)?;
    let width = layers[0].inputs;
    let device = backend.device()?;
    let model = Mlp::from_layers(&layers, &device);
    let out = model.forward(Tensor::<2>::from_data(TensorData::new(x, [rows.len(), width]), &device));
    let out = out.into_data().try_to_vec::<f32>().map_err(|e| Error::InvalidInput(format!("{e:?}")))?;
    Ok(artifact.finish(out, rows.len()))
}
