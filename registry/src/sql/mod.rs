//! Time-travel SQL for the API: resolves each feature-group reference of a checked
//! statement to an exact version in the caller's tenant, records what will be read in the
//! audit ledger, then runs the query on the query runtime and streams the result.
//!
//! Queries run on the query runtime so a heavy query never stalls other requests; each
//! has a memory limit (operators spill, then fail), a time limit and a row limit.
//!
//! Holds a group resolver (the feature-group service), the query runtime and the audit
//! sink; never imports `http/` or `app/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::StreamExt;
use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::datafusion::error::DataFusionError;
use lakeledger_query::datafusion::physical_plan::SendableRecordBatchStream;
use lakeledger_query::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lakeledger_query::formats::{Encoder, OutputFormat};
use lakeledger_query::sql::{self, Parsed, ResolvedTable, SqlLimits, VersionSpec};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::features::{FeatureGroups, ReadSpec, encoded_body};
use crate::identity::Principal;
use crate::platform::audit::{AuditContext, AuditLog};
use crate::platform::runtime::QueryRuntime;

/// Limits for SQL, from the config.
#[derive(Clone, Copy, Debug)]
pub struct SqlConfig {
    /// Memory all running queries share.
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub row_limit: u64,
    pub threads: usize,
}

/// The SQL service.
pub struct Sql {
    groups: Arc<FeatureGroups>,
    runtime: Arc<QueryRuntime>,
    audit: Arc<AuditLog>,
    config: SqlConfig,
    /// One memory pool for every query (and training-set build) of the process.
    limits: SqlLimits,
}

/// What a statement read, for the audit outcome and response headers.
pub struct SqlFacts {
    pub normalized: String,
    pub sha256: String,
    /// `name@version`, in statement order.
    pub tables: Vec<(String, i64)>,
}

impl SqlFacts {
    pub fn details(&self) -> Vec<(String, String)> {
        let tables: Vec<String> = self.tables.iter().map(|(n, v)| format!("{n}@{v}")).collect();
        vec![
            ("sql".into(), self.normalized.chars().take(16_384).collect()),
            ("sql_sha256".into(), self.sha256.clone()),
            ("tables".into(), tables.join(",")),
        ]
    }
}

pub fn statement_hash(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

impl Sql {
    pub fn new(groups: Arc<FeatureGroups>, runtime: Arc<QueryRuntime>, audit: Arc<AuditLog>, config: SqlConfig) -> Arc<Sql> {
        let limits = SqlLimits::shared(config.memory_bytes, config.threads);
        Arc::new(Sql { groups, runtime, audit, config, limits })
    }

    /// The limits queries run under.
    pub fn config(&self) -> SqlConfig {
        self.config
    }

    /// The shared memory pool and the parallelism queries run with.
    pub fn limits(&self) -> SqlLimits {
        self.limits.clone()
    }

    /// Checks and resolves a statement: every table a visible feature group at an exact
    /// version. Returns the parsed statement, its resolved tables and what will be read.
    pub async fn prepare(&self, p: &Principal, text: &str) -> Result<(Parsed, Vec<ResolvedTable>, SqlFacts)> {
        self.prepare_pinned(p, text, &[]).await
    }

    /// As [`Sql::prepare`], reading each table at the version `pins` gives for it, in
    /// statement order (empty: resolve each reference now). A Flight ticket carries the
    /// versions its plan resolved, so the rows fetched are those the plan described.
    #[tracing::instrument(name = "sql.plan", skip_all, fields(tenant = %p.tenant))]
    pub async fn prepare_pinned(&self, p: &Principal, text: &str, pins: &[i64]) -> Result<(Parsed, Vec<ResolvedTable>, SqlFacts)> {
        let parsed = sql::parse(text)?;
        if !pins.is_empty() && pins.len() != parsed.tables.len() {
            return Err(Error::BadRequest(format!(
                "the ticket pins {} versions but its statement reads {} tables",
                pins.len(),
                parsed.tables.len()
            )));
        }
        let mut resolved = Vec::with_capacity(parsed.tables.len());
        let mut tables = Vec::with_capacity(parsed.tables.len());
        for t in &parsed.tables {
            let g = match self.groups.find(p, &t.name).await {
                Ok(g) => g,
                Err(Error::NotFound { .. } | Error::NotVisible { .. }) => return Err(Error::SqlTableNotVisible(t.name.clone())),
                Err(e) => return Err(e),
            };
            let spec = match (&t.version, pins.get(resolved.len())) {
                (VersionSpec::Version(asked), Some(pin)) if asked != pin => {
                    return Err(Error::BadRequest(format!("the ticket pins `{}` at version {pin}, but the statement asks for {asked}", t.name)));
                }
                (_, Some(v)) => ReadSpec { version: Some(*v), as_of: None, filters: vec![], limit: None },
                (VersionSpec::Latest, None) => ReadSpec { version: None, as_of: None, filters: vec![], limit: None },
                (VersionSpec::Version(v), None) => ReadSpec { version: Some(*v), as_of: None, filters: vec![], limit: None },
                (VersionSpec::Timestamp(ts), None) => ReadSpec { version: None, as_of: Some(ts.clone()), filters: vec![], limit: None },
            };
            let version = self.groups.resolve_version(&g, &spec).await?.version;
            // A version clause is honoured or the query fails: never another snapshot.
            let (table, _) = self.groups.open_at(&g, Some(version)).await?;
            let provider = table.table_provider().await.map_err(|e| Error::Engine(lakeledger_query::Error::DataFusion(e)))?;
            resolved.push(ResolvedTable { internal: t.internal.clone(), provider });
            tables.push((g.name.clone(), version));
        }
        let facts = SqlFacts { normalized: parsed.normalized.clone(), sha256: statement_hash(text), tables };
        Ok((parsed, resolved, facts))
    }

    /// Runs a prepared statement to the end on the query runtime and returns its rows as
    /// one batch (a training set's spine).
    pub async fn collect(&self, parsed: Parsed, tables: Vec<ResolvedTable>) -> Result<RecordBatch> {
        let limits = self.limits();
        self.runtime
            .run(async move {
                let stream = parsed.execute(tables, limits).await?;
                let schema = stream.schema();
                let batches = lakeledger_query::datafusion::physical_plan::common::collect(stream).await.map_err(|e| parsed.user_error(e))?;
                Ok(lakeledger_query::arrow::compute::concat_batches(&schema, &batches).map_err(lakeledger_query::Error::from)?)
            })
            .await
    }

    /// Records, durably, the statement and the exact versions it is about to read (`sql.plan`,
    /// after the request's own `sql.query` intent and before any data is read).
    pub async fn record_query(&self, p: &Principal, ctx: &AuditContext, facts: &SqlFacts) -> Result<()> {
        let mut e = p.event("sql.plan", ctx);
        e.resource.kind = Some("feature_group".into());
        e.resource.versions_read = facts.tables.iter().map(|(_, v)| *v).collect();
        e.details.extend(facts.details());
        self.audit.record(&e).await.map(|_| ())
    }

    /// Runs a prepared statement on the query runtime and returns the encoded, streaming
    /// body. Planning errors (and the time limit while planning) come back as errors; once
    /// rows flow, exceeding the row or time limit cuts the stream, so a client never mistakes
    /// a partial result for a whole one.
    pub async fn run(
        &self,
        parsed: Parsed,
        tables: Vec<ResolvedTable>,
        format: OutputFormat,
        rows: Arc<AtomicU64>,
    ) -> Result<Body> {
        let stream = self.stream(parsed, tables, rows).await?;
        let mut encoder = Encoder::new(format, &stream.schema())?;
        Ok(encoded_body(stream, move |batch| match batch {
            Some(b) => encoder.encode(&b),
            None => encoder.finish(),
        }))
    }

    /// The schema of a prepared statement's result, from its plan (nothing runs).
    pub async fn output_schema(&self, parsed: &Parsed, tables: Vec<ResolvedTable>) -> Result<lakeledger_query::arrow::datatypes::SchemaRef> {
        let limits = self.limits();
        let parsed = parsed.clone();
        self.runtime.run(async move { Ok(parsed.output_schema(tables, limits).await?) }).await
    }

    /// Runs a prepared statement on the query runtime and returns its batches as they
    /// come, under the same limits as [`Sql::run`] (Flight encodes them itself).
    #[tracing::instrument(name = "sql.execute", skip_all)]
    pub async fn stream(&self, parsed: Parsed, tables: Vec<ResolvedTable>, rows: Arc<AtomicU64>) -> Result<SendableRecordBatchStream> {
        let cfg = self.config;
        let deadline = Instant::now() + cfg.timeout;
        let limits = self.limits();
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel::<std::result::Result<RecordBatch, DataFusionError>>(2);
        let task = self.runtime.handle().spawn(async move {
            let mut stream = match parsed.execute(tables, limits).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            // Wait for the first batch before answering, so that failures that show up only
            // when execution starts (memory, time, bad data) get a proper error status.
            let schema = stream.schema();
            let first = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            match first {
                Err(_) => {
                    let e = lakeledger_query::Error::LimitExceeded(format!("the query ran past its time limit of {:?}", cfg.timeout));
                    let _ = schema_tx.send(Err(e));
                    return;
                }
                Ok(Some(Err(e))) => {
                    let _ = schema_tx.send(Err(parsed.user_error(e)));
                    return;
                }
                _ => {}
            }
            if schema_tx.send(Ok(schema)).is_err() {
                return;
            }
            let mut first = Some(first);
            let mut sent = 0u64;
            loop {
                let next = match first.take() {
                    Some(f) => f,
                    None => tokio::time::timeout_at(deadline.into(), stream.next()).await,
                };
                let item = match next {
                    Err(_) => Some(Err(DataFusionError::ResourcesExhausted(format!("the query ran past its time limit of {:?}", cfg.timeout)))),
                    Ok(None) => None,
                    Ok(Some(Ok(batch))) => {
                        sent += batch.num_rows() as u64;
                        if sent > cfg.row_limit {
                            Some(Err(DataFusionError::ResourcesExhausted(format!(
                                "the result has more than {} rows, the row limit; add a LIMIT or aggregate",
                                cfg.row_limit
                            ))))
                        } else {
                            rows.store(sent, Ordering::Relaxed);
                            Some(Ok(batch))
                        }
                    }
                    Ok(Some(Err(e))) => Some(Err(e)),
                };
                let Some(item) = item else { break };
                let stop = item.is_err();
                if let Err(e) = &item {
                    tracing::warn!(error = %e, "SQL result stream stopped");
                }
                // The client went away: dropping the stream cancels the query.
                if batch_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        let schema = match tokio::time::timeout_at(deadline.into(), schema_rx).await {
            Ok(Ok(Ok(schema))) => schema,
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(_)) => return Err(Error::Internal("the query task ended without an answer".into())),
            Err(_) => {
                task.abort();
                return Err(Error::Engine(lakeledger_query::Error::LimitExceeded(format!(
                    "the query ran past its time limit of {:?} while planning",
                    cfg.timeout
                ))));
            }
        };
        let stream = futures::stream::unfold(batch_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
