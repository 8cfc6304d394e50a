//! Aliases: named pointers to versions with the full history of their moves, and the
//! events serving follows.

use async_trait::async_trait;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{AliasMoveView, Models, valid_name};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::platform::time::now_micros;

/// What the registry tells the domain that serves models.
#[async_trait]
pub trait ModelEvents: Send + Sync {
    /// Loads and verifies `version` before an alias points at it: the swap never makes a
    /// request wait for a load, and a tampered artifact never gets an alias.
    async fn warm(&self, p: &Principal, model: &str, version: i64) -> Result<()>;
    /// An alias of the model moved (or was removed) in the catalog.
    fn alias_moved(&self, model_id: &str, alias: &str);
    /// A version was deleted in the catalog.
    fn version_deleted(&self, model_id: &str, version: i64);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveAlias {
    pub version: i64,
    /// Why; kept in the alias history.
    #[serde(default)]
    pub reason: String,
}

impl Models {
    pub async fn move_alias(&self, p: &Principal, name: &str, alias: &str, to: Option<i64>, reason: &str) -> Result<AliasMoveView> {
        valid_name("alias", alias)?;
        if alias.parse::<i64>().is_ok() {
            return Err(Error::Unprocessable(format!("alias `{alias}` would read as a version number")));
        }
        let m = self.find(p, name).await?;
        let lock = self.locks.get(&m.id);
        let _guard = lock.lock().await;
        match to {
            Some(v) => {
                let record = self.version_record(&m, v).await?;
                if record.state != "active" {
                    return Err(Error::Conflict(format!("version {v} of `{name}` is {}; only active versions take aliases", record.state)));
                }
                // Verified and loaded before any request is routed to it: the swap never
                // makes a request wait for a load, and a tampered artifact never gets an alias.
                match self.events() {
                    Some(events) => events.warm(p, name, v).await?,
                    None => self.load(p, name, v).await.map(|_| ())?,
                }
            }
            None => {
                if !self.catalog.aliases(&m.id).await?.iter().any(|(a, _)| a == alias) {
                    return Err(Error::NotFound { kind: "alias", name: format!("{name}@{alias}") });
                }
            }
        }
        // Moves of one alias get strictly increasing times, so "which version at T" has one answer.
        let last = self.catalog.alias_history(&m.id, alias).await?.last().map_or(i64::MIN, |mv| mv.moved_at);
        let at = now_micros().max(last.saturating_add(1));
        let moved = self.catalog.move_alias(&m.id, alias, to, &p.actor(), reason, at).await?;
        if let Some(events) = self.events() {
            events.alias_moved(&m.id, alias);
        }
        Ok(moved.into())
    }

    /// The version `alias` pointed at, now or at `at` (microseconds).
    pub async fn resolve_alias(&self, p: &Principal, name: &str, alias: &str, at: Option<i64>) -> Result<i64> {
        let m = self.find(p, name).await?;
        let not_found = || Error::NotFound { kind: "alias", name: format!("{name}@{alias}") };
        match at {
            None => self.catalog.aliases(&m.id).await?.into_iter().find(|(a, _)| a == alias).map(|(_, v)| v).ok_or_else(not_found),
            Some(t) => self
                .catalog
                .alias_history(&m.id, alias)
                .await?
                .into_iter()
                .rfind(|mv| mv.moved_at <= t)
                .and_then(|mv| mv.to_version)
                .ok_or_else(not_found),
        }
    }

    pub async fn alias_history(&self, p: &Principal, name: &str, alias: &str) -> Result<Vec<AliasMoveView>> {
        let m = self.find(p, name).await?;
        let history = self.catalog.alias_history(&m.id, alias).await?;
        if history.is_empty() {
            return Err(Error::NotFound { kind: "alias", name: format!("{name}@{alias}") });
        }
        Ok(history.into_iter().map(Into::into).collect())
    }
}
