//! Point-in-time training sets: a spine (label events from a SQL query over feature
//! groups) joined, as of each spine row's time, with features from pinned versions of
//! feature groups. The result is written once as Parquet under the tenant's
//! `training-sets/<id>/` area with a manifest saying exactly what went in; it is never
//! rewritten, and every read checks its SHA-256.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::datafusion::error::DataFusionError;
use lakeledger_query::datafusion::physical_plan::SendableRecordBatchStream;
use lakeledger_query::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lakeledger_query::ingest::{IngestFormat, decode_inferred};
use lakeledger_query::feature_rows::{FeatureRows, FileSet};
use lakeledger_query::tables::TableStore;
use lakeledger_query::point_in_time::{FeatureSide, KnownAt, deterministic_parquet, point_in_time_join, sort_spine, versions_known_at};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::stored::TRAINING_SETS;
use crate::error::{Error, Result};
use crate::features::{FeatureGroups, PinSource, ReadSpec};
use crate::identity::Principal;
use crate::platform::audit::{AuditContext, AuditLog};
use crate::platform::spool::Spooled;
use crate::sql::Sql;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrainingSet {
    /// A label for people; the id is assigned.
    pub name: String,
    /// A `SELECT` over feature groups giving the spine: entity key columns (named as in
    /// the feature groups), a time column and label columns. Time travel is allowed.
    /// Give this or `spine_upload`.
    #[serde(default)]
    pub spine_sql: Option<String>,
    /// The id of a spine uploaded with `POST /v1/spines` (rows in any ingest format).
    #[serde(default)]
    pub spine_upload: Option<String>,
    /// The spine's time column: features are taken as of this time.
    pub spine_time: String,
    /// `group:feature`, or `group` for all of its features.
    pub features: Vec<String>,
    /// Per group, the oldest acceptable feature row, in seconds before the spine time.
    #[serde(default)]
    pub ttl_seconds: BTreeMap<String, i64>,
    /// Per group, the version to read; default the latest at creation.
    #[serde(default)]
    pub versions: BTreeMap<String, i64>,
    /// Bitemporal: each spine row sees a group only as it was at the last version
    /// committed at or before the spine time, so later commits (backfills, corrections)
    /// cannot leak into training. Needs the group's whole commit log.
    #[serde(default)]
    pub as_known_at_spine_time: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FeatureInput {
    pub group: String,
    pub version: i64,
    pub features: Vec<String>,
    pub ttl_seconds: Option<i64>,
    /// Data files read (paths relative to the group's table); vacuum keeps them.
    #[serde(default)]
    pub files: Vec<String>,
}

/// What a training set is made of, exactly. Stored beside the data and never changed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainingSetManifest {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub spine_sql: Option<String>,
    pub spine_sql_sha256: Option<String>,
    /// `group@version` of every table the spine query read.
    pub spine_versions: Vec<String>,
    /// The uploaded spine used, and the SHA-256 of its stored rows.
    pub spine_upload: Option<String>,
    pub spine_upload_sha256: Option<String>,
    pub spine_time: String,
    pub features: Vec<FeatureInput>,
    pub as_known_at_spine_time: bool,
    /// How equal event times are decided, and the output order.
    pub semantics: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the Parquet file.
    pub sha256: String,
    pub created_at: String,
    pub created_by: String,
    pub audit_event_id: String,
}

const SEMANTICS: &str = "for each spine row and group: the row with equal entity keys and the latest event_time <= spine time \
(and >= spine time - ttl); of rows with equal event times the one last in (commit version that added its file, file path, \
row position in the file) order wins; with as_known_at_spine_time only rows held by the group's last version committed at or \
before the spine time count; no match gives nulls; rows are ordered by spine time, then the other spine columns";

/// Where a build's spine comes from, resolved before anything is read.
enum SpineSource {
    Sql { parsed: Box<lakeledger_query::sql::Parsed>, tables: Vec<lakeledger_query::sql::ResolvedTable>, facts: crate::sql::SqlFacts },
    Upload { manifest: SpineManifest, bytes: bytes::Bytes },
}

/// An uploaded spine: label rows kept as Parquet for training sets to use by id.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SpineManifest {
    pub id: String,
    pub tenant: String,
    /// The time column, stored as UTC microsecond timestamps.
    pub time: String,
    pub columns: Vec<SpineColumn>,
    pub rows: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the stored Parquet rows.
    pub sha256: String,
    pub created_at: String,
    pub created_by: String,
    pub audit_event_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SpineColumn {
    pub name: String,
    /// The Arrow type the values were read as.
    #[serde(rename = "type")]
    pub dtype: String,
}

/// The training-set service: builds sets from pinned versions, stores them immutably,
/// and tells vacuum which files they read.
pub struct TrainingSets {
    groups: Arc<FeatureGroups>,
    sql: Arc<Sql>,
    pub(super) tables: TableStore,
    audit: Arc<AuditLog>,
    /// Threads for the join and the Parquet encoding.
    pub(super) threads: usize,
    /// Where downloads are copied (and checked) before they are sent.
    spool_dir: PathBuf,
}

/// `group:feature` / `group` specs, grouped by group in first-mention order.
fn parse_features(specs: &[String]) -> Result<Vec<(String, Option<Vec<String>>)>> {
    let mut out: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for s in specs {
        let (group, feature) = match s.split_once(':') {
            Some((g, f)) if !g.is_empty() && !f.is_empty() => (g, Some(f)),
            None if !s.is_empty() => (s.as_str(), None),
            _ => return Err(Error::Unprocessable(format!("feature `{s}` is not `group:feature` or `group`"))),
        };
        let entry = match out.iter().position(|(g, _)| g == group) {
            Some(i) => &mut out[i],
            None => {
                out.push((group.to_string(), Some(Vec::new())));
                out.last_mut().expect("just pushed")
            }
        };
        match (feature, &mut entry.1) {
            (None, slot) => *slot = None,
            (Some(f), Some(list)) if !list.iter().any(|x| x == f) => list.push(f.to_string()),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(Error::Unprocessable("name at least one feature".into()));
    }
    Ok(out)
}

fn join_error(e: lakeledger_query::Error) -> Error {
    match e {
        lakeledger_query::Error::InvalidSchema(m) => Error::Unprocessable(m),
        other => other.into(),
    }
}

impl TrainingSets {
    pub fn new(groups: Arc<FeatureGroups>, sql: Arc<Sql>, tables: TableStore, audit: Arc<AuditLog>, threads: usize, spool_dir: PathBuf) -> Arc<TrainingSets> {
        Arc::new(TrainingSets { groups, sql, tables, audit, threads: threads.max(1), spool_dir })
    }

    #[tracing::instrument(name = "training_set.build", skip_all, fields(tenant = %p.tenant, name = %req.name))]
    pub async fn create(&self, p: &Principal, ctx: &AuditContext, req: CreateTrainingSet) -> Result<(TrainingSetManifest, Vec<i64>)> {
        if req.name.trim().is_empty() || req.name.len() > 200 {
            return Err(Error::Unprocessable("name must be 1 to 200 characters".into()));
        }
        let specs = parse_features(&req.features)?;
        for g in req.ttl_seconds.keys().chain(req.versions.keys()) {
            if !specs.iter().any(|(s, _)| s == g) {
                return Err(Error::Unprocessable(format!("`{g}` has a ttl or version but no features were asked of it")));
            }
        }
        if let Some((g, t)) = req.ttl_seconds.iter().find(|(_, t)| **t < 0) {
            return Err(Error::Unprocessable(format!("ttl for `{g}` is negative ({t})")));
        }

        // Held until the manifest is written, so no vacuum runs between reading and pinning.
        let _pins = self.groups.hold_pins().await;
        // Resolve everything first: the spine and each group at its version.
        let spine_source = match (&req.spine_sql, &req.spine_upload) {
            (Some(sql), None) => {
                let (parsed, tables, facts) = self.sql.prepare(p, sql).await?;
                SpineSource::Sql { parsed: Box::new(parsed), tables, facts }
            }
            (None, Some(id)) => {
                let (m, bytes) = self.spine_data(p, id).await?;
                SpineSource::Upload { manifest: m, bytes }
            }
            _ => return Err(Error::Unprocessable("give the spine as exactly one of spine_sql or spine_upload".into())),
        };
        let spine_versions_read: Vec<(String, i64)> = match &spine_source {
            SpineSource::Sql { facts, .. } => facts.tables.clone(),
            SpineSource::Upload { .. } => Vec::new(),
        };
        let mut inputs = Vec::new();
        let mut tables = Vec::new();
        for (group, wanted) in &specs {
            let g = self.groups.find(p, group).await?;
            let spec = ReadSpec { version: req.versions.get(group).copied(), as_of: None, filters: vec![], limit: None };
            let version = self.groups.resolve_version(&g, &spec).await?.version;
            let snapshot = self.groups.snapshot(&g, Some(version)).await?;
            let schema = snapshot.schema.clone();
            let features = match wanted {
                None => schema.features.iter().map(|c| c.name.clone()).collect(),
                Some(list) => {
                    for f in list {
                        if !schema.features.iter().any(|c| &c.name == f) {
                            return Err(Error::Unprocessable(format!("feature group `{group}` has no feature `{f}` at version {version}")));
                        }
                    }
                    list.clone()
                }
            };
            let keys: Vec<String> = schema.entity_keys.iter().map(|c| c.name.clone()).collect();
            let commits: Vec<(i64, i64)> = if req.as_known_at_spine_time {
                self.groups.versions(&g).await?.iter().filter(|v| v.version <= version).map(|v| (v.version, v.committed_at)).collect()
            } else {
                Vec::new()
            };
            let input = FeatureInput { group: g.name.clone(), version, features, ttl_seconds: req.ttl_seconds.get(group).copied(), files: vec![] };
            inputs.push((input, keys, schema.event_time.clone()));
            tables.push((snapshot, commits));
        }

        // Everything that will be read, recorded before it is read.
        let mut e = p.event("training_set.plan", ctx);
        e.resource.kind = Some("training_set".into());
        e.resource.name = Some(req.name.clone());
        e.resource.versions_read = spine_versions_read.iter().map(|(_, v)| *v).chain(inputs.iter().map(|(i, ..)| i.version)).collect();
        match &spine_source {
            SpineSource::Sql { facts, .. } => e.details.extend(facts.details()),
            SpineSource::Upload { manifest, .. } => {
                e.details.push(("spine_upload".into(), manifest.id.clone()));
                e.details.push(("spine_upload_sha256".into(), manifest.sha256.clone()));
            }
        }
        let features: Vec<String> = inputs.iter().map(|(i, ..)| format!("{}@{}:{}", i.group, i.version, i.features.join("+"))).collect();
        e.details.push(("features".into(), features.join(",")));
        if req.as_known_at_spine_time {
            e.details.push(("as_known_at_spine_time".into(), "true".into()));
        }
        self.audit.record(&e).await?;

        // The spine, then each group's rows, on the query runtime. Phase times go to the log
        // so an operator can see where a slow build spends its time.
        let started = std::time::Instant::now();
        let (spine_sql_sha256, spine_upload) = match &spine_source {
            SpineSource::Sql { facts, .. } => (Some(facts.sha256.clone()), None),
            SpineSource::Upload { manifest, .. } => (None, Some((manifest.id.clone(), manifest.sha256.clone()))),
        };
        let spine: RecordBatch = match spine_source {
            SpineSource::Sql { parsed, tables, .. } => self.sql.collect(*parsed, tables).await?,
            SpineSource::Upload { bytes, .. } => decode_inferred(IngestFormat::Parquet, bytes)?,
        };
        let spine_done = started.elapsed();
        // Each group's rows in (version, file, row) order, with the versions that held them.
        let set = if req.as_known_at_spine_time { FileSet::History } else { FileSet::Live };
        let threads = self.threads;
        let mut sides_data: Vec<(FeatureRows, Vec<(i64, i64)>)> = Vec::new();
        for ((input, keys, event_time), (snapshot, commits)) in inputs.iter_mut().zip(tables) {
            let columns: Vec<String> = keys.iter().chain(std::iter::once(&*event_time)).chain(input.features.iter()).cloned().collect();
            let rows: FeatureRows = self.groups.read_rows(&snapshot, columns, set, None).await?;
            input.files = rows.files.iter().map(|f| f.path.clone()).collect();
            sides_data.push((rows, commits));
        }
        let read_done = started.elapsed();

        // The join and the encoding are CPU work: off the request runtime.
        let join_inputs = inputs.clone();
        let (spine_time, bitemporal) = (req.spine_time.clone(), req.as_known_at_spine_time);
        let (rows, bytes, sha256) = tokio::task::spawn_blocking(move || -> Result<(usize, Vec<u8>, String)> {
            let spine = sort_spine(&spine, &spine_time).map_err(join_error)?;
            let spine_versions: Vec<Vec<Option<i64>>> = sides_data
                .iter()
                .map(|(_, commits)| versions_known_at(&spine, &spine_time, commits))
                .collect::<std::result::Result<_, _>>()
                .map_err(join_error)?;
            let sides: Vec<FeatureSide<'_>> = join_inputs
                .iter()
                .zip(&sides_data)
                .zip(&spine_versions)
                .map(|(((input, keys, event_time), (rows, _)), spine_version)| FeatureSide {
                    name: &input.group,
                    batches: &rows.batches,
                    schema: &rows.schema,
                    keys,
                    event_time,
                    features: &input.features,
                    ttl_micros: input.ttl_seconds.map(|s| s.saturating_mul(1_000_000)),
                    known: bitemporal.then_some(KnownAt { added: &rows.added, removed: &rows.removed, spine_version }),
                })
                .collect();
            let joined = point_in_time_join(&spine, &spine_time, &sides, threads).map_err(join_error)?;
            // Handing the feature rows' memory back takes a while; not on the request's time.
            drop(sides);
            std::thread::spawn(move || drop(sides_data));
            let join_done = started.elapsed();
            let bytes = deterministic_parquet(&joined, threads)?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            tracing::info!(
                rows = joined.num_rows(),
                spine_ms = spine_done.as_millis() as u64,
                read_ms = (read_done - spine_done).as_millis() as u64,
                join_ms = (join_done - read_done).as_millis() as u64,
                encode_ms = (started.elapsed() - join_done).as_millis() as u64,
                "training set joined and encoded"
            );
            Ok((joined.num_rows(), bytes, sha256))
        })
        .await
        .map_err(|e| Error::Internal(format!("the training-set join failed: {e}")))??;
        let (manifest, bytes) = {
            let id = TRAINING_SETS.new_id();
            let manifest = TrainingSetManifest {
                id,
                name: req.name.clone(),
                tenant: p.tenant.clone(),
                spine_sql: req.spine_sql.clone(),
                spine_sql_sha256,
                spine_versions: spine_versions_read.iter().map(|(n, v)| format!("{n}@{v}")).collect(),
                spine_upload_sha256: spine_upload.as_ref().map(|(_, sha)| sha.clone()),
                spine_upload: spine_upload.map(|(id, _)| id),
                spine_time: req.spine_time.clone(),
                features: inputs.iter().map(|(i, ..)| i.clone()).collect(),
                as_known_at_spine_time: req.as_known_at_spine_time,
                semantics: SEMANTICS.into(),
                rows: rows as u64,
                bytes: bytes.len() as u64,
                sha256,
                created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                created_by: p.actor(),
                audit_event_id: ctx.event_id.clone(),
            };
            (manifest, bytes)
        };
        TRAINING_SETS.write(&self.tables, &p.tenant, &manifest.id, bytes, &manifest).await?;
        let versions = e.resource.versions_read.clone();
        Ok((manifest, versions))
    }

    pub async fn manifest(&self, p: &Principal, id: &str) -> Result<TrainingSetManifest> {
        TRAINING_SETS.manifest_for(&self.tables, &p.tenant, id).await
    }

    /// A training set's manifest in a tenant (by name).
    pub async fn manifest_in(&self, tenant: &str, id: &str) -> Result<TrainingSetManifest> {
        TRAINING_SETS.manifest(&self.tables, tenant, id).await
    }

    /// A local copy of the Parquet file, checked against the manifest's SHA-256.
    pub async fn data(&self, p: &Principal, id: &str) -> Result<(TrainingSetManifest, Spooled)> {
        let m = self.manifest(p, id).await?;
        let copy = TRAINING_SETS.open(&self.tables, &self.spool_dir, &p.tenant, id, &m.sha256).await?;
        Ok((m, copy))
    }

    /// The rows, checked against the manifest's SHA-256 first, decoded off the async runtime
    /// a row group per task, several at once (as many as the query runtime has threads),
    /// sent in file order; only that many row groups are decoded ahead of the reader.
    pub async fn batches(&self, p: &Principal, id: &str) -> Result<(TrainingSetManifest, SendableRecordBatchStream)> {
        use futures::StreamExt;
        use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};

        let (m, copy) = self.data(p, id).await?;
        let file = copy.into_parquet();
        let unreadable = |e: parquet::errors::ParquetError| Error::Internal(format!("training set {id}: {e}"));
        let meta = ArrowReaderMetadata::load(&file, Default::default()).map_err(unreadable)?;
        let schema = meta.schema().clone();
        let groups = meta.metadata().num_row_groups();
        let decode = move |group: usize| {
            let (file, meta) = (file.clone(), meta.clone());
            tokio::task::spawn_blocking(move || {
                ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta)
                    .with_row_groups(vec![group])
                    .with_batch_size(65_536)
                    .build()?
                    .collect::<std::result::Result<Vec<RecordBatch>, _>>()
                    .map_err(parquet::errors::ParquetError::from)
            })
        };
        let stream = futures::stream::iter(0..groups)
            .map(decode)
            .buffered(self.threads)
            .flat_map(|decoded| {
                let batches = match decoded {
                    Ok(Ok(batches)) => batches.into_iter().map(Ok).collect(),
                    Ok(Err(e)) => vec![Err(DataFusionError::ParquetError(Box::new(e)))],
                    Err(e) => vec![Err(DataFusionError::External(Box::new(e)))],
                };
                futures::stream::iter(batches)
            });
        Ok((m, Box::pin(RecordBatchStreamAdapter::new(schema, stream))))
    }

    /// The tenant's training sets, oldest first (ids are time-ordered).
    pub async fn list(&self, p: &Principal) -> Result<Vec<TrainingSetManifest>> {
        self.list_in(&p.tenant).await
    }

    /// The training sets of a tenant (by name), oldest first.
    pub async fn list_in(&self, tenant: &str) -> Result<Vec<TrainingSetManifest>> {
        let ids = self.tables.list_children(&TRAINING_SETS.root(tenant)).await?;
        let mut out = Vec::new();
        for id in ids.iter().filter(|id| TRAINING_SETS.valid(id)) {
            // A directory without a manifest is a build that did not finish: not a training set.
            match self.manifest_in(tenant, id).await {
                Ok(m) => out.push(m),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Deletes a training set: the manifest first (it stops existing and pins nothing), then
    /// the data.
    pub async fn delete(&self, p: &Principal, id: &str) -> Result<TrainingSetManifest> {
        let m = self.manifest(p, id).await?;
        TRAINING_SETS.delete(&self.tables, &p.tenant, id).await?;
        Ok(m)
    }
}

#[async_trait]
impl PinSource for TrainingSets {
    /// Per file of `group` that a live training set read: the ids of those sets.
    async fn pinned_files(&self, tenant: &str, group: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let mut pins: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in self.list_in(tenant).await? {
            for input in m.features.iter().filter(|i| i.group == group) {
                for f in &input.files {
                    pins.entry(f.clone()).or_default().push(m.id.clone());
                }
            }
        }
        Ok(pins)
    }
}
