//! What the HTTP layer holds: a bundle of service handles, built by `app/`.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::platform::admission::Admission;
use crate::features::FeatureGroups;
use crate::identity::Identity;
use crate::identity::quotas::Limits;
use crate::lineage::Lineage;
use crate::models::Models;
use crate::online::OnlineStore;
use crate::platform::audit::AuditLog;
use crate::platform::changes::Changes;
use crate::platform::readiness::Readiness;
use crate::serving::drift::Drift;
use crate::serving::{InferenceLog, Serving};
use crate::sql::Sql;
use crate::training::{Jobs, TrainingSets};

#[derive(Clone)]
pub struct AppState(pub Arc<Services>);

/// The services the routes call, one handle each.
pub struct Services {
    /// Change notices to and from the other replicas.
    pub changes: Arc<Changes>,
    pub identity: Arc<Identity>,
    /// Per-tenant limits set by operators.
    pub quotas: Arc<Limits>,
    pub features: Arc<FeatureGroups>,
    pub online: Arc<OnlineStore>,
    pub sql: Arc<Sql>,
    pub training_sets: Arc<TrainingSets>,
    pub jobs: Arc<Jobs>,
    pub models: Arc<Models>,
    pub serving: Arc<Serving>,
    pub inference_log: Arc<InferenceLog>,
    pub drift: Arc<Drift>,
    pub lineage: Lineage,
    pub audit: Arc<AuditLog>,
    pub readiness: Arc<Readiness>,
    pub metrics: PrometheusHandle,
    /// SHA-256 of the bearer token that may scrape `/metrics`, if one is configured.
    pub metrics_token: Option<[u8; 32]>,
    pub limits: HttpLimits,
    pub admission: Arc<Admission>,
}

/// Limits the HTTP edge checks before a service sees the request.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest accepted data upload (rows, spines, model artifacts) in bytes.
    pub max_body_bytes: u64,
    /// Largest accepted JSON body of a control request.
    pub max_json_body_bytes: u64,
    /// Largest accepted scoring request body.
    pub max_scoring_body_bytes: u64,
    /// Largest accepted spine upload and model artifact (decoded whole in memory).
    pub max_spine_bytes: u64,
    pub max_model_bytes: u64,
    /// How long a read or query may take to start answering.
    pub request_timeout: std::time::Duration,
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}
