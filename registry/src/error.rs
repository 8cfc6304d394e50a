//! The one error type of the server, and how each variant is classified: a status and
//! a stable code. Every protocol edge (HTTP in `http/error.rs`) turns it into its own
//! error body from this one classification.

use ::http::StatusCode;

/// Everything a request can fail with. Each variant maps to one status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or malformed credentials: send `Authorization: Bearer <api key>`")]
    Unauthenticated,
    #[error("the API key is unknown or revoked")]
    InvalidKey,
    /// A bearer token that is not an API key and does not verify; says why.
    #[error("{0}")]
    InvalidToken(String),
    #[error("role `{role}` may not {action}")]
    Forbidden { role: String, action: String },
    /// A name or tag only the server may write (`inference_*` groups, `lakeledger.*` tags).
    #[error("{0}")]
    Reserved(String),
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    /// An object the caller's tenant does not hold and other tenants do (`owners`, by
    /// name). The caller is told exactly what [`Error::NotFound`] tells, so nothing says it
    /// exists elsewhere; the owners' auditors are told of the attempt.
    #[error("{kind} `{name}` not found")]
    NotVisible { kind: &'static str, name: String, owners: Vec<String> },
    #[error("{0}")]
    VersionNotFound(String),
    #[error("{kind} `{name}` already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("unsupported content type `{0}`; send application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet")]
    UnsupportedMediaType(String),
    #[error("none of the accepted media types can be produced; ask for application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet")]
    NotAcceptable,
    #[error("{0}")]
    Unavailable(String),
    /// The server is at its limit of requests in flight; retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// The caller's tenant (or key) is over one of its limits; retry after a while.
    #[error("{0}")]
    TooManyRequests(String),
    /// The tenant is over a limit an operator set; retry after this many seconds.
    #[error("{message}")]
    QuotaExceeded { message: String, retry_after_secs: u64 },
    /// The online store would go over its memory budget; says which group and by how much.
    #[error("{0}")]
    OnlineStoreFull(String),
    /// The request took longer than the server allows.
    #[error("{0}")]
    TimedOut(String),
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Engine(#[from] lakeledger_query::Error),
    #[error(transparent)]
    Audit(#[from] lakeledger_audit::Error),
    #[error("feature group `{0}` does not exist or is not visible to this key")]
    SqlTableNotVisible(String),

    /// Work stopped because a caller cancelled it.
    #[error("cancelled")]
    Cancelled,

    /// Stored bytes that fail their hash or signature check; they are never used.
    #[error("{0}")]
    Tampered(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller is told about an error, the same over HTTP and Flight.
pub struct Public {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Quote this id to an operator; the log holds the detail under it.
    pub error_id: String,
}

impl Error {
    /// The status, code and message a caller sees, with a fresh error id. 503s say why (the
    /// ledger or a dependency is down, or busy), 504s and 507s which limit was hit; other 5xx
    /// details (paths, hosts, SQL) go to the log only.
    pub fn public(&self) -> Public {
        let (status, code) = self.status_and_code();
        let error_id = uuid::Uuid::now_v7().to_string();
        let says_why = matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT | StatusCode::INSUFFICIENT_STORAGE);
        let message = if status.is_server_error() && !says_why {
            tracing::error!(%error_id, %code, error = %self, "request failed");
            "internal error; quote the error_id to an operator".to_string()
        } else if let Error::Catalog(_) = self {
            tracing::warn!(%error_id, %code, error = %self, "request refused: the catalog is busy");
            "the catalog is busy; retry the request".to_string()
        } else {
            tracing::debug!(%error_id, %code, error = %self, "request refused");
            self.to_string()
        };
        Public { status, code, message, error_id }
    }

    pub fn status_and_code(&self) -> (StatusCode, String) {
        use lakeledger_query::Error as Q;
        let (status, code): (StatusCode, &str) = match self {
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            Error::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Reserved(_) => (StatusCode::FORBIDDEN, "reserved_name"),
            Error::NotFound { kind, .. } | Error::NotVisible { kind, .. } => {
                return (StatusCode::NOT_FOUND, format!("{}_not_found", kind.replace(' ', "_")))
            }
            Error::VersionNotFound(_) => (StatusCode::NOT_FOUND, "version_not_found"),
            Error::AlreadyExists { kind, .. } => {
                return (StatusCode::CONFLICT, format!("{}_already_exists", kind.replace(' ', "_")))
            }
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Error::NotAcceptable => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Error::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Error::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Error::TimedOut(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Error::OnlineStoreFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "online_store_full"),
            Error::Catalog(e) if is_unique_violation(e) => (StatusCode::CONFLICT, "conflict"),
            Error::Catalog(e) if is_transient(e) => (StatusCode::SERVICE_UNAVAILABLE, "catalog_busy"),
            Error::Engine(e) => match e {
                Q::InvalidValue { .. } | Q::UnknownColumn { .. } | Q::MissingColumn { .. } | Q::DuplicateKey { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rows")
                }
                Q::Malformed { .. } => (StatusCode::BAD_REQUEST, "malformed_body"),
                Q::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema"),
                Q::IncompatibleSchemaChange { .. } => (StatusCode::CONFLICT, "incompatible_schema_change"),
                Q::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
                Q::Conflict(_) => (StatusCode::CONFLICT, "concurrent_modification"),
                Q::LimitExceeded(_) => (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"),
                Q::HistoryUnavailable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "history_unavailable"),
                Q::InvalidSql(_) => (StatusCode::BAD_REQUEST, "invalid_sql"),
                Q::SqlRefused(_) => (StatusCode::FORBIDDEN, "sql_not_allowed"),
                Q::SqlUnsupported(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_sql"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            Error::SqlTableNotVisible(_) => (StatusCode::FORBIDDEN, "table_not_visible"),
            Error::Tampered(_) => (StatusCode::CONFLICT, "integrity_check_failed"),
            Error::Cancelled => (StatusCode::CONFLICT, "cancelled"),
            Error::Audit(e) => match e {
                lakeledger_audit::Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
                lakeledger_audit::Error::Proof(_) | lakeledger_audit::Error::Malformed(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_audit_request")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            Error::Catalog(_) | Error::Migration(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        (status, code.to_string())
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

/// Contention that a retry of the same request can get past: SQLite busy or locked
/// (5, 6 and their extended codes), Postgres serialization failures, deadlocks and lock
/// timeouts, or no free connection in the pool.
fn is_transient(e: &sqlx::Error) -> bool {
    if matches!(e, sqlx::Error::PoolTimedOut) {
        return true;
    }
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| {
        matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "40001" | "40P01" | "55P03")
    })
}
