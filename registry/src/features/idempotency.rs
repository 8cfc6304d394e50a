//! Idempotent ingest: a request sent with an `Idempotency-Key` writes at most once. A retry
//! with the same key gets the first result back instead of writing the rows again, also
//! when the first attempt stopped between its Delta commit and its answer (the commit
//! carries the key, so the retry finds it in the log).
//!
//! While an attempt runs it holds the key, renewing the hold every third of
//! `idempotency_hold`; a retry meanwhile is answered 409. An attempt whose replica died
//! stops renewing, so a retry (on any replica) takes the key over once the hold has lapsed,
//! after checking the log for a commit the attempt made. An attempt that cannot renew
//! (its replica lost the catalog for longer than the hold) stops before it commits.

use axum::body::Body;
use lakeledger_query::ingest::IngestFormat;
use lakeledger_query::tables::WriteMode;

use super::{FeatureGroups, IngestResult};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::audit::AuditContext;
use crate::platform::time::now_micros;

/// Commit metadata naming the key a commit was written for.
pub(super) const KEY_META: &str = "lakeledger.idempotencyKey";
/// Commit metadata with the rows a commit wrote, for a replay found in the log.
pub(super) const ROWS_META: &str = "lakeledger.rows";
/// How many of a group's latest commits a retry searches for its key.
const SEARCH_DEPTH: i64 = 1000;

/// An ingest's result, and whether it is the answer to an earlier request with the same key.
pub struct Ingested {
    pub result: IngestResult,
    pub replayed: bool,
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into()));
    }
    Ok(())
}

impl FeatureGroups {
    /// Ingests as [`FeatureGroups::ingest`] does, at most once per `key` and tenant.
    #[allow(clippy::too_many_arguments)]
    pub async fn ingest_once(&self, p: &Principal, name: &str, mode: WriteMode, format: IngestFormat, body: Body, ctx: &AuditContext, key: &str) -> Result<Ingested> {
        check_key(key)?;
        let fingerprint = format!("POST /v1/feature-groups/{name}/data?mode={}", mode.name());
        let now = now_micros();
        if let Some(held) = self.catalog.reserve_idempotency_key(&p.tenant_id, key, &fingerprint, now).await? {
            if held.fingerprint != fingerprint {
                return Err(Error::Unprocessable(format!(
                    "Idempotency-Key `{key}` was used for another request ({}); use a new key for a different request",
                    held.fingerprint
                )));
            }
            if let Some(json) = held.response_json.filter(|_| held.state == "done") {
                let result = serde_json::from_str(&json).map_err(|e| Error::Internal(format!("stored idempotent response: {e}")))?;
                return Ok(Ingested { result, replayed: true });
            }
            // Pending: did the first attempt commit before it stopped?
            if let Some(result) = self.committed_with_key(p, name, key).await? {
                self.catalog.complete_idempotency_key(&p.tenant_id, key, &to_json(&result)?).await?;
                return Ok(Ingested { result, replayed: true });
            }
            // `created_at` is when the attempt holding the key last renewed its hold.
            let stale = now.saturating_sub(held.created_at) >= self.settings.idempotency_hold.as_micros() as i64;
            if !stale || !self.catalog.renew_idempotency_key(&p.tenant_id, key, held.created_at, now).await? {
                return Err(Error::Conflict(format!(
                    "a request with Idempotency-Key `{key}` is in progress; retry once it has been answered"
                )));
            }
        }
        let mut committed = false;
        let ingest = self.ingest_with(p, name, mode, format, body, ctx, Some(key), &mut committed);
        let outcome = tokio::select! {
            r = ingest => r,
            lost = self.keep_holding(&p.tenant_id, key, now) => Err(lost),
        };
        match outcome {
            Ok(result) => {
                self.catalog.complete_idempotency_key(&p.tenant_id, key, &to_json(&result)?).await?;
                Ok(Ingested { result, replayed: false })
            }
            Err(e) => {
                // Nothing was written: the key is free for a retry. Once the commit is made
                // the key stays pending; a retry finds the commit by its key.
                if !committed {
                    self.catalog.release_idempotency_key(&p.tenant_id, key).await?;
                }
                Err(e)
            }
        }
    }

    /// Renews the hold on `key` (taken at `since`) every third of the hold period until
    /// the ingest ends (the caller stops polling this); returns only if the hold was lost:
    /// another request took the key over, or the catalog could not be reached for longer
    /// than the hold. The ingest is then dropped before it commits (if it had committed,
    /// the commit carries the key and the other request finds it).
    async fn keep_holding(&self, tenant_id: &str, key: &str, since: i64) -> Error {
        let period = self.settings.idempotency_hold;
        let mut held_at = since;
        loop {
            tokio::time::sleep(period / 3).await;
            let now = now_micros();
            match self.catalog.renew_idempotency_key(tenant_id, key, held_at, now).await {
                Ok(true) => held_at = now,
                Ok(false) => break,
                Err(e) if now.saturating_sub(held_at) >= period.as_micros() as i64 => {
                    tracing::warn!(key, error = %e, "lost the hold on an idempotency key: the catalog did not answer");
                    break;
                }
                Err(e) => tracing::warn!(key, error = %e, "could not renew the hold on an idempotency key; retrying"),
            }
        }
        Error::Conflict(format!("this request's hold on Idempotency-Key `{key}` lapsed and another request took it over; retry with the same key for the result"))
    }

    /// The result of the commit among the group's latest that carries `key`, if any; its
    /// version is recorded in the catalog first if the writer stopped before recording it.
    async fn committed_with_key(&self, p: &Principal, name: &str, key: &str) -> Result<Option<IngestResult>> {
        let g = self.find(p, name).await?;
        let url = self.tables.location(&g.location)?;
        let table = self.tables.open(&url, None).await?;
        let latest = table.version().map(|v| v as i64).unwrap_or(-1);
        for v in (0..=latest).rev().take(SEARCH_DEPTH as usize) {
            let Some(info) = self.tables.commit_info(&table, v).await? else { continue };
            if info.info.get(KEY_META).and_then(|k| k.as_str()) != Some(key) {
                continue;
            }
            let (held, _, schema) = self.hold(&g.id, &g.name, &url).await?;
            held.commit.finish().await?;
            if let Some(s) = schema {
                self.catalog.update_feature_group_schema(&g.id, &s, now_micros()).await?;
            }
            let rows = info.info.get(ROWS_META).and_then(|r| r.as_u64()).unwrap_or(0);
            let mode = info.info.get("lakeledger.mode").and_then(|m| m.as_str()).unwrap_or("append").to_string();
            return Ok(Some(IngestResult { version: v, rows, mode }));
        }
        Ok(None)
    }
}

fn to_json(r: &IngestResult) -> Result<String> {
    serde_json::to_string(r).map_err(|e| Error::Internal(e.to_string()))
}
