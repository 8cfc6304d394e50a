//! `lakeledger models`: work on the model registry's files with the server stopped,
//! recorded in the ledger like any other change.

use clap::Subcommand;

use super::StorageArgs;
use super::audit::{open_ledger, operator_event, record_cli};
use crate::models::ModelSigner;

#[derive(Subcommand)]
pub(crate) enum ModelsCommand {
    /// Replace the model-signing key. New versions are signed with the new key; versions
    /// signed before stay verifiable (the old public key is kept, its private half is
    /// not). The server must be stopped: it reads the keys at start.
    RotateSigningKey {
        #[command(flatten)]
        storage: StorageArgs,
    },
}

pub(super) fn run(command: ModelsCommand) -> crate::Result<()> {
    match command {
        ModelsCommand::RotateSigningKey { storage } => {
            // Opening the ledger also proves the server is not running (it holds the lock).
            let (config, ledger) = open_ledger(&storage)?;
            let mut intent = operator_event("model.rotate_signing_key", lakeledger_audit::Phase::Intent);
            intent.resource.kind = Some("model_signing_key".into());
            let receipt = record_cli(&ledger, &intent)?;
            let result = ModelSigner::rotate(&config.model_key_path);
            let mut outcome = intent.clone();
            outcome.event_id = uuid::Uuid::now_v7().to_string();
            outcome.phase = lakeledger_audit::Phase::Outcome;
            outcome.intent_seq = Some(receipt.seq);
            if let Ok((old, new)) = &result {
                outcome.details.push(("old_key".into(), old.encode()));
                outcome.details.push(("new_key".into(), new.encode()));
            }
            outcome.outcome = Some(lakeledger_audit::event::Result {
                result: if result.is_ok() { "success" } else { "error" }.into(),
                error_code: result.as_ref().err().map(|e| e.status_and_code().1),
                ..Default::default()
            });
            record_cli(&ledger, &outcome)?;
            let (old, new) = result?;
            println!("rotated the model-signing key\n  old: {}\n  new: {}", old.encode(), new.encode());
            Ok(())
        }
    }
}
