//! Admission at the edges: a bound on requests in flight, for the whole server and for
//! each tenant, shared by HTTP, Flight SQL and gRPC calls, so neither a flood nor one busy
//! tenant can take every worker and all the memory. A request over a bound is answered at once (503 for the server's bound, 429
//! for a tenant's), never queued: a queue would only move the pile-up into memory.
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
    tenants: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

/// Held while a request is in flight.
pub struct Admitted {
    _global: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(global: usize, per_tenant: usize) -> Admission {
        Admission { global: Arc::new(Semaphore::new(global)), global_limit: global, per_tenant, tenants: Mutex::default() }
    }

    /// Admits a request of `tenant` (id and name; `None` before authentication
    /// succeeded), whose own limit may differ from the default (an operator's quota).
    pub fn admit(&self, tenant: Option<(&str, &str)>, tenant_limit: Option<usize>) -> Result<Admitted, Error> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("lakeledger_http_rejected_total", "reason" => "server_busy").increment(1);
            Error::Overloaded(format!("the server is handling its limit of {} requests at once; retry shortly", self.global_limit))
        })?;
        let tenant = match tenant {
            None => None,
            Some((id, name)) => {
                let limit = tenant_limit.unwrap_or(self.per_tenant).max(1);
                let semaphore = {
                    let mut tenants = self.tenants.lock().expect("admission lock");
                    let entry = tenants.entry(id.to_string()).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
                    // A changed limit applies to new requests; those in flight keep their places.
                    if entry.0 != limit {
                        *entry = (limit, Arc::new(Semaphore::new(limit)));
                    }
                    entry.1.clone()
                };
                Some(semaphore.try_acquire_owned().map_err(|_| {
                    metrics::counter!("lakeledger_http_rejected_total", "reason" => "tenant_busy").increment(1);
                    Error::TooManyRequests(format!("tenant `{name}` has its limit of {limit} requests in flight; retry when some have finished"))
                })?)
            }
        };
        Ok(Admitted { _global: global, _tenant: tenant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_refuses_once_full_and_frees_with_its_permit() {
        let a = Admission::new(3, 2);
        let t1 = a.admit(Some(("t1", "one")), None).unwrap();
        let _t1b = a.admit(Some(("t1", "one")), None).unwrap();
        let e = a.admit(Some(("t1", "one")), None).err().unwrap();
        assert_eq!(e.status_and_code().1, "too_many_requests");
        assert!(e.to_string().contains("tenant `one`"), "{e}");
        // Another tenant is not held up by the first...
        let _t2 = a.admit(Some(("t2", "two")), None).unwrap();
        // ... until the server's own bound is reached.
        assert_eq!(a.admit(Some(("t3", "three")), None).err().unwrap().status_and_code().1, "overloaded");
        drop(t1);
        a.admit(Some(("t1", "one")), None).unwrap();
    }
}
