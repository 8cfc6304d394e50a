//! Admission at the edges: a bound on requests in flight, for the whole server, for each
//! tenant and for each API key given one, shared by HTTP, Flight SQL and gRPC calls, so
//! neither a flood nor one busy tenant or key can take every worker and all the memory. A
//! request over a bound is answered at once (503 for the server's bound, 429 for a tenant's
//! or a key's), never queued: a queue would only move the pile-up into memory.
//!
//! A permit is held until the response body ends, so long downloads count too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

pub struct Admission {
    global: Arc<Semaphore>,
    global_limit: usize,
    per_tenant: usize,
    tenants: Bounds,
    keys: Bounds,
}

/// Semaphores by tenant or key id, each with the limit it was made for.
#[derive(Default)]
struct Bounds(Mutex<HashMap<String, (usize, Arc<Semaphore>)>>);

impl Bounds {
    fn enter(&self, id: &str, limit: usize) -> Option<OwnedSemaphorePermit> {
        // A limit set absurdly high is no limit; a semaphore cannot hold more permits.
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let semaphore = {
            let mut all = self.0.lock().expect("admission lock");
            let entry = all.entry(id.to_string()).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            // A changed limit applies to new requests; those in flight keep their places.
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// Whose request is admitted: its tenant (id, name) and the bounds set for it and its key.
pub struct Caller<'a> {
    pub tenant_id: &'a str,
    pub tenant: &'a str,
    /// The tenant's own bound, if an operator set one (else the server's default).
    pub tenant_limit: Option<usize>,
    /// The key's id and bound, if its admins set one.
    pub key: Option<(&'a str, usize)>,
}

/// Held while a request is in flight.
pub struct Admitted {
    _global: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
    _key: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(global: usize, per_tenant: usize) -> Admission {
        Admission { global: Arc::new(Semaphore::new(global)), global_limit: global, per_tenant, tenants: Bounds::default(), keys: Bounds::default() }
    }

    /// Admits a request (`None` before authentication succeeded: the server's bound only).
    pub fn admit(&self, caller: Option<Caller<'_>>) -> Result<Admitted, Error> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("lakeledger_http_rejected_total", "reason" => "server_busy").increment(1);
            Error::Overloaded(format!("the server is handling its limit of {} requests at once; retry shortly", self.global_limit))
        })?;
        let Some(c) = caller else { return Ok(Admitted { _global: global, _tenant: None, _key: None }) };
        // The key's bound first: a key at its own bound takes no place of its tenant's.
        let key = match c.key {
            None => None,
            Some((id, limit)) => {
                let limit = limit.max(1);
                Some(self.keys.enter(id, limit).ok_or_else(|| {
                    metrics::counter!("lakeledger_http_rejected_total", "reason" => "key_busy").increment(1);
                    Error::TooManyRequests(format!("key `{id}` has its limit of {limit} requests in flight; retry when some have finished"))
                })?)
            }
        };
        let limit = c.tenant_limit.unwrap_or(self.per_tenant).max(1);
        let tenant = self.tenants.enter(c.tenant_id, limit).ok_or_else(|| {
            metrics::counter!("lakeledger_http_rejected_total", "reason" => "tenant_busy").increment(1);
            Error::TooManyRequests(format!("tenant `{}` has its limit of {limit} requests in flight; retry when some have finished", c.tenant))
        })?;
        Ok(Admitted { _global: global, _tenant: Some(tenant), _key: key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Option<Caller<'_>> {
        Some(Caller { tenant_id: id, tenant: id, tenant_limit: None, key: None })
    }

    #[test]
    fn each_bound_refuses_once_full_and_frees_with_its_permit() {
        let a = Admission::new(3, 2);
        let t1 = a.admit(tenant("one")).unwrap();
        let _t1b = a.admit(tenant("one")).unwrap();
        let e = a.admit(tenant("one")).err().unwrap();
        assert_eq!(e.status_and_code().1, "too_many_requests");
        assert!(e.to_string().contains("tenant `one`"), "{e}");
        // Another tenant is not held up by the first...
        let _t2 = a.admit(tenant("two")).unwrap();
        // ... until the server's own bound is reached.
        assert_eq!(a.admit(tenant("three")).err().unwrap().status_and_code().1, "overloaded");
        drop(t1);
        a.admit(tenant("one")).unwrap();
    }

    #[test]
    fn a_key_at_its_bound_takes_no_place_of_its_tenants() {
        let a = Admission::new(10, 2);
        let keyed = || Some(Caller { tenant_id: "t", tenant: "t", tenant_limit: None, key: Some(("key_a", 1)) });
        let held = a.admit(keyed()).unwrap();
        let e = a.admit(keyed()).err().unwrap();
        assert!(e.status_and_code().1 == "too_many_requests" && e.to_string().contains("key `key_a`"), "{e}");
        // The refused request took none of the tenant's two places.
        let _other = a.admit(tenant("t")).unwrap();
        assert!(a.admit(tenant("t")).is_err());
        drop(held);
        a.admit(keyed()).unwrap();
        // A bound beyond what a semaphore can count is taken as no bound, not a panic.
        let huge = Some(Caller { tenant_id: "h", tenant: "h", tenant_limit: Some(usize::MAX), key: Some(("key_h", usize::MAX)) });
        a.admit(huge).unwrap();
    }
}
