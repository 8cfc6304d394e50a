//! Readiness: the catalog and the table storage answer, the audit ledger takes records,
//! and the server is not shutting down.

use std::sync::atomic::{AtomicBool, Ordering};

use lakeledger_query::tables::TableStore;

use super::audit::AuditLog;
use super::catalog::SharedCatalog;

pub struct Readiness {
    catalog: SharedCatalog,
    tables: TableStore,
    /// False while shutting down, so load balancers stop sending traffic.
    accepting: AtomicBool,
}

/// What a readiness check found.
pub struct Report {
    pub catalog: Result<(), String>,
    pub storage: Result<(), String>,
    pub accepting: bool,
    pub audit: Result<(), String>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.catalog.is_ok() && self.storage.is_ok() && self.accepting && self.audit.is_ok()
    }
}

impl Readiness {
    pub fn new(catalog: SharedCatalog, tables: TableStore) -> Readiness {
        Readiness { catalog, tables, accepting: AtomicBool::new(true) }
    }

    /// Stops reporting ready (shutdown has begun).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    pub async fn check(&self, audit: &AuditLog) -> Report {
        Report {
            catalog: self.catalog.ping().await.map_err(|e| e.to_string()),
            storage: self.tables.check().await.map_err(|e| e.to_string()),
            accepting: self.accepting.load(Ordering::SeqCst),
            audit: audit.health(),
        }
    }
}
