//! Writes: uploads streamed into a staged Delta write and committed as one version, and
//! rows the server produces itself, through the same commit path.

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use lakeledger_query::FeatureSchema;
use lakeledger_query::ingest::{Conformer, IngestFormat, decoder_for};
use lakeledger_query::tables::{StagedWrite, WriteMode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::{FeatureGroups, StagedRows, commit_meta, commit_record, require_active};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::audit::AuditContext;
use crate::platform::catalog::FeatureGroupRecord;

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct IngestResult {
    pub version: i64,
    pub rows: u64,
    pub mode: String,
}

/// The observers' sinks for one write: each sees every staged batch.
struct Sinks(Vec<Box<dyn StagedRows>>);

impl Sinks {
    fn absorb(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.absorb(batch))
    }
}

impl FeatureGroups {
    fn sinks(&self, g: &FeatureGroupRecord) -> Sinks {
        Sinks(self.observers().iter().filter_map(|o| o.staging(g)).collect())
    }

    /// Streams an upload into the group's table and commits it as one version.
    pub async fn ingest(&self, p: &Principal, name: &str, mode: WriteMode, format: IngestFormat, body: Body, ctx: &AuditContext) -> Result<IngestResult> {
        self.ingest_with(p, name, mode, format, body, ctx, None, &mut false).await
    }

    /// As [`FeatureGroups::ingest`], the commit carrying `key` when one is given;
    /// `committed` is set once the Delta commit is made.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ingest_with(
        &self,
        p: &Principal,
        name: &str,
        mode: WriteMode,
        format: IngestFormat,
        body: Body,
        ctx: &AuditContext,
        key: Option<&str>,
        committed: &mut bool,
    ) -> Result<IngestResult> {
        super::refuse_reserved_group(name, "write")?;
        let g = self.find(p, name).await?;
        require_active(&g)?;
        let url = self.tables.location(&g.location)?;
        let table = self.tables.open(&url, None).await?;
        let mut staged = self.tables.begin_write(&table, &g.schema, mode)?;
        let limit = self.settings.max_body_bytes;
        let chunks = body.into_data_stream().map_err(|e| Error::BadRequest(format!("reading the request body failed: {e}")));
        let mut sinks = self.sinks(&g);
        let staged_result = self.stage_body(&g.schema, format, chunks, limit, &mut staged, &mut sinks).await;
        if let Err(e) = staged_result {
            staged.abort(&table).await;
            return Err(e);
        }
        if staged.rows() == 0 && mode != WriteMode::Overwrite {
            staged.abort(&table).await;
            return Err(Error::Unprocessable("the upload holds no rows; nothing was written".into()));
        }
        let mut meta = commit_meta(p, ctx).with("lakeledger.mode", mode.name()).with(super::idempotency::ROWS_META, staged.rows());
        if let Some(k) = key {
            meta = meta.with(super::idempotency::KEY_META, k);
        }
        self.commit_staged(p, &g, table, staged, mode, sinks, ctx, meta, committed).await
    }

    /// Appends rows the server produced itself (inference logs) as one version, with the
    /// same commit path, catalog record and observers as an upload.
    pub(super) async fn append_batches(&self, p: &Principal, g: &FeatureGroupRecord, batches: Vec<arrow::array::RecordBatch>, ctx: &AuditContext) -> Result<IngestResult> {
        require_active(g)?;
        let table = self.tables.open(&self.tables.location(&g.location)?, None).await?;
        let mut staged = self.tables.begin_write(&table, &g.schema, WriteMode::Append)?;
        let mut sinks = self.sinks(g);
        let mut conformer = Conformer::new(g.schema.clone());
        for batch in batches {
            let batch = match conformer.conform(&batch) {
                Ok(b) => b,
                Err(e) => {
                    staged.abort(&table).await;
                    return Err(e.into());
                }
            };
            let written = match sinks.absorb(&batch) {
                Ok(()) => staged.write(batch).await.map_err(Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                staged.abort(&table).await;
                return Err(e);
            }
        }
        let meta = commit_meta(p, ctx).with("lakeledger.mode", WriteMode::Append.name());
        self.commit_staged(p, g, table, staged, WriteMode::Append, sinks, ctx, meta, &mut false).await
    }

    /// Commits staged files as the group's next version under its lock, records the version
    /// and hands the rows to the observers.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "commit", skip_all, fields(group = %g.name, mode = mode.name(), delta_version = tracing::field::Empty))]
    async fn commit_staged(
        &self,
        p: &Principal,
        g: &FeatureGroupRecord,
        table: lakeledger_query::deltalake::DeltaTable,
        staged: StagedWrite,
        mode: WriteMode,
        sinks: Sinks,
        ctx: &AuditContext,
        meta: lakeledger_query::tables::CommitMeta,
        committed: &mut bool,
    ) -> Result<IngestResult> {
        let url = self.tables.location(&g.location)?;
        let rows = staged.rows();
        let lock = self.commit_lock(&g.id);
        let _guard = lock.lock().await;
        // Commit against the latest snapshot, taken while the group is held against this
        // process's other commits (the lock) and other replicas' (the hold), and record the
        // version before either is released: versions are recorded in order, their times
        // rising.
        let (held, latest, filled_schema) = match self.hold(&g.id, &g.name, &url).await {
            Ok(h) => h,
            Err(e) => {
                staged.abort(&table).await;
                return Err(e);
            }
        };
        let mut held = held.commit;
        let outcome = staged.commit(latest, meta).await?;
        *committed = true;
        tracing::Span::current().record("delta_version", outcome.version);
        let operation = match mode {
            WriteMode::Append => "WRITE (append)",
            WriteMode::Overwrite => "WRITE (overwrite)",
            WriteMode::Upsert => "MERGE (upsert)",
        };
        held.record(&commit_record(outcome.version, operation, Some(rows as i64), p, ctx)).await?;
        held.finish().await?;
        if let Some(s) = filled_schema {
            self.catalog.update_feature_group_schema(&g.id, &s, crate::platform::time::now_micros()).await?;
        }
        // Still under the group's lock, so observers see commits in version order.
        for sink in sinks.0 {
            sink.committed(g, outcome.version, mode == WriteMode::Overwrite).await;
        }
        self.announce_elsewhere(g);
        metrics::counter!("lakeledger_rows_ingested_total", "mode" => mode.name()).increment(rows);
        Ok(IngestResult { version: outcome.version, rows, mode: mode.name().into() })
    }

    async fn stage_body(
        &self,
        schema: &FeatureSchema,
        format: IngestFormat,
        mut chunks: impl Stream<Item = Result<Bytes>> + Unpin,
        limit: u64,
        staged: &mut StagedWrite,
        sinks: &mut Sinks,
    ) -> Result<()> {
        let mut conformer = Conformer::new(schema.clone());
        let mut write = async |staged: &mut StagedWrite, batch: arrow::array::RecordBatch| -> Result<()> {
            sinks.absorb(&batch)?;
            staged.write(batch).await?;
            Ok(())
        };
        let mut received = 0u64;
        let mut count = |n: usize| -> Result<()> {
            received += n as u64;
            if received > limit { Err(Error::PayloadTooLarge { limit }) } else { Ok(()) }
        };
        match decoder_for(format, schema) {
            Some(mut decoder) => {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    count(chunk.len())?;
                    for batch in decoder.push(&chunk)? {
                        write(staged, conformer.conform(&batch)?).await?;
                    }
                }
                for batch in decoder.finish()? {
                    write(staged, conformer.conform(&batch)?).await?;
                }
            }
            None => {
                // Parquet keeps its metadata in a footer: spool to disk (never to memory), then read.
                let spool_dir = &self.settings.spool_dir;
                tokio::fs::create_dir_all(spool_dir).await.map_err(|e| Error::Internal(format!("spool dir: {e}")))?;
                let spool = tempfile::NamedTempFile::new_in(spool_dir).map_err(|e| Error::Internal(format!("spool file: {e}")))?;
                let mut file = tokio::fs::File::from_std(spool.reopen().map_err(|e| Error::Internal(e.to_string()))?);
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    count(chunk.len())?;
                    file.write_all(&chunk).await.map_err(|e| Error::Internal(format!("spool write: {e}")))?;
                }
                file.flush().await.map_err(|e| Error::Internal(format!("spool write: {e}")))?;
                let reader = spool.reopen().map_err(|e| Error::Internal(e.to_string()))?;
                let mut batches = lakeledger_query::ingest::parquet_batches(reader)?;
                // Decoding is CPU work on a blocking-safe thread, one batch at a time.
                loop {
                    let (next, rest) = tokio::task::spawn_blocking(move || {
                        let next = batches.next();
                        (next, batches)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("parquet decode task: {e}")))?;
                    batches = rest;
                    match next {
                        Some(batch) => write(staged, conformer.conform(&batch?)?).await?,
                        None => break,
                    }
                }
            }
        }
        Ok(())
    }
}
