//! The catalog: tenants, API keys, feature groups and the version → commit-time map.
//!
//! One trait, two implementations (SQLite for the embedded default, Postgres for
//! production), chosen by URL scheme. Both run the same SQL, kept portable on purpose,
//! and each has its own migration folder.

mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Result;

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

/// Editable descriptive fields of a feature group.
#[derive(Clone, Debug)]
pub struct GroupMetadata {
    pub description: String,
    pub owner: String,
    pub tags: std::collections::BTreeMap<String, String>,
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

    /// Records a committed version. Idempotent: recording the same version again is a no-op.
    async fn record_version(&self, group_id: &str, v: &VersionRecord) -> Result<()>;
    async fn versions(&self, group_id: &str) -> Result<Vec<VersionRecord>>;
    async fn latest_version(&self, group_id: &str) -> Result<Option<VersionRecord>>;
    async fn version(&self, group_id: &str, version: i64) -> Result<Option<VersionRecord>>;
    /// The newest version committed at or before `at` (microseconds).
    async fn version_as_of(&self, group_id: &str, at: i64) -> Result<Option<VersionRecord>>;
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

/// Microseconds since the Unix epoch, the time unit of the catalog.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
