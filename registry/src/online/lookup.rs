//! Lookups: Feast's `get-online-features` request and response, entity rows in either
//! shape, and the values of every feature for every entity.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{EntityKey, KeyPart, OnlineGroup, OnlineStore};
use crate::error::{Error, Result};
use crate::platform::time::{now_micros, rfc3339};
use lakeledger_query::ColumnType;


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
        let group = store.group(tenant_id, group_name).ok_or_else(|| match store.dropped(tenant_id, group_name) {
            Some(why) => Error::OnlineStoreFull(why),
            None => Error::Unprocessable(format!(
                "feature group `{group_name}` is not served online here (it does not exist, or was created without \"online\": true)"
            )),
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

impl OnlineStore {
    /// Looks up every feature for every entity row, wherever the rows live.
    pub async fn lookup(&self, features: &[FeatureRef], entities: &EntityRows, now: i64) -> Result<Found> {
        match self.redis() {
            Some(redis) => redis.lookup(features, entities, now).await,
            None => lookup_in_memory(features, entities, now),
        }
    }
}

/// Looks up every feature for every entity row in the groups' in-memory tables.
fn lookup_in_memory(features: &[FeatureRef], entities: &EntityRows, now: i64) -> Result<Found> {
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

impl OnlineStore {
/// Answers a Feast-shaped request. Returns the response and the audit facts: groups at
/// versions served, and keyed hashes of the entity keys.
pub async fn get_online_features(&self, tenant_id: &str, req: &OnlineFeaturesRequest) -> Result<(OnlineFeaturesResponse, Vec<(String, String)>)> {
    let features = resolve_features(self, tenant_id, &req.features)?;
    let entities = EntityRows::parse(&req.entities)?;
    let Found { values: found, versions } = self.lookup(&features, &entities, now_micros()).await?;
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
    let epoch = rfc3339(0);
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
            c.event_timestamps.push(l.event_time.map_or_else(|| epoch.clone(), rfc3339));
        }
        results.push(c);
    }
    let details = vec![
        ("served".to_string(), versions.iter().map(|(g, v)| format!("{g}@{v}")).collect::<Vec<_>>().join(",")),
        ("entities".to_string(), entities.rows.to_string()),
        ("entity_key_hashes".to_string(), self.hasher.hash_rows(&entities, &key_columns)),
    ];
    let response = OnlineFeaturesResponse {
        metadata: OnlineMetadata { feature_names: names, versions: versions.into_iter().collect() },
        results,
    };
    Ok((response, details))
}
}
