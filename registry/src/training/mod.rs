//! Training: uploaded spines, point-in-time training sets built from pinned versions and
//! stored immutably, and the training jobs that turn a set into a model version.
//!
//! Reads feature groups through the feature-group service and runs spine SQL through
//! the SQL service; answers vacuum's pin queries as a [`crate::features::PinSource`];
//! registers models through the model registry. Never imports `serving/`, `http/` or
//! `app/`.

pub mod jobs;
pub mod sets;
mod spines;
mod stored;

pub use jobs::{CreateJob, JobLeases, JobView, Jobs};
pub use sets::{CreateTrainingSet, FeatureInput, SpineColumn, SpineManifest, TrainingSetManifest, TrainingSets};
