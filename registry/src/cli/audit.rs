//! `lakeledger audit`: export, verify, print the public key and rotate the signing key,
//! with the server stopped.

use std::path::PathBuf;

use clap::Subcommand;

use super::{StorageArgs, resolve};
use crate::app::config::{Config, Overrides};

// Parsed once per process; boxing the flattened storage flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum AuditCommand {
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
    /// Check a package, a log directory or its archive copy offline, in constant memory.
    /// Prints PASS, or FAIL with the first bad seq and exits 1.
    Verify {
        /// Package directory or .json file, a log directory (the data dir's `audit/`, or a
        /// copy of the archive), or the archive itself (s3://bucket/prefix, file:///…).
        package: PathBuf,
        /// Object-store option KEY=VALUE for an s3:// archive (repeatable).
        #[arg(long = "storage-option", value_parser = super::parse_kv)]
        storage_options: Vec<(String, String)>,
        /// Trusted verifier key `<name>+<id>+<key>` or a file holding one (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// A checkpoint note kept from before; the package must extend it.
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
    },
    /// Merge several replicas' export packages into one: each log verified and kept whole,
    /// with a timeline of every record ordered by time. `verify` checks the result.
    Merge {
        /// The replicas' packages (directories or .json files).
        #[arg(required = true)]
        packages: Vec<PathBuf>,
        /// Trusted verifier key of a replica's log, or a file holding one (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Output directory (new or empty).
        #[arg(short = 'o', long)]
        output: PathBuf,
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
    /// Re-verify the whole log from its segments (every record, every checkpoint's root
    /// and signature, every tile and index) and name the first bad seq; exits 1 when
    /// anything is wrong. With --repair, rewrite the tiles and indexes from the segments.
    /// The server must be stopped; the scrub is recorded in the log.
    Scrub {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        repair: bool,
    },
}

/// A runtime for the archive's object-store I/O, for as long as the command runs.
fn io_runtime() -> crate::Result<tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(r) = RUNTIME.get() {
        return Ok(r.handle().clone());
    }
    let r = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| crate::Error::Internal(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| r).handle().clone())
}

/// The configured audit archive, if any.
fn archive(config: &Config) -> crate::Result<Option<crate::platform::audit::ObjectArchive>> {
    match &config.audit_archive {
        Some(url) => Ok(Some(crate::platform::audit::ObjectArchive::new(url.clone(), config.storage_options.clone(), io_runtime()?)?)),
        None => Ok(None),
    }
}

pub(super) fn open_ledger(storage: &StorageArgs) -> crate::Result<(Config, lakeledger_audit::Ledger)> {
    let config = resolve(storage, Overrides::default())?;
    let mut ledger_config = lakeledger_audit::LedgerConfig::new(&config.audit_dir, &config.audit_key_path);
    // Segments moved to the archive are fetched back when read.
    ledger_config.archive = archive(&config)?.map(|a| std::sync::Arc::new(a) as std::sync::Arc<dyn lakeledger_audit::archive::ArchiveStore>);
    let (ledger, report) = lakeledger_audit::Ledger::open(ledger_config)
        .map_err(|e| match e {
            lakeledger_audit::Error::Locked(dir) => crate::Error::Unavailable(format!(
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
pub(super) fn operator_event(kind: &str, phase: lakeledger_audit::Phase) -> lakeledger_audit::Event {
    let mut e = lakeledger_audit::Event::new(kind, phase);
    e.actor.principal = std::env::var("USER").ok().map(|u| format!("os:{u}"));
    e.actor.principal_type = "operator".into();
    e.actor.auth_method = "local".into();
    e.source.user_agent = Some(format!("lakeledger-cli/{}", env!("CARGO_PKG_VERSION")));
    e
}

/// Verifier keys given as text or as files holding one.
fn trusted_keys(keys: Vec<String>) -> crate::Result<Vec<lakeledger_audit::VerifierKey>> {
    keys.iter()
        .map(|k| {
            let text = if std::path::Path::new(k).is_file() { std::fs::read_to_string(k).unwrap_or_default() } else { k.clone() };
            Ok(lakeledger_audit::VerifierKey::parse(text.trim())?)
        })
        .collect()
}

pub(super) fn record_cli(ledger: &lakeledger_audit::Ledger, event: &lakeledger_audit::Event) -> crate::Result<lakeledger_audit::Receipt> {
    Ok(ledger.append_event(event)?.wait(std::time::Duration::from_secs(30))?)
}

pub(super) fn run(command: AuditCommand) -> crate::Result<()> {
    use crate::Error;
    use lakeledger_audit::{DirSink, Export, JsonSink, Phase, RecordFilter};
    match command {
        AuditCommand::Export { storage, from_seq, to_seq, since, until, actor, action, resource, tenant, since_size, output } => {
            let time = |name: &str, v: &Option<String>| -> crate::Result<Option<i64>> {
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
            // Written straight to the destination as the log is read: constant memory.
            let written = (|| -> crate::Result<lakeledger_audit::ExportSummary> {
                let export = Export::prepare(&ledger, &filter, since_size)?;
                if output.extension().is_some_and(|e| e == "json") {
                    let file = std::fs::File::create(&output).map_err(|e| Error::BadRequest(format!("cannot write {}: {e}", output.display())))?;
                    let mut sink = JsonSink::new(file)?;
                    let summary = export.write_to(&mut sink)?;
                    sink.into_inner()?.sync_all().map_err(|e| Error::BadRequest(format!("cannot write {}: {e}", output.display())))?;
                    Ok(summary)
                } else {
                    Ok(export.write_to(&mut DirSink::create(&output)?)?)
                }
            })();
            let mut outcome = intent.clone();
            outcome.event_id = uuid::Uuid::now_v7().to_string();
            outcome.phase = Phase::Outcome;
            outcome.intent_seq = Some(receipt.seq);
            outcome.outcome = Some(lakeledger_audit::event::Result {
                result: if written.is_ok() { "success" } else { "error" }.into(),
                ..Default::default()
            });
            record_cli(&ledger, &outcome)?;
            let summary = written?;
            println!("exported {} records (log size {}) to {}", summary.records, summary.end_size, output.display());
            println!("verify with: lakeledger audit verify {} --key '{}'", output.display(), ledger.public_key().encode());
            Ok(())
        }
        AuditCommand::Merge { packages, keys, output } => {
            let trusted = trusted_keys(keys)?;
            let summary = lakeledger_audit::merge::merge(&packages, &trusted, &output)?;
            for (origin, s) in &summary.logs {
                println!("  {origin}: {} records, log size {}", s.records, s.end_size);
            }
            println!("merged {} records of {} logs into {}", summary.records, summary.logs.len(), output.display());
            Ok(())
        }
        AuditCommand::Verify { package, keys, trusted_checkpoint, storage_options } => {
            let trusted = trusted_keys(keys)?;
            if lakeledger_audit::merge::is_merged(&package) {
                return match lakeledger_audit::merge::verify_merged(&package, &trusted) {
                    Ok(s) => {
                        println!("PASS: {} records of {} logs, each verified, timeline complete and in order", s.records, s.logs.len());
                        Ok(())
                    }
                    Err(e) => {
                        println!("{e}");
                        std::process::exit(1);
                    }
                };
            }
            let kept = match trusted_checkpoint {
                Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| Error::BadRequest(format!("cannot read {}: {e}", p.display())))?),
                None => None,
            };
            // A package (directory or JSON file), a log directory or an archive.
            let text = package.to_string_lossy();
            let result = if text.starts_with("s3://") || text.starts_with("s3a://") || text.starts_with("file://") {
                let url = crate::app::config::parse_data_root(&text)?;
                let archive = crate::platform::audit::ObjectArchive::new(url, storage_options.into_iter().collect(), io_runtime()?)?;
                lakeledger_audit::archive::verify_log(&lakeledger_audit::archive::StoreLog(&archive), &trusted, kept.as_deref())
            } else if lakeledger_audit::archive::is_log_dir(&package) {
                lakeledger_audit::archive::verify_log(&lakeledger_audit::archive::DirLog(package.clone()), &trusted, kept.as_deref())
            } else {
                lakeledger_audit::open_source(&package).and_then(|src| lakeledger_audit::verify(&*src, &trusted, kept.as_deref()))
            };
            match result {
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
        AuditCommand::Scrub { storage, repair } => {
            let config = resolve(&storage, Overrides::default())?;
            // Segments moved to the archive are fetched back to be checked too.
            let archive = archive(&config)?;
            let report = lakeledger_audit::scrub::scrub_with(&config.audit_dir, repair, archive.as_ref().map(|a| a as &dyn lakeledger_audit::archive::ArchiveStore)).map_err(|e| match e {
                lakeledger_audit::Error::Locked(dir) => Error::Unavailable(format!("the audit ledger in {} is held by a running server; stop it first", dir.display())),
                other => other.into(),
            })?;
            println!(
                "scrubbed {} records, {} checkpoints, {} tiles, {} indexes",
                report.records, report.checkpoints, report.tiles, report.indexes
            );
            for t in &report.bad_tiles {
                println!("  tile {t} differs from the segments");
            }
            for i in &report.bad_indexes {
                println!("  index {i} differs from its segment");
            }
            if report.bad_keys {
                println!("  keys.log differs from the genesis and rotation records");
            }
            if let Some(p) = &report.problem {
                println!("  {p}");
            }
            if report.repaired {
                println!("  repaired: tiles, indexes and the key list rewritten from the segments");
            }
            // Recorded once the log opens (it does not when the segments are damaged).
            if let Ok((_, ledger)) = open_ledger(&storage) {
                let mut e = operator_event("audit.scrub", Phase::Intent);
                e.resource.kind = Some("audit_log".into());
                e.details.push(("records".into(), report.records.to_string()));
                e.details.push(("clean".into(), report.clean().to_string()));
                e.details.push(("repaired".into(), report.repaired.to_string()));
                if let Some(seq) = report.first_bad_seq {
                    e.details.push(("first_bad_seq".into(), seq.to_string()));
                }
                record_cli(&ledger, &e)?;
            }
            match report.first_bad_seq {
                None if report.clean() => {
                    println!("PASS");
                    Ok(())
                }
                seq if report.repaired && report.problem.is_none() => {
                    println!("REPAIRED{}", seq.map(|s| format!(" (first bad seq {s})")).unwrap_or_default());
                    Ok(())
                }
                seq => {
                    println!("FAIL{}", seq.map(|s| format!(" at seq {s}")).unwrap_or_default());
                    std::process::exit(1);
                }
            }
        }
    }
}
