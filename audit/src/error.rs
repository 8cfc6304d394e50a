//! The crate's errors. Verification failures name the first record that is wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("sizes {old} and {new} do not describe a growing log held here")]
    BadSizes { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the audit directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The log on disk is damaged somewhere other than its tail, or disagrees with a
    /// signed checkpoint. Nothing was changed.
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("signed note: {0}")]
    Note(String),
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The writer did not take or acknowledge the record in time; callers answer 503.
    #[error("the audit ledger did not accept the record: {0}")]
    Unavailable(String),
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Offline verification failed; `seq` is the first record found to be wrong, when
    /// the failure can be tied to one.
    #[error("{}", verify_message(*.seq, .reason))]
    Verify { seq: Option<u64>, reason: String },
}

fn verify_message(seq: Option<u64>, reason: &str) -> String {
    match seq {
        Some(s) => format!("FAIL at seq {s}: {reason}"),
        None => format!("FAIL: {reason}"),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn verify(seq: impl Into<Option<u64>>, reason: impl Into<String>) -> Error {
        Error::Verify {
            seq: seq.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
