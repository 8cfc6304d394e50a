//! Uploaded spines: label rows in any ingest format, kept as Parquet with their SHA-256
//! for training sets to use by id.

use lakeledger_query::ingest::{IngestFormat, decode_inferred, spine_time_column};
use lakeledger_query::point_in_time::deterministic_parquet;
use sha2::{Digest, Sha256};

use super::sets::{SpineColumn, SpineManifest, TrainingSets};
use super::stored::SPINES;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::audit::AuditContext;

impl TrainingSets {
    /// Stores an uploaded spine (any ingest format); `time` names its time column.
    pub async fn upload_spine(&self, p: &Principal, ctx: &AuditContext, format: IngestFormat, body: bytes::Bytes, time: String) -> Result<SpineManifest> {
        let time_name = time.clone();
        let threads = self.threads;
        let (batch, parquet) = tokio::task::spawn_blocking(move || -> Result<_> {
            let batch = decode_inferred(format, body)?;
            if batch.num_rows() == 0 {
                return Err(Error::Unprocessable("the spine has no rows".into()));
            }
            let batch = spine_time_column(&batch, &time)?;
            let parquet = deterministic_parquet(&batch, threads)?;
            Ok((batch, parquet))
        })
        .await
        .map_err(|e| Error::Internal(format!("spine decoding failed: {e}")))??;
        let m = SpineManifest {
            id: SPINES.new_id(),
            tenant: p.tenant.clone(),
            time: time_name,
            columns: batch.schema().fields().iter().map(|f| SpineColumn { name: f.name().clone(), dtype: f.data_type().to_string() }).collect(),
            rows: batch.num_rows() as u64,
            bytes: parquet.len() as u64,
            sha256: hex::encode(Sha256::digest(&parquet)),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            created_by: p.actor(),
            audit_event_id: ctx.event_id.clone(),
        };
        SPINES.write(&self.tables, &p.tenant, &m.id, parquet, &m).await?;
        Ok(m)
    }

    pub async fn spine_manifest(&self, p: &Principal, id: &str) -> Result<SpineManifest> {
        SPINES.manifest_for(&self.tables, &p.tenant, id).await
    }

    pub(super) async fn spine_data(&self, p: &Principal, id: &str) -> Result<(SpineManifest, bytes::Bytes)> {
        let m: SpineManifest = SPINES.manifest_for(&self.tables, &p.tenant, id).await?;
        let bytes = SPINES.data(&self.tables, &p.tenant, id, &m.sha256).await?;
        Ok((m, bytes))
    }
}
