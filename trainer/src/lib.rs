//! Tabular models for lakeledger: MLP classifiers and regressors, and linear/logistic
//! regression as their zero-hidden-layer case, trained with burn.
//!
//! A trained model is one [`ModelArtifact`]: the weights, the architecture, the input
//! schema and the preprocessing fitted on the training split (standardization statistics,
//! category vocabularies). Serving runs the same preprocessing from the artifact, so what a
//! model sees at training and at serving time cannot drift apart. On the CPU backend with a
//! fixed seed, the same rows, config and seed give byte-identical artifacts: weights are
//! initialized and rows shuffled by the crate's own seeded generator, never a global one.

#![forbid(unsafe_code)]

pub mod artifact;
pub mod data;
pub mod error;
pub mod metrics;
mod model;
mod rng;
pub mod train;

pub use artifact::ModelArtifact;
pub use error::{Error, Result};
pub use train::{ComputeBackend, EpochReport, Task, TrainConfig, Trained, score_on, train};

/// Re-exported so callers pass batches of exactly this arrow version.
pub use arrow;
