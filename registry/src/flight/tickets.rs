//! What Flight descriptors and tickets name.
//!
//! SQL tickets are Flight SQL's own (`TicketStatementQuery`); their handle carries the
//! statement and the exact versions its plan resolved, so `DoGet` sends the rows the plan
//! described even if a commit lands in between. Bulk pulls without SQL use JSON that a
//! person can write by hand, as a descriptor's command or a ticket:
//!
//! - `{"feature_group": "rides"}` (latest), `{"feature_group": "rides", "version": 3}` or
//!   `{"feature_group": "rides", "as_of": "2026-01-01T00:00:00Z"}`
//! - `{"training_set": "ts_…"}`

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A SQL statement and, once planned, the versions it reads (in statement order).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementHandle {
    pub sql: String,
    #[serde(default)]
    pub versions: Vec<i64>,
}

impl StatementHandle {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a statement handle serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<StatementHandle> {
        serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("the statement handle is not one this server issued: {e}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkJson {
    feature_group: Option<String>,
    version: Option<i64>,
    as_of: Option<String>,
    training_set: Option<String>,
}

/// A bulk pull: one feature group at a version or time, or a training set's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bulk {
    FeatureGroup { name: String, version: Option<i64>, as_of: Option<String> },
    TrainingSet { id: String },
}

impl Bulk {
    /// Whether bytes are a JSON bulk ticket rather than a protobuf `Any` (whose first byte
    /// is the tag of field 1, `0x0a`).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }

    pub fn parse(bytes: &[u8]) -> Result<Bulk> {
        let j: BulkJson = serde_json::from_slice(bytes).map_err(|e| {
            Error::BadRequest(format!(
                "the ticket is not valid JSON of the form {{\"feature_group\": <name>, \"version\"|\"as_of\": …}} or {{\"training_set\": <id>}}: {e}"
            ))
        })?;
        match (j.feature_group, j.training_set) {
            (Some(name), None) => {
                if j.version.is_some() && j.as_of.is_some() {
                    return Err(Error::BadRequest("give either `version` or `as_of`, not both".into()));
                }
                Ok(Bulk::FeatureGroup { name, version: j.version, as_of: j.as_of })
            }
            (None, Some(id)) if j.version.is_none() && j.as_of.is_none() => Ok(Bulk::TrainingSet { id }),
            (None, Some(_)) => Err(Error::BadRequest("a training set has one version: drop `version` and `as_of`".into())),
            (Some(_), Some(_)) => Err(Error::BadRequest("name either a `feature_group` or a `training_set`, not both".into())),
            (None, None) => Err(Error::BadRequest("the ticket names neither a `feature_group` nor a `training_set`".into())),
        }
    }

    /// The ticket for exactly what a descriptor resolved to (a feature group pinned to
    /// the version the plan found).
    pub fn pinned(&self, version: Option<i64>) -> Vec<u8> {
        let v = match self {
            Bulk::FeatureGroup { name, .. } => serde_json::json!({"feature_group": name, "version": version}),
            Bulk::TrainingSet { id } => serde_json::json!({"training_set": id}),
        };
        serde_json::to_vec(&v).expect("JSON serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_tickets_parse_or_say_what_is_wrong() {
        assert_eq!(
            Bulk::parse(br#"{"feature_group": "rides", "version": 3}"#).unwrap(),
            Bulk::FeatureGroup { name: "rides".into(), version: Some(3), as_of: None }
        );
        assert_eq!(Bulk::parse(br#"{"training_set": "ts_1"}"#).unwrap(), Bulk::TrainingSet { id: "ts_1".into() });
        for (bad, says) in [
            (&br#"{"feature_group": "r", "version": 1, "as_of": "2026-01-01T00:00:00Z"}"#[..], "not both"),
            (br#"{"feature_group": "r", "training_set": "t"}"#, "not both"),
            (br#"{}"#, "neither"),
            (br#"{"table": "r"}"#, "unknown field"),
            (br#"{"feature_group": 3}"#, "invalid type"),
        ] {
            let e = Bulk::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert!(Bulk::looks_like(b" {\"training_set\":\"x\"}"));
        assert!(!Bulk::looks_like(b"\x0a\x05hello"));
    }
}
