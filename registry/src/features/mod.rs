//! Feature groups: creation, metadata, schema evolution, ingest, history and versioned
//! reads. The Delta table is the truth for data and versions; the catalog records names,
//! schemas and the version → commit-time map, and is reconciled with Delta at startup.

use std::collections::BTreeMap;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use lakeledger_query::datafusion::execution::SendableRecordBatchStream;
use lakeledger_query::formats::{Encoder, OutputFormat};
use lakeledger_query::ingest::{Conformer, IngestFormat, decoder_for};
use lakeledger_query::tables::{CommitMeta, KeyFilter, WriteMode, scan};
use lakeledger_query::{Column, FeatureSchema};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use crate::platform::audit::AuditContext;
use crate::identity::Principal;
use crate::platform::catalog::{FeatureGroupRecord, GroupMetadata, GroupState, VersionRecord, now_micros};
use crate::error::{Error, Result};
use crate::http::state::AppState;

/// Group names double as SQL table names, so they follow identifier rules.
pub fn validate_group_name(name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Unprocessable(format!(
            "feature group name `{name}` must start with a-z and contain only a-z, 0-9 and `_` (at most 128 characters)"
        )))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFeatureGroup {
    pub name: String,
    /// Entity key columns (int32, int64 or string).
    #[schema(value_type = Vec<Object>)]
    pub entity_keys: Vec<Column>,
    /// Name of the event-time column (stored as a UTC timestamp).
    pub event_time: String,
    #[schema(value_type = Vec<Object>)]
    #[serde(default)]
    pub features: Vec<Column>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Serve the latest values from the online store.
    #[serde(default)]
    pub online: bool,
    /// Online values whose event time is older than this are served as `OUTSIDE_MAX_AGE`.
    #[serde(default)]
    pub online_max_age_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateFeatureGroup {
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    /// Start (the store is loaded from the latest version) or stop online serving.
    pub online: Option<bool>,
    /// Set the online max age; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub online_max_age_seconds: Option<Option<i64>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

fn check_max_age(max_age: Option<i64>) -> Result<()> {
    match max_age {
        Some(s) if s <= 0 => Err(Error::Unprocessable(format!("online_max_age_seconds must be positive, got {s}"))),
        _ => Ok(()),
    }
}

/// The desired full schema. Only additions of feature columns are accepted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolveSchema {
    #[schema(value_type = Option<Vec<Object>>)]
    pub entity_keys: Option<Vec<Column>>,
    pub event_time: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub features: Vec<Column>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureGroupView {
    pub name: String,
    pub tenant: String,
    #[schema(value_type = Vec<Object>)]
    pub entity_keys: Vec<Column>,
    pub event_time: String,
    #[schema(value_type = Vec<Object>)]
    pub features: Vec<Column>,
    pub description: String,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub online: bool,
    pub online_max_age_seconds: Option<i64>,
    pub state: GroupState,
    /// The latest committed version.
    pub current_version: Option<i64>,
    /// Live rows at the current version (from file statistics); present on single-group reads.
    pub row_count: Option<u64>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub committed_at: String,
    pub operation: String,
    pub rows_added: Option<i64>,
    pub actor: String,
    pub request_id: Option<String>,
    pub recovered: bool,
}

impl From<VersionRecord> for VersionView {
    fn from(v: VersionRecord) -> Self {
        VersionView {
            version: v.version,
            committed_at: rfc3339(v.committed_at),
            operation: v.operation,
            rows_added: v.rows_added,
            actor: v.actor,
            request_id: v.request_id,
            recovered: v.recovered,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    pub version: i64,
    pub rows: u64,
    pub mode: String,
}

pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn view(g: &FeatureGroupRecord, tenant: &str, current_version: Option<i64>, row_count: Option<u64>) -> FeatureGroupView {
    FeatureGroupView {
        name: g.name.clone(),
        tenant: tenant.to_string(),
        entity_keys: g.schema.entity_keys.clone(),
        event_time: g.schema.event_time.clone(),
        features: g.schema.features.clone(),
        description: g.description.clone(),
        owner: g.owner.clone(),
        tags: g.tags.clone(),
        online: g.online,
        online_max_age_seconds: g.online_max_age_seconds,
        state: g.state,
        current_version,
        row_count,
        created_at: rfc3339(g.created_at),
        updated_at: rfc3339(g.updated_at),
        created_by: g.created_by.clone(),
    }
}

/// Every commit names its request and the audit record that announced it, so a Delta
/// version leads back to the ledger and the ledger to the version.
fn commit_meta(p: &Principal, ctx: &AuditContext) -> CommitMeta {
    CommitMeta::default()
        .with("lakeledger.requestId", ctx.request_id.clone())
        .with("lakeledger.auditEventId", ctx.event_id.clone())
        .with("lakeledger.auditSeq", ctx.intent_seq)
        .with("lakeledger.actor", p.actor())
        .with("lakeledger.tenant", p.tenant.clone())
}

/// Records a committed version. Commit times strictly increase with the version so that
/// resolving a timestamp to a version is unambiguous: a clock step backwards is absorbed
/// by placing the commit one microsecond after its predecessor.
async fn record_commit(state: &AppState, group_id: &str, mut rec: VersionRecord) -> Result<()> {
    let prev = state.catalog.latest_version(group_id).await?.map(|v| v.committed_at).unwrap_or(i64::MIN);
    rec.committed_at = rec.committed_at.max(prev.saturating_add(1));
    state.catalog.record_version(group_id, &rec).await
}

fn commit_record(version: i64, operation: &str, rows: Option<i64>, p: &Principal, ctx: &AuditContext) -> VersionRecord {
    VersionRecord {
        version,
        committed_at: now_micros(),
        operation: operation.to_string(),
        rows_added: rows,
        actor: p.actor(),
        request_id: Some(ctx.request_id.clone()),
        recovered: false,
    }
}

/// Looks a group up in the caller's tenant. Other tenants' groups are simply not found.
pub async fn find(state: &AppState, p: &Principal, name: &str) -> Result<FeatureGroupRecord> {
    match state.catalog.feature_group(&p.tenant_id, name).await? {
        Some(g) if g.state != GroupState::Creating => Ok(g),
        _ => Err(Error::NotFound { kind: "feature group", name: name.to_string() }),
    }
}

fn require_active(g: &FeatureGroupRecord) -> Result<()> {
    if g.state == GroupState::Archived {
        return Err(Error::Conflict(format!("feature group `{}` is archived and read-only", g.name)));
    }
    Ok(())
}

pub async fn create(state: &AppState, p: &Principal, req: CreateFeatureGroup, ctx: &AuditContext) -> Result<FeatureGroupView> {
    validate_group_name(&req.name)?;
    check_max_age(req.online_max_age_seconds)?;
    let schema = FeatureSchema { entity_keys: req.entity_keys, event_time: req.event_time, features: req.features };
    schema.validate()?;
    let now = now_micros();
    let record = FeatureGroupRecord {
        id: format!("fg_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: p.tenant_id.clone(),
        name: req.name.clone(),
        schema: schema.clone(),
        description: req.description,
        owner: req.owner,
        tags: req.tags,
        online: req.online,
        online_max_age_seconds: req.online_max_age_seconds,
        location: format!("tenants/{}/feature-groups/{}", p.tenant, req.name),
        state: GroupState::Creating,
        created_at: now,
        updated_at: now,
        created_by: p.actor(),
    };
    // The catalog row goes first (state `creating`) so the name is reserved and a crash
    // before the Delta table exists is visible and cleaned up at startup.
    state.catalog.insert_feature_group(&record).await?;
    let url = state.tables.location(&record.location)?;
    let created = state.tables.create(&url, &record.name, &schema, commit_meta(p, ctx)).await;
    let version = match created {
        Ok(v) => v,
        Err(e) => {
            state.catalog.delete_feature_group(&record.id).await?;
            return Err(e.into());
        }
    };
    record_commit(state, &record.id, commit_record(version, "CREATE TABLE", Some(0), p, ctx)).await?;
    state.catalog.set_feature_group_state(&record.id, GroupState::Active, now_micros()).await?;
    let mut record = record;
    record.state = GroupState::Active;
    if record.online {
        crate::online::rebuild(state, &record).await?;
    }
    Ok(view(&record, &p.tenant, Some(version), Some(0)))
}

pub async fn list(state: &AppState, p: &Principal, include_archived: bool) -> Result<Vec<FeatureGroupView>> {
    let mut out = Vec::new();
    for g in state.catalog.list_feature_groups(&p.tenant_id).await? {
        if g.state == GroupState::Archived && !include_archived {
            continue;
        }
        let current = state.catalog.latest_version(&g.id).await?.map(|v| v.version);
        out.push(view(&g, &p.tenant, current, None));
    }
    Ok(out)
}

pub async fn get(state: &AppState, p: &Principal, name: &str) -> Result<FeatureGroupView> {
    let g = find(state, p, name).await?;
    let table = state.tables.open(&state.tables.location(&g.location)?, None).await?;
    let rows = lakeledger_query::tables::row_count(&table).await?;
    let current = table.version().map(|v| v as i64);
    Ok(view(&g, &p.tenant, current, rows))
}

pub async fn update(state: &AppState, p: &Principal, name: &str, req: UpdateFeatureGroup) -> Result<FeatureGroupView> {
    let mut g = find(state, p, name).await?;
    require_active(&g)?;
    if req.online.is_some() || req.online_max_age_seconds.is_some() {
        let online = req.online.unwrap_or(g.online);
        let max_age = req.online_max_age_seconds.unwrap_or(g.online_max_age_seconds);
        check_max_age(max_age)?;
        state.catalog.set_feature_group_online(&g.id, online, max_age, now_micros()).await?;
        (g.online, g.online_max_age_seconds) = (online, max_age);
        if online {
            crate::online::rebuild(state, &g).await?;
        } else {
            state.online.remove(&g);
        }
    }
    let meta = GroupMetadata {
        description: req.description.unwrap_or(g.description.clone()),
        owner: req.owner.unwrap_or(g.owner.clone()),
        tags: req.tags.unwrap_or(g.tags.clone()),
    };
    let now = now_micros();
    state.catalog.update_feature_group_metadata(&g.id, &meta, now).await?;
    (g.description, g.owner, g.tags, g.updated_at) = (meta.description, meta.owner, meta.tags, now);
    let current = state.catalog.latest_version(&g.id).await?.map(|v| v.version);
    Ok(view(&g, &p.tenant, current, None))
}

/// Key under which a schema-changing commit carries the full new schema, so startup
/// reconciliation can restore the catalog's copy if the process died after the commit.
const SCHEMA_META_KEY: &str = "lakeledger.schema";

pub async fn evolve(state: &AppState, p: &Principal, name: &str, req: EvolveSchema, ctx: &AuditContext) -> Result<FeatureGroupView> {
    let g = find(state, p, name).await?;
    require_active(&g)?;
    let next = FeatureSchema {
        entity_keys: req.entity_keys.unwrap_or(g.schema.entity_keys.clone()),
        event_time: req.event_time.unwrap_or(g.schema.event_time.clone()),
        features: req.features,
    };
    let lock = state.group_lock(&g.id);
    let _guard = lock.lock().await;
    // Re-read under the lock: another request may have evolved the schema meanwhile.
    let g = find(state, p, name).await?;
    let added = g.schema.evolution_to(&next)?;
    let url = state.tables.location(&g.location)?;
    let mut version = state.catalog.latest_version(&g.id).await?.map(|v| v.version);
    if !added.is_empty() {
        let table = state.tables.open(&url, None).await?;
        let meta = commit_meta(p, ctx).with(SCHEMA_META_KEY, serde_json::to_value(&next).expect("schema serializes"));
        let v = state.tables.add_columns(table, &added, meta).await?;
        record_commit(state, &g.id, commit_record(v, "ADD COLUMNS", Some(0), p, ctx)).await?;
        state.catalog.update_feature_group_schema(&g.id, &next, now_micros()).await?;
        version = Some(v);
    }
    let g = find(state, p, name).await?;
    Ok(view(&g, &p.tenant, version, None))
}

pub async fn archive(state: &AppState, p: &Principal, name: &str) -> Result<FeatureGroupView> {
    let mut g = find(state, p, name).await?;
    if g.state != GroupState::Archived {
        let lock = state.group_lock(&g.id);
        let _guard = lock.lock().await;
        let now = now_micros();
        state.catalog.set_feature_group_state(&g.id, GroupState::Archived, now).await?;
        g.state = GroupState::Archived;
        g.updated_at = now;
    }
    let current = state.catalog.latest_version(&g.id).await?.map(|v| v.version);
    Ok(view(&g, &p.tenant, current, None))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VacuumRequest {
    /// Delete data files that left the table more than this many hours ago. Default: the
    /// table's own retention (`delta.deletedFileRetentionDuration`, a week unless set).
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

/// Deletes data files that left the table longer ago than the retention, except those a
/// live training set read: pinned versions stay reproducible.
pub async fn vacuum(state: &AppState, p: &Principal, name: &str, req: VacuumRequest) -> Result<VacuumReport> {
    let g = find(state, p, name).await?;
    // No training set may be built (and pin files) while the candidates are decided.
    let _pins = state.pins.write().await;
    let table = state.tables.open(&state.tables.location(&g.location)?, None).await?;
    let minimum = lakeledger_query::tables::retention_hours(&table)?;
    let hours = req.retention_hours.unwrap_or(minimum);
    if hours < minimum && !req.force {
        return Err(Error::Unprocessable(format!(
            "retention_hours {hours} is shorter than the table's retention of {minimum} hours: versions in between would stop \
             being readable; pass \"force\": true to do it anyway"
        )));
    }
    let candidates = lakeledger_query::tables::vacuum_candidates(table.clone(), hours).await?;
    let mut pins = crate::training::sets::pinned_files(state, p, &g.name).await?;
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

pub async fn history(state: &AppState, p: &Principal, name: &str) -> Result<Vec<VersionView>> {
    let g = find(state, p, name).await?;
    Ok(state.catalog.versions(&g.id).await?.into_iter().map(VersionView::from).collect())
}

/// Streams an upload into the group's table and commits it as one version.
pub async fn ingest(
    state: &AppState,
    p: &Principal,
    name: &str,
    mode: WriteMode,
    format: IngestFormat,
    body: Body,
    ctx: &AuditContext,
) -> Result<IngestResult> {
    let g = find(state, p, name).await?;
    require_active(&g)?;
    let url = state.tables.location(&g.location)?;
    let table = state.tables.open(&url, None).await?;
    let mut staged = state.tables.begin_write(&table, &g.schema, mode)?;
    let limit = state.config.max_body_bytes;
    let chunks = body.into_data_stream().map_err(|e| Error::BadRequest(format!("reading the request body failed: {e}")));
    let mut online = g.online.then(|| crate::online::OnlineDelta::new(&g.schema));
    let staged_result = stage_body(state, &g.schema, format, chunks, limit, &mut staged, &mut online).await;
    if let Err(e) = staged_result {
        staged.abort(&table).await;
        return Err(e);
    }
    if staged.rows() == 0 && mode != WriteMode::Overwrite {
        staged.abort(&table).await;
        return Err(Error::Unprocessable("the upload holds no rows; nothing was written".into()));
    }
    commit_staged(state, p, &g, table, staged, mode, online, ctx).await
}

/// Appends rows the server produced itself (inference logs) as one version, with the
/// same commit path, catalog record and online update as an upload.
pub async fn append_batches(state: &AppState, p: &Principal, g: &FeatureGroupRecord, batches: Vec<arrow::array::RecordBatch>, ctx: &AuditContext) -> Result<IngestResult> {
    require_active(g)?;
    let table = state.tables.open(&state.tables.location(&g.location)?, None).await?;
    let mut staged = state.tables.begin_write(&table, &g.schema, WriteMode::Append)?;
    let mut online = g.online.then(|| crate::online::OnlineDelta::new(&g.schema));
    let mut conformer = Conformer::new(g.schema.clone());
    for batch in batches {
        let batch = match conformer.conform(&batch) {
            Ok(b) => b,
            Err(e) => {
                staged.abort(&table).await;
                return Err(e.into());
            }
        };
        let absorbed = online.as_mut().map_or(Ok(()), |d| d.absorb(&batch));
        let written = match absorbed {
            Ok(()) => staged.write(batch).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            staged.abort(&table).await;
            return Err(e);
        }
    }
    commit_staged(state, p, g, table, staged, WriteMode::Append, online, ctx).await
}

/// Commits staged files as the group's next version under its lock, records the version
/// and applies the rows to the online store.
#[allow(clippy::too_many_arguments)]
async fn commit_staged(
    state: &AppState,
    p: &Principal,
    g: &FeatureGroupRecord,
    table: lakeledger_query::deltalake::DeltaTable,
    staged: lakeledger_query::tables::StagedWrite,
    mode: WriteMode,
    online: Option<crate::online::OnlineDelta>,
    ctx: &AuditContext,
) -> Result<IngestResult> {
    let url = state.tables.location(&g.location)?;
    let rows = staged.rows();
    let lock = state.group_lock(&g.id);
    let _guard = lock.lock().await;
    // Commit against the latest snapshot, taken under the lock.
    let latest = match state.tables.open(&url, None).await {
        Ok(t) => t,
        Err(e) => {
            staged.abort(&table).await;
            return Err(e.into());
        }
    };
    let outcome = staged.commit(latest, commit_meta(p, ctx).with("lakeledger.mode", mode.name())).await?;
    let operation = match mode {
        WriteMode::Append => "WRITE (append)",
        WriteMode::Overwrite => "WRITE (overwrite)",
        WriteMode::Upsert => "MERGE (upsert)",
    };
    record_commit(state, &g.id, commit_record(outcome.version, operation, Some(rows as i64), p, ctx)).await?;
    // Still under the group's lock, so online updates apply in version order.
    if let Some(delta) = online {
        state.online.apply(g, outcome.version, delta, mode == WriteMode::Overwrite);
    }
    metrics::counter!("lakeledger_rows_ingested_total", "mode" => mode.name()).increment(rows);
    Ok(IngestResult { version: outcome.version, rows, mode: mode.name().into() })
}

async fn stage_body(
    state: &AppState,
    schema: &FeatureSchema,
    format: IngestFormat,
    mut chunks: impl Stream<Item = Result<Bytes>> + Unpin,
    limit: u64,
    staged: &mut lakeledger_query::tables::StagedWrite,
    online: &mut Option<crate::online::OnlineDelta>,
) -> Result<()> {
    let mut conformer = Conformer::new(schema.clone());
    let mut write = async |staged: &mut lakeledger_query::tables::StagedWrite, batch: arrow::array::RecordBatch| -> Result<()> {
        if let Some(delta) = online.as_mut() {
            delta.absorb(&batch)?;
        }
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
            let spool_dir = state.config.data_dir.join("tmp");
            tokio::fs::create_dir_all(&spool_dir).await.map_err(|e| Error::Internal(format!("spool dir: {e}")))?;
            let spool = tempfile::NamedTempFile::new_in(&spool_dir).map_err(|e| Error::Internal(format!("spool file: {e}")))?;
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

/// Which snapshot a read asks for.
#[derive(Debug, Default)]
pub struct ReadSpec {
    pub version: Option<i64>,
    pub as_of: Option<String>,
    pub filters: Vec<KeyFilter>,
    pub limit: Option<usize>,
}

/// Resolves `version` / `as_of` to a recorded version. Never falls back to the latest.
pub async fn resolve_version(state: &AppState, g: &FeatureGroupRecord, spec: &ReadSpec) -> Result<VersionRecord> {
    match (spec.version, spec.as_of.as_deref()) {
        (Some(_), Some(_)) => Err(Error::BadRequest("give either `version` or `as_of`, not both".into())),
        (Some(v), None) => match state.catalog.version(&g.id, v).await? {
            Some(rec) => Ok(rec),
            None => {
                let latest = state.catalog.latest_version(&g.id).await?.map(|l| l.version).unwrap_or(-1);
                Err(Error::VersionNotFound(format!(
                    "feature group `{}` has no version {v}; versions run from 0 to {latest}",
                    g.name
                )))
            }
        },
        (None, Some(ts)) => {
            let at = chrono::DateTime::parse_from_rfc3339(ts)
                .map_err(|e| Error::BadRequest(format!("`as_of` must be an RFC 3339 timestamp such as 2026-03-01T00:00:00Z: {e}")))?
                .timestamp_micros();
            match state.catalog.version_as_of(&g.id, at).await? {
                Some(rec) => Ok(rec),
                None => {
                    let first = state.catalog.versions(&g.id).await?.first().map(|v| rfc3339(v.committed_at)).unwrap_or_default();
                    Err(Error::Unprocessable(format!(
                        "`as_of` {ts} is before the first commit of feature group `{}` ({first})",
                        g.name
                    )))
                }
            }
        }
        (None, None) => state
            .catalog
            .latest_version(&g.id)
            .await?
            .ok_or_else(|| Error::Internal(format!("feature group {} has no recorded version", g.id))),
    }
}

/// Streams the rows of one version in the requested format.
/// `g` comes from [`find`], so tenant scoping has already been applied.
pub async fn read(state: &AppState, g: &FeatureGroupRecord, spec: ReadSpec, format: OutputFormat) -> Result<(VersionRecord, Body)> {
    let version = resolve_version(state, g, &spec).await?;
    let url = state.tables.location(&g.location)?;
    let table = state.tables.open(&url, Some(version.version)).await?;
    // A version clause is honoured or the read fails: never serve another snapshot.
    if table.version().map(|v| v as i64) != Some(version.version) {
        return Err(Error::Internal(format!("asked for version {} but the table opened at {:?}", version.version, table.version())));
    }
    let limit = spec.limit.or(state.config.default_read_limit);
    let stream = scan(&table, &g.schema, &spec.filters, limit).await.map_err(|e| match e {
        lakeledger_query::Error::InvalidSchema(m) => Error::BadRequest(m),
        lakeledger_query::Error::InvalidValue { column, expected, detail, .. } => {
            Error::BadRequest(format!("filter on `{column}` ({expected}): {detail}"))
        }
        other => other.into(),
    })?;
    let mut encoder = Encoder::new(format, &stream.schema())?;
    let body = encoded_body(stream, move |batch| match batch {
        Some(b) => encoder.encode(&b),
        None => encoder.finish(),
    });
    Ok((version, body))
}

/// Turns a record-batch stream into a response body, encoding batch by batch. An error
/// mid-stream aborts the response (the client sees a truncated transfer, never a
/// silently short but well-formed result).
pub(crate) fn encoded_body<E>(stream: SendableRecordBatchStream, encode: E) -> Body
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

/// Brings the catalog in line with the Delta tables after a crash: unfinished creations
/// are completed or removed, and committed versions missing from the version map are
/// recorded (marked `recovered`). The Delta log is the truth for versions.
pub async fn reconcile(state: &AppState) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    for g in state.catalog.all_feature_groups().await? {
        let url = state.tables.location(&g.location)?;
        if g.state == GroupState::Creating {
            if state.tables.exists(&url).await? {
                state.catalog.set_feature_group_state(&g.id, GroupState::Active, now_micros()).await?;
                report.completed_creations += 1;
            } else {
                state.catalog.delete_feature_group(&g.id).await?;
                report.removed_creations += 1;
                continue;
            }
        }
        let table = state.tables.open(&url, None).await?;
        let delta_latest = table.version().map(|v| v as i64).unwrap_or(-1);
        let known = state.catalog.latest_version(&g.id).await?.map(|v| v.version).unwrap_or(-1);
        if known > delta_latest {
            return Err(Error::Internal(format!(
                "catalog records version {known} of feature group {} but its Delta log ends at {delta_latest}; refusing to start",
                g.id
            )));
        }
        for v in (known + 1)..=delta_latest {
            let info = state.tables.commit_info(&table, v).await?;
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
            record_commit(state, &g.id, rec).await?;
            if let Some(s) = schema.and_then(|s| serde_json::from_value::<FeatureSchema>(s).ok()) {
                state.catalog.update_feature_group_schema(&g.id, &s, now_micros()).await?;
            }
            report.recovered_versions += 1;
            tracing::warn!(group = %g.name, version = v, "recorded a committed version missing from the catalog");
        }
    }
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub completed_creations: u64,
    pub removed_creations: u64,
    pub recovered_versions: u64,
}
