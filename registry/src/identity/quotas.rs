//! Per-tenant limits an operator sets: request rate, requests and SQL queries in flight,
//! bytes ingested per day, bytes stored, training jobs at once. Over a limit the request is refused
//! with 429, `Retry-After` and the error body, and recorded as denied.
//!
//! Where each limit is counted, and why:
//! - the request rate, in a token bucket per tenant kept in the catalog (Postgres in a
//!   deployment of replicas); each replica claims tokens in batches of a tenth of a
//!   second's worth, so a request rarely waits on the database, and the rate holds across
//!   replicas (over by at most a batch per replica);
//! - bytes ingested per day and jobs at once, in the catalog: they change rarely;
//! - bytes stored, measured from the storage itself (a listing of the tenant's area, used
//!   for a minute at a time): the storage is the one place that knows, whichever replica
//!   wrote, vacuumed or deleted, so no counter can drift from it;
//! - requests and queries in flight, in each replica's memory: they are about that
//!   replica's own workers and memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use lakeledger_query::tables::TableStore;

use super::Principal;
use crate::error::{Error, Result};
use crate::platform::catalog::{Quotas, SharedCatalog};
use crate::platform::time::now_micros;

/// How long a tenant's limits are used before being read from the catalog again (a change
/// made through this replica applies at once).
const QUOTAS_TTL: Duration = Duration::from_secs(5);

const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// How long a measure of a tenant's stored bytes is used before the storage is listed
/// again: a tenant may go over its limit by what it writes within that time.
const STORED_TTL: Duration = Duration::from_secs(60);

/// The limits service.
pub struct Limits {
    catalog: SharedCatalog,
    tables: TableStore,
    /// Bytes each tenant's area held when last measured.
    stored: Mutex<HashMap<String, (u64, Instant)>>,
    quotas: Mutex<HashMap<String, (Quotas, Instant)>>,
    /// Tokens this replica has claimed and not yet spent, per tenant (each tenant its own
    /// lock, so one tenant's claim from the catalog never holds up another's requests).
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<f64>>>>,
    /// Query slots per tenant: (limit, semaphore).
    queries: Mutex<HashMap<String, (i64, Arc<Semaphore>)>>,
}

fn over(message: String, retry_after_secs: u64) -> Error {
    metrics::counter!("lakeledger_quota_refusals_total").increment(1);
    Error::QuotaExceeded { message, retry_after_secs }
}

impl Limits {
    pub fn new(catalog: SharedCatalog, tables: TableStore) -> Arc<Limits> {
        Arc::new(Limits { catalog, tables, stored: Default::default(), quotas: Default::default(), tokens: Default::default(), queries: Default::default() })
    }

    /// The tenant's limits (cached for a few seconds).
    pub async fn of(&self, tenant_id: &str) -> Result<Quotas> {
        if let Some((q, at)) = self.quotas.lock().expect("quota cache").get(tenant_id)
            && at.elapsed() < QUOTAS_TTL
        {
            return Ok(q.clone());
        }
        let q = self.catalog.tenant_quotas(tenant_id).await?.unwrap_or_default();
        self.quotas.lock().expect("quota cache").insert(tenant_id.to_string(), (q.clone(), Instant::now()));
        Ok(q)
    }

    /// Sets a tenant's limits (operators only; checked by the caller).
    pub async fn set(&self, tenant_id: &str, q: &Quotas, by: &str) -> Result<()> {
        check(q)?;
        self.catalog.set_tenant_quotas(tenant_id, q, now_micros(), by).await?;
        self.quotas.lock().expect("quota cache").insert(tenant_id.to_string(), (q.clone(), Instant::now()));
        Ok(())
    }

    /// Applies the limits the config file sets (`[quotas.<tenant>]`), at start: a tenant's
    /// limits that differ from the file's are replaced and the change recorded in the
    /// ledger as the config file's doing (a change made through the API lasts until the
    /// next start). A tenant the file names must exist; a limit it names must be valid.
    pub async fn apply_configured(&self, configured: &[(String, toml::Table)], audit: &crate::platform::audit::AuditLog) -> Result<usize> {
        let mut changed = 0;
        for (tenant, table) in configured {
            let q: Quotas = toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e| Error::BadRequest(format!("config file: [quotas.{tenant}]: {e}")))?;
            check(&q).map_err(|e| Error::BadRequest(format!("config file: [quotas.{tenant}]: {e}")))?;
            let t = self
                .catalog
                .tenant_by_name(tenant)
                .await?
                .ok_or_else(|| Error::BadRequest(format!("config file: [quotas.{tenant}]: there is no tenant `{tenant}`; create it first")))?;
            if self.catalog.tenant_quotas(&t.id).await?.as_ref() == Some(&q) {
                continue;
            }
            let mut e = lakeledger_audit::Event::new("tenant.set_quotas", lakeledger_audit::Phase::Intent);
            e.actor.principal = Some("config-file".into());
            e.actor.principal_type = "operator".into();
            e.actor.auth_method = "config".into();
            e.resource.kind = Some("tenant".into());
            e.resource.name = Some(t.name.clone());
            e.resource.tenant = Some(t.name.clone());
            e.details.push(("quotas".into(), serde_json::to_string(&q).unwrap_or_default()));
            audit.record(&e).await?;
            self.set(&t.id, &q, "config-file").await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Admits one request of the caller's tenant: takes a request token if it has a rate
    /// limit, and returns how many requests it may have in flight here, if an operator set
    /// that (one read of the tenant's limits per request).
    pub async fn admit_request(&self, p: &Principal) -> Result<Option<usize>> {
        let q = self.of(&p.tenant_id).await?;
        let in_flight = q.max_concurrent_requests.map(|n| n.max(1) as usize);
        let Some(rate) = q.requests_per_second else { return Ok(in_flight) };
        let burst = q.burst.map(|b| b as f64).unwrap_or(rate.max(1.0));
        let bucket = self.tokens.lock().expect("token buckets").entry(p.tenant_id.clone()).or_default().clone();
        let mut held = bucket.lock().await;
        if *held < 1.0 {
            let batch = (rate / 10.0).max(1.0).min(burst);
            *held += self.catalog.claim_rate_tokens(&p.tenant_id, rate, burst, batch, now_micros()).await?;
        }
        if *held < 1.0 {
            let wait = if rate > 0.0 { (1.0 / rate).ceil() as u64 } else { 60 };
            return Err(over(format!("tenant `{}` is over its rate of {rate} requests per second", p.tenant), wait.max(1)));
        }
        *held -= 1.0;
        Ok(in_flight)
    }

    /// Refuses an ingest once the tenant has ingested its bytes for the day.
    pub async fn check_ingest(&self, p: &Principal) -> Result<()> {
        let Some(limit) = self.of(&p.tenant_id).await?.ingest_bytes_per_day else { return Ok(()) };
        let now = now_micros();
        let used = self.catalog.ingest_bytes(&p.tenant_id, now.div_euclid(DAY_MICROS)).await?;
        if used >= limit {
            let until_midnight = (DAY_MICROS - now.rem_euclid(DAY_MICROS)) / 1_000_000;
            return Err(over(
                format!("tenant `{}` has ingested its {limit} bytes for today (UTC); more is accepted after midnight", p.tenant),
                until_midnight.max(1) as u64,
            ));
        }
        Ok(())
    }

    /// Counts bytes an ingest received against the day's limit.
    pub async fn count_ingest(&self, p: &Principal, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.catalog.add_ingest_bytes(&p.tenant_id, now_micros().div_euclid(DAY_MICROS), bytes as i64).await
    }

    /// A slot for one SQL query of the caller's tenant, held until its result has been
    /// sent; `None` when the tenant has no such limit.
    pub async fn admit_query(&self, p: &Principal) -> Result<Option<OwnedSemaphorePermit>> {
        let Some(limit) = self.of(&p.tenant_id).await?.max_concurrent_queries else { return Ok(None) };
        let semaphore = {
            let mut queries = self.queries.lock().expect("query slots");
            let entry = queries.entry(p.tenant_id.clone()).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit.max(1) as usize))));
            // A changed limit takes effect for new queries; running ones keep their slots.
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(limit.max(1) as usize)));
            }
            entry.1.clone()
        };
        semaphore
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| over(format!("tenant `{}` has its limit of {limit} SQL queries running", p.tenant), 1))
    }

    /// Refuses a write that adds to the tenant's storage (an ingest, a spine, a training
    /// set, a model version) once its area holds its limit of bytes.
    pub async fn check_storage(&self, p: &Principal) -> Result<()> {
        let Some(limit) = self.of(&p.tenant_id).await?.max_stored_bytes else { return Ok(()) };
        let cached = self.stored.lock().expect("stored bytes").get(&p.tenant_id).filter(|(_, at)| at.elapsed() < STORED_TTL).map(|(b, _)| *b);
        let used = match cached {
            Some(b) => b,
            None => {
                let b = self.tables.stored_bytes(&format!("tenants/{}", p.tenant)).await?;
                self.stored.lock().expect("stored bytes").insert(p.tenant_id.clone(), (b, Instant::now()));
                b
            }
        };
        if used >= u64::try_from(limit).unwrap_or(0) {
            return Err(over(
                format!("tenant `{}` stores {used} bytes, at its limit of {limit}; delete or vacuum to make room", p.tenant),
                STORED_TTL.as_secs(),
            ));
        }
        Ok(())
    }

    /// Refuses a training job once the tenant has its limit of jobs queued or running.
    pub async fn check_jobs(&self, p: &Principal) -> Result<()> {
        let Some(limit) = self.of(&p.tenant_id).await?.max_running_jobs else { return Ok(()) };
        if self.catalog.running_jobs(&p.tenant_id).await? >= limit {
            return Err(over(format!("tenant `{}` has its limit of {limit} training jobs queued or running", p.tenant), 10));
        }
        Ok(())
    }
}

fn check(q: &Quotas) -> Result<()> {
    let bad = |what: &str| Err(Error::Unprocessable(what.to_string()));
    if q.requests_per_second.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
        return bad("requests_per_second must be a number of at least 0");
    }
    for (name, v, min) in [
        ("burst", q.burst, 1),
        ("max_concurrent_requests", q.max_concurrent_requests, 1),
        ("ingest_bytes_per_day", q.ingest_bytes_per_day, 0),
        ("max_concurrent_queries", q.max_concurrent_queries, 1),
        ("max_running_jobs", q.max_running_jobs, 1),
        ("max_stored_bytes", q.max_stored_bytes, 0),
    ] {
        if v.is_some_and(|v| v < min) {
            return bad(&format!("{name} must be at least {min}"));
        }
    }
    Ok(())
}
