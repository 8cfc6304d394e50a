//! Point-in-time training sets: a spine (label events from a SQL query over feature
//! groups) joined, as of each spine row's time, with features from pinned versions of
//! feature groups. The result is written once as Parquet under the tenant's
//! `training-sets/<id>/` area with a manifest saying exactly what went in; it is never
//! rewritten, and every read checks its SHA-256.

use std::collections::BTreeMap;

use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::arrow::compute::concat_batches;
use lakeledger_query::datafusion::prelude::{SessionConfig, SessionContext};
use lakeledger_query::point_in_time::{FeatureSide, deterministic_parquet, point_in_time_join, sort_spine};
use lakeledger_query::sql::SqlLimits;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::feature_groups::{self as fg, ReadSpec};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrainingSet {
    /// A label for people; the id is assigned.
    pub name: String,
    /// A `SELECT` over feature groups giving the spine: entity key columns (named as in
    /// the feature groups), a time column and label columns. Time travel is allowed.
    pub spine_sql: String,
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
    /// Also exclude feature rows committed after the spine time (not available yet).
    #[serde(default)]
    pub as_known_at_spine_time: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FeatureInput {
    pub group: String,
    pub version: i64,
    pub features: Vec<String>,
    pub ttl_seconds: Option<i64>,
}

/// What a training set is made of, exactly. Stored beside the data and never changed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainingSetManifest {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub spine_sql: String,
    pub spine_sql_sha256: String,
    /// `group@version` of every table the spine query read.
    pub spine_versions: Vec<String>,
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
(and >= spine time - ttl); equal event times go to the later row in the version's file order; no match gives nulls; \
rows are ordered by spine time, then the other spine columns";

fn area(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/training-sets/{id}")
}

fn valid_id(id: &str) -> bool {
    id.len() == 35 && id.starts_with("ts_") && id[3..].bytes().all(|c| c.is_ascii_hexdigit())
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

async fn on_query_runtime<T: Send + 'static>(
    state: &AppState,
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    state.query_runtime.handle().spawn(f).await.map_err(|e| Error::Internal(format!("query task failed: {e}")))?
}

pub async fn create(state: &AppState, p: &Principal, ctx: &AuditContext, req: CreateTrainingSet) -> Result<(TrainingSetManifest, Vec<i64>)> {
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(Error::Unprocessable("name must be 1 to 200 characters".into()));
    }
    if req.as_known_at_spine_time {
        return Err(Error::Unprocessable(
            "as_known_at_spine_time is not available yet; pin versions instead to exclude later commits".into(),
        ));
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

    // Resolve everything first: the spine's tables and each group at its version.
    let (parsed, spine_tables, spine_facts) = crate::sql::prepare(state, p, &req.spine_sql).await?;
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
        let schema = schema_at(&table, &g.schema).await?;
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
        inputs.push((FeatureInput { group: g.name.clone(), version, features, ttl_seconds: req.ttl_seconds.get(group).copied() }, keys, schema.event_time.clone()));
        tables.push(table);
    }

    // Everything that will be read, recorded before it is read.
    let mut e = crate::audit::principal_event("training_set.plan", p, ctx);
    e.resource.kind = Some("training_set".into());
    e.resource.name = Some(req.name.clone());
    e.resource.versions_read = spine_facts.tables.iter().map(|(_, v)| *v).chain(inputs.iter().map(|(i, ..)| i.version)).collect();
    e.details.extend(spine_facts.details());
    let features: Vec<String> = inputs.iter().map(|(i, ..)| format!("{}@{}:{}", i.group, i.version, i.features.join("+"))).collect();
    e.details.push(("features".into(), features.join(",")));
    state.audit.record(&e).await?;

    // The spine, then each group's rows, on the query runtime.
    let limits = SqlLimits { memory_bytes: state.config.sql.memory_bytes, target_partitions: state.config.sql.threads };
    let spine: RecordBatch = on_query_runtime(state, async move {
        let stream = parsed.execute(spine_tables, limits).await?;
        let schema = stream.schema();
        let batches = lakeledger_query::datafusion::physical_plan::common::collect(stream).await.map_err(|e| parsed.user_error(e))?;
        Ok(concat_batches(&schema, &batches).map_err(lakeledger_query::Error::from)?)
    })
    .await?;
    let mut sides_data = Vec::new();
    for ((input, keys, event_time), table) in inputs.iter().zip(tables) {
        let columns: Vec<String> = keys.iter().chain(std::iter::once(event_time)).chain(input.features.iter()).cloned().collect();
        let batch: RecordBatch = on_query_runtime(state, async move {
            // One partition: rows come in the version's file order, which breaks ties.
            let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            let provider = table.table_provider().await.map_err(lakeledger_query::Error::DataFusion)?;
            let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            let df = ctx.read_table(provider).map_err(lakeledger_query::Error::DataFusion)?.select_columns(&cols).map_err(lakeledger_query::Error::DataFusion)?;
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await.map_err(lakeledger_query::Error::DataFusion)?;
            Ok(concat_batches(&schema, &batches).map_err(lakeledger_query::Error::from)?)
        })
        .await?;
        sides_data.push(batch);
    }

    let (manifest, bytes) = {
        let spine = sort_spine(&spine, &req.spine_time).map_err(join_error)?;
        let sides: Vec<FeatureSide<'_>> = inputs
            .iter()
            .zip(&sides_data)
            .map(|((input, keys, event_time), batch)| FeatureSide {
                name: &input.group,
                batch,
                keys,
                event_time,
                features: &input.features,
                order: None,
                ttl_micros: input.ttl_seconds.map(|s| s.saturating_mul(1_000_000)),
            })
            .collect();
        let joined = point_in_time_join(&spine, &req.spine_time, &sides).map_err(join_error)?;
        let bytes = deterministic_parquet(&joined.schema(), std::slice::from_ref(&joined))?;
        let id = format!("ts_{}", uuid::Uuid::now_v7().simple());
        let manifest = TrainingSetManifest {
            id,
            name: req.name.clone(),
            tenant: p.tenant.clone(),
            spine_sql: req.spine_sql.clone(),
            spine_sql_sha256: spine_facts.sha256.clone(),
            spine_versions: spine_facts.tables.iter().map(|(n, v)| format!("{n}@{v}")).collect(),
            spine_time: req.spine_time.clone(),
            features: inputs.iter().map(|(i, ..)| i.clone()).collect(),
            as_known_at_spine_time: false,
            semantics: SEMANTICS.into(),
            rows: joined.num_rows() as u64,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            created_by: p.actor(),
            audit_event_id: ctx.event_id.clone(),
        };
        (manifest, bytes)
    };
    // Data first, manifest last: a training set exists once its manifest does.
    let dir = area(&p.tenant, &manifest.id);
    state.tables.put_object(&format!("{dir}/data.parquet"), bytes.into()).await?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    state.tables.put_object(&format!("{dir}/manifest.json"), json.into()).await?;
    let versions = e.resource.versions_read.clone();
    Ok((manifest, versions))
}

/// The group's schema as of the opened version: columns added later are absent.
async fn schema_at(table: &lakeledger_query::deltalake::DeltaTable, latest: &lakeledger_query::FeatureSchema) -> Result<lakeledger_query::FeatureSchema> {
    let provider = table.table_provider().await.map_err(lakeledger_query::Error::DataFusion)?;
    let arrow = provider.schema();
    let present = |name: &str| arrow.field_with_name(name).is_ok();
    let mut schema = latest.clone();
    schema.features.retain(|c| present(&c.name));
    Ok(schema)
}

fn join_error(e: lakeledger_query::Error) -> Error {
    match e {
        lakeledger_query::Error::InvalidSchema(m) => Error::Unprocessable(m),
        other => other.into(),
    }
}

pub async fn manifest(state: &AppState, p: &Principal, id: &str) -> Result<TrainingSetManifest> {
    let not_found = || Error::NotFound { kind: "training set", name: id.to_string() };
    if !valid_id(id) {
        return Err(not_found());
    }
    let bytes = state.tables.get_object(&format!("{}/manifest.json", area(&p.tenant, id))).await?.ok_or_else(not_found)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("training set {id}: manifest unreadable: {e}")))
}

/// The Parquet bytes, checked against the manifest's SHA-256.
pub async fn data(state: &AppState, p: &Principal, id: &str) -> Result<(TrainingSetManifest, bytes::Bytes)> {
    let m = manifest(state, p, id).await?;
    let bytes = state
        .tables
        .get_object(&format!("{}/data.parquet", area(&p.tenant, id)))
        .await?
        .ok_or_else(|| Error::Internal(format!("training set {id}: data file is missing")))?;
    if hex::encode(Sha256::digest(&bytes)) != m.sha256 {
        return Err(Error::Internal(format!("training set {id}: data does not match its manifest's SHA-256")));
    }
    Ok((m, bytes))
}
