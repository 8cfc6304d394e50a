//! Point-in-time training sets: a spine (label events from a SQL query over feature
//! groups) joined, as of each spine row's time, with features from pinned versions of
//! feature groups. The result is written once as Parquet under the tenant's
//! `training-sets/<id>/` area with a manifest saying exactly what went in; it is never
//! rewritten, and every read checks its SHA-256.

use std::collections::BTreeMap;

use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::arrow::compute::concat_batches;
use lakeledger_query::ingest::{IngestFormat, decode_inferred, spine_time_column};
use lakeledger_query::feature_rows::{FeatureRows, FileSet, file_lineage, read_rows};
use lakeledger_query::point_in_time::{FeatureSide, KnownAt, deterministic_parquet, point_in_time_join, sort_spine, versions_known_at};
use lakeledger_query::sql::SqlLimits;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::platform::audit::AuditContext;
use crate::identity::Principal;
use crate::error::{Error, Result};
use crate::features::{self as fg, ReadSpec};
use crate::http::state::AppState;

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

/// Immutable things kept under a tenant's area as `<folder>/<id>/data.parquet` plus a
/// `manifest.json` holding the data's SHA-256. A thing exists once its manifest does.
#[derive(Clone, Copy)]
struct Stored {
    kind: &'static str,
    folder: &'static str,
    /// Ids are this prefix and 32 hex digits.
    prefix: &'static str,
}

const TRAINING_SETS: Stored = Stored { kind: "training set", folder: "training-sets", prefix: "ts_" };
const SPINES: Stored = Stored { kind: "spine", folder: "spines", prefix: "sp_" };

impl Stored {
    fn new_id(self) -> String {
        format!("{}{}", self.prefix, uuid::Uuid::now_v7().simple())
    }

    fn root(self, tenant: &str) -> String {
        format!("tenants/{tenant}/{}", self.folder)
    }

    fn dir(self, tenant: &str, id: &str) -> String {
        format!("{}/{id}", self.root(tenant))
    }

    fn valid(self, id: &str) -> bool {
        id.len() == self.prefix.len() + 32 && id.starts_with(self.prefix) && id[self.prefix.len()..].bytes().all(|c| c.is_ascii_hexdigit())
    }

    /// Data first, manifest last.
    async fn write(self, state: &AppState, tenant: &str, id: &str, data: Vec<u8>, manifest: &impl Serialize) -> Result<()> {
        let dir = self.dir(tenant, id);
        state.tables.put_object(&format!("{dir}/data.parquet"), data.into()).await?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(state.tables.put_object(&format!("{dir}/manifest.json"), json.into()).await?)
    }

    async fn manifest<T: serde::de::DeserializeOwned>(self, state: &AppState, tenant: &str, id: &str) -> Result<T> {
        let not_found = || Error::NotFound { kind: self.kind, name: id.to_string() };
        if !self.valid(id) {
            return Err(not_found());
        }
        let bytes = state.tables.get_object(&format!("{}/manifest.json", self.dir(tenant, id))).await?.ok_or_else(not_found)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("{} {id}: manifest unreadable: {e}", self.kind)))
    }

    /// The data, checked against the SHA-256 its manifest records.
    async fn data(self, state: &AppState, tenant: &str, id: &str, sha256: &str) -> Result<bytes::Bytes> {
        let bytes = state
            .tables
            .get_object(&format!("{}/data.parquet", self.dir(tenant, id)))
            .await?
            .ok_or_else(|| Error::Internal(format!("{} {id}: data file is missing", self.kind)))?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(Error::Internal(format!("{} {id}: data does not match its manifest's SHA-256", self.kind)));
        }
        Ok(bytes)
    }

    /// Manifest first: the thing stops existing before its data goes.
    async fn delete(self, state: &AppState, tenant: &str, id: &str) -> Result<()> {
        let dir = self.dir(tenant, id);
        state.tables.delete_object(&format!("{dir}/manifest.json")).await?;
        Ok(state.tables.delete_object(&format!("{dir}/data.parquet")).await?)
    }
}

/// Stores an uploaded spine (any ingest format); `time` names its time column.
pub async fn upload_spine(state: &AppState, p: &Principal, ctx: &AuditContext, format: IngestFormat, body: bytes::Bytes, time: String) -> Result<SpineManifest> {
    let time_name = time.clone();
    let threads = state.config.sql.threads.max(1);
    let (batch, parquet) = tokio::task::spawn_blocking(move || -> Result<_> {
        let batch = decode_inferred(format, body)?;
        if batch.num_rows() == 0 {
            return Err(Error::Unprocessable("the spine has no rows".into()));
        }
        let batch = spine_time_column(&batch, &time)?;
        let parquet = deterministic_parquet(&batch, threads)?;
        Ok((batch, parquet))
    })
    .await
    .map_err(|e| Error::Internal(format!("spine decoding failed: {e}")))??;
    let m = SpineManifest {
        id: SPINES.new_id(),
        tenant: p.tenant.clone(),
        time: time_name,
        columns: batch.schema().fields().iter().map(|f| SpineColumn { name: f.name().clone(), dtype: f.data_type().to_string() }).collect(),
        rows: batch.num_rows() as u64,
        bytes: parquet.len() as u64,
        sha256: hex::encode(Sha256::digest(&parquet)),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        created_by: p.actor(),
        audit_event_id: ctx.event_id.clone(),
    };
    SPINES.write(state, &p.tenant, &m.id, parquet, &m).await?;
    Ok(m)
}

pub async fn spine_manifest(state: &AppState, p: &Principal, id: &str) -> Result<SpineManifest> {
    SPINES.manifest(state, &p.tenant, id).await
}

async fn spine_data(state: &AppState, p: &Principal, id: &str) -> Result<(SpineManifest, bytes::Bytes)> {
    let m: SpineManifest = SPINES.manifest(state, &p.tenant, id).await?;
    let bytes = SPINES.data(state, &p.tenant, id, &m.sha256).await?;
    Ok((m, bytes))
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

pub(crate) async fn on_query_runtime<T: Send + 'static>(
    state: &AppState,
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    state.query_runtime.handle().spawn(f).await.map_err(|e| Error::Internal(format!("query task failed: {e}")))?
}

pub async fn create(state: &AppState, p: &Principal, ctx: &AuditContext, req: CreateTrainingSet) -> Result<(TrainingSetManifest, Vec<i64>)> {
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
    let _pins = state.pins.read().await;
    // Resolve everything first: the spine and each group at its version.
    let spine_source = match (&req.spine_sql, &req.spine_upload) {
        (Some(sql), None) => {
            let (parsed, tables, facts) = crate::sql::prepare(state, p, sql).await?;
            SpineSource::Sql { parsed: Box::new(parsed), tables, facts }
        }
        (None, Some(id)) => {
            let (m, bytes) = spine_data(state, p, id).await?;
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
        let g = fg::find(state, p, group).await?;
        let spec = ReadSpec { version: req.versions.get(group).copied(), as_of: None, filters: vec![], limit: None };
        let version = fg::resolve_version(state, &g, &spec).await?.version;
        let table = state.tables.open(&state.tables.location(&g.location)?, Some(version)).await?;
        if table.version().map(|v| v as i64) != Some(version) {
            return Err(Error::Internal(format!("asked for version {version} of `{group}` but the table opened at {:?}", table.version())));
        }
        let (schema, arrow) = schema_at(&table, &g.schema).await?;
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
            state.catalog.versions(&g.id).await?.iter().filter(|v| v.version <= version).map(|v| (v.version, v.committed_at)).collect()
        } else {
            Vec::new()
        };
        let input = FeatureInput { group: g.name.clone(), version, features, ttl_seconds: req.ttl_seconds.get(group).copied(), files: vec![] };
        inputs.push((input, keys, schema.event_time.clone()));
        tables.push((table, arrow, commits));
    }

    // Everything that will be read, recorded before it is read.
    let mut e = crate::platform::audit::principal_event("training_set.plan", p, ctx);
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
    state.audit.record(&e).await?;

    // The spine, then each group's rows, on the query runtime. Phase times go to the log
    // so an operator can see where a slow build spends its time.
    let started = std::time::Instant::now();
    let limits = SqlLimits { memory_bytes: state.config.sql.memory_bytes, target_partitions: state.config.sql.threads };
    let (spine_sql_sha256, spine_upload) = match &spine_source {
        SpineSource::Sql { facts, .. } => (Some(facts.sha256.clone()), None),
        SpineSource::Upload { manifest, .. } => (None, Some((manifest.id.clone(), manifest.sha256.clone()))),
    };
    let spine: RecordBatch = on_query_runtime(state, async move {
        match spine_source {
            SpineSource::Sql { parsed, tables, .. } => {
                let stream = parsed.execute(tables, limits).await?;
                let schema = stream.schema();
                let batches = lakeledger_query::datafusion::physical_plan::common::collect(stream).await.map_err(|e| parsed.user_error(e))?;
                Ok(concat_batches(&schema, &batches).map_err(lakeledger_query::Error::from)?)
            }
            SpineSource::Upload { bytes, .. } => Ok(decode_inferred(IngestFormat::Parquet, bytes)?),
        }
    })
    .await?;
    let spine_done = started.elapsed();
    // Each group's rows in (version, file, row) order, with the versions that held them.
    let set = if req.as_known_at_spine_time { FileSet::History } else { FileSet::Live };
    let threads = state.config.sql.threads.max(1);
    let mut sides_data: Vec<(FeatureRows, Vec<(i64, i64)>)> = Vec::new();
    for ((input, keys, event_time), (table, arrow, commits)) in inputs.iter_mut().zip(tables) {
        let columns: Vec<String> = keys.iter().chain(std::iter::once(&*event_time)).chain(input.features.iter()).cloned().collect();
        let version = input.version;
        let rows: FeatureRows = on_query_runtime(state, async move {
            let files = file_lineage(&table, version, set).await?;
            Ok(read_rows(&table, &arrow, &columns, files, threads).await?)
        })
        .await?;
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
    TRAINING_SETS.write(state, &p.tenant, &manifest.id, bytes, &manifest).await?;
    let versions = e.resource.versions_read.clone();
    Ok((manifest, versions))
}

/// The group's schema as of the opened version (columns added later are absent), and
/// the table's Arrow schema there.
pub(crate) async fn schema_at(
    table: &lakeledger_query::deltalake::DeltaTable,
    latest: &lakeledger_query::FeatureSchema,
) -> Result<(lakeledger_query::FeatureSchema, lakeledger_query::arrow::datatypes::SchemaRef)> {
    let provider = table.table_provider().await.map_err(lakeledger_query::Error::DataFusion)?;
    let arrow = provider.schema();
    let present = |name: &str| arrow.field_with_name(name).is_ok();
    let mut schema = latest.clone();
    schema.features.retain(|c| present(&c.name));
    Ok((schema, arrow))
}

fn join_error(e: lakeledger_query::Error) -> Error {
    match e {
        lakeledger_query::Error::InvalidSchema(m) => Error::Unprocessable(m),
        other => other.into(),
    }
}

pub async fn manifest(state: &AppState, p: &Principal, id: &str) -> Result<TrainingSetManifest> {
    TRAINING_SETS.manifest(state, &p.tenant, id).await
}

/// The Parquet bytes, checked against the manifest's SHA-256.
pub async fn data(state: &AppState, p: &Principal, id: &str) -> Result<(TrainingSetManifest, bytes::Bytes)> {
    let m = manifest(state, p, id).await?;
    let bytes = TRAINING_SETS.data(state, &p.tenant, id, &m.sha256).await?;
    Ok((m, bytes))
}

/// The tenant's training sets, oldest first (ids are time-ordered).
pub async fn list(state: &AppState, p: &Principal) -> Result<Vec<TrainingSetManifest>> {
    let ids = state.tables.list_children(&TRAINING_SETS.root(&p.tenant)).await?;
    let mut out = Vec::new();
    for id in ids.iter().filter(|id| TRAINING_SETS.valid(id)) {
        // A directory without a manifest is a build that did not finish: not a training set.
        match manifest(state, p, id).await {
            Ok(m) => out.push(m),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Deletes a training set: the manifest first (it stops existing and pins nothing), then
/// the data.
pub async fn delete(state: &AppState, p: &Principal, id: &str) -> Result<TrainingSetManifest> {
    let m = manifest(state, p, id).await?;
    TRAINING_SETS.delete(state, &p.tenant, id).await?;
    Ok(m)
}

/// Per file of `group` that a live training set read: the ids of those sets.
pub async fn pinned_files(state: &AppState, p: &Principal, group: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut pins: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in list(state, p).await? {
        for input in m.features.iter().filter(|i| i.group == group) {
            for f in &input.files {
                pins.entry(f.clone()).or_default().push(m.id.clone());
            }
        }
    }
    Ok(pins)
}
