//! Server configuration: defaults, then an optional TOML file, then `LAKELEDGER_…`
//! environment variables and command-line flags (clap merges the last two).
//!
//! Plain settings only: this module imports no domain. Each domain owns its settings
//! struct, and `app/services.rs` assembles them from these values.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Everything the server needs, passed down as a value.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where Arrow Flight SQL listens; off when `None` (the default).
    pub flight_listen: Option<SocketAddr>,
    /// PEM certificate chain and key for Flight; plaintext without them.
    pub flight_tls: Option<(PathBuf, PathBuf)>,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub catalog_url: Secret,
    /// `file:///…` or `s3://bucket/prefix`.
    pub data_root: url::Url,
    /// Options for the object store (endpoint, region, credentials…).
    pub storage_options: HashMap<String, String>,
    /// Largest accepted data upload (rows, spines, model artifacts) in bytes.
    pub max_body_bytes: u64,
    /// Largest accepted JSON body of a control request (creating, changing, querying).
    pub max_json_body_bytes: u64,
    /// Largest accepted scoring request body.
    pub max_scoring_body_bytes: u64,
    /// Largest accepted spine upload and model artifact: both are decoded whole in memory,
    /// so they take a smaller limit than row uploads (which stream).
    pub max_spine_bytes: u64,
    pub max_model_bytes: u64,
    /// How long a read or a query may take to start answering before it is answered 504
    /// (a response already streaming is not cut). Writes are never cut short.
    pub request_timeout: std::time::Duration,
    /// Requests handled at once; more are answered 503 at once (probes are exempt).
    pub max_concurrent_requests: usize,
    /// Requests one tenant may have in flight at once; more are answered 429.
    pub max_concurrent_requests_per_tenant: usize,
    /// A file holding a bearer token that may scrape `/metrics` (besides operator keys).
    pub metrics_token_file: Option<PathBuf>,
    /// Rows a single data read returns at most when the client names no limit.
    pub default_read_limit: Option<usize>,
    /// Emit logs as JSON lines instead of text.
    pub json_logs: bool,
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://host:4317`) that receives
    /// spans; none are exported when `None` (the default).
    pub otlp_endpoint: Option<String>,
    /// Audit ledger segments and checkpoints. Default `<data_dir>/audit`.
    pub audit_dir: PathBuf,
    /// The ledger's Ed25519 signing key (mode 0600). Default `<data_dir>/keys/audit-signing.key`.
    pub audit_key_path: PathBuf,
    /// How long a request waits for its audit record to be durable before it is refused
    /// with 503.
    pub audit_timeout: std::time::Duration,
    /// Memory all running SQL queries (and training-set builds) share before spilling
    /// and then failing.
    pub sql_memory_limit_bytes: usize,
    /// How long one SQL query may run.
    pub sql_timeout: std::time::Duration,
    /// Most rows one SQL result may have.
    pub sql_row_limit: u64,
    /// Threads of the query runtime (SQL, table reads, training-set builds).
    pub sql_threads: usize,
    /// Where signed checkpoints are copied as they are made (`s3://…` or `file:///…`),
    /// so heads exist outside the server: ideally a bucket with object lock owned by
    /// compliance. Uses the same storage options as the tables.
    pub audit_checkpoint_mirror: Option<url::Url>,
    /// Where sealed audit segments, their tiles and the checkpoints of their ends are
    /// copied (`s3://…` or `file:///…`), written once and never overwritten; the archive
    /// alone verifies with the log's public key.
    pub audit_archive: Option<url::Url>,
    /// With an archive: local copies of archived segments older than this are dropped
    /// (reads fetch them back). `None` keeps them.
    pub audit_archive_retention: Option<std::time::Duration>,
    /// How often the running server re-verifies its whole local log in the background
    /// (every record against the tree, every checkpoint's root); `None`: never.
    pub audit_check_interval: Option<std::time::Duration>,
    /// The Ed25519 key that signs model artifacts (mode 0600). Default
    /// `<data_dir>/keys/model-signing.key`.
    pub model_key_path: PathBuf,
    /// How long an ingest's hold on its Idempotency-Key lasts unless renewed: a retry
    /// after the replica running the first attempt died waits at most this long.
    pub idempotency_hold: std::time::Duration,
    /// Training jobs that run at once; more wait queued.
    pub training_workers: usize,
    /// How long a replica's lease on a running job holds unless renewed; a job whose
    /// replica died is failed this long after its last renewal.
    pub job_lease: std::time::Duration,
    /// The key for hashing entity keys in audit records (mode 0600). Default
    /// `<data_dir>/keys/entity-hash.key`.
    pub entity_hash_key_path: PathBuf,
    /// Memory the embedded online store may hold (estimated); `None`: no bound.
    pub online_store_max_bytes: Option<usize>,
    /// `redis://…`: the online store's rows live in this Redis, shared by replicas;
    /// `None`: in each process's memory.
    pub online_store: Option<Secret>,
    /// Model versions kept loaded for scoring (least recently used evicted first).
    pub serving_max_loaded_models: usize,
    /// Most rows scored in one batch when concurrent requests to a model are batched.
    pub serving_max_batch_rows: usize,
    /// How long a batch waits for more requests once the first has arrived.
    pub serving_max_batch_wait: std::time::Duration,
    /// Share of scoring requests written to the models' inference logs (0 to 1).
    pub inference_log_sample_rate: f64,
    /// How often buffered inference-log rows are committed.
    pub inference_log_flush: std::time::Duration,
    /// `[[drift_checks]]` tables of the config file, read by the drift service at start.
    pub drift_checks: Vec<toml::Table>,
    /// The `[oidc]` table of the config file (bearer tokens from an identity provider),
    /// read by the identity service at start.
    pub oidc: Option<toml::Table>,
    /// `[quotas.<tenant>]` tables of the config file: limits applied to those tenants at
    /// every start (read by the limits service).
    pub tenant_quotas: Vec<(String, toml::Table)>,
}

/// A value that must never be printed whole (URLs with passwords, keys).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The value with any password in a URL replaced, safe for logs and banners.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("****"));
                u.to_string()
            }
            _ => self.0.clone(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

/// The optional config file. Every key is optional; flags and environment win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub flight_listen: Option<SocketAddr>,
    pub flight_tls_cert: Option<PathBuf>,
    pub flight_tls_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub catalog: Option<String>,
    pub data_root: Option<String>,
    #[serde(default)]
    pub storage_options: HashMap<String, String>,
    pub max_body_bytes: Option<u64>,
    pub max_json_body_bytes: Option<u64>,
    pub max_scoring_body_bytes: Option<u64>,
    pub max_spine_bytes: Option<u64>,
    pub max_model_bytes: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub max_concurrent_requests: Option<usize>,
    pub max_concurrent_requests_per_tenant: Option<usize>,
    pub metrics_token_file: Option<PathBuf>,
    pub default_read_limit: Option<usize>,
    pub json_logs: Option<bool>,
    pub otlp_endpoint: Option<String>,
    pub audit_dir: Option<PathBuf>,
    pub audit_key_path: Option<PathBuf>,
    pub audit_timeout_ms: Option<u64>,
    pub audit_checkpoint_mirror: Option<String>,
    pub audit_archive: Option<String>,
    pub audit_archive_retention_hours: Option<u64>,
    pub audit_check_interval_hours: Option<u64>,
    /// Memory all running SQL queries share before spilling and then failing.
    pub sql_memory_limit_bytes: Option<usize>,
    pub sql_timeout_secs: Option<u64>,
    /// Most rows one SQL result may have.
    pub sql_row_limit: Option<u64>,
    /// Threads of the query runtime.
    pub sql_threads: Option<usize>,
    pub model_key_path: Option<PathBuf>,
    pub training_workers: Option<usize>,
    pub job_lease_secs: Option<u64>,
    pub idempotency_hold_secs: Option<u64>,
    pub entity_hash_key_path: Option<PathBuf>,
    pub online_store_max_bytes: Option<usize>,
    /// `redis://[user:password@]host[:port][/db]` for an online store in Redis.
    pub online_store: Option<String>,
    /// Model versions kept loaded for scoring (least recently used evicted first).
    pub serving_max_loaded_models: Option<usize>,
    /// Most rows scored in one batch when concurrent requests to a model are batched.
    pub serving_max_batch_rows: Option<usize>,
    /// How long a batch waits for more requests once the first has arrived (0: take
    /// only what is already queued).
    pub serving_max_batch_wait_us: Option<u64>,
    /// Share of scoring requests written to the models' inference logs (0 to 1).
    pub inference_log_sample_rate: Option<f64>,
    /// How often buffered inference-log rows are committed.
    pub inference_log_flush_ms: Option<u64>,
    #[serde(default)]
    pub drift_checks: Vec<toml::Table>,
    pub oidc: Option<toml::Table>,
    /// Per-tenant limits, `[quotas.<tenant name>]`.
    #[serde(default)]
    pub quotas: std::collections::BTreeMap<String, toml::Table>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadRequest(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::BadRequest(format!("config file {}: {e}", path.display())))
    }
}

/// Values given on the command line or in the environment (None when not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub flight_listen: Option<SocketAddr>,
    pub flight_tls_cert: Option<PathBuf>,
    pub flight_tls_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub catalog: Option<String>,
    pub data_root: Option<String>,
    pub storage_options: Vec<(String, String)>,
    pub max_body_bytes: Option<u64>,
    pub metrics_token_file: Option<PathBuf>,
    pub json_logs: Option<bool>,
    pub otlp_endpoint: Option<String>,
    pub audit_dir: Option<PathBuf>,
    pub audit_key_path: Option<PathBuf>,
    pub audit_checkpoint_mirror: Option<String>,
    pub audit_archive: Option<String>,
    pub audit_archive_retention_hours: Option<u64>,
    pub online_store: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "lakeledger-data";
pub const DEFAULT_MAX_BODY: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_JSON_BODY: u64 = 1024 * 1024;
pub const DEFAULT_MAX_SCORING_BODY: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_DECODED_UPLOAD: u64 = 256 * 1024 * 1024;

impl Config {
    /// Builds a config for embedded defaults under `data_dir` (used by tests and `serve`).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::resolve(FileConfig::default(), Overrides { data_dir: Some(data_dir.into()), ..Default::default() })
    }

    pub fn resolve(file: FileConfig, cli: Overrides) -> Result<Self> {
        let listen = cli.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let data_dir = cli.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| Error::BadRequest(format!("cannot create data dir {}: {e}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| Error::BadRequest(format!("data dir {}: {e}", data_dir.display())))?;
        let catalog = cli.catalog.or(file.catalog).unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("catalog.sqlite").display())
        });
        if !(catalog.starts_with("sqlite:") || catalog.starts_with("postgres://") || catalog.starts_with("postgresql://")) {
            return Err(Error::BadRequest(format!(
                "catalog URL must start with sqlite:, postgres:// or postgresql://, got `{}`",
                Secret::new(catalog).redacted()
            )));
        }
        let data_root = match cli.data_root.or(file.data_root) {
            Some(s) => parse_data_root(&s)?,
            None => url::Url::from_directory_path(data_dir.join("tables")).map_err(|_| {
                Error::BadRequest(format!("data dir {} is not an absolute path", data_dir.display()))
            })?,
        };
        let mut storage_options = file.storage_options;
        storage_options.extend(cli.storage_options);
        let archive_given = cli.audit_archive.is_some() || file.audit_archive.is_some();
        if !archive_given && (cli.audit_archive_retention_hours.is_some() || file.audit_archive_retention_hours.is_some()) {
            return Err(Error::BadRequest("audit_archive_retention_hours needs audit_archive: only archived segments may be dropped".into()));
        }
        let flight_tls = match (cli.flight_tls_cert.or(file.flight_tls_cert), cli.flight_tls_key.or(file.flight_tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::BadRequest("Flight TLS needs both flight_tls_cert and flight_tls_key".into())),
        };
        let online_store = cli.online_store.or(file.online_store).map(Secret::new);
        if let Some(url) = &online_store {
            if !url.expose().starts_with("redis://") {
                return Err(Error::BadRequest(format!("online store URL must start with redis://, got `{}`", url.redacted())));
            }
            if file.online_store_max_bytes.is_some() {
                return Err(Error::BadRequest(
                    "online_store_max_bytes bounds the embedded online store; with a Redis online store, bound Redis itself (maxmemory)".into(),
                ));
            }
        }
        let flight_listen = cli.flight_listen.or(file.flight_listen);
        if flight_tls.is_some() && flight_listen.is_none() {
            return Err(Error::BadRequest("flight_tls_cert and flight_tls_key need flight_listen".into()));
        }
        Ok(Config {
            listen,
            flight_listen,
            flight_tls,
            catalog_url: Secret::new(catalog),
            data_root,
            storage_options,
            max_body_bytes: cli.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY),
            max_json_body_bytes: file.max_json_body_bytes.unwrap_or(DEFAULT_MAX_JSON_BODY),
            max_scoring_body_bytes: file.max_scoring_body_bytes.unwrap_or(DEFAULT_MAX_SCORING_BODY),
            max_spine_bytes: file.max_spine_bytes.unwrap_or(DEFAULT_MAX_DECODED_UPLOAD),
            max_model_bytes: file.max_model_bytes.unwrap_or(DEFAULT_MAX_DECODED_UPLOAD),
            request_timeout: match file.request_timeout_secs.unwrap_or(60) {
                0 => return Err(Error::BadRequest("request_timeout_secs must be at least 1".into())),
                s => std::time::Duration::from_secs(s),
            },
            max_concurrent_requests: positive("max_concurrent_requests", file.max_concurrent_requests.unwrap_or(1024))?,
            max_concurrent_requests_per_tenant: positive(
                "max_concurrent_requests_per_tenant",
                file.max_concurrent_requests_per_tenant.unwrap_or(256),
            )?,
            metrics_token_file: cli.metrics_token_file.or(file.metrics_token_file),
            default_read_limit: file.default_read_limit,
            json_logs: cli.json_logs.or(file.json_logs).unwrap_or(false),
            otlp_endpoint: match cli.otlp_endpoint.or(file.otlp_endpoint) {
                Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
                    return Err(Error::BadRequest(format!("otlp_endpoint must be an http:// or https:// URL of a collector's OTLP/gRPC port, got `{e}`")));
                }
                e => e,
            },
            audit_dir: cli.audit_dir.or(file.audit_dir).unwrap_or_else(|| data_dir.join("audit")),
            audit_key_path: cli.audit_key_path.or(file.audit_key_path).unwrap_or_else(|| data_dir.join("keys/audit-signing.key")),
            audit_timeout: std::time::Duration::from_millis(file.audit_timeout_ms.unwrap_or(5_000)),
            audit_checkpoint_mirror: match cli.audit_checkpoint_mirror.or(file.audit_checkpoint_mirror) {
                Some(s) => Some(parse_data_root(&s)?),
                None => None,
            },
            audit_archive: match cli.audit_archive.or(file.audit_archive) {
                Some(s) => Some(parse_data_root(&s)?),
                None => None,
            },
            audit_archive_retention: cli
                .audit_archive_retention_hours
                .or(file.audit_archive_retention_hours)
                .map(|h| std::time::Duration::from_secs(h.saturating_mul(3600))),
            audit_check_interval: match file.audit_check_interval_hours {
                Some(0) => return Err(Error::BadRequest("audit_check_interval_hours must be at least 1".into())),
                h => h.map(|h| std::time::Duration::from_secs(h.saturating_mul(3600))),
            },
            sql_memory_limit_bytes: file.sql_memory_limit_bytes.unwrap_or(1 << 30),
            sql_timeout: std::time::Duration::from_secs(file.sql_timeout_secs.unwrap_or(300)),
            sql_row_limit: file.sql_row_limit.unwrap_or(10_000_000),
            sql_threads: file.sql_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            model_key_path: file.model_key_path.unwrap_or_else(|| data_dir.join("keys/model-signing.key")),
            training_workers: file.training_workers.unwrap_or(2).max(1),
            job_lease: std::time::Duration::from_secs(file.job_lease_secs.unwrap_or(30).max(3)),
            idempotency_hold: std::time::Duration::from_secs(file.idempotency_hold_secs.unwrap_or(30).max(3)),
            drift_checks: file.drift_checks,
            oidc: file.oidc,
            tenant_quotas: file.quotas.into_iter().collect(),
            entity_hash_key_path: file.entity_hash_key_path.unwrap_or_else(|| data_dir.join("keys/entity-hash.key")),
            online_store_max_bytes: file.online_store_max_bytes,
            online_store,
            serving_max_loaded_models: file.serving_max_loaded_models.unwrap_or(64).max(1),
            serving_max_batch_rows: file.serving_max_batch_rows.unwrap_or(256).max(1),
            serving_max_batch_wait: std::time::Duration::from_micros(file.serving_max_batch_wait_us.unwrap_or(0)),
            inference_log_sample_rate: match file.inference_log_sample_rate.unwrap_or(1.0) {
                rate if (0.0..=1.0).contains(&rate) => rate,
                rate => return Err(Error::BadRequest(format!("inference_log_sample_rate must be between 0 and 1, got {rate}"))),
            },
            inference_log_flush: std::time::Duration::from_millis(file.inference_log_flush_ms.unwrap_or(1000)),
            data_dir,
        })
    }
}

fn positive(name: &str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(Error::BadRequest(format!("{name} must be at least 1")));
    }
    Ok(n)
}

/// Accepts `s3://…`, `file:///…` or a plain local path.
pub(crate) fn parse_data_root(s: &str) -> Result<url::Url> {
    if s.contains("://") {
        let url = url::Url::parse(s).map_err(|e| Error::BadRequest(format!("data root `{s}`: {e}")))?;
        match url.scheme() {
            "file" | "s3" | "s3a" => Ok(url),
            other => Err(Error::BadRequest(format!("data root scheme `{other}` is not supported; use file:// or s3://"))),
        }
    } else {
        let p = PathBuf::from(s);
        std::fs::create_dir_all(&p).map_err(|e| Error::BadRequest(format!("cannot create data root {s}: {e}")))?;
        let p = p.canonicalize().map_err(|e| Error::BadRequest(format!("data root {s}: {e}")))?;
        url::Url::from_directory_path(&p).map_err(|_| Error::BadRequest(format!("data root {s} is not a directory path")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file: FileConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:9000\"\ndata_dir = {:?}\nmax_body_bytes = 10\n[storage_options]\nregion = \"eu\"\n",
            dir.path()
        ))
        .unwrap();
        let cli = Overrides { listen: Some("127.0.0.1:0".parse().unwrap()), ..Default::default() };
        let c = Config::resolve(file, cli).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.max_body_bytes, 10);
        assert_eq!(c.storage_options["region"], "eu");
        assert!(c.catalog_url.expose().starts_with("sqlite://"));
        assert_eq!(c.data_root.scheme(), "file");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("postgres://u:hunter2@db/x");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_redis_online_store_takes_a_redis_url_and_no_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cli = |url: &str| Overrides { data_dir: Some(dir.path().into()), online_store: Some(url.into()), ..Default::default() };
        let c = Config::resolve(FileConfig::default(), cli("redis://u:hunter2@cache:6379/2")).unwrap();
        assert!(!format!("{:?}", c.online_store).contains("hunter2"));
        let err = Config::resolve(FileConfig::default(), cli("memcached://cache")).unwrap_err().to_string();
        assert!(err.contains("redis://"), "{err}");
        let file = FileConfig { online_store_max_bytes: Some(1 << 20), ..Default::default() };
        let err = Config::resolve(file, cli("redis://cache")).unwrap_err().to_string();
        assert!(err.contains("online_store_max_bytes"), "{err}");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Overrides { data_dir: Some(dir.path().into()), catalog: Some("mysql://x".into()), ..Default::default() };
        assert!(Config::resolve(FileConfig::default(), cli).is_err());
        let cli = Overrides { data_dir: Some(dir.path().into()), data_root: Some("gs://b".into()), ..Default::default() };
        assert!(Config::resolve(FileConfig::default(), cli).is_err());
    }
}
