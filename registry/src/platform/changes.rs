//! Changes other replicas must see at once: alias moves and canary changes, deleted model
//! versions, revoked keys, and feature-group commits and settings. Each replica caches
//! some of these (routes, loaded models, verified keys, online values); a change made on
//! one is announced to the others through the database they already share (Postgres
//! `NOTIFY` on one channel), and each drops or refreshes what it cached. The caches'
//! own expiry stays as the fallback: a notice lost while a listener reconnects costs at
//! most that, and after a reconnect every cache is dropped.
//!
//! On SQLite (one process) announcing is a no-op: local changes already update local
//! caches directly.

use std::sync::{Arc, RwLock, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Postgres channel all replicas of a catalog listen on.
const CHANNEL: &str = "lakeledger_changes";

/// One change, as announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// An alias of the model moved, or its canary started or ended.
    Route { model_id: String, alias: String },
    /// A model version was deleted.
    ModelVersion { model_id: String, version: i64 },
    /// An API key was revoked.
    Keys,
    /// A feature group committed a version or changed its settings.
    Group { tenant_id: String, name: String },
    /// Notices may have been missed (a listener reconnected): drop everything cached.
    Resync,
}

#[derive(Serialize, Deserialize)]
struct Notice {
    origin: String,
    #[serde(flatten)]
    change: Change,
}

/// A domain that caches what a change invalidates.
pub trait ChangeObserver: Send + Sync {
    /// Called for changes made on other replicas. Must not block.
    fn changed(&self, change: &Change);
}

/// Announces this replica's changes and hands other replicas' to the observers.
pub struct Changes {
    origin: String,
    pool: Option<sqlx::PgPool>,
    observers: RwLock<Vec<Weak<dyn ChangeObserver>>>,
    received: AtomicU64,
}

impl Changes {
    /// On a Postgres catalog (`catalog_url`), announces through it; otherwise announces
    /// nothing. `origin` names this replica, so it ignores its own notices.
    pub fn connect(catalog_url: &str, origin: &str) -> Result<Arc<Changes>> {
        let pool = if catalog_url.starts_with("postgres://") || catalog_url.starts_with("postgresql://") {
            Some(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy(catalog_url).map_err(Error::Catalog)?)
        } else {
            None
        };
        Ok(Arc::new(Changes { origin: origin.to_string(), pool, observers: Default::default(), received: AtomicU64::new(0) }))
    }

    /// Follows changes made elsewhere from now on.
    pub fn subscribe(&self, observer: Weak<dyn ChangeObserver>) {
        self.observers.write().expect("change observers").push(observer);
    }

    /// Notices received from other replicas and handled so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Announces a change made here (after the catalog has it). Best effort: a notice that
    /// cannot be sent is logged, and the others' caches expire as before.
    pub fn announce(&self, change: Change) {
        let Some(pool) = self.pool.clone() else { return };
        let payload = match serde_json::to_string(&Notice { origin: self.origin.clone(), change }) {
            Ok(p) => p,
            Err(e) => return tracing::warn!(error = %e, "could not encode a change notice"),
        };
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&pool).await {
                tracing::warn!(error = %e, "could not announce a change to other replicas");
            }
        });
    }

    fn dispatch(&self, change: &Change) {
        let observers: Vec<Arc<dyn ChangeObserver>> = self.observers.read().expect("change observers").iter().filter_map(Weak::upgrade).collect();
        for o in observers {
            o.changed(change);
        }
        // Counted once handled, so whoever sees the count sees the caches already dropped.
        self.received.fetch_add(1, Ordering::SeqCst);
    }

    /// Listens for other replicas' notices until the task is stopped, reconnecting after
    /// a failure (and then dropping every cache, since notices may have been missed).
    pub async fn listen(self: Arc<Self>) {
        let Some(pool) = self.pool.clone() else { return };
        let mut first = true;
        loop {
            match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => {
                        if !first {
                            self.dispatch(&Change::Resync);
                        }
                        first = false;
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) => match serde_json::from_str::<Notice>(n.payload()) {
                                    Ok(notice) if notice.origin != self.origin => self.dispatch(&notice.change),
                                    Ok(_) => {}
                                    Err(e) => tracing::warn!(error = %e, "an unreadable change notice"),
                                },
                                // The connection dropped; the listener reconnects on the next
                                // call, and whatever was announced meanwhile is lost.
                                Ok(None) => {
                                    tracing::warn!("the change listener reconnects; dropping every cache");
                                    self.dispatch(&Change::Resync);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "lost the change listener; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not listen for changes; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, "could not connect the change listener; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}
