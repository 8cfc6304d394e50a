//! Feature groups: creation, metadata, schema evolution, ingest, history, versioned
//! reads, vacuum and reconciliation after a crash. The Delta table is the truth for data
//! and versions; the catalog records names, schemas and the version → commit-time map.
//!
//! Owns the groups' tables and their commit locks. Does not know who follows its
//! commits: observers (the online store) subscribe through [`CommitObserver`], and
//! vacuum asks a [`PinSource`] (training sets) which files must stay. Never imports
//! another domain, `http/` or `app/`.

mod idempotency;
mod ingest;
mod observers;
mod read;
mod reconcile;
mod vacuum;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};

use lakeledger_query::tables::{CommitMeta, TableStore};
use lakeledger_query::{Column, FeatureSchema};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::audit::AuditContext;
use crate::platform::catalog::{FeatureGroupRecord, GroupMetadata, GroupState, Held, SharedCatalog, VersionRecord, not_here};
use crate::platform::changes::{Change, Changes};
use crate::platform::locks::KeyedLocks;
use crate::platform::runtime::QueryRuntime;
use crate::platform::time::{now_micros, rfc3339};

pub use idempotency::Ingested;
pub use ingest::IngestResult;
pub use observers::{CommitObserver, PinSource, StagedRows};
pub use read::{ReadSpec, Snapshot, encoded_body, parse_key_filters};
pub use reconcile::ReconcileReport;
pub use vacuum::{KeptFile, VacuumReport, VacuumRequest};

/// The settings feature groups take from the configuration.
#[derive(Clone, Debug)]
pub struct FeatureSettings {
    /// Largest accepted upload in bytes.
    pub max_body_bytes: u64,
    /// Rows a single data read returns at most when the client names no limit.
    pub default_read_limit: Option<usize>,
    /// Where Parquet uploads are spooled (they keep their metadata in a footer).
    pub spool_dir: PathBuf,
    /// Threads that read a group's data files.
    pub read_threads: usize,
    /// How long an ingest's hold on its `Idempotency-Key` lasts without being renewed
    /// (it is renewed every third of this while the ingest runs): a retry after a
    /// replica died mid-ingest waits at most this long.
    pub idempotency_hold: std::time::Duration,
}

/// The feature-group service.
pub struct FeatureGroups {
    catalog: SharedCatalog,
    tables: TableStore,
    locks: Arc<KeyedLocks>,
    runtime: Arc<QueryRuntime>,
    settings: FeatureSettings,
    /// Training-set builds hold this shared and vacuum holds it exclusively, so a vacuum
    /// never deletes a file a build is reading or is about to pin.
    pins: tokio::sync::RwLock<()>,
    observers: RwLock<Vec<Weak<dyn CommitObserver>>>,
    pin_source: RwLock<Option<Weak<dyn PinSource>>>,
    /// Where commits and settings changes are announced to other replicas.
    changes: Arc<Changes>,
}

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

/// Groups whose rows the server writes itself (inference logs) carry this prefix; their
/// rows and schema are written by the server only, so nobody can forge what drift reports
/// and auditors read from them.
pub const RESERVED_GROUP_PREFIX: &str = "inference_";
/// Tags under this prefix are set by the server only (e.g. which model a log belongs to).
pub const RESERVED_TAG_PREFIX: &str = "lakeledger.";

fn refuse_reserved_group(name: &str, what: &str) -> Result<()> {
    if name.starts_with(RESERVED_GROUP_PREFIX) {
        return Err(Error::Reserved(format!(
            "feature group names starting with `{RESERVED_GROUP_PREFIX}` are reserved for inference logs, which only the server may {what}"
        )));
    }
    Ok(())
}

/// Refuses a change to reserved tags: adding, removing or altering any `lakeledger.*` key.
fn refuse_reserved_tags(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Result<()> {
    let reserved = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().filter(|(k, _)| k.starts_with(RESERVED_TAG_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let (was, now) = (reserved(before), reserved(after));
    if was != now {
        let key = now.iter().chain(&was).find(|kv| !was.contains(kv) || !now.contains(kv)).map(|(k, _)| k.clone()).unwrap_or_default();
        return Err(Error::Reserved(format!("tag `{key}`: tags starting with `{RESERVED_TAG_PREFIX}` are set by the server only")));
    }
    Ok(())
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
    /// The ledger record of the request that made the commit (from the commit's own log
    /// entry), when it carries one.
    pub audit_seq: Option<u64>,
    /// Columns this version added to the table (all of them at creation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_added: Vec<String>,
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
            audit_seq: None,
            columns_added: vec![],
        }
    }
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

fn require_active(g: &FeatureGroupRecord) -> Result<()> {
    if g.state == GroupState::Archived {
        return Err(Error::Conflict(format!("feature group `{}` is archived and read-only", g.name)));
    }
    Ok(())
}

/// Key under which a schema-changing commit carries the full new schema, so startup
/// reconciliation can restore the catalog's copy if the process died after the commit.
const SCHEMA_META_KEY: &str = "lakeledger.schema";

impl FeatureGroups {
    pub fn new(
        catalog: SharedCatalog,
        tables: TableStore,
        locks: Arc<KeyedLocks>,
        runtime: Arc<QueryRuntime>,
        settings: FeatureSettings,
        changes: Arc<Changes>,
    ) -> Arc<FeatureGroups> {
        Arc::new(FeatureGroups {
            changes,
            catalog,
            tables,
            locks,
            runtime,
            settings,
            pins: Default::default(),
            observers: Default::default(),
            pin_source: Default::default(),
        })
    }

    /// Follows every group's commits and settings from now on.
    pub fn subscribe(&self, observer: Weak<dyn CommitObserver>) {
        self.observers.write().expect("observer list").push(observer);
    }

    /// Where vacuum learns which files live training sets read.
    pub fn set_pin_source(&self, source: Weak<dyn PinSource>) {
        *self.pin_source.write().expect("pin source") = Some(source);
    }

    fn observers(&self) -> Vec<Arc<dyn CommitObserver>> {
        self.observers.read().expect("observer list").iter().filter_map(Weak::upgrade).collect()
    }

    async fn announce_change(&self, g: &FeatureGroupRecord) -> Result<()> {
        for o in self.observers() {
            o.group_changed(g).await?;
        }
        self.announce_elsewhere(g);
        Ok(())
    }

    /// Tells other replicas the group committed or changed settings.
    fn announce_elsewhere(&self, g: &FeatureGroupRecord) {
        self.changes.announce(Change::Group { tenant_id: g.tenant_id.clone(), name: g.name.clone() });
    }

    /// The lock held around a group's commit and catalog update, so versions and their
    /// commit times are recorded in order. Different groups never share a lock.
    pub fn commit_lock(&self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.get(group_id)
    }

    /// Held shared while a training set reads and pins files: vacuum waits for it.
    pub async fn hold_pins(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.pins.read().await
    }

    /// Threads that read a group's files.
    pub fn read_threads(&self) -> usize {
        self.settings.read_threads.max(1)
    }

    /// Looks a group up in the caller's tenant. Other tenants' groups are simply not found.
    pub async fn find(&self, p: &Principal, name: &str) -> Result<FeatureGroupRecord> {
        self.find_in(&p.tenant_id, name).await
    }

    /// Looks a group up in a tenant by id.
    pub async fn find_in(&self, tenant_id: &str, name: &str) -> Result<FeatureGroupRecord> {
        match self.catalog.feature_group(tenant_id, name).await? {
            Some(g) if g.state != GroupState::Creating => Ok(g),
            Some(_) => Err(Error::NotFound { kind: "feature group", name: name.to_string() }),
            None => Err(not_here(&self.catalog, Held::FeatureGroup, "feature group", name, tenant_id).await?),
        }
    }

    /// The group as the catalog has it now, creating or not (`None` if it is gone).
    pub async fn record(&self, tenant_id: &str, name: &str) -> Result<Option<FeatureGroupRecord>> {
        self.catalog.feature_group(tenant_id, name).await
    }

    /// Every group of every tenant (startup work).
    pub async fn all(&self) -> Result<Vec<FeatureGroupRecord>> {
        self.catalog.all_feature_groups().await
    }

    /// The recorded versions of a group, oldest first.
    pub async fn versions(&self, g: &FeatureGroupRecord) -> Result<Vec<VersionRecord>> {
        self.catalog.versions(&g.id).await
    }

    /// The latest recorded version of a group.
    pub async fn latest_version(&self, group_id: &str) -> Result<Option<VersionRecord>> {
        self.catalog.latest_version(group_id).await
    }

    pub async fn create(&self, p: &Principal, req: CreateFeatureGroup, ctx: &AuditContext) -> Result<FeatureGroupView> {
        validate_group_name(&req.name)?;
        refuse_reserved_group(&req.name, "create")?;
        refuse_reserved_tags(&BTreeMap::new(), &req.tags)?;
        self.create_group(p, req, ctx).await
    }

    /// Creates a group without the checks on reserved names (the server's own groups).
    async fn create_group(&self, p: &Principal, req: CreateFeatureGroup, ctx: &AuditContext) -> Result<FeatureGroupView> {
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
        self.catalog.insert_feature_group(&record).await?;
        let url = self.tables.location(&record.location)?;
        let created = self.tables.create(&url, &record.name, &schema, commit_meta(p, ctx)).await;
        let version = match created {
            Ok(v) => v,
            Err(e) => {
                self.catalog.delete_feature_group(&record.id).await?;
                return Err(e.into());
            }
        };
        self.record_commit(&record.id, commit_record(version, "CREATE TABLE", Some(0), p, ctx)).await?;
        self.catalog.set_feature_group_state(&record.id, GroupState::Active, now_micros()).await?;
        let mut record = record;
        record.state = GroupState::Active;
        if record.online {
            self.announce_change(&record).await?;
        }
        Ok(view(&record, &p.tenant, Some(version), Some(0)))
    }

    pub async fn list(&self, p: &Principal, include_archived: bool) -> Result<Vec<FeatureGroupView>> {
        let mut out = Vec::new();
        for g in self.catalog.list_feature_groups(&p.tenant_id).await? {
            if g.state == GroupState::Archived && !include_archived {
                continue;
            }
            let current = self.catalog.latest_version(&g.id).await?.map(|v| v.version);
            out.push(view(&g, &p.tenant, current, None));
        }
        Ok(out)
    }

    /// The caller's tenant's live (not archived) groups, as records.
    pub async fn visible(&self, p: &Principal) -> Result<Vec<FeatureGroupRecord>> {
        let mut groups = self.catalog.list_feature_groups(&p.tenant_id).await?;
        groups.retain(|g| g.state != GroupState::Archived);
        Ok(groups)
    }

    pub async fn get(&self, p: &Principal, name: &str) -> Result<FeatureGroupView> {
        let g = self.find(p, name).await?;
        let table = self.tables.open(&self.tables.location(&g.location)?, None).await?;
        let rows = lakeledger_query::tables::row_count(&table).await?;
        let current = table.version().map(|v| v as i64);
        Ok(view(&g, &p.tenant, current, rows))
    }

    pub async fn update(&self, p: &Principal, name: &str, req: UpdateFeatureGroup) -> Result<FeatureGroupView> {
        let mut g = self.find(p, name).await?;
        require_active(&g)?;
        if let Some(tags) = &req.tags {
            refuse_reserved_tags(&g.tags, tags)?;
        }
        if req.online.is_some() || req.online_max_age_seconds.is_some() {
            let online = req.online.unwrap_or(g.online);
            let max_age = req.online_max_age_seconds.unwrap_or(g.online_max_age_seconds);
            check_max_age(max_age)?;
            self.catalog.set_feature_group_online(&g.id, online, max_age, now_micros()).await?;
            (g.online, g.online_max_age_seconds) = (online, max_age);
            self.announce_change(&g).await?;
        }
        let meta = GroupMetadata {
            description: req.description.unwrap_or(g.description.clone()),
            owner: req.owner.unwrap_or(g.owner.clone()),
            tags: req.tags.unwrap_or(g.tags.clone()),
        };
        let now = now_micros();
        self.catalog.update_feature_group_metadata(&g.id, &meta, now).await?;
        (g.description, g.owner, g.tags, g.updated_at) = (meta.description, meta.owner, meta.tags, now);
        let current = self.catalog.latest_version(&g.id).await?.map(|v| v.version);
        Ok(view(&g, &p.tenant, current, None))
    }

    pub async fn evolve(&self, p: &Principal, name: &str, req: EvolveSchema, ctx: &AuditContext) -> Result<FeatureGroupView> {
        refuse_reserved_group(name, "change the schema of")?;
        let g = self.find(p, name).await?;
        require_active(&g)?;
        let next = FeatureSchema {
            entity_keys: req.entity_keys.unwrap_or(g.schema.entity_keys.clone()),
            event_time: req.event_time.unwrap_or(g.schema.event_time.clone()),
            features: req.features,
        };
        let lock = self.commit_lock(&g.id);
        let _guard = lock.lock().await;
        // Re-read under the lock: another request may have evolved the schema meanwhile.
        let g = self.find(p, name).await?;
        let url = self.tables.location(&g.location)?;
        // Held against other replicas too; a schema a filled-in version carried is applied
        // first, so this change is judged against it.
        let (held, table, filled_schema) = self.hold(&g.id, &g.name, &url).await?;
        let mut held = held.commit;
        if filled_schema.is_some() {
            held.finish().await?;
            if let Some(s) = filled_schema {
                self.catalog.update_feature_group_schema(&g.id, &s, now_micros()).await?;
            }
            return Err(Error::Conflict(format!("feature group `{name}` was changed by another writer meanwhile; send the change again")));
        }
        let added = match g.schema.evolution_to(&next) {
            Ok(a) => a,
            Err(e) => {
                held.finish().await?;
                return Err(e.into());
            }
        };
        let mut version = held.latest_version().await?;
        if !added.is_empty() {
            let meta = commit_meta(p, ctx).with(SCHEMA_META_KEY, serde_json::to_value(&next).expect("schema serializes"));
            let v = self.tables.add_columns(table, &added, meta).await?;
            held.record(&commit_record(v, "ADD COLUMNS", Some(0), p, ctx)).await?;
            held.finish().await?;
            self.catalog.update_feature_group_schema(&g.id, &next, now_micros()).await?;
            self.announce_elsewhere(&g);
            version = Some(v);
        } else {
            held.finish().await?;
        }
        let g = self.find(p, name).await?;
        Ok(view(&g, &p.tenant, version, None))
    }

    pub async fn archive(&self, p: &Principal, name: &str) -> Result<FeatureGroupView> {
        let mut g = self.find(p, name).await?;
        if g.state != GroupState::Archived {
            let lock = self.commit_lock(&g.id);
            let _guard = lock.lock().await;
            let now = now_micros();
            self.catalog.set_feature_group_state(&g.id, GroupState::Archived, now).await?;
            g.state = GroupState::Archived;
            g.updated_at = now;
            self.announce_elsewhere(&g);
        }
        let current = self.catalog.latest_version(&g.id).await?.map(|v| v.version);
        Ok(view(&g, &p.tenant, current, None))
    }

    pub async fn history(&self, p: &Principal, name: &str) -> Result<Vec<VersionView>> {
        use futures::StreamExt;
        let g = self.find(p, name).await?;
        let table = self.tables.open(&self.tables.location(&g.location)?, None).await?;
        // One small read of the Delta log per version, several at a time (object stores
        // answer each with a round trip), kept in version order.
        let versions = self.catalog.versions(&g.id).await?;
        let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        let table = &table;
        let infos: Vec<_> = futures::stream::iter(numbers).map(|n| self.tables.commit_info(table, n)).buffered(16).collect().await;
        let (mut out, mut known) = (Vec::new(), std::collections::HashSet::new());
        for (v, info) in versions.into_iter().zip(infos) {
            let info = info?;
            let mut view = VersionView::from(v);
            if let Some(ci) = info {
                view.audit_seq = ci.info.get("lakeledger.auditSeq").and_then(|s| s.as_u64());
                for c in ci.columns.unwrap_or_default() {
                    if known.insert(c.clone()) {
                        view.columns_added.push(c);
                    }
                }
            }
            out.push(view);
        }
        Ok(out)
    }

    /// Records a committed version. Commit times strictly increase with the version so that
    /// resolving a timestamp to a version is unambiguous; the catalog enforces it in the
    /// recording transaction, across replicas too (a clock step backwards is absorbed by
    /// placing the commit one microsecond after its predecessor).
    async fn record_commit(&self, group_id: &str, rec: VersionRecord) -> Result<()> {
        self.catalog.record_version(group_id, &rec).await.map(|_| ())
    }
}

/// What a domain that writes rows of its own (the inference log) may do to feature
/// groups: make sure its group exists and append to it, through the same commit path as
/// every upload.
#[derive(Clone)]
pub struct FeatureWriter(Arc<FeatureGroups>);

impl FeatureWriter {
    pub fn new(groups: Arc<FeatureGroups>) -> FeatureWriter {
        FeatureWriter(groups)
    }

    /// The group as the catalog has it, if it exists.
    pub async fn group(&self, p: &Principal, name: &str) -> Result<Option<FeatureGroupRecord>> {
        self.0.record(&p.tenant_id, name).await
    }

    /// Creates the group; one that already exists is left as it is.
    pub async fn ensure(&self, p: &Principal, req: CreateFeatureGroup, ctx: &AuditContext) -> Result<FeatureGroupRecord> {
        let name = req.name.clone();
        match self.0.create_group(p, req, ctx).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.0.find(p, &name).await
    }

    /// Appends rows as one version.
    pub async fn append(&self, p: &Principal, g: &FeatureGroupRecord, batches: Vec<arrow::array::RecordBatch>, ctx: &AuditContext) -> Result<IngestResult> {
        self.0.append_batches(p, g, batches, ctx).await
    }
}
