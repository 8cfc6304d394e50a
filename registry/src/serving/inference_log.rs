//! Inference logs: what each model was asked and answered, appended in batches to a
//! feature group per model (`inference_<model>`), so the SQL endpoint, time travel, the
//! audit trail and drift checks all work on it like on any other table.
//!
//! Scoring requests only push rows into an in-memory buffer; a background task commits
//! the buffers every `inference_log_flush`. Each commit is announced by a durable audit
//! record first, like every other write. A failed commit keeps its rows for the next
//! round, up to a cap; rows beyond the cap are dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use lakeledger_audit::{Event, Phase};
use lakeledger_query::{Column, ColumnType};

use crate::error::{Error, Result};
use crate::features::{CreateFeatureGroup, FeatureWriter};
use crate::identity::Principal;
use crate::platform::audit::{AuditContext, AuditLog};
use crate::platform::catalog::{FeatureGroupRecord, Role};

/// Rows held per model while commits fail; beyond this the oldest are dropped.
const MAX_BUFFERED_ROWS: usize = 1_000_000;
/// Tag naming the model a group logs, so a user's group of the same name is never written.
pub const LOG_TAG: &str = "lakeledger.inference_log";

/// One scored row.
pub struct LogRow {
    pub request_id: String,
    pub row: i32,
    pub served_at: i64,
    pub version: i64,
    pub alias: Option<String>,
    pub variant: Option<&'static str>,
    /// The model inputs as a JSON object.
    pub inputs: String,
    /// The entity keys when the request named entities, as a JSON object.
    pub entity: Option<String>,
    /// The prediction (and class probabilities) as JSON.
    pub prediction: String,
}

/// The inference-log service: buffers per model, committed through the feature writer.
pub struct InferenceLog {
    buffers: Mutex<HashMap<(String, String), Buffer>>,
    writer: FeatureWriter,
    audit: Arc<AuditLog>,
    flush_every: std::time::Duration,
}

struct Buffer {
    tenant: String,
    rows: Vec<LogRow>,
}

/// The log group's name for a model: lower case, other characters as `_`.
pub fn group_name(model: &str) -> String {
    let cleaned: String = model.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("{}{cleaned}", crate::features::RESERVED_GROUP_PREFIX)
}

impl InferenceLog {
    pub fn new(writer: FeatureWriter, audit: Arc<AuditLog>, flush_every: std::time::Duration) -> Arc<InferenceLog> {
        Arc::new(InferenceLog { buffers: Default::default(), writer, audit, flush_every })
    }

    pub fn push(&self, p: &Principal, model: &str, rows: Vec<LogRow>) {
        let mut buffers = self.buffers.lock().expect("inference log lock");
        let b = buffers
            .entry((p.tenant_id.clone(), model.to_string()))
            .or_insert_with(|| Buffer { tenant: p.tenant.clone(), rows: Vec::new() });
        b.rows.extend(rows);
        if b.rows.len() > MAX_BUFFERED_ROWS {
            let extra = b.rows.len() - MAX_BUFFERED_ROWS;
            b.rows.drain(..extra);
            metrics::counter!("lakeledger_inference_log_dropped_rows_total", "model" => format!("{}/{model}", b.tenant)).increment(extra as u64);
        }
    }

    fn take(&self) -> Vec<((String, String), Buffer)> {
        let mut buffers = self.buffers.lock().expect("inference log lock");
        buffers.drain().filter(|(_, b)| !b.rows.is_empty()).collect()
    }

    fn put_back(&self, key: (String, String), mut failed: Buffer) {
        let mut buffers = self.buffers.lock().expect("inference log lock");
        let b = buffers.entry(key).or_insert_with(|| Buffer { tenant: failed.tenant.clone(), rows: Vec::new() });
        failed.rows.append(&mut b.rows);
        b.rows = failed.rows;
    }

    /// Commits buffered rows every flush interval until `stop` changes. A flush that has
    /// begun always finishes (its rows are taken out of the buffers, so cutting it short would
    /// lose them); the caller flushes once more after this returns.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.flush_every) => self.flush().await,
                _ = stop.changed() => return,
            }
        }
    }

    /// Commits every buffer now (also at shutdown).
    pub async fn flush(&self) {
        for (key, buffer) in self.take() {
            let (tenant_id, model) = key.clone();
            match self.commit(&tenant_id, &buffer.tenant, &model, &buffer.rows).await {
                Ok(version) => {
                    metrics::counter!("lakeledger_inference_log_rows_total", "model" => format!("{}/{model}", buffer.tenant)).increment(buffer.rows.len() as u64);
                    tracing::debug!(model = %model, rows = buffer.rows.len(), version, "inference log committed");
                }
                Err(e) => {
                    metrics::counter!("lakeledger_inference_log_failures_total", "model" => format!("{}/{model}", buffer.tenant)).increment(1);
                    tracing::error!(error = %e, model = %model, rows = buffer.rows.len(), "inference log commit failed; keeping the rows for the next round");
                    self.put_back(key, buffer);
                }
            }
        }
    }

    /// The model's log group, created on first use.
    async fn log_group(&self, p: &Principal, model: &str, ctx: &AuditContext) -> Result<FeatureGroupRecord> {
        let name = group_name(model);
        if let Some(g) = self.writer.group(p, &name).await? {
            return if g.tags.get(LOG_TAG).map(String::as_str) == Some(model) {
                Ok(g)
            } else {
                Err(Error::Conflict(format!("feature group `{name}` exists and is not the inference log of model `{model}`")))
            };
        }
        let s = schema();
        let req = CreateFeatureGroup {
            name: name.clone(),
            entity_keys: s.entity_keys,
            event_time: s.event_time,
            features: s.features,
            description: format!("Inference log of model `{model}`: inputs, entity keys and predictions of sampled scoring requests"),
            owner: "lakeledger".into(),
            tags: [(LOG_TAG.to_string(), model.to_string())].into(),
            online: false,
            online_max_age_seconds: None,
        };
        self.writer.ensure(p, req, ctx).await
    }

    async fn commit(&self, tenant_id: &str, tenant: &str, model: &str, rows: &[LogRow]) -> Result<i64> {
        let p = system_principal(tenant_id, tenant);
        // Announced durably before anything is written, as every write is.
        let mut intent = Event::new("inference_log.append", Phase::Intent);
        intent.actor.principal = Some(p.key_id.clone());
        intent.actor.principal_type = "system".into();
        intent.actor.tenant = Some(tenant.to_string());
        intent.resource.kind = Some("feature_group".into());
        intent.resource.name = Some(group_name(model));
        intent.resource.tenant = Some(tenant.to_string());
        intent.details.push(("model".into(), model.to_string()));
        intent.details.push(("rows".into(), rows.len().to_string()));
        let receipt = self.audit.record(&intent).await?;
        let ctx = AuditContext { request_id: format!("inference-log-{}", uuid::Uuid::now_v7()), event_id: intent.event_id.clone(), intent_seq: receipt.seq };
        let result = async {
            let g = self.log_group(&p, model, &ctx).await?;
            let batch = to_batch(rows)?;
            self.writer.append(&p, &g, vec![batch], &ctx).await
        }
        .await;
        let mut outcome = intent.clone();
        outcome.event_id = uuid::Uuid::now_v7().to_string();
        outcome.phase = Phase::Outcome;
        outcome.intent_seq = Some(receipt.seq);
        outcome.details.push(("intent_event_id".into(), intent.event_id.clone()));
        outcome.outcome = Some(lakeledger_audit::event::Result {
            result: if result.is_ok() { "success" } else { "error" }.into(),
            status: if result.is_ok() { 201 } else { 500 },
            rows: Some(rows.len() as u64),
            ..Default::default()
        });
        if let Ok(r) = &result {
            outcome.resource.versions_written = vec![r.version];
        }
        self.audit.record_later(&outcome);
        Ok(result?.version)
    }
}

fn system_principal(tenant_id: &str, tenant: &str) -> Principal {
    Principal {
        key_id: "system:inference-log".into(),
        key_name: "inference log".into(),
        role: Role::Writer,
        tenant_id: tenant_id.into(),
        tenant: tenant.into(),
        auth_method: "internal",
    }
}

fn schema() -> lakeledger_query::FeatureSchema {
    lakeledger_query::FeatureSchema {
        entity_keys: vec![Column::new("request_id", ColumnType::String), Column::new("row", ColumnType::Int32)],
        event_time: "served_at".into(),
        features: vec![
            Column::new("model_version", ColumnType::Int64),
            Column::new("alias", ColumnType::String),
            Column::new("variant", ColumnType::String),
            Column::new("inputs", ColumnType::String),
            Column::new("entity", ColumnType::String),
            Column::new("prediction", ColumnType::String),
        ],
    }
}

fn to_batch(rows: &[LogRow]) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(&LogRow) -> Option<&str>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<StringArray>()) };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| Some(r.request_id.as_str())),
        Arc::new(rows.iter().map(|r| r.row).collect::<Int32Array>()),
        Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.served_at).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(rows.iter().map(|r| r.version).collect::<Int64Array>()),
        text(&|r| r.alias.as_deref()),
        text(&|r| r.variant),
        text(&|r| Some(r.inputs.as_str())),
        text(&|r| r.entity.as_deref()),
        text(&|r| Some(r.prediction.as_str())),
    ];
    let fields = vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::Int32, false),
        Field::new("served_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("model_version", DataType::Int64, true),
        Field::new("alias", DataType::Utf8, true),
        Field::new("variant", DataType::Utf8, true),
        Field::new("inputs", DataType::Utf8, true),
        Field::new("entity", DataType::Utf8, true),
        Field::new("prediction", DataType::Utf8, true),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::Internal(format!("inference log batch: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_groups_are_valid_group_names() {
        for m in ["Churn-Model.v2", "wine", "9lives"] {
            let g = super::group_name(m);
            crate::features::validate_group_name(&g).unwrap();
        }
        assert_eq!(super::group_name("Churn-Model.v2"), "inference_churn_model_v2");
        // The tag is reserved, so only the server can mark a group as a model's log.
        assert!(super::LOG_TAG.starts_with(crate::features::RESERVED_TAG_PREFIX));
    }
}
