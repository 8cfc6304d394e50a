//! Reading a feature group's rows together with where each row came from: the Delta
//! commit that added its file, the commit that removed it (if any), the file and the row
//! position. Training sets need this for two things the table provider cannot give:
//!
//! - a tie order that is written down rather than incidental: rows are returned ordered
//!   by (version that added the file, file path, row position in the file);
//! - the bitemporal mode: a row counts as known at time `t` only while its file was part
//!   of the table, so late backfills and later rewrites are seen exactly as they were.
//!
//! File lineage comes from the commit log (`_delta_log/<version>.json`), read directly.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{Schema, SchemaRef};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde_json::Value;

use crate::error::{Error, Result};

/// A data file's life in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLineage {
    /// Path relative to the table root, as the log names it (decoded).
    pub path: String,
    pub size: Option<u64>,
    /// The version whose commit added the file; `None` when that commit has left the log.
    pub added: Option<i64>,
    /// The version whose commit removed it; `None` while it is live at the version read.
    pub removed: Option<i64>,
}

/// Which files to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSet {
    /// The files live at the version.
    Live,
    /// Every file any version up to and including the version had (bitemporal reads).
    History,
}

/// Rows of the wanted columns, in (added version, path, row) order, with per-row lineage.
pub struct FeatureRows {
    /// One batch per row group read, in order; all of `schema`.
    pub batches: Vec<RecordBatch>,
    pub schema: SchemaRef,
    /// Per row: the version that added its file (`-1` when unknown: older than the log).
    pub added: Vec<i64>,
    /// Per row: the version that removed its file, `i64::MAX` while live.
    pub removed: Vec<i64>,
    /// The files read, in the order their rows appear.
    pub files: Vec<FileLineage>,
}

impl FeatureRows {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// All rows as one batch (a copy when there are several).
    pub fn concat(&self) -> Result<RecordBatch> {
        Ok(concat_batches(&self.schema, &self.batches)?)
    }
}

/// The lineage of every file up to `version`, from the commit log.
///
/// With [`FileSet::History`] the whole log from version 0 must still be there; with
/// [`FileSet::Live`] a log shortened by checkpoints is fine (the snapshot lists the files
/// and commits no longer in the log count as older than all others).
pub async fn file_lineage(table: &DeltaTable, version: i64, set: FileSet) -> Result<Vec<FileLineage>> {
    let store = table.log_store().object_store(None);
    let commits: Vec<(i64, Option<bytes::Bytes>)> = futures::stream::iter(0..=version)
        .map(|v| {
            let store = store.clone();
            async move {
                let path = Path::from(format!("_delta_log/{v:020}.json"));
                match store.get(&path).await {
                    Ok(r) => Ok((v, Some(r.bytes().await.map_err(|e| Error::Storage(e.to_string()))?))),
                    Err(object_store::Error::NotFound { .. }) => Ok((v, None)),
                    Err(e) => Err(Error::Storage(e.to_string())),
                }
            }
        })
        .buffered(16)
        .try_collect()
        .await?;

    let mut files: Vec<FileLineage> = Vec::new();
    let mut live: HashMap<String, usize> = HashMap::new();
    let mut missing = None;
    for (v, bytes) in commits {
        let Some(bytes) = bytes else {
            missing.get_or_insert(v);
            continue;
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            let action: Value = serde_json::from_slice(line).map_err(|e| Error::Storage(format!("commit {v} of the log is not JSON: {e}")))?;
            if let Some(add) = action.get("add") {
                if add.get("deletionVector").is_some_and(|d| !d.is_null()) {
                    return Err(Error::HistoryUnavailable(format!(
                        "version {v} uses deletion vectors, which training sets cannot read yet"
                    )));
                }
                let path = log_path(add, v)?;
                let size = add.get("size").and_then(Value::as_u64);
                if let Some(i) = live.remove(&path) {
                    // Re-adding a live path replaces it (the Delta protocol's reconciliation).
                    files[i].removed = Some(v);
                }
                live.insert(path.clone(), files.len());
                files.push(FileLineage { path, size, added: Some(v), removed: None });
            } else if let Some(remove) = action.get("remove") {
                let path = log_path(remove, v)?;
                if let Some(i) = live.remove(&path) {
                    files[i].removed = Some(v);
                }
            }
        }
    }
    if let Some(first) = missing {
        if set == FileSet::History {
            return Err(Error::HistoryUnavailable(format!(
                "commit {first} is no longer in the table's log (it was cleaned up after a checkpoint), \
                 so which rows were known when cannot be told; build without as_known_at_spine_time or pin a later table"
            )));
        }
        // Take the live set from the snapshot and the add versions from what is left.
        let snapshot_files: Vec<(String, u64)> = live_files(table).await?;
        let added: HashMap<&str, &FileLineage> = files.iter().filter(|f| f.removed.is_none()).map(|f| (f.path.as_str(), f)).collect();
        return Ok(snapshot_files
            .iter()
            .map(|(path, size)| FileLineage {
                path: path.clone(),
                size: Some(*size),
                added: added.get(path.as_str()).and_then(|f| f.added),
                removed: None,
            })
            .collect());
    }
    if set == FileSet::Live {
        files.retain(|f| f.removed.is_none());
    }
    Ok(files)
}

fn log_path(action: &Value, version: i64) -> Result<String> {
    let raw = action.get("path").and_then(Value::as_str).ok_or_else(|| Error::Storage(format!("commit {version}: file action without a path")))?;
    if raw.contains("://") {
        return Err(Error::HistoryUnavailable(format!("commit {version} names a file outside the table ({raw})")));
    }
    let path = Path::from_url_path(raw).map_err(|e| Error::Storage(format!("commit {version}: bad file path {raw}: {e}")))?;
    Ok(path.to_string())
}

async fn live_files(table: &DeltaTable) -> Result<Vec<(String, u64)>> {
    let log_store = table.log_store();
    let views: Vec<_> = table
        .snapshot()?
        .snapshot()
        .file_views(log_store.as_ref(), None)
        .try_collect()
        .await
        .map_err(crate::tables::classify)?;
    Ok(views.iter().map(|v| (v.object_store_path().to_string(), v.size() as u64)).collect())
}

/// Reads `columns` (typed as in `schema`, the table's schema at the version) from `files`,
/// in (added, path) file order and row order within each file. Columns a file predates
/// come back null. Up to `concurrency` row groups are decoded at once.
pub async fn read_rows(table: &DeltaTable, schema: &SchemaRef, columns: &[String], mut files: Vec<FileLineage>, concurrency: usize) -> Result<FeatureRows> {
    let fields = columns
        .iter()
        .map(|c| schema.field_with_name(c).cloned().map_err(|_| Error::InvalidSchema(format!("the table has no column `{c}`"))))
        .collect::<Result<Vec<_>>>()?;
    let out_schema: SchemaRef = Arc::new(Schema::new(fields));
    files.sort_by(|a, b| (a.added.unwrap_or(-1), &a.path).cmp(&(b.added.unwrap_or(-1), &b.path)));
    let store = table.log_store().object_store(None);

    // Footers first (one per file), then one unit of work per row group, in order.
    let metas: Vec<ArrowReaderMetadata> = futures::stream::iter(files.clone())
        .map(|f| {
            let mut reader = object_reader(&store, &f);
            async move {
                ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
                    .await
                    .map_err(|e| file_error(&f, e))
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    let units: Vec<(usize, usize)> =
        metas.iter().enumerate().flat_map(|(i, m)| (0..m.metadata().num_row_groups()).map(move |rg| (i, rg))).collect();
    let batches: Vec<RecordBatch> = futures::stream::iter(units)
        .map(|(i, rg)| {
            let (file, meta, store, out_schema) = (files[i].clone(), metas[i].clone(), store.clone(), out_schema.clone());
            // Decoding is CPU work: give each row group its own task so they run in parallel.
            tokio::spawn(async move { read_row_group(&store, &file, meta, rg, &out_schema).await })
        })
        .buffered(concurrency.max(1))
        .map(|joined| joined.map_err(|e| Error::Storage(format!("reading a feature file failed: {e}")))?)
        .try_collect()
        .await?;

    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut unit = 0;
    for (i, m) in metas.iter().enumerate() {
        for _ in 0..m.metadata().num_row_groups() {
            let n = batches[unit].num_rows();
            added.extend(std::iter::repeat_n(files[i].added.unwrap_or(-1), n));
            removed.extend(std::iter::repeat_n(files[i].removed.unwrap_or(i64::MAX), n));
            unit += 1;
        }
    }
    Ok(FeatureRows { batches, schema: out_schema, added, removed, files })
}

fn object_reader(store: &Arc<dyn ObjectStore>, f: &FileLineage) -> FileReader {
    // `path` is an object store path's text form, already encoded.
    let location = Path::parse(&f.path).unwrap_or_else(|_| Path::from(f.path.as_str()));
    FileReader { store: store.clone(), location, size: f.size }
}

/// Byte-range reads of one data file, for the async Parquet reader.
struct FileReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    /// From the log's add action; looked up when the log does not say.
    size: Option<u64>,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        async move { self.store.get_range(&self.location, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<std::ops::Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        async move { self.store.get_ranges(&self.location, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(&'a mut self, options: Option<&'a ArrowReaderOptions>) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = match self.size {
                Some(s) => s,
                None => self.store.head(&self.location).await.map_err(external)?.size,
            };
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

fn file_error(f: &FileLineage, e: parquet::errors::ParquetError) -> Error {
    let text = e.to_string();
    if text.contains("not found") || text.contains("NotFound") || text.contains("No such file") {
        Error::HistoryUnavailable(format!("data file {} is gone (removed by vacuum?): {text}", f.path))
    } else {
        Error::Storage(format!("data file {}: {text}", f.path))
    }
}

async fn read_row_group(store: &Arc<dyn ObjectStore>, f: &FileLineage, meta: ArrowReaderMetadata, rg: usize, out: &SchemaRef) -> Result<RecordBatch> {
    let file_schema = meta.schema().clone();
    let present: Vec<usize> = out.fields().iter().filter_map(|field| file_schema.index_of(field.name()).ok()).collect();
    let mask = ProjectionMask::roots(meta.parquet_schema(), present.iter().copied());
    // The whole row group as one batch, so it is not copied again to join the parts.
    let rows = usize::try_from(meta.metadata().row_group(rg).num_rows()).unwrap_or(0).max(1);
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(object_reader(store, f), meta)
        .with_row_groups(vec![rg])
        .with_projection(mask)
        .with_batch_size(rows)
        .build()
        .map_err(|e| file_error(f, e))?;
    let parts: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| file_error(f, e))?;
    let read_schema = match parts.first() {
        Some(b) => b.schema(),
        None => Arc::new(file_schema.project(&present)?),
    };
    let whole = concat_batches(&read_schema, &parts)?;
    let columns = out
        .fields()
        .iter()
        .map(|field| match whole.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Ok(c.clone()),
            Some(c) => cast(c, field.data_type())
                .map_err(|e| Error::InvalidSchema(format!("column `{}` of {} does not read as {}: {e}", field.name(), f.path, field.data_type()))),
            None => Ok(new_null_array(field.data_type(), whole.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new_with_options(out.clone(), columns, &arrow::array::RecordBatchOptions::new().with_row_count(Some(whole.num_rows())))?)
}
