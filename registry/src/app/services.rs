//! Wiring: every service built from the configuration with exactly the handles it uses,
//! and the subscriptions between domains (commit observers, vacuum's pin source, the
//! registry's events) made here, so no domain names another's concrete type to be told.

use std::sync::Arc;

use lakeledger_query::tables::TableStore;
use metrics_exporter_prometheus::PrometheusHandle;

use super::config::Config;
use crate::error::{Error, Result};
use crate::features::{CommitObserver, FeatureGroups, FeatureSettings, FeatureWriter, PinSource};
use crate::http::{AppState, HttpLimits, Services};
use crate::platform::admission::Admission;
use sha2::Digest;
use crate::identity::Identity;
use crate::lineage::Lineage;
use crate::models::{ModelEvents, ModelSigner, Models};
use crate::online::{EntityHasher, OnlineStore, RedisRows};
use crate::platform::audit::AuditLog;
use crate::platform::catalog::SharedCatalog;
use crate::platform::changes::{ChangeObserver, Changes};
use crate::platform::locks::KeyedLocks;
use crate::platform::readiness::Readiness;
use crate::platform::runtime::QueryRuntime;
use crate::serving::drift::{Drift, DriftCheck};
use crate::serving::{InferenceLog, Serving, ServingConfig};
use crate::sql::{Sql, SqlConfig};
use crate::training::{JobLeases, Jobs, TrainingSets};

/// Builds the services over an opened ledger, catalog and table store.
pub(super) fn build(config: &Config, audit: Arc<AuditLog>, catalog: SharedCatalog, tables: TableStore, metrics: PrometheusHandle) -> Result<AppState> {
    let runtime = Arc::new(QueryRuntime::new(config.sql_threads)?);
    let replica = replica_id(&config.data_dir)?;
    let changes = Changes::connect(config.catalog_url.expose(), &replica)?;
    let locks = Arc::new(KeyedLocks::default());
    let (signer, _) = ModelSigner::load(&config.model_key_path)?;
    let hasher = EntityHasher::load(&config.entity_hash_key_path)?;

    let features = FeatureGroups::new(
        catalog.clone(),
        tables.clone(),
        locks.clone(),
        runtime.clone(),
        FeatureSettings {
            max_body_bytes: config.max_body_bytes,
            default_read_limit: config.default_read_limit,
            spool_dir: config.data_dir.join("tmp"),
            read_threads: config.sql_threads,
            idempotency_hold: config.idempotency_hold,
        },
        changes.clone(),
    );
    let redis = match &config.online_store {
        Some(url) => Some(RedisRows::new(url.expose(), url.redacted())?),
        None => None,
    };
    let online = OnlineStore::new(features.clone(), hasher, config.online_store_max_bytes, redis);
    features.subscribe(Arc::downgrade(&(online.clone() as Arc<dyn CommitObserver>)));
    let sql_config = SqlConfig {
        memory_bytes: config.sql_memory_limit_bytes,
        timeout: config.sql_timeout,
        row_limit: config.sql_row_limit,
        threads: config.sql_threads,
    };
    let sql = Sql::new(features.clone(), runtime.clone(), audit.clone(), sql_config);
    let training_sets = TrainingSets::new(features.clone(), sql.clone(), tables.clone(), audit.clone(), config.sql_threads, config.data_dir.join("tmp"));
    features.set_pin_source(Arc::downgrade(&(training_sets.clone() as Arc<dyn PinSource>)));
    let models = Models::new(catalog.clone(), tables.clone(), signer, locks, config.data_dir.join("tmp"));
    let leases = JobLeases { worker: replica.clone(), lease: config.job_lease };
    let jobs = Jobs::new(catalog.clone(), training_sets.clone(), models.clone(), audit.clone(), config.training_workers, leases);
    let inference_log = InferenceLog::new(FeatureWriter::new(features.clone()), audit.clone(), config.inference_log_flush);
    let serving_config = ServingConfig {
        max_loaded_models: config.serving_max_loaded_models,
        max_batch_rows: config.serving_max_batch_rows,
        max_batch_wait: config.serving_max_batch_wait,
        inference_log_sample_rate: config.inference_log_sample_rate,
    };
    let serving = Serving::new(serving_config, catalog.clone(), models.clone(), online.clone(), audit.clone(), inference_log.clone(), changes.clone());
    models.set_events(Arc::downgrade(&(serving.clone() as Arc<dyn ModelEvents>)));
    let drift = Drift::new(models.clone(), training_sets.clone(), features.clone(), catalog.clone(), audit.clone());
    let lineage = Lineage::new(features.clone(), training_sets.clone(), models.clone());
    let identity = Identity::new(catalog.clone(), oidc(config)?, changes.clone());
    // Other replicas' changes reach the caches that hold what they invalidate.
    changes.subscribe(Arc::downgrade(&(identity.clone() as Arc<dyn ChangeObserver>)));
    changes.subscribe(Arc::downgrade(&(serving.clone() as Arc<dyn ChangeObserver>)));
    changes.subscribe(Arc::downgrade(&(online.clone() as Arc<dyn ChangeObserver>)));
    Ok(AppState(Arc::new(Services {
        changes,
        identity,
        quotas: crate::identity::quotas::Limits::new(catalog.clone(), tables.clone()),
        features,
        online,
        sql,
        training_sets,
        jobs,
        models,
        serving,
        inference_log,
        drift,
        lineage,
        audit,
        readiness: Arc::new(Readiness::new(catalog, tables)),
        metrics,
        metrics_token: metrics_token(config)?,
        limits: HttpLimits {
            max_body_bytes: config.max_body_bytes,
            max_json_body_bytes: config.max_json_body_bytes,
            max_scoring_body_bytes: config.max_scoring_body_bytes,
            max_spine_bytes: config.max_spine_bytes,
            max_model_bytes: config.max_model_bytes,
            request_timeout: config.request_timeout,
        },
        admission: Arc::new(Admission::new(config.max_concurrent_requests, config.max_concurrent_requests_per_tenant)),
    })))
}

/// The identity provider of the `[oidc]` table, if one is configured.
fn oidc(config: &Config) -> Result<Option<crate::identity::oidc::Oidc>> {
    let Some(table) = &config.oidc else { return Ok(None) };
    let settings: crate::identity::oidc::OidcSettings =
        toml::Value::Table(table.clone()).try_into().map_err(|e| Error::BadRequest(format!("config file: [oidc]: {e}")))?;
    Ok(Some(crate::identity::oidc::Oidc::new(settings)?))
}

/// This replica's id: kept in its data dir, so a restarted replica knows the jobs its
/// previous run left (each replica has its own data dir, as it has its own ledger).
pub fn replica_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("replica.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("replica_{}", uuid::Uuid::now_v7().simple());
            std::fs::write(&path, format!("{id}\n")).map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
            Ok(id)
        }
    }
}

/// The scrape token's SHA-256 (only the hash is kept in memory).
fn metrics_token(config: &Config) -> Result<Option<[u8; 32]>> {
    let Some(path) = &config.metrics_token_file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::BadRequest(format!("metrics token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(Error::BadRequest(format!("metrics token file {}: the token must be at least 16 characters", path.display())));
    }
    Ok(Some(sha2::Sha256::digest(token.as_bytes()).into()))
}

/// The `[[drift_checks]]` of the configuration, each checked before the server starts.
pub(super) fn drift_checks(config: &Config) -> Result<Vec<DriftCheck>> {
    config
        .drift_checks
        .iter()
        .enumerate()
        .map(|(i, table)| {
            toml::Value::Table(table.clone()).try_into().map_err(|e| Error::BadRequest(format!("config file: drift_checks[{i}]: {e}")))
        })
        .collect()
}
