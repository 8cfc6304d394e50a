//! The audit sink as the server uses the ledger: appends wait until the record is
//! durable (or fail closed with 503 after a bound), readiness reports a ledger that
//! cannot take records, signed checkpoints can be mirrored off the server, and sealed
//! segments archived to object storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakeledger_audit::{Event, Ledger, LedgerConfig, OpenReport, Receipt};

use crate::error::{Error, Result};

/// The ledger as the server uses it.
pub struct AuditLog {
    pub ledger: Arc<Ledger>,
    timeout: Duration,
    /// Set when an append failed or timed out; cleared by the next success. Readiness
    /// reports false while set.
    degraded: AtomicBool,
}

impl AuditLog {
    /// Opens the ledger in `dir` signed with the key at `key` (running recovery) before
    /// the server listens. A request whose record is not durable within `timeout` is refused.
    pub fn open(
        dir: &std::path::Path,
        key: &std::path::Path,
        timeout: Duration,
        archive: Option<Arc<dyn lakeledger_audit::archive::ArchiveStore>>,
    ) -> Result<(AuditLog, OpenReport)> {
        let mut config = LedgerConfig::new(dir, key);
        config.archive = archive;
        let (ledger, report) = Ledger::open(config)?;
        if let Some(what) = &report.repaired {
            tracing::warn!(repaired = %what, "audit ledger: a torn tail was cut at startup");
        }
        Ok((AuditLog { ledger: Arc::new(ledger), timeout, degraded: AtomicBool::new(false) }, report))
    }

    /// Appends an event and waits until it is durable.
    pub async fn record(&self, event: &Event) -> Result<Receipt> {
        let started = Instant::now();
        let pending = self.ledger.append_event(event).inspect_err(|_| self.failed())?;
        match tokio::time::timeout(self.timeout, pending).await {
            Ok(Ok(r)) => {
                self.degraded.store(false, Ordering::SeqCst);
                metrics::histogram!("lakeledger_audit_ack_seconds").record(started.elapsed().as_secs_f64());
                metrics::gauge!("lakeledger_audit_records").set(r.seq as f64 + 1.0);
                Ok(r)
            }
            Ok(Err(e)) => {
                self.failed();
                Err(e.into())
            }
            Err(_) => {
                self.failed();
                Err(Error::Unavailable(format!("the audit ledger did not confirm the record within {:?}", self.timeout)))
            }
        }
    }

    fn failed(&self) {
        self.degraded.store(true, Ordering::SeqCst);
        metrics::counter!("lakeledger_audit_failures_total").increment(1);
    }

    /// Hands an event to the writer without waiting (outcomes: the response is already
    /// on its way).
    pub fn record_later(&self, event: &Event) {
        if let Err(e) = self.ledger.append_event(event) {
            self.failed();
            tracing::error!(error = %e, kind = %event.kind, "audit outcome could not be recorded");
        }
    }

    /// Tells the auditors of each tenant in `owners` that a caller of another tenant named
    /// one of their objects (`kind`, `name`) and was refused: `attempt` is the caller's own
    /// outcome record. The caller was answered 404, as for a name nobody holds, and its
    /// own trail says no more than that; this record is the server's, naming who tried in
    /// its details, so it is in the owners' and the operators' trails but not in the trying
    /// tenant's, where it would tell that the object exists.
    pub fn record_cross_tenant(&self, attempt: &Event, kind: &str, name: &str, owners: &[String]) {
        for owner in owners {
            let mut e = Event::new("access.cross_tenant", lakeledger_audit::Phase::Outcome);
            e.intent_seq = attempt.intent_seq;
            e.actor.principal_type = "system".into();
            e.actor.auth_method = "local".into();
            e.resource.kind = Some(kind.to_string());
            e.resource.name = Some(name.to_string());
            e.resource.tenant = Some(owner.clone());
            e.outcome = Some(lakeledger_audit::event::Result {
                result: "denied".into(),
                status: 404,
                error_code: attempt.outcome.as_ref().and_then(|o| o.error_code.clone()),
                ..Default::default()
            });
            // The request's own outcome is the one record with its request id in `source`.
            e.details.push(("request_id".into(), attempt.source.request_id.clone().unwrap_or_default()));
            e.details.push(("attempted_action".into(), attempt.kind.clone()));
            e.details.push(("attempted_by".into(), attempt.actor.principal.clone().unwrap_or_default()));
            e.details.push(("attempted_by_tenant".into(), attempt.actor.tenant.clone().unwrap_or_default()));
            e.details.push(("attempted_by_role".into(), attempt.actor.role.clone().unwrap_or_default()));
            self.record_later(&e);
        }
        metrics::counter!("lakeledger_cross_tenant_attempts_total").increment(1);
    }

    /// `Err(why)` when the ledger cannot currently take records.
    pub fn health(&self) -> std::result::Result<(), String> {
        if let Some(f) = self.ledger.failure() {
            return Err(f);
        }
        if self.degraded.load(Ordering::SeqCst) {
            return Err("recent audit records were not confirmed in time".into());
        }
        Ok(())
    }
}

/// Copies each new signed checkpoint to `store` as `checkpoints/<size, 20 digits>.note`
/// (never rewritten, so an object-locked bucket keeps every head) and
/// `checkpoint.latest.note`. Runs until the ledger closes; a failed copy is logged and
/// retried at the next tick, and never blocks requests.
pub async fn mirror_checkpoints(ledger: Arc<Ledger>, store: lakeledger_query::tables::TableStore, every: Duration) {
    let mut pushed = None;
    loop {
        if let Some(cp) = ledger.latest_checkpoint()
            && pushed != Some(cp.checkpoint.size)
        {
            let note = axum::body::Bytes::from(cp.checkpoint.note.clone());
            let name = format!("checkpoints/{:020}.note", cp.checkpoint.size);
            let result = match store.put_object(&name, note.clone()).await {
                Ok(()) => store.put_object("checkpoint.latest.note", note).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => pushed = Some(cp.checkpoint.size),
                Err(e) => {
                    metrics::counter!("lakeledger_audit_mirror_failures_total").increment(1);
                    tracing::warn!(error = %e, size = cp.checkpoint.size, "could not copy the audit checkpoint to the mirror");
                }
            }
        }
        if ledger.failure().is_some() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// The intent record of the current request, for handlers that stamp it on commits.
#[derive(Clone, Debug)]
pub struct AuditContext {
    pub request_id: String,
    pub event_id: String,
    pub intent_seq: u64,
}


/// The audit archive in object storage (`--audit-archive`): every object written with a
/// conditional put, so nothing in it is ever replaced. The ledger calls it from blocking
/// threads (archive passes, and reads of segments whose local copy was dropped); each
/// call runs its I/O on the server's runtime from a short-lived thread of its own, so it
/// is safe from any thread.
#[derive(Debug)]
pub struct ObjectArchive {
    store: lakeledger_query::tables::TableStore,
    runtime: tokio::runtime::Handle,
}

impl ObjectArchive {
    pub fn new(url: url::Url, storage_options: std::collections::HashMap<String, String>, runtime: tokio::runtime::Handle) -> Result<ObjectArchive> {
        Ok(ObjectArchive { store: lakeledger_query::tables::TableStore::new(url, storage_options)?, runtime })
    }

    fn run<T: Send>(&self, io: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| s.spawn(|| self.runtime.block_on(io)).join().expect("audit archive I/O thread"))
    }
}

fn archive_error(e: impl std::fmt::Display) -> lakeledger_audit::Error {
    lakeledger_audit::Error::Unavailable(format!("the audit archive: {e}"))
}

impl lakeledger_audit::archive::ArchiveStore for ObjectArchive {
    fn put_new(&self, name: &str, bytes: &[u8]) -> lakeledger_audit::Result<()> {
        match self.run(self.store.put_object_new(name, axum::body::Bytes::copy_from_slice(bytes))) {
            Ok(true) => Ok(()),
            Ok(false) => lakeledger_audit::archive::same_bytes(self, name, bytes),
            Err(e) => Err(archive_error(e)),
        }
    }

    fn get(&self, name: &str) -> lakeledger_audit::Result<Option<Vec<u8>>> {
        Ok(self.run(self.store.get_object(name)).map_err(archive_error)?.map(|b| b.to_vec()))
    }

    fn list(&self, prefix: &str) -> lakeledger_audit::Result<Vec<String>> {
        let (folder, name) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        self.run(self.store.list_objects(folder, name)).map_err(archive_error)
    }
}

/// Runs an archive pass every `every` until the ledger closes: sealed segments, their
/// tiles and end checkpoints are copied to the archive, and local copies past the
/// retention dropped. A failed pass is logged and retried; it never blocks requests.
pub async fn archive_segments(ledger: Arc<Ledger>, archive: Arc<ObjectArchive>, retention: Option<Duration>, every: Duration) {
    loop {
        let (l, a) = (ledger.clone(), archive.clone());
        match tokio::task::spawn_blocking(move || lakeledger_audit::archive::archive_pass(&l, &*a, retention)).await {
            Ok(Ok(report)) => {
                metrics::gauge!("lakeledger_audit_archived_segments").set(report.archived_through as f64);
                if !report.segments.is_empty() || !report.dropped.is_empty() {
                    tracing::info!(archived = ?report.segments, dropped = ?report.dropped, "audit archive pass");
                }
            }
            Ok(Err(e)) => {
                metrics::counter!("lakeledger_audit_archive_failures_total").increment(1);
                tracing::warn!(error = %e, "the audit archive pass failed; it runs again");
            }
            Err(e) => tracing::error!(error = %e, "the audit archive pass panicked"),
        }
        if ledger.failure().is_some() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Re-verifies the running log every `every` (see `Ledger::check_live`): every local
/// record against the tree and every signed checkpoint's root. Each pass is recorded in
/// the log (`audit.check`); a problem is logged as an error naming the first bad seq and
/// turns `lakeledger_audit_check_ok` to 0.
pub async fn check_periodically(audit: Arc<AuditLog>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let ledger = audit.ledger.clone();
        let report = match tokio::task::spawn_blocking(move || ledger.check_live()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the background audit check could not run; it runs again");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the background audit check panicked");
                continue;
            }
        };
        metrics::gauge!("lakeledger_audit_check_ok").set(if report.problem.is_none() { 1.0 } else { 0.0 });
        let mut e = Event::new("audit.check", lakeledger_audit::Phase::Intent);
        e.actor.principal_type = "system".into();
        e.resource.kind = Some("audit_log".into());
        e.details.push(("records".into(), report.records.to_string()));
        e.details.push(("checkpoints".into(), report.checkpoints.to_string()));
        if let Some((seq, why)) = &report.problem {
            tracing::error!(first_bad_seq = ?seq, problem = %why, "the background audit check found the log damaged; stop the server and run `lakeledger audit scrub`");
            e.details.push(("problem".into(), why.clone()));
            if let Some(s) = seq {
                e.details.push(("first_bad_seq".into(), s.to_string()));
            }
        }
        audit.record_later(&e);
        if audit.ledger.failure().is_some() {
            return;
        }
    }
}
