//! The catalog: tenants, API keys, feature groups and the version → commit-time map.
//!
//! One trait, two implementations (SQLite for the embedded default, Postgres for
//! production), chosen by URL scheme. Both run the same SQL, kept portable on purpose,
//! and each has its own migration folder.

mod migrations;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

pub use sql::{PostgresCatalog, SqliteCatalog};

/// A principal's permissions inside its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the tenant, including keys; admins of `default` also manage tenants.
    Admin,
    /// Create and change feature groups, ingest data, read.
    Writer,
    /// Read feature groups and data.
    Reader,
    /// Read the audit trail.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

/// What is stored to create a key: only the hash of the secret.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: Role,
    pub secret_hash: String,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// The catalog row exists but the Delta table is not confirmed yet.
    Creating,
    Active,
    Archived,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Creating => "creating",
            GroupState::Active => "active",
            GroupState::Archived => "archived",
        }
    }
    pub(crate) fn parse(s: &str) -> GroupState {
        match s {
            "creating" => GroupState::Creating,
            "archived" => GroupState::Archived,
            _ => GroupState::Active,
        }
    }
}

/// A feature group as the catalog knows it.
#[derive(Clone, Debug)]
pub struct FeatureGroupRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub schema: lakeledger_query::FeatureSchema,
    pub description: String,
    pub owner: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub online: bool,
    /// Online values older than this (by event time) are served as `OUTSIDE_MAX_AGE`.
    pub online_max_age_seconds: Option<i64>,
    pub location: String,
    pub state: GroupState,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_by: String,
}

/// One row of the version → commit-time map.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct VersionRecord {
    pub version: i64,
    /// Microseconds since the Unix epoch, strictly increasing with the version.
    pub committed_at: i64,
    pub operation: String,
    pub rows_added: Option<i64>,
    pub actor: String,
    pub request_id: Option<String>,
    /// Rebuilt from the Delta log at startup after an interrupted write.
    pub recovered: bool,
}

/// A registered model.
#[derive(Clone, Debug)]
pub struct ModelRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_by: String,
}

/// One version of a model: its signed artifact and where it came from.
#[derive(Clone, Debug)]
pub struct ModelVersionRecord {
    pub model_id: String,
    pub version: i64,
    /// `active`, `archived` or `deleted`.
    pub state: String,
    /// `trained` or `imported`.
    pub source: String,
    pub artifact_location: String,
    pub artifact_sha256: String,
    pub signature: String,
    pub signing_key_id: String,
    pub training_set_id: Option<String>,
    pub lineage_json: String,
    pub config_json: String,
    pub metrics_json: String,
    pub backend: String,
    pub build_id: String,
    pub job_id: Option<String>,
    pub created_at: i64,
    pub created_by: String,
}

/// One move of an alias (`from` or `to` is `None` when it was created or removed).
#[derive(Clone, Debug)]
pub struct AliasMove {
    pub alias: String,
    pub seq: i64,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub actor: String,
    pub reason: String,
    pub moved_at: i64,
}

/// A canary split of an alias: `percent` of its traffic goes to `version`.
#[derive(Clone, Debug)]
pub struct CanaryRecord {
    pub alias: String,
    pub seq: i64,
    pub version: i64,
    pub percent: f64,
    pub guard_json: String,
    pub started_at: i64,
    pub started_by: String,
    pub reason: String,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

/// A training job as persisted.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: String,
    pub tenant_id: String,
    pub model_name: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub spec_json: String,
    pub progress_json: String,
    pub error: Option<String>,
    pub model_version: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub created_by: String,
    /// The replica running the job, and until when its lease holds.
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    /// A cancel asked on any replica, for the one running the job to act on.
    pub cancel_requested: bool,
}

/// Editable descriptive fields of a feature group.
#[derive(Clone, Debug)]
pub struct GroupMetadata {
    pub description: String,
    pub owner: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Limits an operator sets for a tenant; `None` leaves the server's default (no limit
/// for rates, bytes, queries and jobs; `max_concurrent_requests_per_tenant` for requests).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Requests per second across all replicas (a token bucket)...
    #[schema(minimum = 0.0)]
    pub requests_per_second: Option<f64>,
    /// ... with this many at once above the rate (default: one second's worth).
    #[schema(minimum = 1)]
    pub burst: Option<i64>,
    /// Requests in flight at once (per replica).
    #[schema(minimum = 1)]
    pub max_concurrent_requests: Option<i64>,
    /// Bytes ingested per UTC day, across replicas.
    #[schema(minimum = 0)]
    pub ingest_bytes_per_day: Option<i64>,
    /// SQL queries running at once (per replica).
    #[schema(minimum = 1)]
    pub max_concurrent_queries: Option<i64>,
    /// Training jobs queued or running at once, across replicas.
    #[schema(minimum = 1)]
    pub max_running_jobs: Option<i64>,
    /// Bytes the tenant's storage area holds (feature-group tables with the versions time
    /// travel keeps, training sets, spines, model artifacts), measured across replicas.
    #[schema(minimum = 0)]
    pub max_stored_bytes: Option<i64>,
}

/// Limits on one API key, within its tenant's; `None`: no limit of the key's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Requests per second with this key across all replicas (a token bucket)...
    #[schema(minimum = 0.0)]
    pub requests_per_second: Option<f64>,
    /// ... with this many at once above the rate (default: one second's worth).
    #[schema(minimum = 1)]
    pub burst: Option<i64>,
    /// Requests with this key in flight at once (per replica).
    #[schema(minimum = 1)]
    pub max_concurrent_requests: Option<i64>,
}

/// What an idempotency key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// What the request that reserved it was (method, route, group, mode).
    pub fingerprint: String,
    /// `pending` or `done`.
    pub state: String,
    pub response_json: Option<String>,
    pub created_at: i64,
}

/// A group held for a commit (see [`Catalog::begin_commit`]). Every catalog access while
/// it is held goes through it: on Postgres it owns a connection and its transaction.
#[async_trait]
pub trait GroupCommit: Send {
    /// The highest version recorded, as seen while the group is held.
    async fn latest_version(&mut self) -> Result<Option<i64>>;
    /// Every version recorded, as seen while the group is held.
    async fn recorded_versions(&mut self) -> Result<Vec<i64>>;
    /// Records a version as [`Catalog::record_version`] does, inside the hold.
    async fn record(&mut self, v: &VersionRecord) -> Result<i64>;
    /// Makes what was recorded durable and releases the group.
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// Kinds of object the catalog keeps per tenant, by name or id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    FeatureGroup,
    Model,
    TrainingJob,
    Key,
}

/// The refusal for an object of `kind` that `tenant_id` does not hold: [`Error::NotVisible`]
/// naming the tenants that do, if any, else [`Error::NotFound`].
pub async fn not_here(catalog: &SharedCatalog, held: Held, kind: &'static str, name: &str, tenant_id: &str) -> Result<Error> {
    let owners = catalog.holders_elsewhere(held, name, tenant_id).await?;
    let name = name.to_string();
    Ok(if owners.is_empty() { Error::NotFound { kind, name } } else { Error::NotVisible { kind, name, owners } })
}

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Which backend this is, for logs and banners.
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<()>;

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>>;
    async fn tenant_by_id(&self, id: &str) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    /// The names of the tenants other than `tenant_id` that hold an object of `kind` with
    /// this name (or id), at most a few: whom to tell of a refused attempt on it.
    async fn holders_elsewhere(&self, kind: Held, name: &str, tenant_id: &str) -> Result<Vec<String>>;

    async fn create_key(&self, key: &NewApiKey) -> Result<()>;
    /// The live (unrevoked) key with this secret hash, with its tenant.
    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<(ApiKey, Tenant)>>;
    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>>;
    /// Marks a key revoked; false when no such live key exists in the tenant.
    async fn revoke_key(&self, tenant_id: &str, key_id: &str, at: i64) -> Result<bool>;

    async fn insert_feature_group(&self, group: &FeatureGroupRecord) -> Result<()>;
    async fn feature_group(&self, tenant_id: &str, name: &str) -> Result<Option<FeatureGroupRecord>>;
    async fn list_feature_groups(&self, tenant_id: &str) -> Result<Vec<FeatureGroupRecord>>;
    /// Every group of every tenant, for startup reconciliation.
    async fn all_feature_groups(&self) -> Result<Vec<FeatureGroupRecord>>;
    async fn set_feature_group_state(&self, id: &str, state: GroupState, at: i64) -> Result<()>;
    async fn update_feature_group_metadata(&self, id: &str, meta: &GroupMetadata, at: i64) -> Result<()>;
    async fn update_feature_group_schema(&self, id: &str, schema: &lakeledger_query::FeatureSchema, at: i64) -> Result<()>;
    /// Removes a group whose creation never completed.
    async fn delete_feature_group(&self, id: &str) -> Result<()>;

    /// Records a committed version in one transaction that holds the group locked, so that
    /// replicas recording at once take turns. Its commit time is moved past its
    /// predecessor's and kept before its successor's (a gap filled late): times rise with
    /// versions. Idempotent: recording a version again changes nothing. Returns the time
    /// recorded.
    async fn record_version(&self, group_id: &str, v: &VersionRecord) -> Result<i64>;
    /// Holds a group against other replicas' commits until the returned commit is finished
    /// or dropped, so that a Delta commit and its catalog record happen as one step per
    /// group across every process sharing this catalog (Postgres: the group's row lock,
    /// held in a transaction; SQLite, which serves one process: the process's own lock,
    /// each record its own transaction).
    async fn begin_commit(&self, group_id: &str) -> Result<Box<dyn GroupCommit>>;
    async fn versions(&self, group_id: &str) -> Result<Vec<VersionRecord>>;
    async fn latest_version(&self, group_id: &str) -> Result<Option<VersionRecord>>;
    async fn version(&self, group_id: &str, version: i64) -> Result<Option<VersionRecord>>;
    /// The newest version committed at or before `at` (microseconds).
    async fn version_as_of(&self, group_id: &str, at: i64) -> Result<Option<VersionRecord>>;

    async fn insert_model(&self, m: &ModelRecord) -> Result<()>;
    async fn model(&self, tenant_id: &str, name: &str) -> Result<Option<ModelRecord>>;
    async fn list_models(&self, tenant_id: &str) -> Result<Vec<ModelRecord>>;
    /// Inserts `v` as the model's next version (its `version` field is ignored) and
    /// returns the number it got.
    async fn insert_model_version(&self, v: &ModelVersionRecord) -> Result<i64>;
    async fn model_versions(&self, model_id: &str) -> Result<Vec<ModelVersionRecord>>;
    async fn model_version(&self, model_id: &str, version: i64) -> Result<Option<ModelVersionRecord>>;
    async fn set_model_version_state(&self, model_id: &str, version: i64, state: &str) -> Result<()>;
    /// Versions (of any model of the tenant) trained from one of these training sets.
    async fn model_versions_by_training_sets(&self, tenant_id: &str, training_set_ids: &[String]) -> Result<Vec<(String, ModelVersionRecord)>>;
    /// Points `alias` at `to` (or removes it) and appends the move to its history, in
    /// one transaction. Returns the move.
    async fn move_alias(&self, model_id: &str, alias: &str, to: Option<i64>, actor: &str, reason: &str, at: i64) -> Result<AliasMove>;
    async fn aliases(&self, model_id: &str) -> Result<Vec<(String, i64)>>;
    async fn alias_history(&self, model_id: &str, alias: &str) -> Result<Vec<AliasMove>>;

    /// Opens a canary on an alias (`seq` is assigned); refused while one is open.
    async fn start_canary(&self, model_id: &str, c: &CanaryRecord) -> Result<CanaryRecord>;
    /// Closes the open canary of an alias; false when none was open.
    async fn end_canary(&self, model_id: &str, alias: &str, at: i64, reason: &str, by: &str) -> Result<bool>;
    /// Every canary of an alias, oldest first.
    async fn canaries(&self, model_id: &str, alias: &str) -> Result<Vec<CanaryRecord>>;
    async fn set_feature_group_online(&self, id: &str, online: bool, max_age_seconds: Option<i64>, at: i64) -> Result<()>;

    /// Reserves an idempotency key for a request with this fingerprint; `None` when it
    /// is now reserved for this request, otherwise what the key already holds. Completed
    /// keys of the tenant older than a day are dropped on the way.
    async fn reserve_idempotency_key(&self, tenant_id: &str, key: &str, fingerprint: &str, at: i64) -> Result<Option<IdempotencyRecord>>;
    /// Stores the response of the request that holds the key.
    async fn complete_idempotency_key(&self, tenant_id: &str, key: &str, response_json: &str) -> Result<()>;
    /// Frees a pending key whose request wrote nothing, so a retry may run.
    async fn release_idempotency_key(&self, tenant_id: &str, key: &str) -> Result<()>;
    /// Takes over a pending key last reserved at `seen` (its request stopped); false when
    /// someone else took it over first.
    async fn renew_idempotency_key(&self, tenant_id: &str, key: &str, seen: i64, at: i64) -> Result<bool>;

    /// The tenant's limits, if an operator set any.
    async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<Quotas>>;
    async fn set_tenant_quotas(&self, tenant_id: &str, q: &Quotas, at: i64, by: &str) -> Result<()>;
    /// Takes up to `want` request tokens from a shared bucket (`tenant:<id>` or
    /// `key:<id>`; refilled at `rate` per second up to `burst`) as of `now`
    /// (microseconds); returns how many.
    async fn claim_rate_tokens(&self, bucket: &str, rate: f64, burst: f64, want: f64, now: i64) -> Result<f64>;
    async fn key_limits(&self, key_id: &str) -> Result<Option<KeyLimits>>;
    /// Sets a key's limits; false when the tenant has no such live key.
    async fn set_key_limits(&self, tenant_id: &str, key_id: &str, limits: &KeyLimits, at: i64, by: &str) -> Result<bool>;
    /// Bytes the tenant ingested on `day` (days since the epoch, UTC).
    async fn ingest_bytes(&self, tenant_id: &str, day: i64) -> Result<i64>;
    async fn add_ingest_bytes(&self, tenant_id: &str, day: i64, bytes: i64) -> Result<()>;
    /// Jobs of the tenant queued or running, on any replica.
    async fn running_jobs(&self, tenant_id: &str) -> Result<i64>;

    async fn insert_job(&self, j: &JobRecord) -> Result<()>;
    /// Claims the oldest queued job no replica has claimed, for `worker`, leased until
    /// `until`; `None` when there is none. Two replicas never claim the same job.
    async fn claim_job(&self, worker: &str, until: i64) -> Result<Option<JobRecord>>;
    /// Cancels a queued job no replica has claimed; `false` when it was claimed or ended.
    async fn cancel_queued_job(&self, tenant_id: &str, id: &str, at: i64) -> Result<bool>;
    /// Extends the lease of a job `worker` runs; `None` when the job is no longer its own
    /// (it ended, or its lease lapsed and it was failed), else whether a cancel was asked.
    async fn renew_job_lease(&self, id: &str, worker: &str, until: i64) -> Result<Option<bool>>;
    /// Asks the replica running an unfinished job to cancel it; false when it has ended.
    async fn request_job_cancel(&self, tenant_id: &str, id: &str) -> Result<bool>;
    /// Ends an unfinished job as failed with `error`, if its lease lapsed before `now`, it
    /// has no worker (written by an earlier version), or it belongs to `orphaned_by` (this
    /// replica's previous run; empty: none). True for exactly one caller.
    async fn fail_abandoned_job(&self, id: &str, now: i64, orphaned_by: &str, error: &str) -> Result<bool>;
    async fn job(&self, tenant_id: &str, id: &str) -> Result<Option<JobRecord>>;
    async fn list_jobs(&self, tenant_id: &str) -> Result<Vec<JobRecord>>;
    /// Updates state, progress, error, version and times; a job already in a final state,
    /// or run by another replica than `j.worker`, is never changed (returns false).
    async fn update_job(&self, j: &JobRecord) -> Result<bool>;
    /// Jobs left queued or running, e.g. by a restart.
    async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>>;
}

pub type SharedCatalog = Arc<dyn Catalog>;

/// Opens the catalog named by `url` and brings its schema up to date.
pub async fn connect(url: &str) -> Result<SharedCatalog> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresCatalog::connect(url).await?))
    } else {
        Ok(Arc::new(SqliteCatalog::connect(url).await?))
    }
}
