//! `lakeledger`: serve the API, manage keys offline, print the OpenAPI document.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lakeledger::auth::{DEFAULT_TENANT, mint_key};
use lakeledger::catalog::{self, Role};
use lakeledger::config::{Config, FileConfig, Overrides};

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
        command: KeysCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Args, Clone)]
struct StorageArgs {
    /// TOML config file; flags and LAKELEDGER_* variables override it.
    #[arg(long, env = "LAKELEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for embedded defaults (catalog file, tables, spool).
    #[arg(long, env = "LAKELEDGER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Catalog URL: sqlite://… or postgres://…
    #[arg(long, env = "LAKELEDGER_CATALOG")]
    catalog: Option<String>,
    /// Where tables live: file:///… or s3://bucket/prefix
    #[arg(long, env = "LAKELEDGER_DATA_ROOT")]
    data_root: Option<String>,
    /// Object-store option KEY=VALUE (repeatable), e.g. aws_endpoint=http://127.0.0.1:9000
    #[arg(long = "storage-option", value_parser = parse_kv)]
    storage_options: Vec<(String, String)>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "LAKELEDGER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LAKELEDGER_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, env = "LAKELEDGER_JSON_LOGS")]
    json_logs: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint a key (prints the secret once). Use it to regain access as an operator.
    Create {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long, default_value = "offline key")]
        name: String,
    },
    /// List keys of a tenant.
    List {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// Revoke a key by id.
    Revoke {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        id: String,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn resolve(storage: &StorageArgs, mut o: Overrides) -> lakeledger::Result<Config> {
    let file = match &storage.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    o.data_dir = storage.data_dir.clone();
    o.catalog = storage.catalog.clone();
    o.data_root = storage.data_root.clone();
    o.storage_options = storage.storage_options.clone();
    Config::resolve(file, o)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKELEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,deltalake=warn,datafusion=warn"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Keys { command } => keys(command).await,
        Command::Openapi => {
            print!("{}", lakeledger::api::openapi_document());
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

async fn serve(args: ServeArgs) -> lakeledger::Result<()> {
    let config = resolve(
        &args.storage,
        Overrides { listen: args.listen, max_body_bytes: args.max_body_bytes, json_logs: args.json_logs.then_some(true), ..Default::default() },
    )?;
    init_logs(config.json_logs);
    let started = std::time::Instant::now();
    println!("lakeledger {}", env!("CARGO_PKG_VERSION"));
    println!("  data dir : {}", config.data_dir.display());
    println!("  catalog  : {}", config.catalog_url.redacted());
    println!("  tables   : {}", config.data_root);
    let prepared = lakeledger::server::prepare(config, None).await?;
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
    lakeledger::server::serve(prepared, |addr| {
        println!("  listening: http://{addr}  (ready in {} ms)", started.elapsed().as_millis());
    })
    .await
}

async fn keys(command: KeysCommand) -> lakeledger::Result<()> {
    use lakeledger::Error;
    let (storage, tenant_name) = match &command {
        KeysCommand::Create { storage, tenant, .. } | KeysCommand::List { storage, tenant } | KeysCommand::Revoke { storage, tenant, .. } => {
            (storage.clone(), tenant.clone())
        }
    };
    let config = resolve(&storage, Overrides::default())?;
    let catalog = catalog::connect(config.catalog_url.expose()).await?;
    let tenant = match catalog.tenant_by_name(&tenant_name).await? {
        Some(t) => t,
        None if tenant_name == DEFAULT_TENANT => lakeledger::auth::create_tenant(&catalog, DEFAULT_TENANT).await?,
        None => return Err(Error::NotFound { kind: "tenant", name: tenant_name }),
    };
    match command {
        KeysCommand::Create { role, name, .. } => {
            let role = Role::parse(&role).ok_or_else(|| Error::BadRequest(format!("role `{role}` is not one of admin, writer, reader, auditor")))?;
            let key = mint_key(&catalog, &tenant, &name, role, "cli").await?;
            println!("created key {} ({}, tenant {}). It is shown only now:\n{}", key.id, key.role.as_str(), key.tenant, key.secret);
        }
        KeysCommand::List { .. } => {
            for k in catalog.list_keys(&tenant.id).await? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{}\t{}\t{}\t{}", k.id, k.role.as_str(), state, k.name);
            }
        }
        KeysCommand::Revoke { id, .. } => {
            if !catalog.revoke_key(&tenant.id, &id, catalog::now_micros()).await? {
                return Err(Error::NotFound { kind: "key", name: id });
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
