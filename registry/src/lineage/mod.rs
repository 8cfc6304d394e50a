//! Lineage both ways: a model version → the training set it learned from → the feature
//! group versions that set pinned; and a feature group (version) → the training sets
//! that read it → the model versions trained on those.
//!
//! A read-only view across features, training and models; nothing depends on it but
//! the edges.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::features::FeatureGroups;
use crate::identity::Principal;
use crate::models::Models;
use crate::training::TrainingSets;

pub struct Lineage {
    groups: Arc<FeatureGroups>,
    sets: Arc<TrainingSets>,
    models: Arc<Models>,
}

impl Lineage {
    pub fn new(groups: Arc<FeatureGroups>, sets: Arc<TrainingSets>, models: Arc<Models>) -> Lineage {
        Lineage { groups, sets, models }
    }

    /// Model version → training set → feature groups and versions.
    pub async fn of_model_version(&self, p: &Principal, name: &str, version: i64) -> Result<Value> {
        let v = self.models.version(p, name, version).await?;
        let training_set = match &v.training_set_id {
            Some(id) => Some(serde_json::to_value(self.sets.manifest(p, id).await?).map_err(|e| Error::Internal(e.to_string()))?),
            None => None,
        };
        Ok(serde_json::json!({
            "model": v.model,
            "version": v.version,
            "source": v.source,
            "artifact_sha256": v.artifact_sha256,
            "training_set": training_set,
            "feature_groups": v.lineage.get("feature_groups").cloned().unwrap_or(Value::Array(vec![])),
        }))
    }

    /// Feature group version → the training sets that read it and the model versions
    /// trained from those.
    pub async fn of_feature_group(&self, p: &Principal, group: &str, version: Option<i64>) -> Result<Value> {
        self.groups.find(p, group).await?;
        let sets: Vec<_> = self
            .sets
            .list(p)
            .await?
            .into_iter()
            .filter(|m| m.features.iter().any(|f| f.group == group && version.is_none_or(|v| f.version == v)))
            .collect();
        let ids: Vec<String> = sets.iter().map(|m| m.id.clone()).collect();
        let models = self.models.versions_by_training_sets(&p.tenant_id, &ids).await?;
        Ok(serde_json::json!({
            "feature_group": group,
            "version": version,
            "training_sets": sets.iter().map(|m| serde_json::json!({
                "id": m.id, "name": m.name, "created_at": m.created_at,
                "versions": m.features.iter().filter(|f| f.group == group).map(|f| f.version).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "model_versions": models.iter().filter(|(_, v)| v.state != "deleted").map(|(name, v)| serde_json::json!({
                "model": name, "version": v.version, "training_set_id": v.training_set_id,
            })).collect::<Vec<_>>(),
        }))
    }
}
