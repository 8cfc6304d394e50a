//! Canaries: a share of an alias's traffic sent to another version, judged by a guard
//! over a sliding window of its requests and rolled back (with the reason recorded) when
//! it trips; or stopped or promoted by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Route, Serving};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::catalog::CanaryRecord;
use crate::platform::time::{now_micros, rfc3339};

/// An open canary with its guard's running window.
pub struct Canary {
    pub record: CanaryRecord,
    pub guard: Guard,
    window: Mutex<GuardWindow>,
    ended: AtomicBool,
}

/// Thresholds that end a canary automatically.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Roll back when the share of failed canary requests in the window exceeds this.
    pub max_error_rate: Option<f64>,
    /// Roll back when the canary's 99th-percentile latency in the window exceeds this.
    pub max_p99_ms: Option<f64>,
    /// Canary requests seen before the guard judges (default 100).
    pub min_requests: Option<u64>,
    /// The most recent canary requests the guard looks at (default 1000).
    pub window: Option<u64>,
}

impl Guard {
    fn check(&self) -> Result<()> {
        if let Some(r) = self.max_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::Unprocessable(format!("guard.max_error_rate must be between 0 and 1, got {r}")));
        }
        if let Some(ms) = self.max_p99_ms
            && !(ms >= 0.0 && ms.is_finite())
        {
            return Err(Error::Unprocessable(format!("guard.max_p99_ms must be a non-negative number, got {ms}")));
        }
        if self.window == Some(0) {
            return Err(Error::Unprocessable("guard.window must be at least 1".into()));
        }
        Ok(())
    }
    fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(100).max(1)
    }
    fn window(&self) -> usize {
        self.window.unwrap_or(1000).max(1) as usize
    }
}

#[derive(Default)]
struct GuardWindow {
    /// (failed, latency in µs), oldest first.
    recent: std::collections::VecDeque<(bool, u64)>,
    seen: u64,
}

impl GuardWindow {
    /// The guard's finding, when a threshold is crossed.
    fn verdict(&self, guard: &Guard) -> Option<String> {
        if self.seen < guard.min_requests() {
            return None;
        }
        let n = self.recent.len() as f64;
        if let Some(max) = guard.max_error_rate {
            let failed = self.recent.iter().filter(|(f, _)| *f).count() as f64;
            if failed / n > max {
                return Some(format!("error rate {:.4} over the last {} canary requests exceeds {max}", failed / n, self.recent.len()));
            }
        }
        if let Some(max) = guard.max_p99_ms {
            let mut l: Vec<u64> = self.recent.iter().map(|(_, l)| *l).collect();
            l.sort_unstable();
            let p99 = l[((l.len() as f64 * 0.99).ceil() as usize).clamp(1, l.len()) - 1] as f64 / 1000.0;
            if p99 > max {
                return Some(format!("p99 latency {p99:.3} ms over the last {} canary requests exceeds {max} ms", self.recent.len()));
            }
        }
        None
    }
}

impl Canary {
    pub(super) fn from_record(record: CanaryRecord) -> Result<Canary> {
        let guard: Guard = serde_json::from_str(&record.guard_json).map_err(|e| Error::Internal(format!("canary guard: {e}")))?;
        Ok(Canary { record, guard, window: Default::default(), ended: AtomicBool::new(false) })
    }
}

/// Which version serves a request to an alias, and whether it is the canary.
pub(super) fn pick(route: &Route) -> (i64, Option<Arc<Canary>>) {
    match &route.canary {
        Some(c) if !c.ended.load(Ordering::Relaxed) && rand::random::<f64>() * 100.0 < c.record.percent => (c.record.version, Some(c.clone())),
        _ => (route.stable, None),
    }
}

impl Serving {
    /// Records a canary request's outcome; rolls the canary back when the guard says so.
    pub(super) fn observe_canary(self: &Arc<Self>, p: &Principal, name: &str, model_id: &str, canary: &Arc<Canary>, failed: bool, latency: Duration) {
        let verdict = {
            let mut w = canary.window.lock().expect("guard window lock");
            w.seen += 1;
            w.recent.push_back((failed, latency.as_micros() as u64));
            while w.recent.len() > canary.guard.window() {
                w.recent.pop_front();
            }
            w.verdict(&canary.guard)
        };
        let Some(why) = verdict else { return };
        if canary.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        metrics::counter!("lakeledger_model_canary_rollbacks_total", "model" => format!("{}/{name}", p.tenant)).increment(1);
        tracing::warn!(model = %name, alias = %canary.record.alias, version = canary.record.version, reason = %why, "canary rolled back by its guard");
        let (serving, p, name, model_id, canary) = (self.clone(), p.clone(), name.to_string(), model_id.to_string(), canary.clone());
        tokio::spawn(async move {
            let reason = format!("rolled back by guard: {why}");
            if let Err(e) = serving.end_canary_recorded(&p, &name, &model_id, &canary.record.alias, &reason, "guard").await {
                tracing::error!(error = %e, model = %name, "recording a canary rollback failed");
            }
        });
    }

    /// Closes a canary in the catalog, with an audit record, and drops the cached route.
    async fn end_canary_recorded(&self, p: &Principal, name: &str, model_id: &str, alias: &str, reason: &str, by: &str) -> Result<bool> {
        let mut e = lakeledger_audit::Event::new("model_canary.end", lakeledger_audit::Phase::Intent);
        e.actor.principal = Some(by.to_string());
        e.actor.principal_type = if by == "guard" { "system".into() } else { "api_key".into() };
        e.actor.tenant = Some(p.tenant.clone());
        e.resource.kind = Some("model".into());
        e.resource.name = Some(format!("{name}@{alias}"));
        e.resource.tenant = Some(p.tenant.clone());
        e.details.push(("reason".into(), reason.to_string()));
        self.audit.record(&e).await?;
        let ended = self.catalog.end_canary(model_id, alias, now_micros(), reason, by).await?;
        self.forget_route(model_id, alias);
        Ok(ended)
    }
}


#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCanary {
    pub version: i64,
    /// Share of the alias's traffic sent to `version`, 0 to 100.
    pub percent: f64,
    #[serde(default)]
    pub guard: Guard,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CanaryView {
    pub alias: String,
    pub seq: i64,
    pub version: i64,
    pub percent: f64,
    pub guard: Guard,
    pub started_at: String,
    pub started_by: String,
    pub reason: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

impl CanaryView {
    fn of(c: CanaryRecord) -> CanaryView {
        CanaryView {
            guard: serde_json::from_str(&c.guard_json).unwrap_or_default(),
            alias: c.alias,
            seq: c.seq,
            version: c.version,
            percent: c.percent,
            started_at: rfc3339(c.started_at),
            started_by: c.started_by,
            reason: c.reason,
            ended_at: c.ended_at.map(rfc3339),
            end_reason: c.end_reason,
            ended_by: c.ended_by,
        }
    }
}

impl Serving {
    pub async fn start_canary(&self, p: &Principal, name: &str, alias: &str, req: StartCanary) -> Result<CanaryView> {
        if !(req.percent > 0.0 && req.percent < 100.0) {
            return Err(Error::Unprocessable(format!("percent must be above 0 and below 100, got {}", req.percent)));
        }
        req.guard.check()?;
        let m = self.models.find(p, name).await?;
        let stable = self.models.resolve_alias(p, name, alias, None).await?;
        if stable == req.version {
            return Err(Error::Unprocessable(format!("alias `{alias}` already points at version {stable}; a canary needs another version")));
        }
        let v = self.models.version(p, name, req.version).await?;
        if v.state != "active" {
            return Err(Error::Conflict(format!("version {} of `{name}` is {}; only active versions take traffic", req.version, v.state)));
        }
        // Verified and warm before the first request is routed to it.
        self.loaded(p, name, req.version).await?;
        let record = CanaryRecord {
            alias: alias.to_string(),
            seq: 0,
            version: req.version,
            percent: req.percent,
            guard_json: serde_json::to_string(&req.guard).map_err(|e| Error::Internal(e.to_string()))?,
            started_at: now_micros(),
            started_by: p.actor(),
            reason: req.reason,
            ended_at: None,
            end_reason: None,
            ended_by: None,
        };
        let record = self.catalog.start_canary(&m.id, &record).await?;
        self.forget_route(&m.id, alias);
        Ok(CanaryView::of(record))
    }

    /// Ends the open canary: `promote` moves the alias to the canary's version first.
    pub async fn end_canary(&self, p: &Principal, name: &str, alias: &str, promote: bool, reason: &str) -> Result<CanaryView> {
        let m = self.models.find(p, name).await?;
        let open = self
            .catalog
            .canaries(&m.id, alias)
            .await?
            .into_iter()
            .rfind(|c| c.ended_at.is_none())
            .ok_or_else(|| Error::NotFound { kind: "canary", name: format!("{name}@{alias}") })?;
        let why = if promote { format!("promoted: {reason}") } else { format!("stopped: {reason}") };
        if promote {
            self.models.move_alias(p, name, alias, Some(open.version), &format!("canary promoted: {reason}")).await?;
        }
        self.catalog.end_canary(&m.id, alias, now_micros(), why.trim_end_matches(": "), &p.actor()).await?;
        self.forget_route(&m.id, alias);
        let ended = self.catalog.canaries(&m.id, alias).await?.into_iter().find(|c| c.seq == open.seq).expect("just ended");
        Ok(CanaryView::of(ended))
    }

    pub async fn canaries(&self, p: &Principal, name: &str, alias: &str) -> Result<Vec<CanaryView>> {
        let m = self.models.find(p, name).await?;
        Ok(self.catalog.canaries(&m.id, alias).await?.into_iter().map(CanaryView::of).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_judges_only_after_enough_requests() {
        let guard = Guard { max_error_rate: Some(0.1), max_p99_ms: None, min_requests: Some(10), window: Some(10) };
        let mut w = GuardWindow::default();
        for i in 0..9 {
            w.seen += 1;
            w.recent.push_back((i % 2 == 0, 100));
            assert!(w.verdict(&guard).is_none());
        }
        w.seen += 1;
        w.recent.push_back((false, 100));
        assert!(w.verdict(&guard).unwrap().contains("error rate 0.5000"));
        let latency = Guard { max_error_rate: None, max_p99_ms: Some(0.05), min_requests: Some(1), window: None };
        let w = GuardWindow { seen: 1, recent: [(false, 100)].into() };
        assert!(w.verdict(&latency).unwrap().contains("p99 latency 0.100 ms"));
    }
}
