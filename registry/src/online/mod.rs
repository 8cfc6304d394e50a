//! The online store: for every feature group with `online: true`, the latest row per
//! entity key, in memory, for low-latency lookups.
//!
//! "Latest" is the row with the greatest event time; among equal event times the one
//! written last wins (a later commit, or a later row of one upload), which is what an
//! upsert on (keys, event time) leaves in the table. The store follows the groups'
//! commits as a [`CommitObserver`]: each write's rows are folded while they are staged
//! and merged once committed, still under the group's commit lock, so updates apply in
//! version order; an overwrite replaces the group's state. At startup (and on demand) a
//! group is rebuilt from the live files of its latest Delta version.
//!
//! Where the rows live is the store's backend: this process's memory (the default, with a
//! memory budget), or a Redis that every replica shares (`in_redis.rs`). Either way the
//! registry of online groups (names, keys, features, max age) is held here.
//!
//! Reads tables only through the feature-group service; never imports `http/` or `app/`.

mod entity_hash;
mod lookup;
mod in_redis;
mod refresh;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use async_trait::async_trait;
use lakeledger_query::{ColumnType, FeatureSchema};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::features::{CommitObserver, FeatureGroups, StagedRows};
use crate::platform::catalog::FeatureGroupRecord;
use crate::platform::time::rfc3339;

pub use entity_hash::EntityHasher;
pub use lookup::{EntityRows, FeatureColumn, FeatureRef, Found, Lookup, OnlineFeaturesRequest, OnlineFeaturesResponse, OnlineMetadata, entity_key, resolve_features};
pub use in_redis::{Applied, RedisRows, Served};
pub use refresh::{REFRESH_EVERY, RebuildReport};

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
    /// The Delta version the state reflects (with Redis: the version this replica last
    /// brought the group's settings and features up to).
    pub version: i64,
    pub features: Vec<String>,
    /// The rows, when the store keeps them in memory (empty with Redis).
    pub rows: HashMap<EntityKey, Entry>,
    /// What `rows` holds, estimated (see [`entry_bytes`]), for the store's memory budget.
    pub bytes: usize,
}

/// An estimate of the memory one entity's row holds: its key, event time and values,
/// plus the map's own overhead per entry.
fn entry_bytes(key: &EntityKey, e: &Entry) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::String(s) => 32 + s.len(),
            Value::Array(a) => 32 + a.iter().map(value).sum::<usize>(),
            Value::Object(o) => 48 + o.iter().map(|(k, v)| 32 + k.len() + value(v)).sum::<usize>(),
            _ => 32,
        }
    }
    let key: usize = key.iter().map(|k| match k {
        KeyPart::Int(_) => 16,
        KeyPart::Str(s) => 24 + s.len(),
    }).sum();
    64 + key + e.values.iter().map(value).sum::<usize>()
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

/// Every online group, by (tenant id, group name), the memory budget they share, and
/// where their rows live.
struct Groups {
    by_name: RwLock<HashMap<(String, String), Arc<OnlineGroup>>>,
    budget: Budget,
    /// `Some`: rows live in Redis; `None`: in `GroupTable::rows`.
    redis: Option<Arc<RedisRows>>,
    /// Wakes the refresh task (a commit found a group Redis has no rows for).
    wake: tokio::sync::Notify,
}

/// The store's memory budget, and the groups taken out to keep to it, with why.
#[derive(Default)]
struct Budget {
    max_bytes: Option<usize>,
    dropped: RwLock<HashMap<(String, String), String>>,
}

impl Groups {
    /// What every group holds, estimated, leaving out `except`.
    fn bytes_except(&self, except: Option<(&str, &str)>) -> usize {
        self.by_name
            .read()
            .expect("online store lock")
            .iter()
            .filter(|((t, n), _)| except != Some((t.as_str(), n.as_str())))
            .map(|(_, g)| g.table.read().expect("online group lock").bytes)
            .sum()
    }

    fn over_budget(&self, tenant_id: &str, name: &str, bytes: usize) -> Option<String> {
        let max = self.budget.max_bytes?;
        let others = self.bytes_except(Some((tenant_id, name)));
        (others + bytes > max).then(|| {
            format!(
                "feature group `{name}` needs about {bytes} bytes in the online store and the other groups hold {others}: over the \
                 store's budget of {max} bytes (online_store_max_bytes); raise it or turn other groups' online serving off"
            )
        })
    }

    /// Takes a group out of the store to keep to the budget; lookups say why.
    fn drop_for_budget(&self, tenant_id: &str, name: &str, why: String) {
        tracing::warn!(group = %name, tenant_id = %tenant_id, reason = %why, "online group taken out of the store");
        metrics::counter!("lakeledger_online_groups_dropped_total").increment(1);
        self.by_name.write().expect("online store lock").remove(&(tenant_id.to_string(), name.to_string()));
        self.budget.dropped.write().expect("dropped groups").insert((tenant_id.to_string(), name.to_string()), why);
        metrics::gauge!("lakeledger_online_store_bytes").set(self.bytes_except(None) as f64);
    }

    /// Why a group is not in the store, if it was taken out for the budget.
    fn dropped(&self, tenant_id: &str, name: &str) -> Option<String> {
        self.budget.dropped.read().expect("dropped groups").get(&(tenant_id.to_string(), name.to_string())).cloned()
    }

    fn get(&self, tenant_id: &str, name: &str) -> Option<Arc<OnlineGroup>> {
        self.by_name.read().expect("online store lock").get(&(tenant_id.to_string(), name.to_string())).cloned()
    }

    /// Merges the rows a commit wrote, wherever rows live. Called with the group's commit
    /// lock held. A failure to write Redis does not fail the commit (the table has it);
    /// the refresh task writes the version again.
    async fn apply(&self, g: &FeatureGroupRecord, version: i64, delta: OnlineDelta, replace: bool) {
        let group = self.get(&g.tenant_id, &g.name);
        match (&self.redis, group) {
            (None, Some(group)) => self.apply_in_memory(g, &group, version, delta, replace),
            // Not served here (taken out for the budget, or switched off meanwhile).
            (None, None) => {}
            // Written even if this replica has not yet heard the group went online
            // elsewhere: every replica reads the same rows.
            (Some(redis), group) => {
                let features: Vec<String> = delta.schema.features.iter().map(|c| c.name.clone()).collect();
                let rows: Vec<(EntityKey, Entry)> = delta.rows.into_iter().collect();
                let written = if replace {
                    redis.replace(&g.id, version, &features, rows).await.map(|_| Applied::Served)
                } else {
                    redis.apply(&g.id, version - 1, version, &features, rows).await
                };
                match written {
                    Ok(Applied::Served) => {
                        if let Some(group) = group {
                            let mut table = group.table.write().expect("online group lock");
                            table.features = features;
                            table.version = table.version.max(version);
                        }
                    }
                    // Never loaded into Redis, or an earlier commit's rows may be missing:
                    // the refresh task builds the group or catches it up from the table.
                    Ok(Applied::Unloaded | Applied::Behind) => self.wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(group = %g.name, version, error = %e, "online rows not written to Redis; the refresh task retries");
                        self.wake.notify_one();
                    }
                }
            }
        }
    }

    fn apply_in_memory(&self, g: &FeatureGroupRecord, group: &OnlineGroup, version: i64, delta: OnlineDelta, replace: bool) {
        let bytes = {
            let mut table = group.table.write().expect("online group lock");
            if replace {
                table.bytes = delta.rows.iter().map(|(k, e)| entry_bytes(k, e)).sum();
                table.rows = delta.rows;
            } else {
                for (key, entry) in delta.rows {
                    match table.rows.get(&key) {
                        // A later commit wins ties on event time.
                        Some(old) if old.event_time > entry.event_time => {}
                        old => {
                            let freed = old.map_or(0, |o| entry_bytes(&key, o));
                            table.bytes = (table.bytes + entry_bytes(&key, &entry)).saturating_sub(freed);
                            table.rows.insert(key, entry);
                        }
                    }
                }
            }
            table.features = delta.schema.features.iter().map(|c| c.name.clone()).collect();
            table.version = version;
            metrics::gauge!("lakeledger_online_entities", "tenant_id" => g.tenant_id.clone(), "group" => g.name.clone()).set(table.rows.len() as f64);
            table.bytes
        };
        // A commit that takes the store past its budget takes its group out (the data is
        // safe in Delta; lookups say why) rather than the process's memory.
        match self.over_budget(&g.tenant_id, &g.name, bytes) {
            Some(why) => self.drop_for_budget(&g.tenant_id, &g.name, why),
            None => metrics::gauge!("lakeledger_online_store_bytes").set(self.bytes_except(None) as f64),
        }
    }
}

/// The online store service.
pub struct OnlineStore {
    groups: Arc<Groups>,
    features: Arc<FeatureGroups>,
    /// Keyed hashes of entity keys for audit records.
    hasher: EntityHasher,
    /// Groups other replicas announced a change of: one turned online there is loaded
    /// here, one turned off is dropped.
    announced: std::sync::Mutex<Vec<(String, String)>>,
}

impl crate::platform::changes::ChangeObserver for OnlineStore {
    fn changed(&self, change: &crate::platform::changes::Change) {
        use crate::platform::changes::Change;
        match change {
            Change::Group { tenant_id, name } => {
                self.announced.lock().expect("announced groups").push((tenant_id.clone(), name.clone()));
                self.groups.wake.notify_one();
            }
            Change::Resync => self.groups.wake.notify_one(),
            _ => {}
        }
    }
}

impl OnlineStore {
    /// A store over `features`: rows in Redis when `redis` is given, otherwise in memory,
    /// holding at most about `max_bytes` (unbounded when `None`).
    pub fn new(features: Arc<FeatureGroups>, hasher: EntityHasher, max_bytes: Option<usize>, redis: Option<Arc<RedisRows>>) -> Arc<OnlineStore> {
        let groups = Arc::new(Groups {
            by_name: Default::default(),
            budget: Budget { max_bytes, dropped: Default::default() },
            redis,
            wake: tokio::sync::Notify::new(),
        });
        Arc::new(OnlineStore { groups, features, hasher, announced: Default::default() })
    }

    /// Where rows live, when not in memory.
    pub fn redis(&self) -> Option<&Arc<RedisRows>> {
        self.groups.redis.as_ref()
    }

    /// Why a group is not served here, if it was taken out to keep to the memory budget.
    pub fn dropped(&self, tenant_id: &str, name: &str) -> Option<String> {
        self.groups.dropped(tenant_id, name)
    }

    /// The keyed hash of entity keys that audit records use.
    pub fn hasher(&self) -> &EntityHasher {
        &self.hasher
    }

    pub fn group(&self, tenant_id: &str, name: &str) -> Option<Arc<OnlineGroup>> {
        self.groups.get(tenant_id, name)
    }

    /// Stops serving a group here (it was switched off or removed).
    pub fn remove(&self, g: &FeatureGroupRecord) {
        self.groups.by_name.write().expect("online store lock").remove(&(g.tenant_id.clone(), g.name.clone()));
    }

    fn publish(&self, group: OnlineGroup) {
        let key = (group.tenant_id.clone(), group.name.clone());
        self.groups.budget.dropped.write().expect("dropped groups").remove(&key);
        self.groups.by_name.write().expect("online store lock").insert(key, Arc::new(group));
        metrics::gauge!("lakeledger_online_store_bytes").set(self.groups.bytes_except(None) as f64);
    }

    fn all(&self) -> Vec<Arc<OnlineGroup>> {
        self.groups.by_name.read().expect("online store lock").values().cloned().collect()
    }
}

#[async_trait]
impl CommitObserver for OnlineStore {
    fn staging(&self, group: &FeatureGroupRecord) -> Option<Box<dyn StagedRows>> {
        group.online.then(|| Box::new(OnlineDelta::new(&group.schema, Some(self.groups.clone()))) as Box<dyn StagedRows>)
    }

    async fn group_changed(&self, group: &FeatureGroupRecord) -> Result<()> {
        match (group.online, &self.groups.redis) {
            (true, None) => self.rebuild(group).await.map(|_| ()),
            // Redis may hold the group already (shared by replicas): load only what it lacks.
            (true, Some(_)) => self.sync_redis(group).await,
            (false, redis) => {
                self.remove(group);
                match redis {
                    Some(r) => r.forget(&group.id).await,
                    None => Ok(()),
                }
            }
        }
    }
}

/// Rows of one upload reduced to the latest per entity key, ready to merge after commit.
pub struct OnlineDelta {
    schema: FeatureSchema,
    rows: HashMap<EntityKey, Entry>,
    /// Where the rows go once committed.
    store: Option<Arc<Groups>>,
}

impl OnlineDelta {
    fn new(schema: &FeatureSchema, store: Option<Arc<Groups>>) -> OnlineDelta {
        OnlineDelta { schema: schema.clone(), rows: HashMap::new(), store }
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

#[async_trait]
impl StagedRows for OnlineDelta {
    fn absorb(&mut self, batch: &RecordBatch) -> Result<()> {
        OnlineDelta::absorb(self, batch)
    }

    async fn committed(mut self: Box<Self>, group: &FeatureGroupRecord, version: i64, replace: bool) {
        if let Some(store) = self.store.take() {
            store.apply(group, version, *self, replace).await;
        }
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
        DataType::Timestamp(..) => Value::String(rfc3339(array.as_primitive::<TimestampMicrosecondType>().value(row))),
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
        let mut d = OnlineDelta::new(&schema(), None);
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
