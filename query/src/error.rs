use thiserror::Error;

/// Errors from the lakehouse engine. Variants carry what a caller needs to fix the input.
#[derive(Debug, Error)]
pub enum Error {
    /// A value in an uploaded body does not fit the declared column.
    #[error("column `{column}`: expected {expected}, row {row}: {detail}")]
    InvalidValue { column: String, expected: String, row: u64, detail: String },

    /// An uploaded body names a column the feature group does not have.
    #[error("column `{column}` is not part of the feature group schema")]
    UnknownColumn { column: String },

    /// A required column (entity key or event time) is absent from the upload.
    #[error("required column `{column}` is missing from the upload")]
    MissingColumn { column: String },

    /// The body cannot be parsed in the declared format at all.
    #[error("malformed {format} body: {detail}")]
    Malformed { format: &'static str, detail: String },

    /// Two rows in one upsert share entity keys and event time.
    #[error("rows {first} and {second} have the same entity keys and event time; an upsert needs them unique")]
    DuplicateKey { first: u64, second: u64 },

    /// The feature group definition itself is invalid.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),

    /// A schema change that would break existing data or readers.
    #[error("column `{column}`: {detail}")]
    IncompatibleSchemaChange { column: String, detail: String },

    /// A version that the table does not have.
    #[error("version {version} does not exist (latest is {latest})")]
    VersionNotFound { version: i64, latest: i64 },

    /// Another writer committed a conflicting change first.
    #[error("concurrent change conflicted with this write: {0}")]
    Conflict(String),

    /// A statement that is not valid SQL, or refers to columns or functions that do not
    /// exist.
    #[error("{0}")]
    InvalidSql(String),

    /// A statement the sandbox does not run (writes, DDL, file access, other tables).
    #[error("{0}")]
    SqlRefused(String),

    /// A time-travel form that is not supported; the message says what is.
    #[error("{0}")]
    SqlUnsupported(String),

    /// The result would not fit in the configured limits.
    #[error("{0}")]
    LimitExceeded(String),

    /// Past state a request depends on is no longer there (log cleaned up, file vacuumed)
    /// or is in a form that cannot be read.
    #[error("{0}")]
    HistoryUnavailable(String),

    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),

    #[error("storage: {0}")]
    Storage(String),

    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the error was caused by the caller's input rather than the system.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidValue { .. }
                | Error::UnknownColumn { .. }
                | Error::MissingColumn { .. }
                | Error::Malformed { .. }
                | Error::DuplicateKey { .. }
                | Error::InvalidSchema(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
