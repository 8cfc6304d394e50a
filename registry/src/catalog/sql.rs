//! SQLite and Postgres catalogs. The SQL is the same portable subset for both (numbered
//! `$n` parameters, `ON CONFLICT`, no dialect functions), so one macro body serves both
//! pools; each backend keeps its own migrations.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Row;

use super::*;
use crate::error::{Error, Result};

/// Decodes the JSON-typed columns of a feature group row.
fn group_json(id: &str, schema_json: &str, tags_json: &str) -> Result<(lakeledger_query::FeatureSchema, std::collections::BTreeMap<String, String>)> {
    let schema = serde_json::from_str(schema_json)
        .map_err(|e| Error::Internal(format!("catalog holds an unreadable schema for group {id}: {e}")))?;
    let tags = serde_json::from_str(tags_json)
        .map_err(|e| Error::Internal(format!("catalog holds unreadable tags for group {id}: {e}")))?;
    Ok((schema, tags))
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| Error::Internal(format!("catalog holds an unknown role `{s}`")))
}

macro_rules! group_columns { () => { "id, tenant_id, name, schema_json, description, owner, tags_json, online, location, state, created_at, updated_at, created_by" }; }
macro_rules! version_columns { () => { "version, committed_at, operation, rows_added, actor, request_id, recovered" }; }
macro_rules! key_columns { () => { "k.id, k.tenant_id, k.name, k.role, k.created_at, k.created_by, k.revoked_at" }; }

macro_rules! sql_catalog {
    ($name:ident, $db:ty, $kind:literal, $migrations:literal) => {
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            fn group_row(row: &<$db as sqlx::Database>::Row) -> Result<FeatureGroupRecord> {
                let id: String = row.try_get("id")?;
                let (schema, tags) = group_json(&id, row.try_get("schema_json")?, row.try_get("tags_json")?)?;
                Ok(FeatureGroupRecord {
                    id,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    schema,
                    description: row.try_get("description")?,
                    owner: row.try_get("owner")?,
                    tags,
                    online: row.try_get("online")?,
                    location: row.try_get("location")?,
                    state: GroupState::parse(row.try_get("state")?),
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn version_row(row: &<$db as sqlx::Database>::Row) -> Result<VersionRecord> {
                Ok(VersionRecord {
                    version: row.try_get("version")?,
                    committed_at: row.try_get("committed_at")?,
                    operation: row.try_get("operation")?,
                    rows_added: row.try_get("rows_added")?,
                    actor: row.try_get("actor")?,
                    request_id: row.try_get("request_id")?,
                    recovered: row.try_get("recovered")?,
                })
            }

            fn key_row(row: &<$db as sqlx::Database>::Row) -> Result<ApiKey> {
                Ok(ApiKey {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    role: role_of(row.try_get::<&str, _>("role")?)?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                    revoked_at: row.try_get("revoked_at")?,
                })
            }

            fn tenant_row(row: &<$db as sqlx::Database>::Row) -> Result<Tenant> {
                Ok(Tenant { id: row.try_get("id")?, name: row.try_get("name")?, created_at: row.try_get("created_at")? })
            }
        }

        #[async_trait]
        impl Catalog for $name {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_tenant(&self, t: &Tenant) -> Result<()> {
                sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&t.id)
                    .bind(&t.name)
                    .bind(t.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| unique_to(e, "tenant", &t.name))?;
                Ok(())
            }

            async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::tenant_row).transpose()
            }

            async fn tenant_by_id(&self, id: &str) -> Result<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::tenant_row).transpose()
            }

            async fn list_tenants(&self) -> Result<Vec<Tenant>> {
                let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name").fetch_all(&self.pool).await?;
                rows.iter().map(Self::tenant_row).collect()
            }

            async fn create_key(&self, k: &NewApiKey) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_at, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&k.id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(k.role.as_str())
                .bind(&k.secret_hash)
                .bind(k.created_at)
                .bind(&k.created_by)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<(ApiKey, Tenant)>> {
                let sql = concat!(
                    "SELECT ", key_columns!(), ", t.name AS tenant_name, t.created_at AS tenant_created_at \
                     FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                     WHERE k.secret_hash = $1 AND k.revoked_at IS NULL"
                );
                let row = sqlx::query(sql).bind(secret_hash).fetch_optional(&self.pool).await?;
                let Some(row) = row else { return Ok(None) };
                let key = Self::key_row(&row)?;
                let tenant = Tenant {
                    id: key.tenant_id.clone(),
                    name: row.try_get("tenant_name")?,
                    created_at: row.try_get("tenant_created_at")?,
                };
                Ok(Some((key, tenant)))
            }

            async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
                let sql = concat!("SELECT ", key_columns!(), " FROM api_keys k WHERE k.tenant_id = $1 ORDER BY k.created_at, k.id");
                let rows = sqlx::query(sql).bind(tenant_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::key_row).collect()
            }

            async fn revoke_key(&self, tenant_id: &str, key_id: &str, at: i64) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(key_id)
                .bind(tenant_id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_feature_group(&self, g: &FeatureGroupRecord) -> Result<()> {
                let sql = concat!(
                    "INSERT INTO feature_groups (", group_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                );
                sqlx::query(sql)
                    .bind(&g.id)
                    .bind(&g.tenant_id)
                    .bind(&g.name)
                    .bind(serde_json::to_string(&g.schema).expect("schema serializes"))
                    .bind(&g.description)
                    .bind(&g.owner)
                    .bind(serde_json::to_string(&g.tags).expect("tags serialize"))
                    .bind(g.online)
                    .bind(&g.location)
                    .bind(g.state.as_str())
                    .bind(g.created_at)
                    .bind(g.updated_at)
                    .bind(&g.created_by)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| unique_to(e, "feature group", &g.name))?;
                Ok(())
            }

            async fn feature_group(&self, tenant_id: &str, name: &str) -> Result<Option<FeatureGroupRecord>> {
                let sql = concat!("SELECT ", group_columns!(), " FROM feature_groups WHERE tenant_id = $1 AND name = $2");
                let row = sqlx::query(sql).bind(tenant_id).bind(name).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::group_row).transpose()
            }

            async fn list_feature_groups(&self, tenant_id: &str) -> Result<Vec<FeatureGroupRecord>> {
                let sql = concat!(
                    "SELECT ", group_columns!(), " FROM feature_groups WHERE tenant_id = $1 AND state <> 'creating' ORDER BY name"
                );
                let rows = sqlx::query(sql).bind(tenant_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::group_row).collect()
            }

            async fn all_feature_groups(&self) -> Result<Vec<FeatureGroupRecord>> {
                let sql = concat!("SELECT ", group_columns!(), " FROM feature_groups ORDER BY tenant_id, name");
                let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
                rows.iter().map(Self::group_row).collect()
            }

            async fn set_feature_group_state(&self, id: &str, state: GroupState, at: i64) -> Result<()> {
                sqlx::query("UPDATE feature_groups SET state = $1, updated_at = $2 WHERE id = $3")
                    .bind(state.as_str())
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn update_feature_group_metadata(&self, id: &str, m: &GroupMetadata, at: i64) -> Result<()> {
                sqlx::query(
                    "UPDATE feature_groups SET description = $1, owner = $2, tags_json = $3, updated_at = $4 WHERE id = $5",
                )
                .bind(&m.description)
                .bind(&m.owner)
                .bind(serde_json::to_string(&m.tags).expect("tags serialize"))
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn update_feature_group_schema(&self, id: &str, schema: &lakeledger_query::FeatureSchema, at: i64) -> Result<()> {
                sqlx::query("UPDATE feature_groups SET schema_json = $1, updated_at = $2 WHERE id = $3")
                    .bind(serde_json::to_string(schema).expect("schema serializes"))
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_feature_group(&self, id: &str) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM feature_group_versions WHERE feature_group_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM feature_groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_version(&self, group_id: &str, v: &VersionRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO feature_group_versions \
                     (feature_group_id, version, committed_at, operation, rows_added, actor, request_id, recovered) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (feature_group_id, version) DO NOTHING",
                )
                .bind(group_id)
                .bind(v.version)
                .bind(v.committed_at)
                .bind(&v.operation)
                .bind(v.rows_added)
                .bind(&v.actor)
                .bind(&v.request_id)
                .bind(v.recovered)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn versions(&self, group_id: &str) -> Result<Vec<VersionRecord>> {
                let sql = concat!("SELECT ", version_columns!(), " FROM feature_group_versions WHERE feature_group_id = $1 ORDER BY version");
                let rows = sqlx::query(sql).bind(group_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::version_row).collect()
            }

            async fn latest_version(&self, group_id: &str) -> Result<Option<VersionRecord>> {
                let sql = concat!(
                    "SELECT ", version_columns!(), " FROM feature_group_versions WHERE feature_group_id = $1 ORDER BY version DESC LIMIT 1"
                );
                let row = sqlx::query(sql).bind(group_id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::version_row).transpose()
            }

            async fn version(&self, group_id: &str, version: i64) -> Result<Option<VersionRecord>> {
                let sql = concat!("SELECT ", version_columns!(), " FROM feature_group_versions WHERE feature_group_id = $1 AND version = $2");
                let row = sqlx::query(sql).bind(group_id).bind(version).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::version_row).transpose()
            }

            async fn version_as_of(&self, group_id: &str, at: i64) -> Result<Option<VersionRecord>> {
                let sql = concat!(
                    "SELECT ", version_columns!(), " FROM feature_group_versions WHERE feature_group_id = $1 AND committed_at <= $2 \
                     ORDER BY version DESC LIMIT 1"
                );
                let row = sqlx::query(sql).bind(group_id).bind(at).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::version_row).transpose()
            }
        }
    };
}

sql_catalog!(SqliteCatalog, sqlx::Sqlite, "sqlite", "../../migrations/sqlite");
sql_catalog!(PostgresCatalog, sqlx::Postgres, "postgres", "../../migrations/postgres");

fn unique_to(e: sqlx::Error, kind: &'static str, name: &str) -> Error {
    if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
        Error::AlreadyExists { kind, name: name.to_string() }
    } else {
        Error::Catalog(e)
    }
}

impl SqliteCatalog {
    pub async fn connect(url: &str) -> Result<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL lets readers proceed during a write; the busy timeout makes concurrent
            // writers wait for the lock instead of failing.
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteCatalog { pool })
    }
}

impl PostgresCatalog {
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PostgresCatalog { pool })
    }
}
