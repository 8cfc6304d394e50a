//! Reconciliation after a crash: unfinished creations are completed or removed, and
//! committed versions missing from the catalog's version map are recorded (marked
//! `recovered`). The Delta log is the truth for versions.

use lakeledger_query::FeatureSchema;
use serde::Serialize;

use super::{FeatureGroups, SCHEMA_META_KEY};
use crate::error::{Error, Result};
use crate::platform::catalog::{GroupState, VersionRecord};
use crate::platform::time::now_micros;

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
                } else {
                    self.catalog.delete_feature_group(&g.id).await?;
                    report.removed_creations += 1;
                    continue;
                }
            }
            let table = self.tables.open(&url, None).await?;
            let delta_latest = table.version().map(|v| v as i64).unwrap_or(-1);
            let known = self.catalog.latest_version(&g.id).await?.map(|v| v.version).unwrap_or(-1);
            if known > delta_latest {
                return Err(Error::Internal(format!(
                    "catalog records version {known} of feature group {} but its Delta log ends at {delta_latest}; refusing to start",
                    g.id
                )));
            }
            for v in (known + 1)..=delta_latest {
                let info = self.tables.commit_info(&table, v).await?;
                let (at, op, actor, request_id, schema) = match &info {
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
                self.record_commit(&g.id, rec).await?;
                if let Some(s) = schema.and_then(|s| serde_json::from_value::<FeatureSchema>(s).ok()) {
                    self.catalog.update_feature_group_schema(&g.id, &s, now_micros()).await?;
                }
                report.recovered_versions += 1;
                tracing::warn!(group = %g.name, version = v, "recorded a committed version missing from the catalog");
            }
        }
        Ok(report)
    }
}
