//! `lakeledger`: serve the API, manage keys offline, print the OpenAPI document.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lakeledger::identity::{DEFAULT_TENANT, mint_key};
use lakeledger::platform::catalog::{self, Role};
use lakeledger::app::config::{Config, FileConfig, Overrides};

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
    /// Export, verify and manage the audit ledger.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Start a training job on a running server and follow it with a progress bar.
    Train(lakeledger::cli::train::TrainArgs),
    /// Print the OpenAPI document.
    Openapi,
}

// Parsed once per process; boxing the flattened storage flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AuditCommand {
    /// Write a verifiable package of audit records (the server must be stopped; while it
    /// runs, use POST /v1/audit/export). The export itself is recorded.
    Export {
        #[command(flatten)]
        storage: StorageArgs,
        /// First seq (inclusive).
        #[arg(long)]
        from_seq: Option<u64>,
        /// Last seq (exclusive).
        #[arg(long)]
        to_seq: Option<u64>,
        /// RFC 3339 time; records at or after it.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time; records before it.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Event kind, or a prefix ending in `.`.
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Size of a checkpoint you kept: the package proves it extends that one.
        #[arg(long)]
        since_size: Option<u64>,
        /// Output: a directory, or a file ending in .json for the single-file form.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Check a package offline. Prints PASS, or FAIL with the first bad seq and exits 1.
    Verify {
        /// Package directory or .json file.
        package: PathBuf,
        /// Trusted verifier key `<name>+<id>+<key>` or a file holding one (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// A checkpoint note kept from before; the package must extend it.
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
    },
    /// Print the ledger's public key from the key file.
    PublicKey {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Replace the signing key. The change is recorded in the log and covered by a
    /// checkpoint signed with the old key (the server must be stopped).
    RotateKey {
        #[command(flatten)]
        storage: StorageArgs,
    },
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
    /// Audit ledger directory (default <data dir>/audit).
    #[arg(long, env = "LAKELEDGER_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// Audit signing key file (default <data dir>/keys/audit-signing.key; created 0600).
    #[arg(long, env = "LAKELEDGER_AUDIT_KEY")]
    audit_key: Option<PathBuf>,
    /// Copy every signed audit checkpoint here too (s3://bucket/prefix or file:///…).
    #[arg(long, env = "LAKELEDGER_AUDIT_CHECKPOINT_MIRROR")]
    audit_checkpoint_mirror: Option<String>,
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
    o.audit_dir = storage.audit_dir.clone();
    o.audit_key_path = storage.audit_key.clone();
    o.audit_checkpoint_mirror = storage.audit_checkpoint_mirror.clone();
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
        Command::Audit { command } => audit(command),
        Command::Train(args) => lakeledger::cli::train::run(args).await,
        Command::Openapi => {
            print!("{}", lakeledger::http::openapi_document());
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
    println!("  audit    : {}", config.audit_dir.display());
    let prepared = lakeledger::app::server::prepare(config).await?;
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
    lakeledger::app::server::serve(prepared, |addr| {
        println!("  listening: http://{addr}  (ready in {} ms)", started.elapsed().as_millis());
    })
    .await
}

async fn keys(command: KeysCommand) -> lakeledger::Result<()> {
    let (storage, tenant_name) = match &command {
        KeysCommand::Create { storage, tenant, .. } | KeysCommand::List { storage, tenant } | KeysCommand::Revoke { storage, tenant, .. } => {
            (storage.clone(), tenant.clone())
        }
    };
    // Offline key changes are recorded like any other: intent first, outcome after.
    let (config, ledger) = open_ledger(&storage)?;
    let kind = match &command {
        KeysCommand::Create { .. } => "api_key.create",
        KeysCommand::List { .. } => "api_key.list",
        KeysCommand::Revoke { .. } => "api_key.revoke",
    };
    let mut intent = operator_event(kind, lakeledger_audit::Phase::Intent);
    intent.resource.kind = Some("api_key".into());
    intent.resource.tenant = Some(tenant_name.clone());
    if let KeysCommand::Revoke { id, .. } = &command {
        intent.resource.name = Some(id.clone());
    }
    let receipt = record_cli(&ledger, &intent)?;
    let result = keys_offline(&config, command, &tenant_name).await;
    let mut outcome = intent.clone();
    outcome.event_id = uuid::Uuid::now_v7().to_string();
    outcome.phase = lakeledger_audit::Phase::Outcome;
    outcome.intent_seq = Some(receipt.seq);
    if let Ok(Some(id)) = &result {
        outcome.resource.name = Some(id.clone());
    }
    outcome.outcome = Some(lakeledger_audit::event::Result {
        result: if result.is_ok() { "success" } else { "error" }.into(),
        error_code: result.as_ref().err().map(|e| e.status_and_code().1),
        ..Default::default()
    });
    record_cli(&ledger, &outcome)?;
    result.map(|_| ())
}

/// Returns the id of the key created or revoked.
async fn keys_offline(config: &Config, command: KeysCommand, tenant_name: &str) -> lakeledger::Result<Option<String>> {
    use lakeledger::Error;
    let tenant_name = tenant_name.to_string();
    let catalog = catalog::connect(config.catalog_url.expose()).await?;
    let tenant = match catalog.tenant_by_name(&tenant_name).await? {
        Some(t) => t,
        None if tenant_name == DEFAULT_TENANT => lakeledger::identity::create_tenant(&catalog, DEFAULT_TENANT).await?,
        None => return Err(Error::NotFound { kind: "tenant", name: tenant_name }),
    };
    match command {
        KeysCommand::Create { role, name, .. } => {
            let role = Role::parse(&role).ok_or_else(|| Error::BadRequest(format!("role `{role}` is not one of admin, writer, reader, auditor")))?;
            let key = mint_key(&catalog, &tenant, &name, role, "cli").await?;
            println!("created key {} ({}, tenant {}). It is shown only now:\n{}", key.id, key.role.as_str(), key.tenant, key.secret);
            return Ok(Some(key.id));
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
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn open_ledger(storage: &StorageArgs) -> lakeledger::Result<(Config, lakeledger_audit::Ledger)> {
    let config = resolve(storage, Overrides::default())?;
    let (ledger, report) = lakeledger_audit::Ledger::open(lakeledger_audit::LedgerConfig::new(&config.audit_dir, &config.audit_key_path))
        .map_err(|e| match e {
            lakeledger_audit::Error::Locked(dir) => lakeledger::Error::Unavailable(format!(
                "the audit ledger in {} is held by a running server; stop it first, or use the API",
                dir.display()
            )),
            other => other.into(),
        })?;
    if let Some(what) = report.repaired {
        eprintln!("audit ledger repaired at open: {what}");
    }
    Ok((config, ledger))
}

/// An audit event for an action taken on the host with the CLI.
fn operator_event(kind: &str, phase: lakeledger_audit::Phase) -> lakeledger_audit::Event {
    let mut e = lakeledger_audit::Event::new(kind, phase);
    e.actor.principal = std::env::var("USER").ok().map(|u| format!("os:{u}"));
    e.actor.principal_type = "operator".into();
    e.actor.auth_method = "local".into();
    e.source.user_agent = Some(format!("lakeledger-cli/{}", env!("CARGO_PKG_VERSION")));
    e
}

fn record_cli(ledger: &lakeledger_audit::Ledger, event: &lakeledger_audit::Event) -> lakeledger::Result<lakeledger_audit::Receipt> {
    Ok(ledger.append_event(event)?.wait(std::time::Duration::from_secs(30))?)
}

fn audit(command: AuditCommand) -> lakeledger::Result<()> {
    use lakeledger::Error;
    use lakeledger_audit::{Package, Phase, RecordFilter, VerifierKey};
    match command {
        AuditCommand::Export { storage, from_seq, to_seq, since, until, actor, action, resource, tenant, since_size, output } => {
            let time = |name: &str, v: &Option<String>| -> lakeledger::Result<Option<i64>> {
                v.as_deref()
                    .map(|s| {
                        chrono::DateTime::parse_from_rfc3339(s)
                            .map_err(|e| Error::BadRequest(format!("--{name} must be an RFC 3339 time: {e}")))
                            .map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX))
                    })
                    .transpose()
            };
            let filter = RecordFilter {
                from_seq,
                to_seq,
                since_ns: time("since", &since)?,
                until_ns: time("until", &until)?,
                actor,
                action,
                resource,
                tenant,
            };
            let (_, ledger) = open_ledger(&storage)?;
            let mut intent = operator_event("audit.export", Phase::Intent);
            intent.resource.kind = Some("audit_log".into());
            intent.details.push(("output".into(), output.display().to_string()));
            let receipt = record_cli(&ledger, &intent)?;
            let result = Package::export(&ledger, &filter, since_size);
            let mut outcome = intent.clone();
            outcome.event_id = uuid::Uuid::now_v7().to_string();
            outcome.phase = Phase::Outcome;
            outcome.intent_seq = Some(receipt.seq);
            outcome.outcome = Some(lakeledger_audit::event::Result {
                result: if result.is_ok() { "success" } else { "error" }.into(),
                ..Default::default()
            });
            record_cli(&ledger, &outcome)?;
            let pkg = result?;
            if output.extension().is_some_and(|e| e == "json") {
                std::fs::write(&output, pkg.to_json()).map_err(|e| Error::BadRequest(format!("cannot write {}: {e}", output.display())))?;
            } else {
                pkg.write_dir(&output)?;
            }
            let manifest: serde_json::Value = serde_json::from_str(&pkg.files["manifest.json"]).unwrap_or_default();
            println!("exported {} records (log size {}) to {}", manifest["records"], manifest["end_size"], output.display());
            println!("verify with: lakeledger audit verify {} --key '{}'", output.display(), ledger.public_key().encode());
            Ok(())
        }
        AuditCommand::Verify { package, keys, trusted_checkpoint } => {
            let mut trusted = Vec::new();
            for k in keys {
                let text = if std::path::Path::new(&k).is_file() { std::fs::read_to_string(&k).unwrap_or_default() } else { k.clone() };
                trusted.push(VerifierKey::parse(text.trim())?);
            }
            let kept = match trusted_checkpoint {
                Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| Error::BadRequest(format!("cannot read {}: {e}", p.display())))?),
                None => None,
            };
            let pkg = Package::read(&package)?;
            match lakeledger_audit::verify_package(&pkg, &trusted, kept.as_deref()) {
                Ok(s) => {
                    println!(
                        "PASS: {} records, log size {}, {} checkpoint(s){}{}",
                        s.records,
                        s.end_size,
                        s.checkpoints,
                        if s.complete { ", complete log" } else { ", filtered (inclusion proofs checked)" },
                        s.trusted_checkpoint_size.map(|n| format!(", extends the kept checkpoint of size {n}")).unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => {
                    println!("{e}");
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::PublicKey { storage } => {
            let config = resolve(&storage, Overrides::default())?;
            let text = std::fs::read_to_string(&config.audit_key_path)
                .map_err(|e| Error::BadRequest(format!("cannot read {}: {e}", config.audit_key_path.display())))?;
            println!("{}", lakeledger_audit::SignerKey::parse(&text)?.verifier().encode());
            Ok(())
        }
        AuditCommand::RotateKey { storage } => {
            let (_, ledger) = open_ledger(&storage)?;
            let old = ledger.public_key().encode();
            let mut intent = operator_event("audit.rotate_key", Phase::Intent);
            intent.resource.kind = Some("audit_log".into());
            record_cli(&ledger, &intent)?;
            ledger.rotate_key(lakeledger_audit::SignerKey::generate(ledger.origin())?)?;
            println!("rotated the audit signing key\n  old: {old}\n  new: {}", ledger.public_key().encode());
            Ok(())
        }
    }
}
