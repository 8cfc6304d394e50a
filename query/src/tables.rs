//! Feature group tables: one Delta table per feature group, written in single atomic
//! commits and read at any version.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, lit};
use datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde_json::Value;
use url::Url;

use crate::error::{Error, Result};
use crate::schema::{Column, ColumnType, FeatureSchema};

/// How a batch of rows lands in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Add rows.
    Append,
    /// Insert rows, or replace rows with the same entity keys and event time.
    Upsert,
    /// Replace the whole table content.
    Overwrite,
}

impl WriteMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "append" => Some(WriteMode::Append),
            "upsert" => Some(WriteMode::Upsert),
            "overwrite" => Some(WriteMode::Overwrite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Upsert => "upsert",
            WriteMode::Overwrite => "overwrite",
        }
    }
}

/// Where the tables live and how to reach that storage.
#[derive(Clone, Debug)]
pub struct TableStore {
    root: Url,
    storage_options: HashMap<String, String>,
    /// Where upserts spool their rows until the merge (the system's temporary directory
    /// unless set).
    spool_dir: Option<std::path::PathBuf>,
}

/// Registers the object-store schemes compiled into this build. Idempotent.
pub fn register_storage_handlers() {
    #[cfg(feature = "s3")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // The AWS SDK's credential chain when built in (profiles, SSO), else object_store's.
        #[cfg(feature = "s3-aws-sdk")]
        ONCE.call_once(|| deltalake::aws::register_handlers(None));
        #[cfg(not(feature = "s3-aws-sdk"))]
        ONCE.call_once(crate::s3::register);
    }
}

impl TableStore {
    /// `root` is `file:///…` or `s3://bucket/prefix`; options are passed to the object
    /// store (endpoint, region, credentials, conditional-put settings).
    pub fn new(root: Url, storage_options: HashMap<String, String>) -> Result<Self> {
        register_storage_handlers();
        let mut root = root;
        if !root.path().ends_with('/') {
            let p = format!("{}/", root.path());
            root.set_path(&p);
        }
        match root.scheme() {
            "file" => {
                let path = root.to_file_path().map_err(|_| Error::Storage(format!("not a local path: {root}")))?;
                std::fs::create_dir_all(&path)?;
            }
            "s3" | "s3a" if cfg!(feature = "s3") => {}
            other => {
                return Err(Error::Storage(format!(
                    "storage scheme `{other}` is not supported by this build (use file:// or s3://)"
                )))
            }
        }
        Ok(TableStore { root, storage_options, spool_dir: None })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The location of a table below the root, e.g. `tenants/acme/feature-groups/clicks`.
    pub fn location(&self, relative: &str) -> Result<Url> {
        let rel = format!("{}/", relative.trim_matches('/'));
        self.root.join(&rel).map_err(|e| Error::Storage(format!("bad table location {relative}: {e}")))
    }

    fn builder(&self, url: &Url) -> Result<DeltaTableBuilder> {
        Ok(DeltaTableBuilder::from_url(url.clone())?.with_storage_options(self.storage_options.clone()))
    }

    /// Creates the Delta table for a feature group (version 0, no data).
    pub async fn create(&self, url: &Url, name: &str, schema: &FeatureSchema, meta: CommitMeta) -> Result<i64> {
        if url.scheme() == "file"
            && let Ok(p) = url.to_file_path()
        {
            std::fs::create_dir_all(&p)?;
        }
        let table = self.builder(url)?.build()?;
        let table = table
            .create()
            .with_table_name(name)
            .with_columns(schema.delta_fields())
            .with_save_mode(SaveMode::ErrorIfExists)
            .with_commit_properties(meta.properties())
            .await
            .map_err(classify)?;
        Ok(table.version().unwrap_or(0) as i64)
    }

    /// Opens the latest version, or the given one.
    pub async fn open(&self, url: &Url, version: Option<i64>) -> Result<DeltaTable> {
        let Some(v) = version else {
            return self.builder(url)?.load().await.map_err(classify);
        };
        let attempt = if v >= 0 { Some(self.builder(url)?.with_version(v as u64).load().await) } else { None };
        match attempt {
            Some(Ok(t)) => Ok(t),
            failed => {
                // Only a version past the end is "not found"; other failures keep their cause.
                let latest = self.builder(url)?.load().await.map_err(classify)?.version().map(|v| v as i64).unwrap_or(-1);
                match failed {
                    Some(Err(e)) if v <= latest => Err(classify(e)),
                    _ => Err(Error::VersionNotFound { version: v, latest }),
                }
            }
        }
    }

    /// Whether a Delta table exists at `url`.
    pub async fn exists(&self, url: &Url) -> Result<bool> {
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|_| Error::Storage(format!("not a local path: {url}")))?;
            return Ok(path.join("_delta_log").is_dir());
        }
        match self.builder(url)?.load().await {
            Ok(_) => Ok(true),
            Err(DeltaTableError::NotATable(_)) | Err(DeltaTableError::InvalidTableLocation(_)) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    /// Upserts spool their rows under `dir` (a local directory of this process's own)
    /// until the merge. Spool files an earlier process left there (it was killed during an
    /// upsert) are removed now.
    pub fn with_spool_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        let dir = dir.into();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(SPOOL_PREFIX) && name.ends_with(".parquet") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.spool_dir = Some(dir);
        self
    }

    /// Starts a write. Rows are encoded to Parquet files as they arrive (an upsert's to a
    /// local spool file its merge reads); nothing is visible until [`StagedWrite::commit`]
    /// succeeds.
    pub fn begin_write(&self, table: &DeltaTable, schema: &FeatureSchema, mode: WriteMode) -> Result<StagedWrite> {
        let (writer, spool) = match mode {
            WriteMode::Upsert => (None, Some(UpsertSpool::new(self.spool_dir.as_deref(), schema)?)),
            _ => (Some(RecordBatchWriter::for_table(table)?), None),
        };
        Ok(StagedWrite { writer, mode, schema: schema.clone(), rows: 0, spool })
    }

    /// Adds nullable feature columns, producing a new version.
    pub async fn add_columns(&self, table: DeltaTable, columns: &[Column], meta: CommitMeta) -> Result<i64> {
        let fields = FeatureSchema { entity_keys: vec![], event_time: String::new(), features: columns.to_vec() }
            .delta_fields()
            .into_iter()
            .skip(1) // the placeholder event-time column
            .collect::<Vec<_>>();
        let table = table
            .add_columns()
            .with_fields(fields)
            .with_commit_properties(meta.properties())
            .await
            .map_err(classify)?;
        Ok(table.version().unwrap_or(0) as i64)
    }

    /// Reads the commit info a version's log entry carries, straight from `_delta_log`.
    pub async fn commit_info(&self, table: &DeltaTable, version: i64) -> Result<Option<CommitRecord>> {
        let store = table.log_store().object_store(None);
        let path = Path::from(format!("_delta_log/{version:020}.json"));
        let bytes = match store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| Error::Storage(e.to_string()))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::Storage(e.to_string())),
        };
        let (mut record, mut columns) = (None, None);
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
            if let Some(ci) = v.get("commitInfo") {
                record = Some(CommitRecord {
                    version,
                    timestamp_ms: ci.get("timestamp").and_then(Value::as_i64),
                    operation: ci.get("operation").and_then(Value::as_str).unwrap_or("UNKNOWN").to_string(),
                    info: ci.as_object().cloned().unwrap_or_default(),
                    columns: None,
                });
            } else if let Some(schema) = v.get("metaData").and_then(|m| m.get("schemaString")).and_then(Value::as_str) {
                let fields = serde_json::from_str::<Value>(schema).ok().and_then(|s| s.get("fields").and_then(Value::as_array).cloned());
                columns = fields.map(|f| f.iter().filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_string)).collect());
            }
        }
        Ok(record.map(|r| CommitRecord { columns, ..r }))
    }
}

/// The table's own minimum retention for removed files (`delta.deletedFileRetentionDuration`,
/// a week unless set), in hours.
pub fn retention_hours(table: &DeltaTable) -> Result<u64> {
    use deltalake::table::config::TablePropertiesExt;
    Ok(table.snapshot()?.table_config().deleted_file_retention_duration().as_secs() / 3600)
}

/// Data files that left the table more than `retention_hours` ago: what a vacuum would
/// delete. Nothing is deleted here, so a caller can keep what it still needs.
pub async fn vacuum_candidates(table: DeltaTable, retention_hours: u64) -> Result<Vec<String>> {
    let period = i64::try_from(retention_hours)
        .ok()
        .and_then(chrono::Duration::try_hours)
        .ok_or_else(|| Error::InvalidSchema(format!("retention of {retention_hours} hours is too long")))?;
    let table_store = table.log_store();
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(period)
        // The caller has already applied its own rule about short retention.
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .map_err(classify)?;
    // Removed files stay listed in the log after an earlier vacuum deleted them.
    let store = table_store.object_store(None);
    let present: Vec<Option<String>> = futures::stream::iter(metrics.files_deleted)
        .map(|p| {
            let store = store.clone();
            async move {
                let location = Path::parse(&p).map_err(|e| Error::Storage(format!("bad file path {p}: {e}")))?;
                match store.head(&location).await {
                    Ok(_) => Ok(Some(p)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(Error::Storage(format!("{p}: {e}"))),
                }
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    Ok(present.into_iter().flatten().collect())
}

/// Deletes data files of `table` (paths relative to its root). Files already gone are fine.
pub async fn delete_data_files(table: &DeltaTable, paths: &[String]) -> Result<()> {
    let store = table.log_store().object_store(None);
    for p in paths {
        let location = Path::parse(p).map_err(|e| Error::Storage(format!("bad file path {p}: {e}")))?;
        match store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::Storage(format!("deleting {p}: {e}"))),
        }
    }
    Ok(())
}

/// A commit as read back from the Delta log.
#[derive(Clone, Debug)]
pub struct CommitRecord {
    pub version: i64,
    pub timestamp_ms: Option<i64>,
    pub operation: String,
    pub info: serde_json::Map<String, Value>,
    /// The table's column names when this commit set its schema (a `metaData` action:
    /// the creation and each schema change); `None` when it kept the schema.
    pub columns: Option<Vec<String>>,
}

/// Metadata written into the commit info of each commit (request id, actor, audit event).
#[derive(Clone, Debug, Default)]
pub struct CommitMeta(pub serde_json::Map<String, Value>);

impl CommitMeta {
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    fn properties(self) -> CommitProperties {
        CommitProperties::default().with_metadata(self.0)
    }
}

/// The result of a successful commit.
#[derive(Clone, Copy, Debug)]
pub struct CommitOutcome {
    pub version: i64,
    pub rows: u64,
}

/// A write in progress: rows staged, nothing committed.
pub struct StagedWrite {
    writer: Option<RecordBatchWriter>,
    mode: WriteMode,
    schema: FeatureSchema,
    rows: u64,
    /// An upsert's rows, on local disk: the merge joins them against the table in one pass.
    spool: Option<UpsertSpool>,
}

const SPOOL_PREFIX: &str = "upsert-";

/// The rows of an upsert, written to a local Parquet file as they arrive (so a large
/// upsert is not held in memory until its merge), with the entity keys and event time of
/// every row seen so far: two rows sharing them are refused as soon as the second arrives.
struct UpsertSpool {
    /// Removed when the write ends, committed or not.
    path: tempfile::TempPath,
    file: Option<std::fs::File>,
    writer: Option<parquet::arrow::ArrowWriter<std::fs::File>>,
    duplicates: crate::ingest::DuplicateFinder,
}

impl UpsertSpool {
    fn new(dir: Option<&std::path::Path>, schema: &FeatureSchema) -> Result<UpsertSpool> {
        let spool_err = |e: std::io::Error| Error::Storage(format!("could not create the upsert's spool file: {e}"));
        let named = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(spool_err)?;
                tempfile::Builder::new().prefix(SPOOL_PREFIX).suffix(".parquet").tempfile_in(d)
            }
            None => tempfile::Builder::new().prefix(SPOOL_PREFIX).suffix(".parquet").tempfile(),
        }
        .map_err(spool_err)?;
        let (file, path) = named.into_parts();
        Ok(UpsertSpool { path, file: Some(file), writer: None, duplicates: crate::ingest::DuplicateFinder::new(schema) })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some((first, second)) = self.duplicates.check(batch)? {
            return Err(Error::DuplicateKey { first, second });
        }
        if self.writer.is_none() {
            // Uncompressed: the file lives only until the merge has read it once.
            let props = parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::UNCOMPRESSED).build();
            let file = self.file.take().expect("the spool file is opened once");
            self.writer = Some(parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(spool_failed)?);
        }
        self.writer.as_mut().expect("opened above").write(batch).map_err(spool_failed)
    }

    /// Finishes the file; `None` when no row came.
    fn finish(&mut self) -> Result<Option<&std::path::Path>> {
        match self.writer.take() {
            None => Ok(None),
            Some(w) => {
                w.close().map_err(spool_failed)?;
                Ok(Some(&self.path))
            }
        }
    }
}

/// Runs blocking file work (the spool's writes: a row group at a time, tens of MB) where
/// it does not stall the async workers: on a multi-threaded runtime the worker hands its
/// other tasks on first; on a single-threaded one (tests) there is no one to hand them to.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn spool_failed(e: parquet::errors::ParquetError) -> Error {
    Error::Storage(format!("writing the upsert's spool file failed: {e}"))
}

impl StagedWrite {
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match (self.writer.as_mut(), self.spool.as_mut()) {
            (Some(w), _) => w.write(batch).await.map_err(classify),
            (None, Some(spool)) => off_the_workers(|| spool.write(&batch)),
            (None, None) => unreachable!("every write has a writer or a spool"),
        }
    }

    /// Removes any files staged so far; used when a write is abandoned.
    pub async fn abort(mut self, table: &DeltaTable) {
        if let Some(w) = self.writer.as_mut()
            && let Ok(adds) = w.flush().await
        {
            delete_files(table, &adds).await;
        }
    }

    /// Commits everything staged as one new version of `table` (which must be loaded at
    /// its latest version). On failure no version is created and staged files are removed.
    pub async fn commit(mut self, table: DeltaTable, meta: CommitMeta) -> Result<CommitOutcome> {
        let rows = self.rows;
        match self.mode {
            WriteMode::Upsert => {
                let mut spool = self.spool.take().expect("an upsert spools its rows");
                let source = off_the_workers(|| spool.finish())?.map(|p| p.to_path_buf());
                let version = upsert(table, &self.schema, source.as_deref(), meta).await?;
                drop(spool);
                Ok(CommitOutcome { version, rows })
            }
            WriteMode::Append | WriteMode::Overwrite => {
                let writer = self.writer.as_mut().expect("append and overwrite write through a writer");
                let adds = writer.flush().await.map_err(classify)?;
                let mut actions: Vec<Action> = adds.iter().cloned().map(Action::Add).collect();
                let save_mode = if self.mode == WriteMode::Overwrite {
                    let log_store = table.log_store();
                    let removes: Vec<Action> = table
                        .snapshot()?
                        .snapshot()
                        .file_views(log_store.as_ref(), None)
                        .map_ok(|f| Action::Remove(f.remove_action(true)))
                        .try_collect()
                        .await
                        .map_err(classify)?;
                    actions.extend(removes);
                    SaveMode::Overwrite
                } else {
                    SaveMode::Append
                };
                let operation = DeltaOperation::Write { mode: save_mode, partition_by: None, predicate: None };
                let result = CommitBuilder::from(meta.properties())
                    .with_actions(actions)
                    .build(Some(table.snapshot()?), table.log_store(), operation)
                    .await;
                match result {
                    Ok(done) => Ok(CommitOutcome { version: done.version() as i64, rows }),
                    Err(e) => {
                        delete_files(&table, &adds).await;
                        Err(classify(e))
                    }
                }
            }
        }
    }
}

async fn delete_files(table: &DeltaTable, adds: &[Add]) {
    let store = table.object_store();
    for add in adds {
        let path = Path::from(add.path.as_str());
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(path = %add.path, error = %e, "could not remove an uncommitted data file");
        }
    }
}

/// MERGE on entity keys + event time: matching rows are replaced, others inserted. The
/// rows come from the spool file at `source` (already checked to be unique on those keys);
/// `None`: there are none.
async fn upsert(table: DeltaTable, schema: &FeatureSchema, source: Option<&std::path::Path>, meta: CommitMeta) -> Result<i64> {
    let ctx = SessionContext::new();
    let source = match source {
        Some(path) => {
            let path = path.to_str().ok_or_else(|| Error::Storage(format!("the spool path {} is not UTF-8", path.display())))?;
            ctx.read_parquet(path, datafusion::prelude::ParquetReadOptions::default()).await?
        }
        None => ctx.read_batches(Vec::<RecordBatch>::new())?,
    };
    let mut key_cols: Vec<String> = schema.entity_keys.iter().map(|k| k.name.clone()).collect();
    key_cols.push(schema.event_time.clone());
    let predicate = key_cols
        .iter()
        .map(|k| format!("target.\"{k}\" = source.\"{k}\""))
        .collect::<Vec<_>>()
        .join(" AND ");
    let all: Vec<String> = schema.all_columns().into_iter().map(|c| c.name).collect();
    let features: Vec<String> = schema.features.iter().map(|c| c.name.clone()).collect();
    let (table, _metrics) = table
        .merge(source, predicate)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(meta.properties())
        .when_matched_update(|mut u| {
            for f in &features {
                u = u.update(format!("\"{f}\""), format!("source.\"{f}\""));
            }
            u
        })
        .map_err(classify)?
        .when_not_matched_insert(|mut i| {
            for c in &all {
                i = i.set(format!("\"{c}\""), format!("source.\"{c}\""));
            }
            i
        })
        .map_err(classify)?
        .await
        .map_err(classify)?;
    Ok(table.version().unwrap_or(0) as i64)
}

/// A filter on one entity key column: rows whose key is any of `values`.
#[derive(Clone, Debug)]
pub struct KeyFilter {
    pub column: String,
    pub values: Vec<String>,
}

/// Streams a table snapshot, optionally filtered by entity keys and limited in rows.
pub async fn scan(
    table: &DeltaTable,
    schema: &FeatureSchema,
    filters: &[KeyFilter],
    limit: Option<usize>,
) -> Result<SendableRecordBatchStream> {
    let ctx = SessionContext::new();
    let provider = table.table_provider().await.map_err(Error::DataFusion)?;
    let mut df = ctx.read_table(provider)?;
    for f in filters {
        let key = schema
            .entity_keys
            .iter()
            .find(|k| k.name == f.column)
            .ok_or_else(|| Error::InvalidSchema(format!("`{}` is not an entity key of this feature group", f.column)))?;
        let values: Vec<Expr> = f
            .values
            .iter()
            .map(|v| key_literal(key.dtype, v).map(lit).ok_or_else(|| Error::InvalidValue {
                column: f.column.clone(),
                expected: key.dtype.to_string(),
                row: 0,
                detail: format!("filter value {v:?} does not parse"),
            }))
            .collect::<Result<_>>()?;
        let column = Expr::Column(datafusion::common::Column::from_name(f.column.clone()));
        df = df.filter(column.in_list(values, false))?;
    }
    if let Some(n) = limit {
        df = df.limit(0, Some(n))?;
    }
    Ok(df.execute_stream().await?)
}

fn key_literal(dtype: ColumnType, text: &str) -> Option<ScalarValue> {
    match dtype {
        ColumnType::Int32 => text.parse::<i32>().ok().map(|v| ScalarValue::Int32(Some(v))),
        ColumnType::Int64 => text.parse::<i64>().ok().map(|v| ScalarValue::Int64(Some(v))),
        ColumnType::String => Some(ScalarValue::Utf8(Some(text.to_string()))),
        _ => None,
    }
}

/// Counts live rows of the loaded snapshot from file statistics (no data is read).
pub async fn row_count(table: &DeltaTable) -> Result<Option<u64>> {
    let log_store = table.log_store();
    let views: Vec<_> =
        table.snapshot()?.snapshot().file_views(log_store.as_ref(), None).try_collect().await.map_err(classify)?;
    let mut total = 0u64;
    for v in views {
        match v.num_records() {
            Some(n) => total += n as u64,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// Maps delta-rs errors so concurrent-writer conflicts are distinguishable.
pub fn classify(e: DeltaTableError) -> Error {
    match e {
        DeltaTableError::Transaction { source } => match source {
            TransactionError::VersionAlreadyExists(_)
            | TransactionError::CommitConflict(_)
            | TransactionError::MaxCommitAttempts(_) => Error::Conflict(source.to_string()),
            other => Error::Delta(DeltaTableError::Transaction { source: other }),
        },
        DeltaTableError::VersionAlreadyExists(v) => Error::Conflict(format!("version {v} was written by another writer")),
        other => Error::Delta(other),
    }
}

pub type SharedStore = Arc<TableStore>;

impl TableStore {
    /// Checks that the storage root answers (used by readiness).
    pub async fn check(&self) -> Result<()> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        store.list_with_delimiter(None).await.map_err(|e| Error::Storage(e.to_string()))?;
        Ok(())
    }

    /// Writes one object at `relative` under the root (whole, replacing any earlier one).
    pub async fn put_object(&self, relative: &str, bytes: Bytes) -> Result<()> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        store.put(&Path::from(relative), bytes.into()).await.map_err(|e| Error::Storage(e.to_string()))?;
        Ok(())
    }

    /// Deletes one object at `relative` under the root; deleting what is not there is fine.
    pub async fn delete_object(&self, relative: &str) -> Result<()> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        match store.delete(&Path::from(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    /// The names of the "directories" directly below `relative`, sorted.
    pub async fn list_children(&self, relative: &str) -> Result<Vec<String>> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        let prefix = Path::from(relative);
        let listing = store.list_with_delimiter(Some(&prefix)).await.map_err(|e| Error::Storage(e.to_string()))?;
        let mut names: Vec<String> = listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    /// Writes one object at `relative` under the root unless one is there already (a
    /// conditional put): `false` when it was. Never replaces an object.
    pub async fn put_object_new(&self, relative: &str, bytes: Bytes) -> Result<bool> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match store.put_opts(&Path::from(relative), bytes.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    /// The names (relative to the root) of the objects directly in the folder `folder`
    /// (`""` for the root) whose file name starts with `name_prefix`.
    pub async fn list_objects(&self, folder: &str, name_prefix: &str) -> Result<Vec<String>> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        let prefix = (!folder.is_empty()).then(|| Path::from(folder));
        let listing = store.list_with_delimiter(prefix.as_ref()).await.map_err(|e| Error::Storage(e.to_string()))?;
        Ok(listing
            .objects
            .iter()
            .filter(|o| o.location.filename().is_some_and(|n| n.starts_with(name_prefix)))
            .map(|o| o.location.to_string())
            .collect())
    }

    /// The bytes of every object under the folder `relative`, at any depth: what the
    /// storage holds for it, including table files that time travel still reads and files
    /// a vacuum has not yet removed.
    pub async fn stored_bytes(&self, relative: &str) -> Result<u64> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        let prefix = Path::from(relative);
        store
            .list(Some(&prefix))
            .try_fold(0u64, |sum, o| async move { Ok(sum + o.size) })
            .await
            .map_err(|e| Error::Storage(e.to_string()))
    }

    /// The object at `relative` as its bytes arrive, never held whole; `None` when there
    /// is none.
    pub async fn get_stream(&self, relative: &str) -> Result<Option<futures::stream::BoxStream<'static, Result<Bytes>>>> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        match store.get(&Path::from(relative)).await {
            Ok(r) => Ok(Some(r.into_stream().map_err(|e| Error::Storage(e.to_string())).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    /// Reads one object at `relative` under the root; `None` when there is none.
    pub async fn get_object(&self, relative: &str) -> Result<Option<Bytes>> {
        let store = self.builder(&self.root)?.build_storage().map_err(classify)?.object_store(None);
        match store.get(&Path::from(relative)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| Error::Storage(e.to_string()))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }
}
