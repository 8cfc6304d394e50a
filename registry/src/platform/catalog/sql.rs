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

/// The commit time to record for a version: its own, moved past its predecessor's and
/// kept before its successor's (a gap filled late), so times rise with versions and
/// `TIMESTAMP AS OF` resolves to one version. `None` when no microsecond is left between.
fn commit_time_between(wanted: i64, before: Option<i64>, after: Option<i64>) -> Option<i64> {
    let low = before.map_or(i64::MIN, |b| b.saturating_add(1));
    let high = after.map_or(i64::MAX, |a| a.saturating_sub(1));
    (low <= high).then(|| wanted.clamp(low, high))
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| Error::Internal(format!("catalog holds an unknown role `{s}`")))
}

macro_rules! group_columns { () => { "id, tenant_id, name, schema_json, description, owner, tags_json, online, online_max_age_seconds, location, state, created_at, updated_at, created_by" }; }
macro_rules! version_columns { () => { "version, committed_at, operation, rows_added, actor, request_id, recovered" }; }
macro_rules! model_columns { () => { "id, tenant_id, name, description, owner, tags_json, created_at, updated_at, created_by" }; }
macro_rules! model_version_columns { () => { "model_id, version, state, source, artifact_location, artifact_sha256, signature, signing_key_id, training_set_id, lineage_json, config_json, metrics_json, backend, build_id, job_id, created_at, created_by" }; }
macro_rules! model_version_columns_v { () => { "v.model_id, v.version, v.state, v.source, v.artifact_location, v.artifact_sha256, v.signature, v.signing_key_id, v.training_set_id, v.lineage_json, v.config_json, v.metrics_json, v.backend, v.build_id, v.job_id, v.created_at, v.created_by" }; }
macro_rules! job_columns { () => { "id, tenant_id, model_name, state, spec_json, progress_json, error, model_version, created_at, started_at, finished_at, created_by, worker, lease_until, cancel_requested" }; }
macro_rules! key_columns { () => { "k.id, k.tenant_id, k.name, k.role, k.created_at, k.created_by, k.revoked_at" }; }

/// Records a version inside the transaction `$tx` (which holds the group): idempotent,
/// its commit time kept between its neighbours'. Evaluates to the time recorded.
macro_rules! record_version_in {
    ($tx:ident, $group_id:expr, $v:expr) => {{
        let (group_id, v): (&str, &VersionRecord) = ($group_id, $v);
        let recorded: Option<i64> =
            sqlx::query_scalar("SELECT committed_at FROM feature_group_versions WHERE feature_group_id = $1 AND version = $2")
                .bind(group_id)
                .bind(v.version)
                .fetch_optional(&mut *$tx)
                .await?;
        match recorded {
            Some(at) => at,
            None => {
                let before: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(committed_at) FROM feature_group_versions WHERE feature_group_id = $1 AND version < $2")
                        .bind(group_id)
                        .bind(v.version)
                        .fetch_one(&mut *$tx)
                        .await?;
                let after: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(committed_at) FROM feature_group_versions WHERE feature_group_id = $1 AND version > $2")
                        .bind(group_id)
                        .bind(v.version)
                        .fetch_one(&mut *$tx)
                        .await?;
                let at = commit_time_between(v.committed_at, before, after).ok_or_else(|| {
                    Error::Conflict(format!("version {} of feature group {group_id} cannot be given a commit time between its neighbours'", v.version))
                })?;
                sqlx::query(
                    "INSERT INTO feature_group_versions \
                     (feature_group_id, version, committed_at, operation, rows_added, actor, request_id, recovered) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(group_id)
                .bind(v.version)
                .bind(at)
                .bind(&v.operation)
                .bind(v.rows_added)
                .bind(&v.actor)
                .bind(&v.request_id)
                .bind(v.recovered)
                .execute(&mut *$tx)
                .await?;
                at
            }
        }
    }};
}

macro_rules! sql_catalog {
    ($name:ident, $db:ty, $kind:literal, $begin_write:literal, $lock_group:literal, $lock_bucket:literal, $skip_locked:literal) => {
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// A transaction that reads and then writes. SQLite must take the write lock
            /// at `BEGIN` (`IMMEDIATE`): a deferred transaction that reads first and
            /// writes after another connection committed fails with `SQLITE_BUSY_SNAPSHOT`
            /// at once, without waiting out the busy timeout.
            async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>> {
                Ok(self.pool.begin_with($begin_write).await?)
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
                    online_max_age_seconds: row.try_get("online_max_age_seconds")?,
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

            fn model_row(row: &<$db as sqlx::Database>::Row) -> Result<ModelRecord> {
                let id: String = row.try_get("id")?;
                let tags = serde_json::from_str(row.try_get("tags_json")?)
                    .map_err(|e| Error::Internal(format!("catalog holds unreadable tags for model {id}: {e}")))?;
                Ok(ModelRecord {
                    id,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    owner: row.try_get("owner")?,
                    tags,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn model_version_row(row: &<$db as sqlx::Database>::Row) -> Result<ModelVersionRecord> {
                Ok(ModelVersionRecord {
                    model_id: row.try_get("model_id")?,
                    version: row.try_get("version")?,
                    state: row.try_get("state")?,
                    source: row.try_get("source")?,
                    artifact_location: row.try_get("artifact_location")?,
                    artifact_sha256: row.try_get("artifact_sha256")?,
                    signature: row.try_get("signature")?,
                    signing_key_id: row.try_get("signing_key_id")?,
                    training_set_id: row.try_get("training_set_id")?,
                    lineage_json: row.try_get("lineage_json")?,
                    config_json: row.try_get("config_json")?,
                    metrics_json: row.try_get("metrics_json")?,
                    backend: row.try_get("backend")?,
                    build_id: row.try_get("build_id")?,
                    job_id: row.try_get("job_id")?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn alias_move_row(row: &<$db as sqlx::Database>::Row) -> Result<AliasMove> {
                Ok(AliasMove {
                    alias: row.try_get("alias")?,
                    seq: row.try_get("seq")?,
                    from_version: row.try_get("from_version")?,
                    to_version: row.try_get("to_version")?,
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                    moved_at: row.try_get("moved_at")?,
                })
            }

            fn job_row(row: &<$db as sqlx::Database>::Row) -> Result<JobRecord> {
                Ok(JobRecord {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    model_name: row.try_get("model_name")?,
                    state: row.try_get("state")?,
                    spec_json: row.try_get("spec_json")?,
                    progress_json: row.try_get("progress_json")?,
                    error: row.try_get("error")?,
                    model_version: row.try_get("model_version")?,
                    created_at: row.try_get("created_at")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    created_by: row.try_get("created_by")?,
                    worker: row.try_get("worker")?,
                    lease_until: row.try_get("lease_until")?,
                    cancel_requested: row.try_get("cancel_requested")?,
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

            async fn holders_elsewhere(&self, kind: Held, name: &str, tenant_id: &str) -> Result<Vec<String>> {
                let sql = match kind {
                    Held::FeatureGroup => "SELECT t.name FROM feature_groups o JOIN tenants t ON t.id = o.tenant_id \
                                           WHERE o.name = $1 AND o.tenant_id <> $2 AND o.state <> 'creating' ORDER BY t.name LIMIT 8",
                    Held::Model => "SELECT t.name FROM models o JOIN tenants t ON t.id = o.tenant_id \
                                    WHERE o.name = $1 AND o.tenant_id <> $2 ORDER BY t.name LIMIT 8",
                    Held::TrainingJob => "SELECT t.name FROM training_jobs o JOIN tenants t ON t.id = o.tenant_id \
                                          WHERE o.id = $1 AND o.tenant_id <> $2 ORDER BY t.name LIMIT 8",
                    Held::Key => "SELECT t.name FROM api_keys o JOIN tenants t ON t.id = o.tenant_id \
                                  WHERE o.id = $1 AND o.tenant_id <> $2 ORDER BY t.name LIMIT 8",
                };
                let rows = sqlx::query(sql).bind(name).bind(tenant_id).fetch_all(&self.pool).await?;
                Ok(rows.iter().map(|r| r.try_get::<String, _>("name")).collect::<std::result::Result<_, _>>()?)
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
                    "INSERT INTO feature_groups (", group_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
                    .bind(g.online_max_age_seconds)
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
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM feature_group_versions WHERE feature_group_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM feature_groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_version(&self, group_id: &str, v: &VersionRecord) -> Result<i64> {
                let mut tx = self.begin_write().await?;
                sqlx::query($lock_group).bind(group_id).execute(&mut *tx).await?;
                let at = record_version_in!(tx, group_id, v);
                tx.commit().await?;
                Ok(at)
            }

            async fn reserve_idempotency_key(&self, tenant_id: &str, key: &str, fingerprint: &str, at: i64) -> Result<Option<IdempotencyRecord>> {
                const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;
                sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND state = 'done' AND created_at < $2")
                    .bind(tenant_id)
                    .bind(at - DAY_MICROS)
                    .execute(&self.pool)
                    .await?;
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (tenant_id, idem_key, fingerprint, state, response_json, created_at) \
                     VALUES ($1, $2, $3, 'pending', NULL, $4) ON CONFLICT (tenant_id, idem_key) DO NOTHING",
                )
                .bind(tenant_id)
                .bind(key)
                .bind(fingerprint)
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if inserted == 1 {
                    return Ok(None);
                }
                let row = sqlx::query("SELECT fingerprint, state, response_json, created_at FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2")
                    .bind(tenant_id)
                    .bind(key)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Some(IdempotencyRecord {
                    fingerprint: row.try_get("fingerprint")?,
                    state: row.try_get("state")?,
                    response_json: row.try_get("response_json")?,
                    created_at: row.try_get("created_at")?,
                }))
            }

            async fn complete_idempotency_key(&self, tenant_id: &str, key: &str, response_json: &str) -> Result<()> {
                sqlx::query("UPDATE idempotency_keys SET state = 'done', response_json = $3 WHERE tenant_id = $1 AND idem_key = $2")
                    .bind(tenant_id)
                    .bind(key)
                    .bind(response_json)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn release_idempotency_key(&self, tenant_id: &str, key: &str) -> Result<()> {
                sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2 AND state = 'pending'")
                    .bind(tenant_id)
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn renew_idempotency_key(&self, tenant_id: &str, key: &str, seen: i64, at: i64) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE idempotency_keys SET created_at = $4 WHERE tenant_id = $1 AND idem_key = $2 AND state = 'pending' AND created_at = $3",
                )
                .bind(tenant_id)
                .bind(key)
                .bind(seen)
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<Quotas>> {
                let row = sqlx::query(
                    "SELECT requests_per_second, burst, max_concurrent_requests, ingest_bytes_per_day, max_concurrent_queries, max_running_jobs, \
                     max_stored_bytes FROM tenant_quotas WHERE tenant_id = $1",
                )
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| -> Result<Quotas> {
                    Ok(Quotas {
                        requests_per_second: r.try_get("requests_per_second")?,
                        burst: r.try_get("burst")?,
                        max_concurrent_requests: r.try_get("max_concurrent_requests")?,
                        ingest_bytes_per_day: r.try_get("ingest_bytes_per_day")?,
                        max_concurrent_queries: r.try_get("max_concurrent_queries")?,
                        max_running_jobs: r.try_get("max_running_jobs")?,
                        max_stored_bytes: r.try_get("max_stored_bytes")?,
                    })
                })
                .transpose()
            }

            async fn set_tenant_quotas(&self, tenant_id: &str, q: &Quotas, at: i64, by: &str) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tenant_quotas (tenant_id, requests_per_second, burst, max_concurrent_requests, ingest_bytes_per_day, \
                     max_concurrent_queries, max_running_jobs, max_stored_bytes, updated_at, updated_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (tenant_id) DO UPDATE SET requests_per_second = $2, burst = $3, max_concurrent_requests = $4, \
                     ingest_bytes_per_day = $5, max_concurrent_queries = $6, max_running_jobs = $7, max_stored_bytes = $8, \
                     updated_at = $9, updated_by = $10",
                )
                .bind(tenant_id)
                .bind(q.requests_per_second)
                .bind(q.burst)
                .bind(q.max_concurrent_requests)
                .bind(q.ingest_bytes_per_day)
                .bind(q.max_concurrent_queries)
                .bind(q.max_running_jobs)
                .bind(q.max_stored_bytes)
                .bind(at)
                .bind(by)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_rate_tokens(&self, bucket: &str, rate: f64, burst: f64, want: f64, now: i64) -> Result<f64> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES ($1, $2, $3) ON CONFLICT (bucket) DO NOTHING",
                )
                .bind(bucket)
                .bind(burst)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query($lock_bucket).bind(bucket).fetch_one(&mut *tx).await?;
                let (tokens, updated): (f64, i64) = (row.try_get("tokens")?, row.try_get("updated_at")?);
                let elapsed = (now - updated).max(0) as f64 / 1e6;
                let available = (tokens + elapsed * rate).min(burst);
                let granted = available.min(want).max(0.0);
                sqlx::query("UPDATE rate_buckets SET tokens = $2, updated_at = $3 WHERE bucket = $1")
                    .bind(bucket)
                    .bind(available - granted)
                    .bind(now.max(updated))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(granted)
            }

            async fn key_limits(&self, key_id: &str) -> Result<Option<KeyLimits>> {
                let row = sqlx::query("SELECT requests_per_second, burst, max_concurrent_requests FROM key_limits WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| -> Result<KeyLimits> {
                    Ok(KeyLimits {
                        requests_per_second: r.try_get("requests_per_second")?,
                        burst: r.try_get("burst")?,
                        max_concurrent_requests: r.try_get("max_concurrent_requests")?,
                    })
                })
                .transpose()
            }

            async fn set_key_limits(&self, tenant_id: &str, key_id: &str, l: &KeyLimits, at: i64, by: &str) -> Result<bool> {
                // Only a live key of the tenant takes limits: the insert selects it.
                let n = sqlx::query(
                    "INSERT INTO key_limits (key_id, requests_per_second, burst, max_concurrent_requests, updated_at, updated_by) \
                     SELECT id, $3, $4, $5, $6, $7 FROM api_keys WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL \
                     ON CONFLICT (key_id) DO UPDATE SET requests_per_second = $3, burst = $4, max_concurrent_requests = $5, \
                     updated_at = $6, updated_by = $7",
                )
                .bind(key_id)
                .bind(tenant_id)
                .bind(l.requests_per_second)
                .bind(l.burst)
                .bind(l.max_concurrent_requests)
                .bind(at)
                .bind(by)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn ingest_bytes(&self, tenant_id: &str, day: i64) -> Result<i64> {
                let n: Option<i64> = sqlx::query_scalar("SELECT ingest_bytes FROM tenant_usage WHERE tenant_id = $1 AND day = $2")
                    .bind(tenant_id)
                    .bind(day)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(n.unwrap_or(0))
            }

            async fn add_ingest_bytes(&self, tenant_id: &str, day: i64, bytes: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tenant_usage (tenant_id, day, ingest_bytes) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id, day) DO UPDATE SET ingest_bytes = tenant_usage.ingest_bytes + $3",
                )
                .bind(tenant_id)
                .bind(day)
                .bind(bytes)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn running_jobs(&self, tenant_id: &str) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM training_jobs WHERE tenant_id = $1 AND state IN ('queued', 'running')")
                    .bind(tenant_id)
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn begin_commit(&self, group_id: &str) -> Result<Box<dyn GroupCommit>> {
                self.hold_group(group_id).await
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
            async fn insert_model(&self, m: &ModelRecord) -> Result<()> {
                let sql = concat!("INSERT INTO models (", model_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
                sqlx::query(sql)
                    .bind(&m.id)
                    .bind(&m.tenant_id)
                    .bind(&m.name)
                    .bind(&m.description)
                    .bind(&m.owner)
                    .bind(serde_json::to_string(&m.tags).expect("tags serialize"))
                    .bind(m.created_at)
                    .bind(m.updated_at)
                    .bind(&m.created_by)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| unique_to(e, "model", &m.name))?;
                Ok(())
            }

            async fn model(&self, tenant_id: &str, name: &str) -> Result<Option<ModelRecord>> {
                let sql = concat!("SELECT ", model_columns!(), " FROM models WHERE tenant_id = $1 AND name = $2");
                let row = sqlx::query(sql).bind(tenant_id).bind(name).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::model_row).transpose()
            }

            async fn list_models(&self, tenant_id: &str) -> Result<Vec<ModelRecord>> {
                let sql = concat!("SELECT ", model_columns!(), " FROM models WHERE tenant_id = $1 ORDER BY name");
                let rows = sqlx::query(sql).bind(tenant_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::model_row).collect()
            }

            async fn insert_model_version(&self, v: &ModelVersionRecord) -> Result<i64> {
                // Two writers may race for the next number; the primary key decides and the
                // loser takes the one after.
                for _ in 0..16 {
                    let next: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 AS next FROM model_versions WHERE model_id = $1")
                        .bind(&v.model_id)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("next")?;
                    let sql = concat!(
                        "INSERT INTO model_versions (", model_version_columns!(), ") \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                    );
                    let done = sqlx::query(sql)
                        .bind(&v.model_id)
                        .bind(next)
                        .bind(&v.state)
                        .bind(&v.source)
                        .bind(&v.artifact_location)
                        .bind(&v.artifact_sha256)
                        .bind(&v.signature)
                        .bind(&v.signing_key_id)
                        .bind(&v.training_set_id)
                        .bind(&v.lineage_json)
                        .bind(&v.config_json)
                        .bind(&v.metrics_json)
                        .bind(&v.backend)
                        .bind(&v.build_id)
                        .bind(&v.job_id)
                        .bind(v.created_at)
                        .bind(&v.created_by)
                        .execute(&self.pool)
                        .await;
                    match done {
                        Ok(_) => return Ok(next),
                        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(Error::Conflict("too many concurrent registrations of this model; retry".into()))
            }

            async fn model_versions(&self, model_id: &str) -> Result<Vec<ModelVersionRecord>> {
                let sql = concat!("SELECT ", model_version_columns!(), " FROM model_versions WHERE model_id = $1 ORDER BY version");
                let rows = sqlx::query(sql).bind(model_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::model_version_row).collect()
            }

            async fn model_version(&self, model_id: &str, version: i64) -> Result<Option<ModelVersionRecord>> {
                let sql = concat!("SELECT ", model_version_columns!(), " FROM model_versions WHERE model_id = $1 AND version = $2");
                let row = sqlx::query(sql).bind(model_id).bind(version).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::model_version_row).transpose()
            }

            async fn set_model_version_state(&self, model_id: &str, version: i64, state: &str) -> Result<()> {
                sqlx::query("UPDATE model_versions SET state = $1 WHERE model_id = $2 AND version = $3")
                    .bind(state)
                    .bind(model_id)
                    .bind(version)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn model_versions_by_training_sets(&self, tenant_id: &str, ids: &[String]) -> Result<Vec<(String, ModelVersionRecord)>> {
                let mut out = Vec::new();
                for id in ids {
                    let sql = concat!(
                        "SELECT m.name AS model_name, ", model_version_columns_v!(), " FROM model_versions v \
                         JOIN models m ON m.id = v.model_id WHERE m.tenant_id = $1 AND v.training_set_id = $2 ORDER BY m.name, v.version"
                    );
                    for row in sqlx::query(sql).bind(tenant_id).bind(id).fetch_all(&self.pool).await? {
                        out.push((row.try_get("model_name")?, Self::model_version_row(&row)?));
                    }
                }
                Ok(out)
            }

            async fn move_alias(&self, model_id: &str, alias: &str, to: Option<i64>, actor: &str, reason: &str, at: i64) -> Result<AliasMove> {
                let mut tx = self.begin_write().await?;
                let from: Option<i64> = sqlx::query("SELECT version FROM model_aliases WHERE model_id = $1 AND alias = $2")
                    .bind(model_id)
                    .bind(alias)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("version"))
                    .transpose()?;
                let seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM model_alias_history WHERE model_id = $1 AND alias = $2")
                    .bind(model_id)
                    .bind(alias)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("next")?;
                match to {
                    Some(v) => {
                        sqlx::query(
                            "INSERT INTO model_aliases (model_id, alias, version, updated_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (model_id, alias) DO UPDATE SET version = $3, updated_at = $4",
                        )
                        .bind(model_id)
                        .bind(alias)
                        .bind(v)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM model_aliases WHERE model_id = $1 AND alias = $2").bind(model_id).bind(alias).execute(&mut *tx).await?;
                    }
                }
                sqlx::query(
                    "INSERT INTO model_alias_history (model_id, alias, seq, from_version, to_version, actor, reason, moved_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(model_id)
                .bind(alias)
                .bind(seq)
                .bind(from)
                .bind(to)
                .bind(actor)
                .bind(reason)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
                    Error::Conflict(format!("alias `{alias}` moved concurrently; retry"))
                } else {
                    Error::Catalog(e)
                })?;
                tx.commit().await?;
                Ok(AliasMove { alias: alias.to_string(), seq, from_version: from, to_version: to, actor: actor.to_string(), reason: reason.to_string(), moved_at: at })
            }

            async fn aliases(&self, model_id: &str) -> Result<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT alias, version FROM model_aliases WHERE model_id = $1 ORDER BY alias").bind(model_id).fetch_all(&self.pool).await?;
                rows.iter().map(|r| Ok((r.try_get("alias")?, r.try_get("version")?))).collect()
            }

            async fn alias_history(&self, model_id: &str, alias: &str) -> Result<Vec<AliasMove>> {
                let rows = sqlx::query(
                    "SELECT alias, seq, from_version, to_version, actor, reason, moved_at FROM model_alias_history \
                     WHERE model_id = $1 AND alias = $2 ORDER BY seq",
                )
                .bind(model_id)
                .bind(alias)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::alias_move_row).collect()
            }

            async fn set_feature_group_online(&self, id: &str, online: bool, max_age_seconds: Option<i64>, at: i64) -> Result<()> {
                sqlx::query("UPDATE feature_groups SET online = $1, online_max_age_seconds = $2, updated_at = $3 WHERE id = $4")
                    .bind(online)
                    .bind(max_age_seconds)
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn start_canary(&self, model_id: &str, c: &CanaryRecord) -> Result<CanaryRecord> {
                let mut tx = self.begin_write().await?;
                let open: Option<i64> = sqlx::query("SELECT version FROM model_canaries WHERE model_id = $1 AND alias = $2 AND ended_at IS NULL")
                    .bind(model_id)
                    .bind(&c.alias)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("version"))
                    .transpose()?;
                if let Some(v) = open {
                    return Err(Error::Conflict(format!("alias `{}` already has a canary (version {v}); stop or promote it first", c.alias)));
                }
                let seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM model_canaries WHERE model_id = $1 AND alias = $2")
                    .bind(model_id)
                    .bind(&c.alias)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("next")?;
                sqlx::query(
                    "INSERT INTO model_canaries (model_id, alias, seq, version, percent, guard_json, started_at, started_by, reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(model_id)
                .bind(&c.alias)
                .bind(seq)
                .bind(c.version)
                .bind(c.percent)
                .bind(&c.guard_json)
                .bind(c.started_at)
                .bind(&c.started_by)
                .bind(&c.reason)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(CanaryRecord { seq, ..c.clone() })
            }

            async fn end_canary(&self, model_id: &str, alias: &str, at: i64, reason: &str, by: &str) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE model_canaries SET ended_at = $1, end_reason = $2, ended_by = $3 \
                     WHERE model_id = $4 AND alias = $5 AND ended_at IS NULL",
                )
                .bind(at)
                .bind(reason)
                .bind(by)
                .bind(model_id)
                .bind(alias)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn canaries(&self, model_id: &str, alias: &str) -> Result<Vec<CanaryRecord>> {
                let rows = sqlx::query(
                    "SELECT alias, seq, version, percent, guard_json, started_at, started_by, reason, ended_at, end_reason, ended_by \
                     FROM model_canaries WHERE model_id = $1 AND alias = $2 ORDER BY seq",
                )
                .bind(model_id)
                .bind(alias)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(CanaryRecord {
                            alias: r.try_get("alias")?,
                            seq: r.try_get("seq")?,
                            version: r.try_get("version")?,
                            percent: r.try_get("percent")?,
                            guard_json: r.try_get("guard_json")?,
                            started_at: r.try_get("started_at")?,
                            started_by: r.try_get("started_by")?,
                            reason: r.try_get("reason")?,
                            ended_at: r.try_get("ended_at")?,
                            end_reason: r.try_get("end_reason")?,
                            ended_by: r.try_get("ended_by")?,
                        })
                    })
                    .collect()
            }

            async fn insert_job(&self, j: &JobRecord) -> Result<()> {
                let sql = concat!("INSERT INTO training_jobs (", job_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)");
                sqlx::query(sql)
                    .bind(&j.id)
                    .bind(&j.tenant_id)
                    .bind(&j.model_name)
                    .bind(&j.state)
                    .bind(&j.spec_json)
                    .bind(&j.progress_json)
                    .bind(&j.error)
                    .bind(j.model_version)
                    .bind(j.created_at)
                    .bind(j.started_at)
                    .bind(j.finished_at)
                    .bind(&j.created_by)
                    .bind(&j.worker)
                    .bind(j.lease_until)
                    .bind(j.cancel_requested)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_job(&self, worker: &str, until: i64) -> Result<Option<JobRecord>> {
                let sql = concat!(
                    "UPDATE training_jobs SET worker = $1, lease_until = $2 WHERE id = (SELECT id FROM training_jobs \
                     WHERE state = 'queued' AND worker IS NULL ORDER BY created_at, id LIMIT 1",
                    $skip_locked,
                    ") AND worker IS NULL RETURNING ",
                    job_columns!()
                );
                let row = sqlx::query(sql).bind(worker).bind(until).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::job_row).transpose()
            }

            async fn cancel_queued_job(&self, tenant_id: &str, id: &str, at: i64) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE training_jobs SET state = 'cancelled', finished_at = $3, cancel_requested = TRUE \
                     WHERE tenant_id = $1 AND id = $2 AND state = 'queued' AND worker IS NULL",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn renew_job_lease(&self, id: &str, worker: &str, until: i64) -> Result<Option<bool>> {
                Ok(sqlx::query_scalar(
                    "UPDATE training_jobs SET lease_until = $3 WHERE id = $1 AND worker = $2 AND state IN ('queued', 'running') \
                     RETURNING cancel_requested",
                )
                .bind(id)
                .bind(worker)
                .bind(until)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn request_job_cancel(&self, tenant_id: &str, id: &str) -> Result<bool> {
                let n = sqlx::query("UPDATE training_jobs SET cancel_requested = TRUE WHERE tenant_id = $1 AND id = $2 AND state IN ('queued', 'running')")
                    .bind(tenant_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn fail_abandoned_job(&self, id: &str, now: i64, orphaned_by: &str, error: &str) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE training_jobs SET state = 'failed', error = $4, finished_at = $2 \
                     WHERE id = $1 AND state IN ('queued', 'running') \
                     AND (lease_until IS NULL OR lease_until < $2 OR worker IS NULL OR worker = $3)",
                )
                .bind(id)
                .bind(now)
                .bind(orphaned_by)
                .bind(error)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn job(&self, tenant_id: &str, id: &str) -> Result<Option<JobRecord>> {
                let sql = concat!("SELECT ", job_columns!(), " FROM training_jobs WHERE tenant_id = $1 AND id = $2");
                let row = sqlx::query(sql).bind(tenant_id).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::job_row).transpose()
            }

            async fn list_jobs(&self, tenant_id: &str) -> Result<Vec<JobRecord>> {
                let sql = concat!("SELECT ", job_columns!(), " FROM training_jobs WHERE tenant_id = $1 ORDER BY created_at, id");
                let rows = sqlx::query(sql).bind(tenant_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::job_row).collect()
            }

            async fn update_job(&self, j: &JobRecord) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE training_jobs SET state = $1, progress_json = $2, error = $3, model_version = $4, started_at = $5, \
                     finished_at = $6 WHERE id = $7 AND state IN ('queued', 'running') AND (worker IS NULL OR worker = $8)",
                )
                .bind(&j.state)
                .bind(&j.progress_json)
                .bind(&j.error)
                .bind(j.model_version)
                .bind(j.started_at)
                .bind(j.finished_at)
                .bind(&j.id)
                .bind(&j.worker)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
                let sql = concat!("SELECT ", job_columns!(), " FROM training_jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id");
                let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
                rows.iter().map(Self::job_row).collect()
            }
        }
    };
}

// Recording a version locks its group for the transaction: on SQLite the database write
// lock taken at BEGIN IMMEDIATE does it; on Postgres the group's row lock.
// Claiming request tokens locks the tenant's bucket the same way. Claiming a queued job skips
// jobs other replicas are claiming at that moment (SQLite writes one at a time anyway).
sql_catalog!(
    SqliteCatalog,
    sqlx::Sqlite,
    "sqlite",
    "BEGIN IMMEDIATE",
    "SELECT id FROM feature_groups WHERE id = $1",
    "SELECT tokens, updated_at FROM rate_buckets WHERE bucket = $1",
    ""
);
sql_catalog!(
    PostgresCatalog,
    sqlx::Postgres,
    "postgres",
    "BEGIN",
    "SELECT id FROM feature_groups WHERE id = $1 FOR UPDATE",
    "SELECT tokens, updated_at FROM rate_buckets WHERE bucket = $1 FOR UPDATE",
    " FOR UPDATE SKIP LOCKED"
);

fn unique_to(e: sqlx::Error, kind: &'static str, name: &str) -> Error {
    if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
        Error::AlreadyExists { kind, name: name.to_string() }
    } else {
        Error::Catalog(e)
    }
}

impl SqliteCatalog {
    /// SQLite serves one process, whose own per-group lock orders its commits; holding the
    /// database's single write lock across a Delta commit would stall every other group.
    async fn hold_group(&self, group_id: &str) -> Result<Box<dyn GroupCommit>> {
        Ok(Box::new(SqliteCommit { pool: self.pool.clone(), group_id: group_id.to_string() }))
    }
}

struct SqliteCommit {
    pool: sqlx::SqlitePool,
    group_id: String,
}

#[async_trait]
impl GroupCommit for SqliteCommit {
    async fn latest_version(&mut self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MAX(version) FROM feature_group_versions WHERE feature_group_id = $1").bind(&self.group_id).fetch_one(&self.pool).await?)
    }

    async fn recorded_versions(&mut self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT version FROM feature_group_versions WHERE feature_group_id = $1 ORDER BY version")
            .bind(&self.group_id)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn record(&mut self, v: &VersionRecord) -> Result<i64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let at = record_version_in!(tx, &self.group_id, v);
        tx.commit().await?;
        Ok(at)
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl PostgresCatalog {
    /// Locks the group's row in a transaction held until the commit is finished: another
    /// replica's commit of the same group waits for it.
    async fn hold_group(&self, group_id: &str) -> Result<Box<dyn GroupCommit>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT id FROM feature_groups WHERE id = $1 FOR UPDATE").bind(group_id).execute(&mut *tx).await?;
        Ok(Box::new(PostgresCommit { tx, group_id: group_id.to_string() }))
    }
}

struct PostgresCommit {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    group_id: String,
}

#[async_trait]
impl GroupCommit for PostgresCommit {
    async fn latest_version(&mut self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MAX(version) FROM feature_group_versions WHERE feature_group_id = $1").bind(&self.group_id).fetch_one(&mut *self.tx).await?)
    }

    async fn recorded_versions(&mut self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT version FROM feature_group_versions WHERE feature_group_id = $1 ORDER BY version")
            .bind(&self.group_id)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn record(&mut self, v: &VersionRecord) -> Result<i64> {
        let conn = &mut *self.tx;
        Ok(record_version_in!(conn, &self.group_id, v))
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(self.tx.commit().await?)
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
        super::migrations::migrator(super::migrations::SQLITE).run(&pool).await?;
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
        super::migrations::migrator(super::migrations::POSTGRES).run(&pool).await?;
        Ok(PostgresCatalog { pool })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commit_times_rise_with_versions_even_when_a_gap_is_filled_late() {
        use super::commit_time_between as between;
        assert_eq!(between(50, Some(10), None), Some(50));
        assert_eq!(between(5, Some(10), None), Some(11), "a clock step back is absorbed");
        assert_eq!(between(50, Some(10), Some(20)), Some(19), "a late gap fill stays before its successor");
        assert_eq!(between(15, Some(10), Some(20)), Some(15));
        assert_eq!(between(15, Some(10), Some(11)), None, "no microsecond left between");
        assert_eq!(between(7, None, None), Some(7));
    }
}
