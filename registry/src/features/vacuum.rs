//! Vacuum: deletes data files that left a table longer ago than the retention, except
//! those a live training set read, so pinned versions stay reproducible.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FeatureGroups;
use crate::error::{Error, Result};
use crate::identity::Principal;

/// The longest retention accepted: a century. Longer ones cannot be subtracted from now.
pub const MAX_RETENTION_HOURS: u64 = 876_000;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VacuumRequest {
    /// Delete data files that left the table more than this many hours ago. Default: the
    /// table's own retention (`delta.deletedFileRetentionDuration`, a week unless set).
    /// At most 876,000 (a century).
    #[schema(maximum = 876_000)]
    pub retention_hours: Option<u64>,
    /// Allow a retention shorter than the table's own. Versions older than the retention
    /// then stop being readable (training sets that read them keep their files).
    #[serde(default)]
    pub force: bool,
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VacuumReport {
    pub dry_run: bool,
    pub retention_hours: u64,
    /// Files deleted (on a dry run: that would be), relative to the group's table.
    pub deleted: Vec<String>,
    /// Files old enough to delete that were kept because live training sets read them.
    pub kept: Vec<KeptFile>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeptFile {
    pub path: String,
    /// The training sets that depend on it; deleting them releases the file.
    pub training_sets: Vec<String>,
}

impl FeatureGroups {
    /// Deletes data files that left the table longer ago than the retention, except those a
    /// live training set read: pinned versions stay reproducible.
    pub async fn vacuum(&self, p: &Principal, name: &str, req: VacuumRequest) -> Result<VacuumReport> {
        if let Some(h) = req.retention_hours.filter(|h| *h > MAX_RETENTION_HOURS) {
            return Err(Error::Unprocessable(format!("retention_hours {h} is longer than the longest accepted, {MAX_RETENTION_HOURS} (a century)")));
        }
        let g = self.find(p, name).await?;
        // Without a source of pins nothing may be deleted: every file could be pinned.
        let pin_source = self
            .pin_source
            .read()
            .expect("pin source")
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| Error::Internal("vacuum cannot run: no source of training-set pins".into()))?;
        // No training set may be built (and pin files) while the candidates are decided.
        let _pins = self.pins.write().await;
        let table = self.tables.open(&self.tables.location(&g.location)?, None).await?;
        let minimum = lakeledger_query::tables::retention_hours(&table)?;
        let hours = req.retention_hours.unwrap_or(minimum);
        if hours < minimum && !req.force {
            return Err(Error::Unprocessable(format!(
                "retention_hours {hours} is shorter than the table's retention of {minimum} hours: versions in between would stop \
                 being readable; pass \"force\": true to do it anyway"
            )));
        }
        let candidates = lakeledger_query::tables::vacuum_candidates(table.clone(), hours).await?;
        let mut pins = pin_source.pinned_files(&p.tenant, &g.name).await?;
        let mut report = VacuumReport { dry_run: req.dry_run, retention_hours: hours, deleted: vec![], kept: vec![] };
        for path in candidates {
            match pins.remove(&path) {
                Some(training_sets) => report.kept.push(KeptFile { path, training_sets }),
                None => report.deleted.push(path),
            }
        }
        report.deleted.sort();
        report.kept.sort_by(|a, b| a.path.cmp(&b.path));
        if !req.dry_run {
            lakeledger_query::tables::delete_data_files(&table, &report.deleted).await?;
        }
        Ok(report)
    }
}
