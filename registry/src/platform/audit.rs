//! The audit sink as the server uses the ledger: appends wait until the record is
//! durable (or fail closed with 503 after a bound), readiness reports a ledger that
//! cannot take records, and signed checkpoints can be mirrored off the server.

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
    pub fn open(dir: &std::path::Path, key: &std::path::Path, timeout: Duration) -> Result<(AuditLog, OpenReport)> {
        let (ledger, report) = Ledger::open(LedgerConfig::new(dir, key))?;
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

