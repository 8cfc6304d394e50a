//! The command line: parse, then call into `app/` (serve) or work on the files directly
//! with the server stopped (keys, audit). Everything done here is recorded in the ledger.

mod audit;
mod keys;
mod models;
pub mod train;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::config::{Config, FileConfig, Overrides};

#[derive(Parser)]
#[command(name = "lakeledger", version, about = "Audit-grade lakehouse feature store and model registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (embedded defaults: SQLite catalog and local tables under --data-dir).
    Serve(ServeArgs),
    /// Manage API keys directly in the catalog, without a running server.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Export, verify and manage the audit ledger.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Manage the model registry's keys, without a running server.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Start a training job on a running server and follow it with a progress bar.
    Train(train::TrainArgs),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Args, Clone)]
pub(crate) struct StorageArgs {
    /// TOML config file; flags and LAKELEDGER_* variables override it.
    #[arg(long, env = "LAKELEDGER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for embedded defaults (catalog file, tables, spool).
    #[arg(long, env = "LAKELEDGER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Catalog URL: sqlite://… or postgres://…
    #[arg(long, env = "LAKELEDGER_CATALOG")]
    pub(crate) catalog: Option<String>,
    /// Where tables live: file:///… or s3://bucket/prefix
    #[arg(long, env = "LAKELEDGER_DATA_ROOT")]
    pub(crate) data_root: Option<String>,
    /// Object-store option KEY=VALUE (repeatable), e.g. aws_endpoint=http://127.0.0.1:9000
    #[arg(long = "storage-option", value_parser = parse_kv)]
    pub(crate) storage_options: Vec<(String, String)>,
    /// Audit ledger directory (default <data dir>/audit).
    #[arg(long, env = "LAKELEDGER_AUDIT_DIR")]
    pub(crate) audit_dir: Option<PathBuf>,
    /// Audit signing key file (default <data dir>/keys/audit-signing.key; created 0600).
    #[arg(long, env = "LAKELEDGER_AUDIT_KEY")]
    pub(crate) audit_key: Option<PathBuf>,
    /// Copy every signed audit checkpoint here too (s3://bucket/prefix or file:///…).
    #[arg(long, env = "LAKELEDGER_AUDIT_CHECKPOINT_MIRROR")]
    pub(crate) audit_checkpoint_mirror: Option<String>,
    /// Copy sealed audit segments, their tiles and checkpoints here (s3://bucket/prefix
    /// or file:///…), written once, never overwritten.
    #[arg(long, env = "LAKELEDGER_AUDIT_ARCHIVE")]
    pub(crate) audit_archive: Option<String>,
    /// With --audit-archive: drop local copies of archived segments older than this many
    /// hours (reads fetch them back from the archive).
    #[arg(long, env = "LAKELEDGER_AUDIT_ARCHIVE_RETENTION_HOURS", requires = "audit_archive")]
    pub(crate) audit_archive_retention_hours: Option<u64>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "LAKELEDGER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve Arrow Flight SQL (ADBC, JDBC, pyarrow.flight) on this address, e.g.
    /// 127.0.0.1:8815; off unless given.
    #[arg(long, env = "LAKELEDGER_FLIGHT_LISTEN")]
    flight_listen: Option<SocketAddr>,
    /// PEM certificate chain for Flight TLS (with --flight-tls-key).
    #[arg(long, env = "LAKELEDGER_FLIGHT_TLS_CERT", requires = "flight_tls_key")]
    flight_tls_cert: Option<PathBuf>,
    /// PEM private key for Flight TLS.
    #[arg(long, env = "LAKELEDGER_FLIGHT_TLS_KEY", requires = "flight_tls_cert")]
    flight_tls_key: Option<PathBuf>,
    /// Largest accepted data upload (rows, spines, model artifacts), in bytes.
    #[arg(long, env = "LAKELEDGER_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// A file holding a bearer token that may scrape /metrics (operator admin keys may too).
    #[arg(long, env = "LAKELEDGER_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Keep online feature rows in this Redis (redis://[user:password@]host[:port][/db]),
    /// shared by every replica; without it each process keeps them in memory.
    #[arg(long, env = "LAKELEDGER_ONLINE_STORE")]
    online_store: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "LAKELEDGER_JSON_LOGS")]
    json_logs: bool,
    /// Send spans to this OpenTelemetry collector (OTLP/gRPC, e.g. http://127.0.0.1:4317).
    #[arg(long, env = "LAKELEDGER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

pub(crate) fn resolve(storage: &StorageArgs, mut o: Overrides) -> crate::Result<Config> {
    let file = match &storage.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    o.data_dir = storage.data_dir.clone();
    o.catalog = storage.catalog.clone();
    o.data_root = storage.data_root.clone();
    o.storage_options = storage.storage_options.clone();
    o.audit_dir = storage.audit_dir.clone();
    o.audit_key_path = storage.audit_key.clone();
    o.audit_checkpoint_mirror = storage.audit_checkpoint_mirror.clone();
    o.audit_archive = storage.audit_archive.clone();
    o.audit_archive_retention_hours = storage.audit_archive_retention_hours;
    Config::resolve(file, o)
}


/// The process entry point: runs [`run`] on a multi-threaded runtime. (Starting the
/// runtime here rather than in `main.rs` lets this crate compile the whole server's
/// futures, in parallel with the rest of it, instead of leaving them to the binary.)
pub fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line and runs the command.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Keys { command } => keys::run(command).await,
        Command::Audit { command } => audit::run(command),
        Command::Models { command } => models::run(command),
        Command::Train(args) => train::run(args).await,
        Command::Openapi => {
            print!("{}", crate::http::openapi_document());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> crate::Result<()> {
    let config = resolve(
        &args.storage,
        Overrides {
            listen: args.listen,
            flight_listen: args.flight_listen,
            flight_tls_cert: args.flight_tls_cert,
            flight_tls_key: args.flight_tls_key,
            max_body_bytes: args.max_body_bytes,
            metrics_token_file: args.metrics_token_file,
            online_store: args.online_store,
            otlp_endpoint: args.otlp_endpoint,
            json_logs: args.json_logs.then_some(true),
            ..Default::default()
        },
    )?;
    let otlp = match &config.otlp_endpoint {
        Some(endpoint) => Some(crate::platform::telemetry::Otlp { endpoint: endpoint.clone(), instance: crate::app::replica_id(&config.data_dir)? }),
        None => None,
    };
    let telemetry = crate::platform::telemetry::init(config.json_logs, otlp)?;
    let started = std::time::Instant::now();
    println!("lakeledger {}", env!("CARGO_PKG_VERSION"));
    println!("  data dir : {}", config.data_dir.display());
    println!("  catalog  : {}", config.catalog_url.redacted());
    println!("  tables   : {}", config.data_root);
    println!("  audit    : {}", config.audit_dir.display());
    if let Some(url) = &config.online_store {
        println!("  online   : {}", url.redacted());
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        println!("  traces   : {endpoint}  (OTLP/gRPC)");
    }
    let prepared = crate::app::server::prepare(config).await?;
    let report = &prepared.audit_report;
    if let Some(what) = &report.repaired {
        println!("  audit    : repaired at startup: {what}");
    }
    if report.created_key {
        println!("  audit    : created a signing key; keep a copy of its public key to verify exports:");
    }
    println!("  audit key: {}", report.public_key);
    if let Some(key) = &prepared.first_admin_key {
        println!();
        println!("  First start: created tenant `{}` and an admin API key. It is shown only now:", key.tenant);
        println!();
        println!("      {}", key.secret);
        println!();
        println!("  Authenticate with:  Authorization: Bearer <key>");
        println!("  Lost it? Mint another offline:  lakeledger keys create --data-dir <dir>");
    } else {
        println!("  auth     : Authorization: Bearer <api key>  (mint one offline: lakeledger keys create)");
    }
    let served = crate::app::server::serve(prepared, |bound| {
        if let Some((flight, tls)) = bound.flight {
            println!("  flight   : {}://{flight}  (Arrow Flight SQL)", if tls { "grpc+tls" } else { "grpc" });
        }
        println!("  listening: http://{}  (ready in {} ms)", bound.http, started.elapsed().as_millis());
    })
    .await;
    telemetry.shutdown();
    served
}

