use thiserror::Error;

/// Errors from training and inference. Each names what was wrong with the input.
#[derive(Debug, Error)]
pub enum Error {
    /// The training data or a scoring request does not fit what the model needs.
    #[error("{0}")]
    InvalidInput(String),

    /// A training configuration value is out of range.
    #[error("{0}")]
    InvalidConfig(String),

    /// Model bytes that do not parse or are inconsistent.
    #[error("model artifact: {0}")]
    InvalidArtifact(String),

    /// The chosen compute backend is not compiled into this build.
    #[error("backend `{0}` is not available in this build (build with the `{0}` feature)")]
    BackendUnavailable(String),

    /// Training stopped because the caller asked it to.
    #[error("training was cancelled")]
    Cancelled,

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
