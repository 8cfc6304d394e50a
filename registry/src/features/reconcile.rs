//! Reconciliation after a crash: unfinished creations are completed or removed, and
//! committed versions missing from the catalog's version map are recorded (marked
//! `recovered`). The Delta log is the truth for versions.

use std::collections::BTreeSet;

use lakeledger_query::FeatureSchema;
use lakeledger_query::deltalake::DeltaTable;
use serde::Serialize;

use super::{FeatureGroups, SCHEMA_META_KEY};
use crate::error::{Error, Result};
use crate::platform::catalog::{GroupCommit, GroupState, VersionRecord};
use crate::platform::time::now_micros;

/// A group creation younger than this may be under way on another replica; startup
/// leaves it alone.
const CREATION_GRACE_MICROS: i64 = 10 * 60 * 1_000_000;

/// A group held for a commit, and how many missing versions were filled in first.
pub(super) struct Held {
    pub commit: Box<dyn GroupCommit>,
    pub filled: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub completed_creations: u64,
    pub removed_creations: u64,
    pub recovered_versions: u64,
}

impl FeatureGroups {
    /// Brings the catalog in line with the Delta tables (startup).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for g in self.catalog.all_feature_groups().await? {
            let url = self.tables.location(&g.location)?;
            if g.state == GroupState::Creating {
                if self.tables.exists(&url).await? {
                    self.catalog.set_feature_group_state(&g.id, GroupState::Active, now_micros()).await?;
                    report.completed_creations += 1;
                } else if now_micros().saturating_sub(g.created_at) < CREATION_GRACE_MICROS {
                    // Another replica may be creating it right now (a creation takes
                    // milliseconds); a later start, or that replica, finishes it.
                    continue;
                } else {
                    self.catalog.delete_feature_group(&g.id).await?;
                    report.removed_creations += 1;
                    continue;
                }
            }
            let (held, _, schema) = self.hold(&g.id, &g.name, &url).await?;
            let filled = held.filled;
            held.commit.finish().await?;
            if let Some(s) = schema {
                self.catalog.update_feature_group_schema(&g.id, &s, now_micros()).await?;
            }
            report.recovered_versions += filled;
        }
        Ok(report)
    }

    /// Holds the group against other replicas' commits, opens its table's latest snapshot
    /// under the hold, and records every version the Delta log has and the catalog lacks: a
    /// commit whose recording was cut short, here or on another replica, and not only at
    /// the tail. The next version is then recorded in order after them. Returns the hold,
    /// the snapshot, and the newest schema among the versions filled in, to apply once the
    /// hold is released (applying it while held would wait on the hold's own row lock).
    pub(super) async fn hold(&self, group_id: &str, group_name: &str, url: &url::Url) -> Result<(Held, DeltaTable, Option<FeatureSchema>)> {
        let mut commit = self.catalog.begin_commit(group_id).await?;
        let table = self.tables.open(url, None).await?;
        let (filled, schema) = self.fill_gaps(commit.as_mut(), group_id, group_name, &table).await?;
        Ok((Held { commit, filled }, table, schema))
    }

    async fn fill_gaps(&self, held: &mut dyn GroupCommit, group_id: &str, group_name: &str, table: &DeltaTable) -> Result<(u64, Option<FeatureSchema>)> {
        let delta_latest = table.version().map(|v| v as i64).unwrap_or(-1);
        let known: BTreeSet<i64> = held.recorded_versions().await?.into_iter().collect();
        if let Some(&max) = known.last()
            && max > delta_latest
        {
            return Err(Error::Internal(format!(
                "catalog records version {max} of feature group {group_id} but its Delta log ends at {delta_latest}; refusing to go on"
            )));
        }
        let (mut filled, mut schema) = (0, None);
        for v in (0..=delta_latest).filter(|v| !known.contains(v)) {
            let info = self.tables.commit_info(table, v).await?;
            let (at, op, actor, request_id, meta_schema) = match &info {
                Some(ci) => (
                    ci.timestamp_ms.map(|ms| ms * 1000).unwrap_or_else(now_micros),
                    ci.operation.clone(),
                    ci.info.get("lakeledger.actor").and_then(|a| a.as_str()).unwrap_or("unknown").to_string(),
                    ci.info.get("lakeledger.requestId").and_then(|a| a.as_str()).map(str::to_string),
                    ci.info.get(SCHEMA_META_KEY).cloned(),
                ),
                None => (now_micros(), "UNKNOWN".to_string(), "unknown".to_string(), None, None),
            };
            let rec = VersionRecord { version: v, committed_at: at, operation: op, rows_added: None, actor, request_id, recovered: true };
            held.record(&rec).await?;
            if let Some(s) = meta_schema.and_then(|s| serde_json::from_value::<FeatureSchema>(s).ok()) {
                schema = Some(s);
            }
            filled += 1;
            tracing::warn!(group = %group_name, version = v, "recorded a committed version missing from the catalog");
        }
        Ok((filled, schema))
    }
}
