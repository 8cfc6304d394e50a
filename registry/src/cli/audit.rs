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

pub(super) fn open_ledger(storage: &StorageArgs) -> crate::Result<(Config, lakeledger_audit::Ledger)> {
    let config = resolve(storage, Overrides::default())?;
    let (ledger, report) = lakeledger_audit::Ledger::open(lakeledger_audit::LedgerConfig::new(&config.audit_dir, &config.audit_key_path))
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

pub(super) fn record_cli(ledger: &lakeledger_audit::Ledger, event: &lakeledger_audit::Event) -> crate::Result<lakeledger_audit::Receipt> {
    Ok(ledger.append_event(event)?.wait(std::time::Duration::from_secs(30))?)
}

pub(super) fn run(command: AuditCommand) -> crate::Result<()> {
    use crate::Error;
    use lakeledger_audit::{Package, Phase, RecordFilter, VerifierKey};
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
