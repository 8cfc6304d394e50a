//! Shared server state, passed to handlers by axum.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use lakeledger_query::tables::TableStore;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::platform::catalog::SharedCatalog;
use crate::app::config::Config;
use crate::platform::audit::AuditLog;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub catalog: SharedCatalog,
    pub tables: TableStore,
    pub metrics: PrometheusHandle,
    pub audit: Arc<AuditLog>,
    /// Where SQL queries run, apart from request handling.
    pub query_runtime: Arc<crate::sql::QueryRuntime>,
    /// False while shutting down, so load balancers stop sending traffic.
    pub accepting: AtomicBool,
    /// One lock per feature group, held around commit + catalog update, so versions and
    /// their commit times are recorded in order. Different groups never share a lock.
    group_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Training-set builds hold this shared and vacuum holds it exclusively, so a vacuum
    /// never deletes a file a build is reading or is about to pin.
    pub pins: tokio::sync::RwLock<()>,
    /// Signs model artifacts as they are registered; checks them as they are loaded.
    pub model_signer: crate::models::ModelSigner,
    pub jobs: crate::training::jobs::Jobs,
    /// Latest feature values of online groups.
    pub online: crate::online::OnlineStore,
    /// Keyed hashes of entity keys for audit records.
    pub entity_hasher: crate::online::EntityHasher,
    /// Loaded models, alias routes and batchers.
    pub serving: crate::serving::Serving,
    /// API keys verified recently.
    pub keys: crate::identity::KeyCache,
    /// Scored rows waiting to be committed to the models' inference logs.
    pub inference_log: crate::serving::inference_log::InferenceLog,
}

impl AppState {
    pub fn new(
        config: Config,
        catalog: SharedCatalog,
        tables: TableStore,
        metrics: PrometheusHandle,
        audit: Arc<AuditLog>,
        query_runtime: Arc<crate::sql::QueryRuntime>,
        model_signer: crate::models::ModelSigner,
    ) -> crate::error::Result<Self> {
        let entity_hasher = crate::online::EntityHasher::load(&config.entity_hash_key_path)?;
        Ok(AppState(Arc::new(Inner {
            online: Default::default(),
            inference_log: Default::default(),
            keys: Default::default(),
            entity_hasher,
            serving: crate::serving::Serving::new(config.serving.clone()),
            jobs: crate::training::jobs::Jobs::new(config.training_workers),
            model_signer,
            config,
            catalog,
            tables,
            metrics,
            audit,
            query_runtime,
            accepting: AtomicBool::new(true),
            group_locks: Default::default(),
            pins: Default::default(),
        })))
    }

    pub fn group_lock(&self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.group_locks.lock().expect("group lock table");
        locks.entry(group_id.to_string()).or_default().clone()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
