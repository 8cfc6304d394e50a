//! What an event record says, and its canonical JSON: fields in a fixed order, every
//! field present (`null` when unknown), integers only, strings escaped the one way
//! written here. The same event always gives the same bytes.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Intent,
    Outcome,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Outcome => "outcome",
        }
    }
}

/// Who acted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// Principal id (an API key id), `None` when unauthenticated.
    pub principal: Option<String>,
    /// `api_key`, `anonymous`, `operator` (CLI on the host) or `system`.
    pub principal_type: String,
    pub tenant: Option<String>,
    pub role: Option<String>,
    /// `bearer`, `none` or `local`.
    pub auth_method: String,
}

/// Where the request came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub path: Option<String>,
}

/// What was acted on, with the exact versions read or written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// `feature_group`, `tenant`, `api_key`, `audit_log`, …
    pub kind: Option<String>,
    pub name: Option<String>,
    pub tenant: Option<String>,
    pub versions_read: Vec<i64>,
    pub versions_written: Vec<i64>,
}

/// How it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Result {
    /// `success`, `denied` or `error`.
    pub result: String,
    pub status: u16,
    pub error_code: Option<String>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// Hex SHA-256 of the response body, where it is cheap to compute.
    pub body_sha256: Option<String>,
    pub duration_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// UUIDv7.
    pub event_id: String,
    /// `feature_group.create`, `data.read`, `auth.denied`, …
    pub kind: String,
    pub phase: Phase,
    /// For an outcome: the seq of its intent.
    pub intent_seq: Option<u64>,
    pub actor: Actor,
    pub source: Source,
    pub resource: Resource,
    pub outcome: Option<Result>,
    /// Further facts as ordered string pairs (for SQL: normalized text, SHA-256, tables).
    pub details: Vec<(String, String)>,
}

impl Event {
    pub fn new(kind: impl Into<String>, phase: Phase) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            phase,
            intent_seq: None,
            actor: Actor::default(),
            source: Source::default(),
            resource: Resource::default(),
            outcome: None,
            details: Vec::new(),
        }
    }

    /// The canonical forms to append for this event, the event itself last. One that fits
    /// in `max` bytes is alone. Otherwise its longest detail values move, in pieces, into
    /// `audit.continuation` records (each naming the event, the detail, its part and the
    /// value's SHA-256), and the event keeps `moved to N continuation records` in their
    /// place: nothing is dropped, and every record fits.
    pub fn split_to_fit(&self, max: usize) -> Vec<Vec<u8>> {
        let whole = self.to_canonical_json();
        if whole.len() <= max {
            return vec![whole];
        }
        let mut main = self.clone();
        let mut parts = Vec::new();
        // Longest values first, until the event fits.
        let mut order: Vec<usize> = (0..main.details.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(main.details[*i].1.len()));
        for i in order {
            if main.to_canonical_json().len() <= max {
                break;
            }
            let (key, value) = main.details[i].clone();
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes()));
            // Room for the value in a continuation record: escaping may grow a character
            // up to six times (`\u0001`).
            let room = max.saturating_sub(2048).max(1024) / 6;
            let chunks = chunk_str(&value, room);
            for (n, chunk) in chunks.iter().enumerate() {
                let mut c = Event::new("audit.continuation", main.phase);
                c.actor = main.actor.clone();
                c.source.request_id = main.source.request_id.clone();
                c.resource = Resource { kind: main.resource.kind.clone(), name: main.resource.name.clone(), tenant: main.resource.tenant.clone(), ..Default::default() };
                c.details = vec![
                    ("continues".into(), main.event_id.clone()),
                    ("detail".into(), key.clone()),
                    ("part".into(), format!("{}/{}", n + 1, chunks.len())),
                    ("sha256".into(), digest.clone()),
                    ("value".into(), chunk.to_string()),
                ];
                parts.push(c.to_canonical_json());
            }
            main.details[i].1 = format!("moved to {} continuation records; sha256={digest}", chunks.len());
        }
        parts.push(main.to_canonical_json());
        parts
    }

    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut w = Obj::new();
        w.str("event_id", &self.event_id)
            .str("kind", &self.kind)
            .str("phase", self.phase.as_str())
            .opt_u64("intent_seq", self.intent_seq);
        let a = &self.actor;
        w.obj("actor", |o| {
            o.opt_str("principal", a.principal.as_deref())
                .str("principal_type", &a.principal_type)
                .opt_str("tenant", a.tenant.as_deref())
                .opt_str("role", a.role.as_deref())
                .str("auth_method", &a.auth_method);
        });
        let s = &self.source;
        w.obj("source", |o| {
            o.opt_str("client", s.client.as_deref())
                .opt_str("user_agent", s.user_agent.as_deref())
                .opt_str("request_id", s.request_id.as_deref())
                .opt_str("method", s.method.as_deref())
                .opt_str("route", s.route.as_deref())
                .opt_str("path", s.path.as_deref());
        });
        let r = &self.resource;
        w.obj("resource", |o| {
            o.opt_str("kind", r.kind.as_deref())
                .opt_str("name", r.name.as_deref())
                .opt_str("tenant", r.tenant.as_deref())
                .ints("versions_read", &r.versions_read)
                .ints("versions_written", &r.versions_written);
        });
        match &self.outcome {
            None => {
                w.null("outcome");
            }
            Some(x) => {
                w.obj("outcome", |o| {
                    o.str("result", &x.result)
                        .u64("status", x.status.into())
                        .opt_str("error_code", x.error_code.as_deref())
                        .opt_u64("rows", x.rows)
                        .opt_u64("bytes", x.bytes)
                        .opt_str("body_sha256", x.body_sha256.as_deref())
                        .u64("duration_us", x.duration_us);
                });
            }
        }
        w.obj("details", |o| {
            for (k, v) in &self.details {
                o.str(k, v);
            }
        });
        w.finish().into_bytes()
    }
}

/// A JSON object writer that emits fields in call order.
pub struct Obj {
    out: String,
    first: bool,
}

impl Obj {
    pub fn new() -> Self {
        Self {
            out: String::from("{"),
            first: true,
        }
    }

    fn key(&mut self, k: &str) -> &mut Self {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        write_str(&mut self.out, k);
        self.out.push(':');
        self
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        write_str(&mut self.out, v);
        self
    }

    pub fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    pub fn i64(&mut self, k: &str, v: i64) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    pub fn opt_u64(&mut self, k: &str, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u64(k, v),
            None => self.null(k),
        }
    }

    pub fn ints(&mut self, k: &str, v: &[i64]) -> &mut Self {
        self.key(k);
        self.out.push('[');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{x}");
        }
        self.out.push(']');
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    pub fn null(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.out.push_str("null");
        self
    }

    pub fn obj(&mut self, k: &str, f: impl FnOnce(&mut Obj)) -> &mut Self {
        self.key(k);
        let mut inner = Obj::new();
        f(&mut inner);
        self.out.push_str(&inner.finish());
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

impl Default for Obj {
    fn default() -> Self {
        Self::new()
    }
}

/// JSON string escaping: `"` `\` and control characters escaped (`\n`, `\r`, `\t` by
/// name, the rest as `\u00XX`); everything else, non-ASCII included, as UTF-8.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    // Runs of characters that need no escape are copied whole. Only ASCII control bytes,
    // the quote and the backslash are escaped, and no byte of a multi-byte UTF-8 character
    // is one of them, so every cut below falls on a character boundary.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Splits `s` into pieces of at most `max` bytes, on character boundaries.
fn chunk_str(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max.max(4));
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_is_fixed_and_parses() {
        let mut e = Event::new("data.read", Phase::Outcome);
        e.event_id = "0190".into();
        e.intent_seq = Some(4);
        e.actor.principal_type = "api_key".into();
        e.actor.auth_method = "bearer".into();
        e.source.user_agent = Some("curl/8 \"quoted\"\n\u{1}é".into());
        e.resource.versions_read = vec![3];
        e.outcome = Some(Result {
            result: "success".into(),
            status: 200,
            rows: Some(10),
            duration_us: 5,
            ..Default::default()
        });
        e.details.push(("sql_sha256".into(), "ab".into()));
        let a = e.to_canonical_json();
        assert_eq!(a, e.clone().to_canonical_json());
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["source"]["user_agent"], "curl/8 \"quoted\"\n\u{1}é");
        assert_eq!(v["outcome"]["rows"], 10);
        assert_eq!(v["resource"]["versions_read"][0], 3);
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with(r#"{"event_id":"0190","kind":"data.read","phase":"outcome","intent_seq":4,"actor":{"#), "{text}");
        assert!(
            text.contains(r#""user_agent":"curl/8 \"quoted\"\n\u0001é""#),
            "{text}"
        );
    }
}
