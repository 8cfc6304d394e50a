//! Time as the catalog stores it (microseconds since the Unix epoch) and as the API
//! writes it (RFC 3339, UTC, microseconds).

use crate::error::{Error, Result};

/// Microseconds since the Unix epoch, the time unit of the catalog.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `micros` as RFC 3339 in UTC with microseconds, e.g. `2026-03-01T00:00:00.000000Z`.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// Parses the RFC 3339 time given as `name` into microseconds, or says what is wrong.
pub fn parse_micros(name: &str, text: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|d| d.timestamp_micros())
        .map_err(|e| Error::BadRequest(format!("`{name}` must be an RFC 3339 time such as 2026-03-01T00:00:00Z: {e}")))
}
