//! Loading the store from the tables: a whole group from the live files of its latest
//! version (startup, on demand, after an overwrite), and catching up with commits other
//! replicas made (incrementally for appends, upserts and added columns).

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
        let bytes = delta.rows.iter().map(|(k, e)| super::entry_bytes(k, e)).sum();
        if let Some(why) = self.groups.over_budget(&g.tenant_id, &g.name, bytes) {
            self.groups.drop_for_budget(&g.tenant_id, &g.name, why.clone());
            return Err(Error::OnlineStoreFull(why));
        }
        // Filled before it is published, so lookups never see a half-loaded group.
        let group = OnlineGroup::new(&g);
        *group.table.write().expect("online group lock") =
            GroupTable { version: snap.version, features: snap.schema.features.iter().map(|c| c.name.clone()).collect(), rows: delta.rows, bytes };
        metrics::gauge!("lakeledger_online_entities", "tenant_id" => g.tenant_id.clone(), "group" => g.name.clone()).set(entities as f64);
        self.publish(group);
        Ok(RebuildReport { group: g.name.clone(), version: snap.version, rows_read: rows.num_rows() as u64, entities: entities as u64, millis: started.elapsed().as_millis() as u64 })
    }

    /// Rebuilds a group named in the caller's tenant (on demand).
    pub async fn rebuild_named(&self, tenant_id: &str, name: &str) -> Result<RebuildReport> {
        let g = self.features.find_in(tenant_id, name).await?;
        self.rebuild(&g).await
    }

    /// Rebuilds every online group (startup).
    pub async fn rebuild_all(&self) -> Result<Vec<RebuildReport>> {
        let mut out = Vec::new();
        for g in self.features.all().await? {
            if g.online && g.state != GroupState::Creating {
                let report = self.rebuild(&g).await?;
                tracing::info!(group = %g.name, version = report.version, entities = report.entities, ms = report.millis, "online store loaded");
                out.push(report);
            }
        }
        Ok(out)
    }

    /// Brings every online group up to the catalog's latest version: commits made through
    /// another replica (sharing the catalog and tables) reach this one's store. Appends,
    /// upserts and column additions are applied incrementally from the files they added;
    /// anything else (an overwrite) rebuilds the group.
    pub async fn refresh(&self) -> Result<()> {
        // Groups another replica turned online (or off) since the last pass.
        let announced = std::mem::take(&mut *self.announced.lock().expect("announced groups"));
        for (tenant_id, name) in announced {
            let Some(g) = self.features.record(&tenant_id, &name).await? else { continue };
            let here = self.group(&tenant_id, &name).is_some();
            if g.online && !here && g.state != GroupState::Creating {
                self.rebuild(&g).await?;
            } else if !g.online && here {
                self.remove(&g);
            }
        }
        for group in self.all() {
            let Some(latest) = self.features.latest_version(&group.id).await? else { continue };
            if latest.version > group.table.read().expect("online group lock").version {
                self.catch_up(&group).await?;
            }
        }
        Ok(())
    }

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
            let have = group.table.read().expect("online group lock").version;
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
                self.groups.apply(&g, latest, delta, false);
                tracing::info!(group = %g.name, from = have, to = latest, rows = rows.num_rows(), "online store caught up with commits made elsewhere");
            }
            simple
        };
        if !incremental {
            self.rebuild(&g).await?;
        }
        Ok(())
    }

    /// Runs [`OnlineStore::refresh`] every [`REFRESH_EVERY`] until the task is stopped.
    pub async fn keep_fresh(self: std::sync::Arc<Self>) {
        loop {
            // At once when another replica announces a commit; otherwise every few seconds,
            // in case a notice was lost.
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "online store refresh failed; retrying");
            }
        }
    }
}
