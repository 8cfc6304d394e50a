//! How other domains follow a feature group without the group calling them by name:
//! commit observers (the online store) and the source of vacuum's pins (training sets).

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use async_trait::async_trait;

use crate::error::Result;
use crate::platform::catalog::FeatureGroupRecord;

/// Told about every group's writes and settings, so state derived from the table (the
/// online store) follows it.
#[async_trait]
pub trait CommitObserver: Send + Sync {
    /// A write to `group` is being staged: a sink for every staged batch, or `None` when
    /// this observer does not follow the group.
    fn staging(&self, group: &FeatureGroupRecord) -> Option<Box<dyn StagedRows>>;

    /// The group was created or its settings changed (e.g. it was made online or not).
    async fn group_changed(&self, group: &FeatureGroupRecord) -> Result<()>;
}

/// The rows of one write, as they are staged.
#[async_trait]
pub trait StagedRows: Send {
    /// A batch, conformed to the group's schema.
    fn absorb(&mut self, batch: &RecordBatch) -> Result<()>;

    /// The write committed as `version` (`replace`: it replaced the group's content).
    /// Called with the group's commit lock held, so calls arrive in version order; the
    /// write's answer waits for it (a lookup after the answer sees the rows).
    async fn committed(self: Box<Self>, group: &FeatureGroupRecord, version: i64, replace: bool);
}

/// Which data files of a group live training sets read; vacuum keeps those.
#[async_trait]
pub trait PinSource: Send + Sync {
    /// Per file of `group` in `tenant`: the ids of the training sets that read it.
    async fn pinned_files(&self, tenant: &str, group: &str) -> Result<BTreeMap<String, Vec<String>>>;
}
