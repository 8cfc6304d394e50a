//! Drift: how far the inputs a model version is being asked about have moved from the
//! training set it learned from. Per input: the population stability index (PSI; numbers
//! in ten bins at the training deciles, text by category) and, for numbers, the
//! two-sample Kolmogorov–Smirnov statistic with its asymptotic p-value.
//!
//! The current window comes from the model's inference log. Checks can also run on a
//! schedule (`[[drift_checks]]` in the config file) and call a webhook with an
//! HMAC-SHA256-signed body when a threshold is crossed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use lakeledger_trainer::data::RawColumn;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use lakeledger_query::feature_rows::FileSet;

use super::inference_log::{LOG_TAG, group_name};
use crate::error::{Error, Result};
use crate::features::{FeatureGroups, ReadSpec};
use crate::identity::Principal;
use crate::models::Models;
use crate::platform::audit::AuditLog;
use crate::platform::catalog::SharedCatalog;
use crate::platform::time::{now_micros, rfc3339};
use crate::training::TrainingSets;

/// The drift service: reads a version's training set and the rows to compare with.
pub struct Drift {
    models: Arc<Models>,
    sets: Arc<TrainingSets>,
    groups: Arc<FeatureGroups>,
    catalog: SharedCatalog,
    audit: Arc<AuditLog>,
}

/// PSI above this is commonly read as a significant shift.
pub const DEFAULT_PSI_THRESHOLD: f64 = 0.2;
pub const DEFAULT_KS_THRESHOLD: f64 = 0.2;

#[derive(Debug, Serialize, ToSchema)]
pub struct DriftReport {
    pub model: String,
    pub version: i64,
    pub training_set_id: String,
    pub baseline_rows: u64,
    /// Rows compared with the training set: inference-log rows of this version in the
    /// window, or rows a feature group's commits wrote.
    pub current_rows: u64,
    /// The statistics are computed over a uniform sample of at most this many rows of
    /// each side (the same window always gives the same sample), so a long window costs
    /// bounded memory.
    pub sample_rows: u64,
    pub current_source: String,
    pub since: Option<String>,
    pub until: Option<String>,
    pub psi_threshold: f64,
    pub ks_threshold: f64,
    pub features: Vec<FeatureDrift>,
    /// Inputs whose PSI or KS statistic crossed its threshold.
    pub drifted: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureDrift {
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: &'static str,
    pub psi: Option<f64>,
    /// Kolmogorov–Smirnov statistic (numbers only).
    pub ks: Option<f64>,
    pub ks_p_value: Option<f64>,
    pub baseline_nulls: u64,
    pub current_nulls: u64,
}

/// Where the current values come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The model's inference log (rows of the version, in the time window).
    InferenceLog,
    /// Rows written to a feature group by its commits after `from_version` up to
    /// `to_version` (default the latest); inputs named `<group>__<feature>` are compared.
    FeatureGroup { name: String, from_version: i64, to_version: Option<i64> },
}

/// Which rows to compare, and when to call an input drifted.
#[derive(Clone, Debug)]
pub struct Window {
    pub source: Source,
    /// Microseconds; rows at or after. `None`: from the start.
    pub since: Option<i64>,
    /// Microseconds; rows before. `None`: up to now.
    pub until: Option<i64>,
    pub psi_threshold: f64,
    pub ks_threshold: f64,
}

/// Compares the version's training set with its inference log in the window.
impl Drift {
    pub fn new(models: Arc<Models>, sets: Arc<TrainingSets>, groups: Arc<FeatureGroups>, catalog: SharedCatalog, audit: Arc<AuditLog>) -> Arc<Drift> {
        Arc::new(Drift { models, sets, groups, catalog, audit })
    }

    pub async fn report(&self, p: &Principal, name: &str, version: i64, window: Window) -> Result<DriftReport> {
        let Window { source, since, until, psi_threshold, ks_threshold } = window;
        let v = self.models.version(p, name, version).await?;
        let Some(set_id) = v.training_set_id.clone() else {
            return Err(Error::Unprocessable(format!("version {version} of `{name}` was imported: it has no training set to compare with")));
        };
        // Verified like any load, but not put in the serving cache: a drift check must not
        // evict a model that is taking traffic.
        let inputs = self.models.load(p, name, version).await?.input_kinds();

        let (_, copy) = self.sets.data(p, &set_id).await?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(copy.into_parquet())
            .and_then(|b| b.build())
            .map_err(|e| Error::Internal(format!("training set {set_id}: {e}")))?;
        let mut baseline = Sample::new(SAMPLE_ROWS);
        for batch in reader {
            let batch = batch.map_err(|e| Error::Internal(format!("training set {set_id}: {e}")))?;
            let columns = inputs
                .iter()
                .map(|(name, _)| RawColumn::read(&batch, name).map(values).map_err(|e| Error::Internal(e.to_string())))
                .collect::<Result<Vec<_>>>()?;
            for r in 0..batch.num_rows() {
                baseline.offer(|| columns.iter().map(|c| c[r].clone()).collect());
            }
        }
        let (baseline, baseline_rows) = baseline.columns(inputs.len());

        let names: Vec<String> = inputs.iter().map(|(name, _)| name.clone()).collect();
        let (current, current_rows) = match &source {
            Source::InferenceLog => self.log_values(p, name, version, &names, since, until).await?,
            Source::FeatureGroup { name: group, from_version, to_version } => self.group_values(p, &names, group, *from_version, *to_version).await?,
        }
        .columns(names.len());

        let mut features = Vec::new();
        let mut drifted = Vec::new();
        for (i, (name, numeric)) in inputs.iter().enumerate() {
            let f = match numeric {
                true => {
                    let (b, bn) = numbers(&baseline[i]);
                    let (cur, cn) = numbers(&current[i]);
                    let (ks, p_value) = ks_test(&b, &cur).map_or((None, None), |(d, p)| (Some(d), Some(p)));
                    FeatureDrift { name: name.clone(), kind: "numeric", psi: psi_numeric(&b, bn, &cur, cn), ks, ks_p_value: p_value, baseline_nulls: bn, current_nulls: cn }
                }
                false => {
                    let bn = baseline[i].iter().filter(|v| v.is_null()).count() as u64;
                    let cn = current[i].iter().filter(|v| v.is_null()).count() as u64;
                    FeatureDrift { name: name.clone(), kind: "categorical", psi: psi_categorical(&baseline[i], &current[i]), ks: None, ks_p_value: None, baseline_nulls: bn, current_nulls: cn }
                }
            };
            if f.psi.is_some_and(|x| x > psi_threshold) || f.ks.is_some_and(|x| x > ks_threshold) {
                drifted.push(f.name.clone());
            }
            features.push(f);
        }
        Ok(DriftReport {
            model: name.to_string(),
            version,
            training_set_id: set_id,
            baseline_rows,
            current_rows,
            sample_rows: SAMPLE_ROWS as u64,
            current_source: match source {
                Source::InferenceLog => "inference_log".to_string(),
                Source::FeatureGroup { name, from_version, to_version } => {
                    format!("{name}: versions after {from_version} up to {}", to_version.map_or("the latest".to_string(), |v| v.to_string()))
                }
            },
            since: since.map(rfc3339),
            until: until.map(rfc3339),
            psi_threshold,
            ks_threshold,
            features,
            drifted,
        })
    }

    /// Per input, the values logged for `version` in `[since, until)`.
    async fn log_values(&self, p: &Principal, model: &str, version: i64, inputs: &[String], since: Option<i64>, until: Option<i64>) -> Result<Sample> {
        use arrow::array::AsArray;
        let mut current = Sample::new(SAMPLE_ROWS);
        let log = self.groups.record(&p.tenant_id, &group_name(model)).await?;
        let Some(g) = log.filter(|g| g.tags.get(LOG_TAG).map(String::as_str) == Some(model)) else {
            return Ok(current);
        };
        let (table, _) = self.groups.open_at(&g, None).await?;
        let mut stream = lakeledger_query::tables::scan(&table, &g.schema, &[], None).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| Error::Internal(format!("reading the inference log: {e}")))?;
            let (Some(versions), Some(times), Some(rows)) = (batch.column_by_name("model_version"), batch.column_by_name("served_at"), batch.column_by_name("inputs")) else {
                continue;
            };
            let versions = versions.as_primitive::<arrow::datatypes::Int64Type>();
            let times = times.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let rows = arrow::compute::cast(rows, &arrow::datatypes::DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?;
            let rows = rows.as_string::<i32>();
            for r in 0..batch.num_rows() {
                let t = times.value(r);
                if versions.value(r) != version || since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                    continue;
                }
                let text = rows.value(r);
                // Only rows the sample keeps are parsed.
                current.offer(|| match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(row)) => inputs.iter().map(|c| row.get(c).cloned().unwrap_or(Value::Null)).collect(),
                    _ => vec![Value::Null; inputs.len()],
                });
            }
        }
        Ok(current)
    }

    /// Per input `<group>__<feature>`, the values the group's commits after `from` up to `to`
    /// wrote; other inputs get none.
    async fn group_values(&self, p: &Principal, inputs: &[String], group: &str, from: i64, to: Option<i64>) -> Result<Sample> {
        let g = self.groups.find(p, group).await?;
        let spec = ReadSpec { version: to, ..Default::default() };
        let to = self.groups.resolve_version(&g, &spec).await?.version;
        if from >= to {
            return Err(Error::Unprocessable(format!("from_version {from} must be below to_version {to}")));
        }
        let snap = self.groups.snapshot(&g, Some(to)).await?;
        let schema = &snap.schema;
        let prefix = format!("{group}__");
        let wanted: Vec<Option<String>> = inputs
            .iter()
            .map(|n| n.strip_prefix(&prefix).filter(|f| schema.features.iter().any(|c| c.name == *f)).map(str::to_string))
            .collect();
        let columns: Vec<String> = wanted.iter().flatten().cloned().collect();
        if columns.is_empty() {
            return Err(Error::Unprocessable(format!("no input of this model comes from feature group `{group}` (inputs are named `{group}__<feature>`)")));
        }
        let rows = self.groups.read_rows(&snap, columns.clone(), FileSet::Live, Some(from)).await?;
        let mut sample = Sample::new(SAMPLE_ROWS);
        for batch in &rows.batches {
            let read = wanted
                .iter()
                .map(|w| w.as_ref().map(|f| RawColumn::read(batch, f).map(values).map_err(|e| Error::Unprocessable(e.to_string()))).transpose())
                .collect::<Result<Vec<_>>>()?;
            for r in 0..batch.num_rows() {
                // Inputs from elsewhere have no values here (null, counted apart).
                sample.offer(|| read.iter().map(|c| c.as_ref().map_or(Value::Null, |c| c[r].clone())).collect());
            }
        }
        Ok(sample)
    }

}

/// Rows kept per side of a drift comparison.
const SAMPLE_ROWS: usize = 100_000;

/// A uniform sample of at most `cap` rows of a stream (reservoir sampling), drawn with a
/// fixed seed so the same rows always give the same sample and report.
struct Sample {
    cap: usize,
    seen: u64,
    rows: Vec<Vec<Value>>,
    state: u64,
}

impl Sample {
    fn new(cap: usize) -> Sample {
        Sample { cap, seen: 0, rows: Vec::new(), state: 0x9e37_79b9_7f4a_7c15 }
    }

    /// SplitMix64: small, fast and plenty for choosing rows.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Offers the next row; `row` is only built when the sample keeps it.
    fn offer(&mut self, row: impl FnOnce() -> Vec<Value>) {
        if self.rows.len() < self.cap {
            self.rows.push(row());
        } else {
            let j = self.next() % (self.seen + 1);
            if (j as usize) < self.cap {
                self.rows[j as usize] = row();
            }
        }
        self.seen += 1;
    }

    /// The sample by input, and how many rows were offered.
    fn columns(self, inputs: usize) -> (Vec<Vec<Value>>, u64) {
        let mut out = vec![Vec::with_capacity(self.rows.len()); inputs];
        for row in self.rows {
            for (i, v) in row.into_iter().enumerate().take(inputs) {
                out[i].push(v);
            }
        }
        (out, self.seen)
    }
}

fn values(c: RawColumn) -> Vec<Value> {
    match c {
        RawColumn::Numeric(v) => v.into_iter().map(|x| x.map_or(Value::Null, Value::from)).collect(),
        RawColumn::Text(v) => v.into_iter().map(|x| x.map_or(Value::Null, Value::from)).collect(),
    }
}

fn numbers(values: &[Value]) -> (Vec<f64>, u64) {
    let mut out = Vec::with_capacity(values.len());
    let mut nulls = 0;
    for v in values {
        match v.as_f64().or_else(|| v.as_bool().map(|b| if b { 1.0 } else { 0.0 })) {
            Some(x) if x.is_finite() => out.push(x),
            _ => nulls += 1,
        }
    }
    (out, nulls)
}

/// Fractions are floored at this so an empty bin does not make the PSI infinite.
const EPS: f64 = 1e-4;

fn psi_of(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(EPS), a.max(EPS));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Ten bins at the baseline's deciles (fewer when values repeat), plus one for nulls.
pub fn psi_numeric(baseline: &[f64], baseline_nulls: u64, current: &[f64], current_nulls: u64) -> Option<f64> {
    let (bt, ct) = (baseline.len() as u64 + baseline_nulls, current.len() as u64 + current_nulls);
    if bt == 0 || ct == 0 {
        return None;
    }
    let mut sorted = baseline.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..10).filter_map(|q| sorted.get(q * sorted.len() / 10).copied()).collect();
    edges.dedup();
    let bins = |values: &[f64], nulls: u64, total: u64| -> Vec<f64> {
        let mut counts = vec![0u64; edges.len() + 2];
        for &v in values {
            counts[edges.partition_point(|&e| e <= v)] += 1;
        }
        counts[edges.len() + 1] = nulls;
        counts.iter().map(|&c| c as f64 / total as f64).collect()
    };
    Some(psi_of(&bins(baseline, baseline_nulls, bt), &bins(current, current_nulls, ct)))
}

/// One bin per baseline category, one for values the baseline never had, one for nulls.
pub fn psi_categorical(baseline: &[Value], current: &[Value]) -> Option<f64> {
    if baseline.is_empty() || current.is_empty() {
        return None;
    }
    let key = |v: &Value| match v {
        Value::Null => "\u{0}null".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut categories: BTreeMap<String, usize> = BTreeMap::new();
    for v in baseline {
        let n = categories.len();
        categories.entry(key(v)).or_insert(n);
    }
    let other = categories.len();
    let fractions = |values: &[Value]| {
        let mut counts = vec![0u64; other + 1];
        for v in values {
            counts[categories.get(&key(v)).copied().unwrap_or(other)] += 1;
        }
        counts.iter().map(|&c| c as f64 / values.len() as f64).collect::<Vec<_>>()
    };
    Some(psi_of(&fractions(baseline), &fractions(current)))
}

/// The two-sample KS statistic and its asymptotic p-value.
pub fn ks_test(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    let p: f64 = (1..=100).map(|k| {
        let k = k as f64;
        2.0 * (if k as u64 % 2 == 1 { 1.0 } else { -1.0 }) * (-2.0 * k * k * lambda * lambda).exp()
    }).sum();
    Some((d, p.clamp(0.0, 1.0)))
}

// ---------------------------------------------------------------------------------------
// Scheduled checks.

/// A drift check the server runs on a schedule (config file, `[[drift_checks]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftCheck {
    pub tenant: String,
    pub model: String,
    /// The alias whose current version is checked.
    pub alias: String,
    /// Seconds between checks; each looks at the inference log of the last window.
    pub every_seconds: u64,
    pub window_seconds: u64,
    #[serde(default)]
    pub psi_threshold: Option<f64>,
    #[serde(default)]
    pub ks_threshold: Option<f64>,
    /// Called with the report (JSON) when an input crosses a threshold.
    pub webhook_url: String,
    /// The environment variable holding the webhook's HMAC secret (never the secret
    /// itself in the file)...
    #[serde(default)]
    pub secret_env: Option<String>,
    /// ...or a file holding it (a mounted secret).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
}

impl DriftCheck {
    fn secret(&self) -> Result<Vec<u8>> {
        match (&self.secret_env, &self.secret_file) {
            (Some(var), None) => std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| Error::Unprocessable(format!("environment variable {var} (the drift webhook secret) is not set"))),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end().as_bytes().to_vec())
                .map_err(|e| Error::Unprocessable(format!("drift webhook secret {}: {e}", path.display()))),
            _ => Err(Error::Unprocessable(format!("drift check of `{}`: give exactly one of secret_env, secret_file", self.model))),
        }
    }
}

/// `X-Lakeledger-Signature: sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>`, where
/// the timestamp is the `X-Lakeledger-Timestamp` header (seconds), so a captured call
/// cannot be replayed later under a new time.
pub fn sign_webhook(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

impl Drift {
    /// Runs one configured check forever.
    pub async fn run_check(self: Arc<Self>, check: DriftCheck) {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(check.every_seconds.max(1))).await;
            if let Err(e) = self.check_once(&client, &check).await {
                metrics::counter!("lakeledger_drift_check_failures_total", "model" => format!("{}/{}", check.tenant, check.model)).increment(1);
                tracing::warn!(error = %e, model = %check.model, alias = %check.alias, "drift check failed");
            }
        }
    }

    async fn check_once(&self, client: &reqwest::Client, check: &DriftCheck) -> Result<()> {
        let tenant = self.catalog.tenant_by_name(&check.tenant).await?.ok_or_else(|| Error::NotFound { kind: "tenant", name: check.tenant.clone() })?;
        let p = Principal {
            key_id: "system:drift-check".into(),
            key_name: "drift check".into(),
            role: crate::platform::catalog::Role::Reader,
            tenant_id: tenant.id,
            tenant: tenant.name,
            auth_method: "internal",
        };
        let version = self.models.resolve_alias(&p, &check.model, &check.alias, None).await?;
        let now = now_micros();
        let since = now - (check.window_seconds as i64).saturating_mul(1_000_000);
        let window = Window {
            source: Source::InferenceLog,
            since: Some(since),
            until: Some(now),
            psi_threshold: check.psi_threshold.unwrap_or(DEFAULT_PSI_THRESHOLD),
            ks_threshold: check.ks_threshold.unwrap_or(DEFAULT_KS_THRESHOLD),
        };
        let report = self.report(&p, &check.model, version, window).await?;
        let mut e = lakeledger_audit::Event::new("model.drift_check", lakeledger_audit::Phase::Intent);
        e.actor.principal = Some(p.key_id.clone());
        e.actor.principal_type = "system".into();
        e.actor.tenant = Some(p.tenant.clone());
        e.resource.kind = Some("model".into());
        e.resource.name = Some(format!("{}@{}", check.model, check.alias));
        e.resource.tenant = Some(p.tenant.clone());
        e.resource.versions_read = vec![version];
        e.details.push(("current_rows".into(), report.current_rows.to_string()));
        e.details.push(("drifted".into(), report.drifted.join(",")));
        self.audit.record(&e).await?;
        if report.drifted.is_empty() || report.current_rows == 0 {
            return Ok(());
        }
        let secret = check.secret()?;
        let body = serde_json::to_vec(&serde_json::json!({"event": "drift", "alias": check.alias, "report": report})).map_err(|e| Error::Internal(e.to_string()))?;
        let ts = now / 1_000_000;
        let r = client
            .post(&check.webhook_url)
            .header("content-type", "application/json")
            .header("x-lakeledger-timestamp", ts.to_string())
            .header("x-lakeledger-signature", sign_webhook(&secret, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("drift webhook {}: {e}", check.webhook_url)))?;
        if !r.status().is_success() {
            return Err(Error::Unavailable(format!("drift webhook {} answered {}", check.webhook_url, r.status())));
        }
        metrics::counter!("lakeledger_drift_alerts_total", "model" => format!("{}/{}", check.tenant, check.model)).increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_uniform_bounded_and_the_same_every_time() {
        let draw = || {
            let mut s = super::Sample::new(1000);
            for i in 0..100_000 {
                s.offer(|| vec![serde_json::json!(i)]);
            }
            s.columns(1)
        };
        let (a, seen) = draw();
        assert_eq!((a[0].len(), seen), (1000, 100_000));
        assert_eq!(a, draw().0, "the same rows give the same sample");
        // Uniform: the kept rows' mean is near the stream's (49,999.5), not its start.
        let mean = a[0].iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / 1000.0;
        assert!((mean - 49_999.5).abs() < 5_000.0, "{mean}");
        let mut few = super::Sample::new(10);
        for i in 0..3 {
            few.offer(|| vec![serde_json::json!(i)]);
        }
        assert_eq!(few.columns(1), (vec![vec![serde_json::json!(0), serde_json::json!(1), serde_json::json!(2)]], 3));
    }

    #[test]
    fn identical_samples_do_not_drift_and_shifted_ones_do() {
        let a: Vec<f64> = (0..1000).map(|i| f64::from(i) / 10.0).collect();
        assert!(psi_numeric(&a, 0, &a, 0).unwrap() < 1e-9);
        assert_eq!(ks_test(&a, &a).unwrap().0, 0.0);
        let shifted: Vec<f64> = a.iter().map(|x| x + 30.0).collect();
        assert!(psi_numeric(&a, 0, &shifted, 0).unwrap() > 1.0);
        let (d, p) = ks_test(&a, &shifted).unwrap();
        assert!((d - 0.3).abs() < 1e-9, "{d}");
        assert!(p < 1e-6, "{p}");
    }

    #[test]
    fn ks_p_values_match_the_reference() {
        // D = 0.5; Q_KS((√25 + 0.12 + 0.11/√25)·0.5) = 2·exp(−2·2.571²) ≈ 3.6e-6 (Stephens'
        // approximation, as in Numerical Recipes' kstwo).
        let a: Vec<f64> = (1..=50).map(f64::from).collect();
        let b: Vec<f64> = (26..=75).map(f64::from).collect();
        let (d, p) = ks_test(&a, &b).unwrap();
        assert_eq!(d, 0.5);
        assert!(p > 3.4e-6 && p < 3.8e-6, "{p}");
    }

    #[test]
    fn categories_unseen_in_training_count_as_drift() {
        let base: Vec<Value> = ["a", "b"].iter().cycle().take(100).map(|s| Value::from(*s)).collect();
        assert!(psi_categorical(&base, &base).unwrap() < 1e-9);
        let new: Vec<Value> = ["c"].iter().cycle().take(100).map(|s| Value::from(*s)).collect();
        assert!(psi_categorical(&base, &new).unwrap() > 1.0);
    }

    #[test]
    fn webhook_signatures_cover_time_and_body() {
        let s = sign_webhook(b"k", 1, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(s, sign_webhook(b"k", 2, b"{}"));
        assert_ne!(s, sign_webhook(b"k", 1, b"{ }"));
    }
}
