//! Reads: a version or a point in time resolved through the recorded commit times
//! (never falling back to the latest), streamed in any output format; and snapshots with
//! their data files in lineage order, for the domains that join or fold rows.

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use lakeledger_query::FeatureSchema;
use lakeledger_query::arrow::datatypes::SchemaRef;
use lakeledger_query::datafusion::execution::SendableRecordBatchStream;
use lakeledger_query::deltalake::DeltaTable;
use lakeledger_query::feature_rows::{FeatureRows, FileSet, file_lineage, read_rows};
use lakeledger_query::formats::{Encoder, OutputFormat};
use lakeledger_query::tables::{KeyFilter, scan};

use super::FeatureGroups;
use crate::error::{Error, Result};
use crate::platform::catalog::{FeatureGroupRecord, VersionRecord};
use crate::platform::time::rfc3339;

/// Which snapshot a read asks for.
#[derive(Debug, Default)]
pub struct ReadSpec {
    pub version: Option<i64>,
    pub as_of: Option<String>,
    pub filters: Vec<KeyFilter>,
    pub limit: Option<usize>,
}

/// A group's table opened at an exact version, with the schema the group had there.
pub struct Snapshot {
    pub table: DeltaTable,
    pub version: i64,
    /// The group's schema as of this version: features added later are absent.
    pub schema: FeatureSchema,
    /// The table's Arrow schema at this version.
    pub arrow: SchemaRef,
}

impl FeatureGroups {
    /// Resolves `version` / `as_of` to a recorded version. Never falls back to the latest.
    pub async fn resolve_version(&self, g: &FeatureGroupRecord, spec: &ReadSpec) -> Result<VersionRecord> {
        match (spec.version, spec.as_of.as_deref()) {
            (Some(_), Some(_)) => Err(Error::BadRequest("give either `version` or `as_of`, not both".into())),
            (Some(v), None) => match self.catalog.version(&g.id, v).await? {
                Some(rec) => Ok(rec),
                None => {
                    let latest = self.catalog.latest_version(&g.id).await?.map(|l| l.version).unwrap_or(-1);
                    Err(Error::VersionNotFound(format!("feature group `{}` has no version {v}; versions run from 0 to {latest}", g.name)))
                }
            },
            (None, Some(ts)) => {
                let at = chrono::DateTime::parse_from_rfc3339(ts)
                    .map_err(|e| Error::BadRequest(format!("`as_of` must be an RFC 3339 timestamp such as 2026-03-01T00:00:00Z: {e}")))?
                    .timestamp_micros();
                match self.catalog.version_as_of(&g.id, at).await? {
                    Some(rec) => Ok(rec),
                    None => {
                        let first = self.catalog.versions(&g.id).await?.first().map(|v| rfc3339(v.committed_at)).unwrap_or_default();
                        Err(Error::Unprocessable(format!("`as_of` {ts} is before the first commit of feature group `{}` ({first})", g.name)))
                    }
                }
            }
            (None, None) => self
                .catalog
                .latest_version(&g.id)
                .await?
                .ok_or_else(|| Error::Internal(format!("feature group {} has no recorded version", g.id))),
        }
    }

    /// Opens the group's table at `version`, or at the latest version of its Delta log.
    /// A version clause is honoured or this fails: never another snapshot.
    pub async fn snapshot(&self, g: &FeatureGroupRecord, version: Option<i64>) -> Result<Snapshot> {
        let (table, version) = self.open_at(g, version).await?;
        let provider = table.table_provider().await.map_err(lakeledger_query::Error::DataFusion)?;
        let arrow = provider.schema();
        let present = |name: &str| arrow.field_with_name(name).is_ok();
        let mut schema = g.schema.clone();
        schema.features.retain(|c| present(&c.name));
        Ok(Snapshot { table, version, schema, arrow })
    }

    /// The group's Delta table at `version` (or the latest of its log) and that version.
    pub async fn open_at(&self, g: &FeatureGroupRecord, version: Option<i64>) -> Result<(DeltaTable, i64)> {
        let table = self.tables.open(&self.tables.location(&g.location)?, version).await?;
        let opened = table.version().map(|v| v as i64);
        let version = match (version, opened) {
            (Some(asked), Some(v)) if asked == v => v,
            (None, Some(v)) => v,
            (None, None) => 0,
            (asked, _) => return Err(Error::Internal(format!("asked for version {asked:?} of `{}` but the table opened at {opened:?}", g.name))),
        };
        Ok((table, version))
    }

    /// Reads `columns` of a snapshot's data files in (version that added the file, path,
    /// row) order, on the query runtime. `set` picks the live files or every file the
    /// history held; `added_after` keeps only files added by later versions.
    pub async fn read_rows(&self, snap: &Snapshot, columns: Vec<String>, set: FileSet, added_after: Option<i64>) -> Result<FeatureRows> {
        let (table, arrow, version, threads) = (snap.table.clone(), snap.arrow.clone(), snap.version, self.read_threads());
        self.runtime
            .run(async move {
                let mut files = file_lineage(&table, version, set).await?;
                if let Some(after) = added_after {
                    files.retain(|f| f.added.is_some_and(|a| a > after));
                }
                Ok(read_rows(&table, &arrow, &columns, files, threads).await?)
            })
            .await
    }

    /// Scans one version of a group as a stream of batches, with key filters and a limit.
    pub async fn scan(&self, g: &FeatureGroupRecord, spec: &ReadSpec) -> Result<(VersionRecord, SendableRecordBatchStream)> {
        let version = self.resolve_version(g, spec).await?;
        let (table, _) = self.open_at(g, Some(version.version)).await?;
        let limit = spec.limit.or(self.settings.default_read_limit);
        let stream = scan(&table, &g.schema, &spec.filters, limit).await.map_err(|e| match e {
            lakeledger_query::Error::InvalidSchema(m) => Error::BadRequest(m),
            lakeledger_query::Error::InvalidValue { column, expected, detail, .. } => {
                Error::BadRequest(format!("filter on `{column}` ({expected}): {detail}"))
            }
            other => other.into(),
        })?;
        Ok((version, stream))
    }

    /// Streams the rows of one version in the requested format.
    /// `g` comes from [`FeatureGroups::find`], so tenant scoping has already been applied.
    pub async fn read(&self, g: &FeatureGroupRecord, spec: ReadSpec, format: OutputFormat) -> Result<(VersionRecord, Body)> {
        let (version, stream) = self.scan(g, &spec).await?;
        let mut encoder = Encoder::new(format, &stream.schema())?;
        let body = encoded_body(stream, move |batch| match batch {
            Some(b) => encoder.encode(&b),
            None => encoder.finish(),
        });
        Ok((version, body))
    }
}

/// Turns a record-batch stream into a response body, encoding batch by batch. An error
/// mid-stream aborts the response (the client sees a truncated transfer, never a
/// silently short but well-formed result).
pub fn encoded_body<E>(stream: SendableRecordBatchStream, encode: E) -> Body
where
    E: FnMut(Option<arrow::array::RecordBatch>) -> lakeledger_query::Result<Bytes> + Send + 'static,
{
    let s = futures::stream::unfold((stream, encode, false), |(mut stream, mut encode, done)| async move {
        if done {
            return None;
        }
        match stream.next().await {
            Some(Ok(batch)) => {
                let bytes = encode(Some(batch)).map_err(std::io::Error::other);
                Some((bytes, (stream, encode, false)))
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "read stream failed");
                Some((Err(std::io::Error::other(e)), (stream, encode, true)))
            }
            None => {
                let bytes = encode(None).map_err(std::io::Error::other);
                Some((bytes, (stream, encode, true)))
            }
        }
    });
    Body::from_stream(s)
}

/// Parses `?key.<column>=v1,v2` style filters: values for one key column are OR-ed,
/// different columns AND-ed.
pub fn parse_key_filters(schema: &FeatureSchema, params: &[(String, String)]) -> Result<Vec<KeyFilter>> {
    let mut filters: Vec<KeyFilter> = Vec::new();
    for (k, v) in params {
        let Some(column) = k.strip_prefix("key.") else { continue };
        if !schema.entity_keys.iter().any(|c| c.name == column) {
            return Err(Error::BadRequest(format!(
                "`{column}` is not an entity key; filter on {}",
                schema.entity_keys.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let values = v.split(',').map(str::to_string);
        match filters.iter_mut().find(|f| f.column == column) {
            Some(f) => f.values.extend(values),
            None => filters.push(KeyFilter { column: column.to_string(), values: values.collect() }),
        }
    }
    Ok(filters)
}
