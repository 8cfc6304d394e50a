//! `lakeledger keys`: mint, list and revoke API keys directly in the catalog, recorded
//! in the ledger like any other change.

use clap::Subcommand;

use super::audit::{open_ledger, operator_event, record_cli};
use super::StorageArgs;
use crate::app::config::Config;
use crate::identity::{DEFAULT_TENANT, mint_key};
use crate::platform::catalog::{self, Role};
use crate::platform::time::now_micros;

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
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

pub(super) async fn run(command: KeysCommand) -> crate::Result<()> {
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
async fn keys_offline(config: &Config, command: KeysCommand, tenant_name: &str) -> crate::Result<Option<String>> {
    use crate::Error;
    let tenant_name = tenant_name.to_string();
    let catalog = catalog::connect(config.catalog_url.expose()).await?;
    let tenant = match catalog.tenant_by_name(&tenant_name).await? {
        Some(t) => t,
        None if tenant_name == DEFAULT_TENANT => crate::identity::create_tenant(&catalog, DEFAULT_TENANT).await?,
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
            if !catalog.revoke_key(&tenant.id, &id, now_micros()).await? {
                return Err(Error::NotFound { kind: "key", name: id });
            }
            println!("revoked {id}");
            return Ok(Some(id));
        }
    }
    Ok(None)
}

