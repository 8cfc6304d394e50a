//! The online store: for every feature group with `online: true`, the latest row per
//! entity key, in memory, for low-latency lookups.
//!
//! "Latest" is the row with the greatest event time; among equal event times the one
//! written last wins (a later commit, or a later row of one upload), which is what an
//! upsert on (keys, event time) leaves in the table. Each ingest merges the rows it
//! committed while still holding the group's commit lock, so updates apply in version
//! order; an overwrite replaces the group's state. At startup (and on demand) a group is
//! rebuilt from the live files of its latest Delta version.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, Date32Type};
use lakeledger_query::feature_rows::{FileSet, file_lineage, read_rows};
use lakeledger_query::{ColumnType, FeatureSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::platform::catalog::{FeatureGroupRecord, GroupState, now_micros};
use crate::error::{Error, Result};
use crate::http::state::AppState;

/// One part of an entity key. `int32` keys are held as `i64`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Int(i64),
    Str(Box<str>),
}

pub type EntityKey = Box<[KeyPart]>;

/// The latest row of one entity.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Microseconds since the epoch.
    pub event_time: i64,
    /// Feature values in the order of [`GroupTable::features`]; shorter when the row
    /// predates columns added later (those read as null).
    pub values: Box<[Value]>,
}

/// One group's online state.
#[derive(Debug, Default)]
pub struct GroupTable {
    /// The Delta version the state reflects.
    pub version: i64,
    pub features: Vec<String>,
    pub rows: HashMap<EntityKey, Entry>,
}

/// A group as the online store serves it.
#[derive(Debug)]
pub struct OnlineGroup {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub keys: Vec<(String, ColumnType)>,
    pub max_age_micros: Option<i64>,
    pub table: RwLock<GroupTable>,
}

impl OnlineGroup {
    fn new(g: &FeatureGroupRecord) -> OnlineGroup {
        OnlineGroup {
            id: g.id.clone(),
            tenant_id: g.tenant_id.clone(),
            name: g.name.clone(),
            keys: g.schema.entity_keys.iter().map(|c| (c.name.clone(), c.dtype)).collect(),
            max_age_micros: g.online_max_age_seconds.map(|s| s.saturating_mul(1_000_000)),
            table: RwLock::new(GroupTable::default()),
        }
    }
}

/// Every online group, by (tenant id, group name).
#[derive(Default)]
pub struct OnlineStore {
    groups: RwLock<HashMap<(String, String), Arc<OnlineGroup>>>,
}

/// Rows of one upload reduced to the latest per entity key, ready to merge after commit.
pub struct OnlineDelta {
    schema: FeatureSchema,
    rows: HashMap<EntityKey, Entry>,
}

impl OnlineDelta {
    pub fn new(schema: &FeatureSchema) -> OnlineDelta {
        OnlineDelta { schema: schema.clone(), rows: HashMap::new() }
    }

    /// Folds in a batch conformed to the group's schema. Rows with a null key or event
    /// time cannot be looked up and are left out.
    pub fn absorb(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys: Vec<&ArrayRef> = self.schema.entity_keys.iter().map(|c| column(batch, &c.name)).collect::<Result<_>>()?;
        let time = column(batch, &self.schema.event_time)?;
        let time = time.as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(|| {
            Error::Internal(format!("event time `{}` is not a microsecond timestamp", self.schema.event_time))
        })?;
        let features: Vec<Option<&ArrayRef>> = self.schema.features.iter().map(|c| batch.column_by_name(&c.name)).collect();
        'rows: for row in 0..batch.num_rows() {
            if time.is_null(row) {
                continue;
            }
            let mut key = Vec::with_capacity(keys.len());
            for k in &keys {
                match key_part(k, row) {
                    Some(part) => key.push(part),
                    None => continue 'rows,
                }
            }
            let event_time = time.value(row);
            let key: EntityKey = key.into_boxed_slice();
            if self.rows.get(&key).is_some_and(|e| e.event_time > event_time) {
                continue;
            }
            let values = features.iter().map(|a| a.map_or(Value::Null, |a| cell(a, row))).collect();
            self.rows.insert(key, Entry { event_time, values });
        }
        Ok(())
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Internal(format!("column `{name}` is missing from the rows")))
}

fn key_part(array: &ArrayRef, row: usize) -> Option<KeyPart> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Int64 => Some(KeyPart::Int(array.as_primitive::<Int64Type>().value(row))),
        DataType::Int32 => Some(KeyPart::Int(array.as_primitive::<Int32Type>().value(row).into())),
        DataType::Utf8 => Some(KeyPart::Str(array.as_string::<i32>().value(row).into())),
        DataType::Utf8View => Some(KeyPart::Str(array.as_string_view().value(row).into())),
        DataType::LargeUtf8 => Some(KeyPart::Str(array.as_string::<i64>().value(row).into())),
        _ => None,
    }
}

/// A cell as JSON, the way the read endpoints write it.
fn cell(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Timestamp(..) => Value::String(crate::features::rfc3339(array.as_primitive::<TimestampMicrosecondType>().value(row))),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163).map_or(Value::Null, |d| Value::String(d.to_string()))
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| cell(&list, i)).collect())
        }
        _ => arrow::util::display::array_value_to_string(array, row).map_or(Value::Null, Value::String),
    }
}

/// JSON has no NaN or infinity; they are served as null.
fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

impl OnlineStore {
    pub fn group(&self, tenant_id: &str, name: &str) -> Option<Arc<OnlineGroup>> {
        self.groups.read().expect("online store lock").get(&(tenant_id.to_string(), name.to_string())).cloned()
    }

    /// Stops serving a group (it was switched off or removed).
    pub fn remove(&self, g: &FeatureGroupRecord) {
        self.groups.write().expect("online store lock").remove(&(g.tenant_id.clone(), g.name.clone()));
    }

    /// Merges the rows a commit wrote. Call with the group's commit lock held.
    pub fn apply(&self, g: &FeatureGroupRecord, version: i64, delta: OnlineDelta, replace: bool) {
        let Some(group) = self.group(&g.tenant_id, &g.name) else { return };
        let mut table = group.table.write().expect("online group lock");
        if replace {
            table.rows = delta.rows;
        } else {
            for (key, entry) in delta.rows {
                match table.rows.get(&key) {
                    // A later commit wins ties on event time.
                    Some(old) if old.event_time > entry.event_time => {}
                    _ => {
                        table.rows.insert(key, entry);
                    }
                }
            }
        }
        table.features = delta.schema.features.iter().map(|c| c.name.clone()).collect();
        table.version = version;
        metrics::gauge!("lakeledger_online_entities", "group" => g.name.clone()).set(table.rows.len() as f64);
    }
}

/// Loads a group's latest version from its Delta table into the store, replacing what
/// was there. Takes the group's commit lock so no ingest lands in between.
pub async fn rebuild(state: &AppState, g: &FeatureGroupRecord) -> Result<RebuildReport> {
    let started = std::time::Instant::now();
    let lock = state.group_lock(&g.id);
    let _guard = lock.lock().await;
    // The record may have changed (schema, max age) since the caller read it.
    let g = state
        .catalog
        .feature_group(&g.tenant_id, &g.name)
        .await?
        .ok_or_else(|| Error::NotFound { kind: "feature group", name: g.name.clone() })?;
    if !g.online {
        state.online.remove(&g);
        return Err(Error::Unprocessable(format!("feature group `{}` is not served online; set \"online\": true first", g.name)));
    }
    let url = state.tables.location(&g.location)?;
    let table = state.tables.open(&url, None).await?;
    let version = table.version().map(|v| v as i64).unwrap_or(0);
    let (schema, arrow_schema) = crate::training::sets::schema_at(&table, &g.schema).await?;
    let columns: Vec<String> = schema.all_columns().into_iter().map(|c| c.name).collect();
    let threads = state.config.sql.threads.max(1);
    let rows = crate::training::sets::on_query_runtime(state, async move {
        let files = file_lineage(&table, version, FileSet::Live).await?;
        Ok(read_rows(&table, &arrow_schema, &columns, files, threads).await?)
    })
    .await?;
    let mut delta = OnlineDelta::new(&schema);
    for batch in &rows.batches {
        delta.absorb(batch)?;
    }
    let entities = delta.rows.len();
    // Filled before it is published, so lookups never see a half-loaded group.
    let group = OnlineGroup::new(&g);
    *group.table.write().expect("online group lock") =
        GroupTable { version, features: schema.features.iter().map(|c| c.name.clone()).collect(), rows: delta.rows };
    metrics::gauge!("lakeledger_online_entities", "group" => g.name.clone()).set(entities as f64);
    state.online.groups.write().expect("online store lock").insert((g.tenant_id.clone(), g.name.clone()), Arc::new(group));
    Ok(RebuildReport { group: g.name.clone(), version, rows_read: rows.num_rows() as u64, entities: entities as u64, millis: started.elapsed().as_millis() as u64 })
}

/// How often the store checks the catalog for versions committed by other replicas.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Brings every online group up to the catalog's latest version: commits made through
/// another replica (sharing the catalog and tables) reach this one's store. Appends,
/// upserts and column additions are applied incrementally from the files they added;
/// anything else (an overwrite) rebuilds the group.
pub async fn refresh(state: &AppState) -> Result<()> {
    let groups: Vec<Arc<OnlineGroup>> = state.online.groups.read().expect("online store lock").values().cloned().collect();
    for group in groups {
        let Some(latest) = state.catalog.latest_version(&group.id).await? else { continue };
        if latest.version > group.table.read().expect("online group lock").version {
            catch_up(state, &group).await?;
        }
    }
    Ok(())
}

async fn catch_up(state: &AppState, group: &OnlineGroup) -> Result<()> {
    let Some(g) = state.catalog.feature_group(&group.tenant_id, &group.name).await? else { return Ok(()) };
    if !g.online {
        state.online.remove(&g);
        return Ok(());
    }
    let incremental = {
        let lock = state.group_lock(&g.id);
        let _guard = lock.lock().await;
        // Under the lock: this replica's own commits have been applied.
        let have = group.table.read().expect("online group lock").version;
        let newer: Vec<_> = state.catalog.versions(&g.id).await?.into_iter().filter(|v| v.version > have).collect();
        let Some(latest) = newer.last().map(|v| v.version) else { return Ok(()) };
        let simple = newer.iter().all(|v| v.operation.starts_with("WRITE (append)") || v.operation.starts_with("MERGE") || v.operation == "ADD COLUMNS");
        if simple {
            let table = state.tables.open(&state.tables.location(&g.location)?, Some(latest)).await?;
            let (schema, arrow_schema) = crate::training::sets::schema_at(&table, &g.schema).await?;
            let columns: Vec<String> = schema.all_columns().into_iter().map(|c| c.name).collect();
            let threads = state.config.sql.threads.max(1);
            let rows = crate::training::sets::on_query_runtime(state, async move {
                let files: Vec<_> = file_lineage(&table, latest, FileSet::Live).await?.into_iter().filter(|f| f.added.is_some_and(|a| a > have)).collect();
                Ok(read_rows(&table, &arrow_schema, &columns, files, threads).await?)
            })
            .await?;
            let mut delta = OnlineDelta::new(&schema);
            for batch in &rows.batches {
                delta.absorb(batch)?;
            }
            state.online.apply(&g, latest, delta, false);
            tracing::info!(group = %g.name, from = have, to = latest, rows = rows.num_rows(), "online store caught up with commits made elsewhere");
        }
        simple
    };
    if !incremental {
        rebuild(state, &g).await?;
    }
    Ok(())
}

/// Runs [`refresh`] every [`REFRESH_EVERY`] until the server stops.
pub async fn keep_fresh(state: AppState) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        if let Err(e) = refresh(&state).await {
            tracing::warn!(error = %e, "online store refresh failed; retrying");
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildReport {
    pub group: String,
    /// The Delta version now served.
    pub version: i64,
    pub rows_read: u64,
    pub entities: u64,
    pub millis: u64,
}

/// Rebuilds every online group (startup).
pub async fn rebuild_all(state: &AppState) -> Result<Vec<RebuildReport>> {
    let mut out = Vec::new();
    for g in state.catalog.all_feature_groups().await? {
        if g.online && g.state != GroupState::Creating {
            let report = rebuild(state, &g).await?;
            tracing::info!(group = %g.name, version = report.version, entities = report.entities, ms = report.millis, "online store loaded");
            out.push(report);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Lookups: the Feast-shaped request and response.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnlineFeaturesRequest {
    /// `group:feature`, or `group` for all of its features.
    pub features: Vec<String>,
    /// Entity key values: columns (`{"customer_id": [1, 2]}`, as Feast takes them) or
    /// rows (`[{"customer_id": 1}, {"customer_id": 2}]`).
    #[schema(value_type = Object)]
    pub entities: Value,
    /// Name features `group__feature` instead of `feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineFeaturesResponse {
    pub metadata: OnlineMetadata,
    /// One entry per name in `metadata.feature_names`: entity keys first, then features.
    pub results: Vec<FeatureColumn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineMetadata {
    pub feature_names: Vec<String>,
    /// The Delta version of each group that was served.
    pub versions: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureColumn {
    #[schema(value_type = Vec<Object>)]
    pub values: Vec<Value>,
    /// `PRESENT`, `NULL_VALUE` (row found, value null), `NOT_FOUND` or `OUTSIDE_MAX_AGE`.
    pub statuses: Vec<&'static str>,
    /// The event time of the row each value came from (RFC 3339); the epoch when none.
    pub event_timestamps: Vec<String>,
}

/// Entity rows of a request, as (column name → value) per row.
pub struct EntityRows {
    pub columns: Vec<String>,
    /// Row-major values, `columns.len()` per row.
    pub values: Vec<Value>,
    pub rows: usize,
}

impl EntityRows {
    pub fn get(&self, row: usize, column: &str) -> Option<&Value> {
        let c = self.columns.iter().position(|n| n == column)?;
        Some(&self.values[row * self.columns.len() + c])
    }

    /// Parses `{"col": [..]}` or `[{"col": ..}, ..]`.
    pub fn parse(entities: &Value) -> Result<EntityRows> {
        Self::parse_named(entities, "entities")
    }

    /// As [`parse`](Self::parse); errors call the value `what`.
    pub fn parse_named(value: &Value, what: &str) -> Result<EntityRows> {
        match value {
            Value::Object(map) => {
                let columns: Vec<String> = map.keys().cloned().collect();
                let mut rows = None;
                for (name, v) in map {
                    let Value::Array(list) = v else {
                        return Err(Error::Unprocessable(format!("{what}.{name} must be a list of values")));
                    };
                    match rows {
                        None => rows = Some(list.len()),
                        Some(n) if n != list.len() => {
                            return Err(Error::Unprocessable(format!(
                                "{what}.{name} has {} values where the other columns have {n}",
                                list.len()
                            )));
                        }
                        Some(_) => {}
                    }
                }
                let rows = rows.unwrap_or(0);
                let mut values = Vec::with_capacity(rows * columns.len());
                for r in 0..rows {
                    for c in &columns {
                        values.push(map[c][r].clone());
                    }
                }
                Ok(EntityRows { columns, values, rows })
            }
            Value::Array(list) => Self::from_rows(list, what),
            _ => Err(Error::Unprocessable(format!("`{what}` must be an object of columns or a list of rows"))),
        }
    }

    /// Rows as objects, `[{"col": ..}, ..]`; a column missing from a row is null there.
    pub fn from_rows(list: &[Value], what: &str) -> Result<EntityRows> {
        let mut columns: Vec<String> = Vec::new();
        for (i, row) in list.iter().enumerate() {
            let Value::Object(m) = row else {
                return Err(Error::Unprocessable(format!("{what}[{i}] must be an object of column values")));
            };
            for k in m.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let mut values = Vec::with_capacity(list.len() * columns.len());
        for row in list {
            for c in &columns {
                values.push(row.get(c).cloned().unwrap_or(Value::Null));
            }
        }
        Ok(EntityRows { columns, values, rows: list.len() })
    }
}

/// The entity key of `row` for a group, checking each value's type.
pub fn entity_key(group: &OnlineGroup, entities: &EntityRows, row: usize) -> Result<EntityKey> {
    let mut key = Vec::with_capacity(group.keys.len());
    for (name, dtype) in &group.keys {
        let v = entities.get(row, name).ok_or_else(|| {
            Error::Unprocessable(format!("entity key `{name}` of feature group `{}` is missing from `entities`", group.name))
        })?;
        let part = match (dtype, v) {
            (ColumnType::Int32 | ColumnType::Int64, Value::Number(n)) if n.as_i64().is_some() => KeyPart::Int(n.as_i64().unwrap_or_default()),
            (ColumnType::String, Value::String(s)) => KeyPart::Str(s.as_str().into()),
            (ColumnType::Int32 | ColumnType::Int64, other) => {
                return Err(Error::Unprocessable(format!("entities.{name}[{row}]: expected an integer key, got {other}")));
            }
            (_, other) => return Err(Error::Unprocessable(format!("entities.{name}[{row}]: expected a string key, got {other}"))),
        };
        key.push(part);
    }
    Ok(key.into_boxed_slice())
}

/// A resolved `group:feature` reference.
pub struct FeatureRef {
    pub group: Arc<OnlineGroup>,
    /// Index into the group's feature values.
    pub index: usize,
    pub feature: String,
}

/// Resolves feature references against the tenant's online groups.
pub fn resolve_features(store: &OnlineStore, tenant_id: &str, specs: &[String]) -> Result<Vec<FeatureRef>> {
    if specs.is_empty() {
        return Err(Error::Unprocessable("name at least one feature (`group:feature` or `group`)".into()));
    }
    let mut out = Vec::new();
    for spec in specs {
        let (group_name, feature) = match spec.split_once(':') {
            Some((g, f)) => (g, Some(f)),
            None => (spec.as_str(), None),
        };
        let group = store.group(tenant_id, group_name).ok_or_else(|| {
            Error::Unprocessable(format!(
                "feature group `{group_name}` is not served online here (it does not exist, or was created without \"online\": true)"
            ))
        })?;
        let features = group.table.read().expect("online group lock").features.clone();
        match feature {
            Some(f) => {
                let index = features.iter().position(|n| n == f).ok_or_else(|| {
                    Error::Unprocessable(format!("feature group `{group_name}` has no feature `{f}`; it has {}", features.join(", ")))
                })?;
                out.push(FeatureRef { group: group.clone(), index, feature: f.to_string() });
            }
            None => {
                for (index, f) in features.iter().enumerate() {
                    out.push(FeatureRef { group: group.clone(), index, feature: f.clone() });
                }
            }
        }
    }
    Ok(out)
}

/// One looked-up value.
pub struct Lookup {
    pub value: Value,
    pub status: &'static str,
    pub event_time: Option<i64>,
}

/// What a lookup found.
pub struct Found {
    /// Per feature reference, per entity row.
    pub values: Vec<Vec<Lookup>>,
    /// Per group: the Delta version served.
    pub versions: Vec<(String, i64)>,
}

/// Looks up every feature for every entity row.
pub fn lookup(features: &[FeatureRef], entities: &EntityRows, now: i64) -> Result<Found> {
    // One pass per group: its keys, then its features for each row.
    let mut out: Vec<Vec<Lookup>> = (0..features.len()).map(|_| Vec::with_capacity(entities.rows)).collect();
    let mut versions: Vec<(String, i64)> = Vec::new();
    let mut done = vec![false; features.len()];
    for i in 0..features.len() {
        if done[i] {
            continue;
        }
        let group = features[i].group.clone();
        let members: Vec<usize> = (i..features.len()).filter(|&j| Arc::ptr_eq(&features[j].group, &group)).collect();
        let keys: Vec<EntityKey> = (0..entities.rows).map(|r| entity_key(&group, entities, r)).collect::<Result<_>>()?;
        let table = group.table.read().expect("online group lock");
        versions.push((group.name.clone(), table.version));
        for key in &keys {
            let entry = table.rows.get(key);
            let stale = entry.is_some_and(|e| group.max_age_micros.is_some_and(|max| now.saturating_sub(e.event_time) > max));
            for &j in &members {
                let found = match entry {
                    None => Lookup { value: Value::Null, status: "NOT_FOUND", event_time: None },
                    Some(e) if stale => Lookup { value: Value::Null, status: "OUTSIDE_MAX_AGE", event_time: Some(e.event_time) },
                    Some(e) => {
                        let value = e.values.get(features[j].index).cloned().unwrap_or(Value::Null);
                        let status = if value.is_null() { "NULL_VALUE" } else { "PRESENT" };
                        Lookup { value, status, event_time: Some(e.event_time) }
                    }
                };
                out[j].push(found);
            }
        }
        for j in members {
            done[j] = true;
        }
    }
    Ok(Found { values: out, versions })
}

/// Answers a Feast-shaped request. Returns the response and the audit facts: groups at
/// versions served, and keyed hashes of the entity keys.
pub fn get_online_features(state: &AppState, tenant_id: &str, req: &OnlineFeaturesRequest) -> Result<(OnlineFeaturesResponse, Vec<(String, String)>)> {
    let features = resolve_features(&state.online, tenant_id, &req.features)?;
    let entities = EntityRows::parse(&req.entities)?;
    let Found { values: found, versions } = lookup(&features, &entities, now_micros())?;
    let mut names = Vec::new();
    let mut results = Vec::new();
    // Entity key columns first, as Feast returns them.
    let mut key_columns: Vec<String> = Vec::new();
    for f in &features {
        for (k, _) in &f.group.keys {
            if !key_columns.contains(k) {
                key_columns.push(k.clone());
            }
        }
    }
    let epoch = crate::features::rfc3339(0);
    for k in &key_columns {
        names.push(k.clone());
        let values: Vec<Value> = (0..entities.rows).map(|r| entities.get(r, k).cloned().unwrap_or(Value::Null)).collect();
        results.push(FeatureColumn { statuses: vec!["PRESENT"; values.len()], event_timestamps: vec![epoch.clone(); values.len()], values });
    }
    for (f, column) in features.iter().zip(found) {
        names.push(if req.full_feature_names { format!("{}__{}", f.group.name, f.feature) } else { f.feature.clone() });
        let mut c = FeatureColumn { values: Vec::with_capacity(column.len()), statuses: Vec::with_capacity(column.len()), event_timestamps: Vec::with_capacity(column.len()) };
        for l in column {
            c.values.push(l.value);
            c.statuses.push(l.status);
            c.event_timestamps.push(l.event_time.map_or_else(|| epoch.clone(), crate::features::rfc3339));
        }
        results.push(c);
    }
    let details = vec![
        ("served".to_string(), versions.iter().map(|(g, v)| format!("{g}@{v}")).collect::<Vec<_>>().join(",")),
        ("entities".to_string(), entities.rows.to_string()),
        ("entity_key_hashes".to_string(), state.entity_hasher.hash_rows(&entities, &key_columns)),
    ];
    let response = OnlineFeaturesResponse {
        metadata: OnlineMetadata { feature_names: names, versions: versions.into_iter().collect() },
        results,
    };
    Ok((response, details))
}

// ---------------------------------------------------------------------------------------
// Entity keys in audit records.

/// Keyed hashes of entity keys: an audit record says which entities were served without
/// holding their identifiers, and anyone with the key (auditors, through
/// `POST /v1/audit/entity-hash`) can check whether a given entity was among them. A plain
/// hash would not do: small integer keys are found by trying them all.
pub struct EntityHasher {
    key: ring::hmac::Key,
}

impl EntityHasher {
    /// Reads the key at `path`, creating it (32 random bytes, mode 0600) at first start.
    pub fn load(path: &std::path::Path) -> Result<EntityHasher> {
        let secret = match std::fs::read_to_string(path) {
            Ok(text) => hex::decode(text.trim()).map_err(|e| Error::Internal(format!("{}: not a hex key: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::Internal(format!("create {}: {e}", parent.display())))?;
                }
                write_private(path, format!("{}\n", hex::encode(raw)).as_bytes())?;
                raw.to_vec()
            }
            Err(e) => return Err(Error::Internal(format!("read {}: {e}", path.display()))),
        };
        Ok(EntityHasher { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret) })
    }

    /// The hash of one entity: HMAC-SHA256 over `column=value` pairs in the given column
    /// order, joined by newlines, values as JSON; the first 16 bytes, hex.
    pub fn hash(&self, pairs: &[(&str, &Value)]) -> String {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let tag = ring::hmac::sign(&self.key, text.join("\n").as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }

    /// Hashes of every row's key columns, comma separated.
    pub fn hash_rows(&self, entities: &EntityRows, key_columns: &[String]) -> String {
        let mut out = String::with_capacity(entities.rows * 33);
        for r in 0..entities.rows {
            let pairs: Vec<(&str, &Value)> =
                key_columns.iter().filter_map(|k| entities.get(r, k).map(|v| (k.as_str(), v))).collect();
            if r > 0 {
                out.push(',');
            }
            out.push_str(&self.hash(&pairs));
        }
        out
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Internal(format!("create {}: {e}", path.display())))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampMicrosecondArray};

    fn schema() -> FeatureSchema {
        serde_json::from_value(serde_json::json!({
            "entity_keys": [{"name": "id", "type": "int64"}],
            "event_time": "ts",
            "features": [{"name": "x", "type": "float64"}]
        }))
        .unwrap()
    }

    fn batch(ids: &[i64], ts: &[i64], xs: &[f64]) -> RecordBatch {
        let s = schema();
        let fields: Vec<_> = s.all_columns().iter().map(|c| arrow::datatypes::Field::new(&c.name, c.dtype.arrow_type(), true)).collect();
        RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(ts.to_vec()).with_timezone("UTC")),
                Arc::new(Float64Array::from(xs.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_latest_event_wins_and_later_rows_win_ties() {
        let mut d = OnlineDelta::new(&schema());
        d.absorb(&batch(&[1, 1, 2, 2], &[10, 5, 7, 7], &[1.0, 2.0, 3.0, 4.0])).unwrap();
        let one = &d.rows[&vec![KeyPart::Int(1)].into_boxed_slice()];
        assert_eq!((one.event_time, one.values[0].clone()), (10, serde_json::json!(1.0)));
        let two = &d.rows[&vec![KeyPart::Int(2)].into_boxed_slice()];
        assert_eq!(two.values[0], serde_json::json!(4.0));
    }

    #[test]
    fn entity_rows_come_as_columns_or_rows() {
        let cols = EntityRows::parse(&serde_json::json!({"id": [1, 2], "k": ["a", "b"]})).unwrap();
        let rows = EntityRows::parse(&serde_json::json!([{"id": 1, "k": "a"}, {"id": 2, "k": "b"}])).unwrap();
        for e in [cols, rows] {
            assert_eq!(e.rows, 2);
            assert_eq!(e.get(1, "k"), Some(&serde_json::json!("b")));
        }
        let err = EntityRows::parse(&serde_json::json!({"id": [1, 2], "k": ["a"]})).err().unwrap().to_string();
        assert!(err.contains("entities.k has 1 values"), "{err}");
    }

    #[test]
    fn entity_hashes_are_keyed_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = EntityHasher::load(&path).unwrap();
        let b = EntityHasher::load(&path).unwrap();
        let v = serde_json::json!(42);
        assert_eq!(a.hash(&[("id", &v)]), b.hash(&[("id", &v)]));
        let other = EntityHasher::load(&dir.path().join("k2")).unwrap();
        assert_ne!(a.hash(&[("id", &v)]), other.hash(&[("id", &v)]));
        assert_eq!(a.hash(&[("id", &v)]).len(), 32);
    }
}
