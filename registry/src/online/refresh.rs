//! Loading the store from the tables: a whole group from the live files of its latest
//! version (startup, on demand, after an overwrite), and catching up with commits other
//! replicas made (incrementally for appends, upserts and added columns).

use std::sync::Arc;

use lakeledger_query::feature_rows::FileSet;
use serde::Serialize;
use utoipa::ToSchema;

use super::{GroupTable, OnlineDelta, OnlineGroup, OnlineStore};
use crate::error::{Error, Result};
use crate::platform::catalog::{FeatureGroupRecord, GroupState};

/// How often the store checks the catalog for versions committed by other replicas.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildReport {
    pub group: String,
    /// The Delta version now served.
    pub version: i64,
    pub rows_read: u64,
    pub entities: u64,
    pub millis: u64,
}

impl OnlineStore {
    /// Loads a group's latest version from its Delta table into the store, replacing what
    /// was there. Takes the group's commit lock so no ingest lands in between.
    pub async fn rebuild(&self, g: &FeatureGroupRecord) -> Result<RebuildReport> {
        let started = std::time::Instant::now();
        let lock = self.features.commit_lock(&g.id);
        let _guard = lock.lock().await;
        // The record may have changed (schema, max age) since the caller read it.
        let g = self.features.record(&g.tenant_id, &g.name).await?.ok_or_else(|| Error::NotFound { kind: "feature group", name: g.name.clone() })?;
        if !g.online {
            self.remove(&g);
            return Err(Error::Unprocessable(format!("feature group `{}` is not served online; set \"online\": true first", g.name)));
        }
        let snap = self.features.snapshot(&g, None).await?;
        let columns: Vec<String> = snap.schema.all_columns().into_iter().map(|c| c.name).collect();
        let rows = self.features.read_rows(&snap, columns, FileSet::Live, None).await?;
        let mut delta = OnlineDelta::new(&snap.schema, None);
        for batch in &rows.batches {
            delta.absorb(batch)?;
        }
        let entities = delta.rows.len();
        let features: Vec<String> = snap.schema.features.iter().map(|c| c.name.clone()).collect();
        let table = match self.redis() {
            Some(redis) => {
                redis.replace(&g.id, snap.version, &features, delta.rows.into_iter().collect()).await?;
                GroupTable { version: snap.version, features, ..Default::default() }
            }
            None => {
                let bytes = delta.rows.iter().map(|(k, e)| super::entry_bytes(k, e)).sum();
                if let Some(why) = self.groups.over_budget(&g.tenant_id, &g.name, bytes) {
                    self.groups.drop_for_budget(&g.tenant_id, &g.name, why.clone());
                    return Err(Error::OnlineStoreFull(why));
                }
                GroupTable { version: snap.version, features, rows: delta.rows, bytes }
            }
        };
        // Filled before it is published, so lookups never see a half-loaded group.
        let group = OnlineGroup::new(&g);
        *group.table.write().expect("online group lock") = table;
        metrics::gauge!("lakeledger_online_entities", "tenant_id" => g.tenant_id.clone(), "group" => g.name.clone()).set(entities as f64);
        self.publish(group);
        Ok(RebuildReport { group: g.name.clone(), version: snap.version, rows_read: rows.num_rows() as u64, entities: entities as u64, millis: started.elapsed().as_millis() as u64 })
    }

    /// Rebuilds a group named in the caller's tenant (on demand).
    pub async fn rebuild_named(&self, tenant_id: &str, name: &str) -> Result<RebuildReport> {
        let g = self.features.find_in(tenant_id, name).await?;
        self.rebuild(&g).await
    }

    /// Loads every online group (startup). With Redis, which outlives this process and
    /// is shared, only what Redis lacks is loaded.
    pub async fn rebuild_all(&self) -> Result<Vec<RebuildReport>> {
        if let Some(redis) = self.redis() {
            redis.ping().await?;
        }
        let mut out = Vec::new();
        for g in self.features.all().await? {
            if g.online && g.state != GroupState::Creating {
                if self.redis().is_some() {
                    self.sync_redis(&g).await?;
                    continue;
                }
                let report = self.rebuild(&g).await?;
                tracing::info!(group = %g.name, version = report.version, entities = report.entities, ms = report.millis, "online store loaded");
                out.push(report);
            }
        }
        Ok(out)
    }

    /// With Redis: serves a group here with its current settings, and brings its rows in
    /// Redis up to the catalog's latest version (built whole when Redis has none, caught
    /// up from the commits since otherwise, as a replica that died mid-write leaves it).
    pub(super) async fn sync_redis(&self, g: &FeatureGroupRecord) -> Result<()> {
        let Some(redis) = self.redis() else { return Ok(()) };
        let Some(g) = self.features.record(&g.tenant_id, &g.name).await? else { return Ok(()) };
        if !g.online {
            self.remove(&g);
            return Ok(());
        }
        let Some(latest) = self.features.latest_version(&g.id).await? else { return Ok(()) };
        match redis.served(&g.id).await? {
            None => {
                let report = self.rebuild(&g).await?;
                tracing::info!(group = %g.name, version = report.version, entities = report.entities, ms = report.millis, "online rows loaded into Redis");
                return Ok(());
            }
            Some(served) if served.version < latest.version => {
                let group = Arc::new(OnlineGroup::new(&g));
                group.table.write().expect("online group lock").version = served.version;
                self.catch_up(&group).await?;
            }
            Some(_) => {}
        }
        // The group's settings and features as the catalog has them now.
        let group = OnlineGroup::new(&g);
        *group.table.write().expect("online group lock") =
            GroupTable { version: latest.version, features: g.schema.features.iter().map(|c| c.name.clone()).collect(), ..Default::default() };
        self.publish(group);
        Ok(())
    }

    /// Brings every online group up to the catalog's latest version: commits made through
    /// another replica (sharing the catalog and tables) reach this one's store. Appends,
    /// upserts and column additions are applied incrementally from the files they added;
    /// anything else (an overwrite) rebuilds the group.
    pub async fn refresh(&self) -> Result<()> {
        // Groups another replica turned online (or off, or changed) since the last pass.
        let announced = std::mem::take(&mut *self.announced.lock().expect("announced groups"));
        for (tenant_id, name) in announced {
            let Some(g) = self.features.record(&tenant_id, &name).await? else { continue };
            let here = self.group(&tenant_id, &name).is_some();
            if g.online && self.redis().is_some() && g.state != GroupState::Creating {
                self.sync_redis(&g).await?;
            } else if g.online && !here && g.state != GroupState::Creating {
                self.rebuild(&g).await?;
            } else if !g.online && here {
                self.remove(&g);
            }
        }
        for group in self.all() {
            let Some(latest) = self.features.latest_version(&group.id).await? else { continue };
            let behind = latest.version > group.table.read().expect("online group lock").version;
            match self.redis() {
                // Redis may also have lost the group (restarted without persistence), or
                // another replica may have died between its commit and its Redis write.
                Some(redis) => {
                    let lost = redis.served(&group.id).await?.is_none_or(|s| s.version < latest.version);
                    if behind || lost {
                        let record = self.features.record(&group.tenant_id, &group.name).await?;
                        if let Some(g) = record {
                            self.sync_redis(&g).await?;
                        }
                    }
                }
                None if behind => self.catch_up(&group).await?,
                None => {}
            }
        }
        Ok(())
    }

    /// Applies the commits after the version `group` holds, incrementally where they only
    /// add rows or columns, otherwise by a rebuild.
    async fn catch_up(&self, group: &OnlineGroup) -> Result<()> {
        let Some(g) = self.features.record(&group.tenant_id, &group.name).await? else { return Ok(()) };
        if !g.online {
            self.remove(&g);
            return Ok(());
        }
        let incremental = {
            let lock = self.features.commit_lock(&g.id);
            let _guard = lock.lock().await;
            // Under the lock: this replica's own commits have been applied.
            let have = match self.redis() {
                Some(redis) => redis.served(&g.id).await?.map(|s| s.version),
                None => Some(group.table.read().expect("online group lock").version),
            };
            // Redis has no rows of the group: built whole, below (after the lock is let go).
            let Some(have) = have else {
                drop(_guard);
                return self.rebuild(&g).await.map(|_| ());
            };
            let newer: Vec<_> = self.features.versions(&g).await?.into_iter().filter(|v| v.version > have).collect();
            let Some(latest) = newer.last().map(|v| v.version) else { return Ok(()) };
            let simple = newer.iter().all(|v| v.operation.starts_with("WRITE (append)") || v.operation.starts_with("MERGE") || v.operation == "ADD COLUMNS");
            if simple {
                let snap = self.features.snapshot(&g, Some(latest)).await?;
                let columns: Vec<String> = snap.schema.all_columns().into_iter().map(|c| c.name).collect();
                let rows = self.features.read_rows(&snap, columns, FileSet::Live, Some(have)).await?;
                let mut delta = OnlineDelta::new(&snap.schema, None);
                for batch in &rows.batches {
                    delta.absorb(batch)?;
                }
                let applied = match self.redis() {
                    Some(redis) => {
                        let features: Vec<String> = snap.schema.features.iter().map(|c| c.name.clone()).collect();
                        redis.apply(&g.id, have, latest, &features, delta.rows.into_iter().collect()).await? == super::Applied::Served
                    }
                    None => {
                        self.groups.apply_in_memory(&g, group, latest, delta, false);
                        true
                    }
                };
                if applied {
                    tracing::info!(group = %g.name, from = have, to = latest, rows = rows.num_rows(), "online store caught up with commits made elsewhere");
                }
                applied
            } else {
                false
            }
        };
        if !incremental {
            self.rebuild(&g).await?;
        }
        Ok(())
    }

    /// Runs [`OnlineStore::refresh`] every [`REFRESH_EVERY`] until the task is stopped.
    pub async fn keep_fresh(self: std::sync::Arc<Self>) {
        loop {
            // At once when another replica announces a commit (or a commit found a group
            // Redis lacks); otherwise every few seconds, in case a notice was lost.
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.groups.wake.notified() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "online store refresh failed; retrying");
            }
        }
    }
}
