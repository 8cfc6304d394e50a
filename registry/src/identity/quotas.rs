//! Per-tenant limits an operator sets: request rate, requests and SQL queries in flight,
//! bytes ingested per day, bytes stored, training jobs at once; and per API key, limits its
//! tenant's admins set within those: request rate and requests in flight. Over a limit the
//! request is refused with 429, `Retry-After` and the error body, and recorded as denied.
//!
//! Where each limit is counted, and why:
//! - request rates, in token buckets per tenant and per key kept in the catalog (Postgres
//!   in a deployment of replicas); each replica claims tokens in batches of a tenth of a
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
use crate::platform::admission::Caller;
use crate::platform::catalog::{KeyLimits, Quotas, SharedCatalog};
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
    key_limits: Mutex<HashMap<String, (KeyLimits, Instant)>>,
    /// Tokens this replica has claimed and not yet spent, per bucket (`tenant:<id>`,
    /// `key:<id>`; each its own lock, so one bucket's claim from the catalog never holds up
    /// another's requests).
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
        Arc::new(Limits {
            catalog,
            tables,
            stored: Default::default(),
            quotas: Default::default(),
            key_limits: Default::default(),
            tokens: Default::default(),
            queries: Default::default(),
        })
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

    /// A key's own limits (cached for a few seconds, like a tenant's). Bearer tokens have
    /// none: their subjects are held to their tenant's limits.
    pub async fn of_key(&self, p: &Principal) -> Result<KeyLimits> {
        if p.auth_method != "api_key" {
            return Ok(KeyLimits::default());
        }
        self.of_key_id(&p.key_id).await
    }

    /// The limits of the key with this id (cached for a few seconds).
    pub async fn of_key_id(&self, key_id: &str) -> Result<KeyLimits> {
        if let Some((l, at)) = self.key_limits.lock().expect("key limit cache").get(key_id)
            && at.elapsed() < QUOTAS_TTL
        {
            return Ok(l.clone());
        }
        let l = self.catalog.key_limits(key_id).await?.unwrap_or_default();
        self.key_limits.lock().expect("key limit cache").insert(key_id.to_string(), (l.clone(), Instant::now()));
        Ok(l)
    }

    /// Sets the limits of a live key of `tenant_id` (its admins or an operator; checked
    /// by the caller); false when the tenant has no such key.
    pub async fn set_key(&self, tenant_id: &str, key_id: &str, l: &KeyLimits, by: &str) -> Result<bool> {
        check_rate(l.requests_per_second, l.burst)?;
        if l.max_concurrent_requests.is_some_and(|n| n < 1) {
            return Err(Error::Unprocessable("max_concurrent_requests must be at least 1".into()));
        }
        if !self.catalog.set_key_limits(tenant_id, key_id, l, now_micros(), by).await? {
            return Ok(false);
        }
        self.key_limits.lock().expect("key limit cache").insert(key_id.to_string(), (l.clone(), Instant::now()));
        Ok(true)
    }

    /// Admits one request: takes a request token from the caller's key and then its
    /// tenant, where they have a rate (a key over its own rate spends none of its tenant's),
    /// and says how many requests each may have in flight here, where that is set.
    pub async fn admit_request(&self, p: &Principal) -> Result<InFlightLimits> {
        let key = self.of_key(p).await?;
        if let Some(rate) = key.requests_per_second {
            self.take_token(&format!("key:{}", p.key_id), rate, key.burst, || format!("key `{}` is over its rate of {rate} requests per second", p.key_id))
                .await?;
        }
        let q = self.of(&p.tenant_id).await?;
        if let Some(rate) = q.requests_per_second {
            self.take_token(&format!("tenant:{}", p.tenant_id), rate, q.burst, || {
                format!("tenant `{}` is over its rate of {rate} requests per second", p.tenant)
            })
            .await?;
        }
        let bound = |n: Option<i64>| n.map(|n| n.max(1) as usize);
        Ok(InFlightLimits { tenant: bound(q.max_concurrent_requests), key: bound(key.max_concurrent_requests) })
    }

    /// Takes one token from `bucket`, claiming a batch from the catalog when this replica
    /// holds none; refused (429, retry after the time one token takes) when it is empty.
    async fn take_token(&self, bucket: &str, rate: f64, burst: Option<i64>, refusal: impl FnOnce() -> String) -> Result<()> {
        let burst = burst.map(|b| b as f64).unwrap_or(rate.max(1.0));
        let held = self.tokens.lock().expect("token buckets").entry(bucket.to_string()).or_default().clone();
        let mut held = held.lock().await;
        if *held < 1.0 {
            let batch = (rate / 10.0).max(1.0).min(burst);
            *held += self.catalog.claim_rate_tokens(bucket, rate, burst, batch, now_micros()).await?;
        }
        if *held < 1.0 {
            let wait = if rate > 0.0 { (1.0 / rate).ceil() as u64 } else { 60 };
            return Err(over(refusal(), wait.max(1)));
        }
        *held -= 1.0;
        Ok(())
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
        // A limit beyond what a semaphore can count is no limit (and no panic).
        let slots = usize::try_from(limit.max(1)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let semaphore = {
            let mut queries = self.queries.lock().expect("query slots");
            let entry = queries.entry(p.tenant_id.clone()).or_insert_with(|| (limit, Arc::new(Semaphore::new(slots))));
            // A changed limit takes effect for new queries; running ones keep their slots.
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(slots)));
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

/// How many requests a caller may have in flight on this replica, by its tenant's and its
/// key's limits (`None`: the server's default for tenants, no bound of its own for keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightLimits {
    pub tenant: Option<usize>,
    pub key: Option<usize>,
}

impl InFlightLimits {
    /// The caller as admission sees it.
    pub fn caller<'a>(&self, p: &'a Principal) -> Caller<'a> {
        Caller { tenant_id: &p.tenant_id, tenant: &p.tenant, tenant_limit: self.tenant, key: self.key.map(|n| (p.key_id.as_str(), n)) }
    }
}

fn check_rate(rate: Option<f64>, burst: Option<i64>) -> Result<()> {
    if rate.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
        return Err(Error::Unprocessable("requests_per_second must be a number of at least 0".into()));
    }
    if burst.is_some_and(|b| b < 1) {
        return Err(Error::Unprocessable("burst must be at least 1".into()));
    }
    Ok(())
}

fn check(q: &Quotas) -> Result<()> {
    let bad = |what: &str| Err(Error::Unprocessable(what.to_string()));
    check_rate(q.requests_per_second, q.burst)?;
    for (name, v, min) in [
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
