//! The audit layer: every request passes through here. It assigns the request id,
//! authenticates, and writes an **intent** record to the ledger — waiting until it is
//! durable — before the handler may touch data. If the ledger does not take the record in
//! time the request is refused with 503 and the handler never runs. When the response
//! body ends (or the client goes away) an **outcome** record follows with the status,
//! bytes sent, a SHA-256 of the body and the versions the handler read or wrote.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame};
use lakeledger_audit::{Event, Phase};
use sha2::{Digest, Sha256};

use crate::platform::admission::Admitted;
use super::auth::{AuthFailure, AuthOutcome};
use super::error::{CrossTenant, ErrorCode};
use super::state::AppState;
use crate::error::Error;
use crate::identity::Principal;
use crate::platform::audit::{AuditContext, AuditLog};

pub const REQUEST_ID: &str = "x-request-id";
pub const AUDIT_SEQ: &str = "x-audit-seq";
pub const AUDIT_LEAF: &str = "x-audit-leaf-hash";
pub const AUDIT_EVENT: &str = "x-audit-event-id";

/// A permit a handler attaches to its response, given up when the body has been sent
/// (or the client went away), not when the handler returns.
#[derive(Clone)]
pub struct HeldUntilSent(pub Arc<tokio::sync::OwnedSemaphorePermit>);

/// What a handler read or wrote, attached to its response for the outcome record.
#[derive(Clone, Debug, Default)]
pub struct AuditFacts {
    /// The resource's name when the path does not carry it (a create).
    pub resource_name: Option<String>,
    /// The resource's tenant when it is not the caller's (an operator acting on another).
    pub resource_tenant: Option<String>,
    pub versions_read: Vec<i64>,
    pub versions_written: Vec<i64>,
    pub rows: Option<u64>,
    /// Rows counted while a body streams; read when it ends.
    pub rows_counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Further facts for the outcome (for SQL: the statement, its hash, tables@versions).
    pub details: Vec<(String, String)>,
}

/// The action a route performs, as named in audit records.
pub fn action(method: &str, route: &str) -> &'static str {
    match (method, route) {
        ("GET", "/healthz") => "ops.health",
        ("GET", "/readyz") => "ops.ready",
        ("GET", "/metrics") => "ops.metrics",
        ("GET", "/openapi.json" | "/docs") => "ops.docs",
        ("GET", "/ui" | "/ui/" | "/ui/{file}") => "console.asset",
        ("GET", "/v1/whoami") => "auth.whoami",
        ("POST", "/v1/tenants") => "tenant.create",
        ("GET", "/v1/tenants") => "tenant.list",
        ("GET", "/v1/tenants/{name}/quotas") => "tenant.quotas",
        ("PUT", "/v1/tenants/{name}/quotas") => "tenant.set_quotas",
        ("POST", "/v1/keys") => "api_key.create",
        ("GET", "/v1/keys") => "api_key.list",
        ("DELETE", "/v1/keys/{id}") => "api_key.revoke",
        ("GET", "/v1/keys/{id}/limits") => "api_key.limits",
        ("PUT", "/v1/keys/{id}/limits") => "api_key.set_limits",
        ("POST", "/v1/feature-groups") => "feature_group.create",
        ("GET", "/v1/feature-groups") => "feature_group.list",
        ("GET", "/v1/feature-groups/{name}") => "feature_group.get",
        ("PATCH", "/v1/feature-groups/{name}") => "feature_group.update",
        ("PUT", "/v1/feature-groups/{name}/schema") => "feature_group.evolve",
        ("POST", "/v1/feature-groups/{name}/archive") => "feature_group.archive",
        ("GET", "/v1/feature-groups/{name}/versions") => "feature_group.versions",
        ("POST", "/v1/feature-groups/{name}/data") => "data.write",
        ("GET", "/v1/feature-groups/{name}/data") => "data.read",
        ("POST", "/v1/feature-groups/{name}/vacuum") => "feature_group.vacuum",
        ("GET", "/v1/audit/records") => "audit.records",
        ("GET", "/v1/audit/checkpoints" | "/v1/audit/checkpoints/latest") => "audit.checkpoints",
        ("GET", "/v1/audit/proofs/inclusion" | "/v1/audit/proofs/consistency") => "audit.proof",
        ("GET", "/v1/audit/public-key") => "audit.public_key",
        ("POST", "/v1/audit/export") => "audit.export",
        ("GET", "/v1/audit/tlog/checkpoint") => "audit.checkpoints",
        ("GET", "/v1/audit/tlog/tile/{*path}" | "/v1/audit/tlog/tile/{path}") => "audit.tile",
        ("POST", "/v1/sql") => "sql.query",
        ("POST", "/v1/training-sets") => "training_set.create",
        ("GET", "/v1/training-sets") => "training_set.list",
        ("GET", "/v1/training-sets/{id}") => "training_set.get",
        ("DELETE", "/v1/training-sets/{id}") => "training_set.delete",
        ("GET", "/v1/training-sets/{id}/data") => "training_set.read",
        ("GET", "/v1/feature-groups/{name}/lineage") => "feature_group.lineage",
        ("POST", "/v1/models") => "model.create",
        ("GET", "/v1/models") => "model.list",
        ("GET", "/v1/models/signing-key" | "/v1/models/signing-keys") => "model.signing_key",
        ("GET", "/v1/models/{name}") => "model.get",
        ("GET", "/v1/models/{name}/versions") => "model_version.list",
        ("POST", "/v1/models/{name}/versions") => "model_version.import",
        ("GET", "/v1/models/{name}/versions/{version}") => "model_version.get",
        ("DELETE", "/v1/models/{name}/versions/{version}") => "model_version.delete",
        ("GET", "/v1/models/{name}/versions/{version}/artifact") => "model_version.download",
        ("POST", "/v1/models/{name}/versions/{version}/archive") => "model_version.archive",
        ("GET", "/v1/models/{name}/versions/{version}/lineage") => "model_version.lineage",
        ("GET", "/v1/models/{name}/aliases/{alias}") => "model_alias.get",
        ("PUT", "/v1/models/{name}/aliases/{alias}") => "model_alias.move",
        ("DELETE", "/v1/models/{name}/aliases/{alias}") => "model_alias.delete",
        ("GET", "/v1/models/{name}/aliases/{alias}/history") => "model_alias.history",
        ("POST", "/v1/training-jobs") => "training_job.create",
        ("GET", "/v1/training-jobs") => "training_job.list",
        ("GET", "/v1/training-jobs/{id}") => "training_job.get",
        ("POST", "/v1/training-jobs/{id}/cancel") => "training_job.cancel",
        ("GET", "/v1/training-jobs/{id}/events") => "training_job.events",
        ("POST", "/v1/online/features") => "online.features",
        ("POST", "/v1/feature-groups/{name}/online/rebuild") => "online.rebuild",
        ("POST", "/v1/models/{name}/versions/{version}/invocations" | "/v1/models/{target}/invocations") => "model.invoke",
        ("POST", "/v2/models/{name}/infer" | "/v2/models/{name}/versions/{version}/infer") => "model.invoke",
        ("GET", "/v2") => "inference.server_metadata",
        ("GET", "/v2/health/live") => "ops.health",
        ("GET", "/v2/health/ready") => "ops.ready",
        ("GET", "/v2/models/{name}" | "/v2/models/{name}/versions/{version}") => "model.metadata",
        ("GET", "/v2/models/{name}/ready" | "/v2/models/{name}/versions/{version}/ready") => "model.ready",
        ("GET", "/v1/models/{name}/versions/{version}/drift") => "model.drift",
        ("GET", "/v1/models/{name}/aliases/{alias}/canary") => "model_canary.get",
        ("PUT", "/v1/models/{name}/aliases/{alias}/canary") => "model_canary.start",
        ("DELETE", "/v1/models/{name}/aliases/{alias}/canary") => "model_canary.stop",
        ("POST", "/v1/models/{name}/aliases/{alias}/canary/promote") => "model_canary.promote",
        ("POST", "/v1/audit/entity-hash") => "audit.entity_hash",
        ("POST", "/v1/spines") => "spine.upload",
        ("GET", "/v1/spines/{id}") => "spine.get",
        (_, "<unmatched>") => "http.unmatched",
        _ => "http.other",
    }
}

/// The resource a route names: its kind and the value of its path parameter.
fn resource(route: &str, path: &str) -> (Option<&'static str>, Option<String>) {
    let kind = if route.starts_with("/v1/feature-groups") {
        Some("feature_group")
    } else if route.starts_with("/v1/keys") {
        Some("api_key")
    } else if route.starts_with("/v1/tenants") {
        Some("tenant")
    } else if route.starts_with("/v1/training-sets") {
        Some("training_set")
    } else if route.starts_with("/v1/spines") {
        Some("spine")
    } else if route.starts_with("/v1/models") || route.starts_with("/v2/models") {
        Some("model")
    } else if route.starts_with("/v1/training-jobs") {
        Some("training_job")
    } else if route.starts_with("/v1/online") {
        Some("online_store")
    } else if route.starts_with("/v1/audit") {
        Some("audit_log")
    } else {
        None
    };
    let name = route
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| t.starts_with('{') && t.ends_with('}'))
        .map(|(_, v)| percent_decode(v));
    (kind, name)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

pub async fn record(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    use tracing::Instrument;
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str()).unwrap_or("<unmatched>");
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = tracing::field::Empty,
        audit_event_id = tracing::field::Empty,
    );
    crate::platform::telemetry::continue_trace(&span, req.headers());
    record_in_span(state, req, next).instrument(span).await
}

async fn record_in_span(state: AppState, mut req: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "<unmatched>".into());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();

    let has_credentials = req.headers().contains_key(axum::http::header::AUTHORIZATION);
    let principal = if is_public(&route) {
        None
    } else {
        let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let scraper = (route == "/metrics").then(|| scrape_token(&state, header)).flatten();
        let authenticated = match scraper {
            Some(p) => Ok(p),
            None => state.identity.authenticate(header).await,
        };
        let outcome = match authenticated {
            Ok(p) => AuthOutcome::Ok(p),
            Err(Error::Unauthenticated) => AuthOutcome::Failed(AuthFailure::Missing),
            Err(Error::InvalidKey) => AuthOutcome::Failed(AuthFailure::Invalid),
            Err(Error::InvalidToken(why)) => AuthOutcome::Failed(AuthFailure::Token(why)),
            Err(e) => {
                tracing::error!(error = %e, "authentication lookup failed");
                AuthOutcome::Failed(AuthFailure::Unavailable)
            }
        };
        let p = match &outcome {
            AuthOutcome::Ok(p) => Some(p.clone()),
            AuthOutcome::Failed(_) => None,
        };
        req.extensions_mut().insert(outcome);
        p
    };

    let kind = action(&method, &route);
    let mut intent = Event::new(kind, Phase::Intent);
    set_actor(&mut intent, principal.as_ref(), has_credentials);
    intent.source.client =
        req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    intent.source.user_agent =
        req.headers().get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect());
    intent.source.request_id = Some(request_id.clone());
    intent.source.method = Some(method.clone());
    intent.source.route = Some(route.clone());
    intent.source.path = Some(path.chars().take(1024).collect());
    let (resource_kind, resource_name) = resource(&route, &path);
    intent.resource.kind = resource_kind.map(str::to_string);
    intent.resource.name = resource_name;
    intent.resource.tenant = principal.as_ref().map(|p| p.tenant.clone());
    // An operator acting on another tenant (`?tenant=`) acts on that tenant's resources:
    // its auditors see the record.
    if let Some(t) = principal.as_ref().filter(|p| p.is_operator()).and_then(|_| query_param(req.uri().query(), "tenant")) {
        intent.resource.tenant = Some(t);
    }
    if let Some(q) = req.uri().query() {
        // Query strings select versions and rows; they never carry secrets here.
        intent.details.push(("query".into(), q.chars().take(2048).collect()));
    }
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::Span::current();
    span.record("request_id", request_id.as_str());
    span.record("audit_event_id", intent.event_id.as_str());

    let mut admitted = None;
    let (response, receipt) = match state.audit.record(&intent).await {
        Ok(receipt) => {
            req.extensions_mut().insert(AuditContext { request_id: request_id.clone(), event_id: intent.event_id.clone(), intent_seq: receipt.seq });
            (admit_and_run(&state, &method, &route, principal.as_ref(), req, next, &mut admitted).await, Some(receipt))
        }
        Err(e) => {
            tracing::error!(error = %e, request_id = %request_id, "request could not be recorded; refusing it");
            (
                Error::Audit(lakeledger_audit::Error::Unavailable(format!(
                    "the audit ledger could not record this request, so it was not carried out: {e}"
                )))
                .into_response(),
                None,
            )
        }
    };

    let mut response = with_error_body(response).await;
    let status = response.status().as_u16();
    tracing::Span::current().record("http.response.status_code", status);
    let labels = [("method", method.clone()), ("route", route.clone()), ("status", status.to_string())];
    metrics::counter!("lakeledger_http_requests_total", &labels).increment(1);
    metrics::histogram!("lakeledger_http_request_duration_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
    tracing::info!(target: "lakeledger::requests", request_id = %request_id, method = %method, route = %route, status,
        actor = principal.as_ref().map(|p| p.actor()).unwrap_or_default(), audit_seq = receipt.map(|r| r.seq), "request");

    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID, v);
    }
    if let Some(r) = receipt {
        h.insert(AUDIT_SEQ, HeaderValue::from(r.seq));
        h.insert(AUDIT_LEAF, HeaderValue::from_str(&hex::encode(r.leaf_hash)).expect("hex is a valid header"));
        h.insert(AUDIT_EVENT, HeaderValue::from_str(&intent.event_id).expect("uuid is a valid header"));
    }

    // The outcome names its intent (seq, event id, request id) and repeats who acted on
    // what, so filters and tenant scoping find it on its own; where the request came from
    // (client, user agent, method, route, path, query) is on the intent only. Every
    // request writes both records, so what the outcome does not repeat is saved twice
    // over: in serializing and hashing it, and on disk.
    let mut outcome = Event::new(kind, Phase::Outcome);
    outcome.intent_seq = receipt.map(|r| r.seq);
    outcome.actor = intent.actor;
    outcome.source.request_id = intent.source.request_id;
    outcome.resource = intent.resource;
    outcome.details.push(("intent_event_id".into(), intent.event_id));
    if let Some(f) = response.extensions().get::<AuditFacts>() {
        if f.resource_name.is_some() {
            outcome.resource.name = f.resource_name.clone();
        }
        if f.resource_tenant.is_some() {
            outcome.resource.tenant = f.resource_tenant.clone();
        }
        outcome.resource.versions_read = f.versions_read.clone();
        outcome.resource.versions_written = f.versions_written.clone();
        outcome.details.extend(f.details.iter().cloned());
    }
    let result = match status {
        200..=399 => "success",
        401 | 403 | 429 => "denied",
        _ => "error",
    };
    outcome.outcome = Some(lakeledger_audit::event::Result {
        result: result.into(),
        status,
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0.clone()),
        rows: response.extensions().get::<AuditFacts>().and_then(|f| f.rows),
        ..Default::default()
    });
    if let Some(c) = response.extensions().get::<CrossTenant>() {
        state.audit.record_cross_tenant(&outcome, c.kind, &c.name, &c.owners);
    }
    let rows_counter = response.extensions().get::<AuditFacts>().and_then(|f| f.rows_counter.clone());
    let held = response.extensions_mut().remove::<HeldUntilSent>();
    let (parts, body) = response.into_parts();
    let body = AuditedBody {
        _admitted: admitted,
        _held: held,
        rows_counter,
        inner: body,
        bytes: 0,
        hasher: Sha256::new(),
        pending: Some(PendingOutcome { audit: state.audit.clone(), event: outcome, started }),
    };
    Response::from_parts(parts, Body::new(body))
}

/// Runs the handler once the request is admitted (public routes always are, so probes
/// answer under load). Reads and queries that take longer than the request timeout to
/// start answering are answered 504; writes are never cut short, since a write stopped
/// between its commit and its catalog record would leave the two apart.
async fn admit_and_run(
    state: &AppState,
    method: &str,
    route: &str,
    principal: Option<&Principal>,
    req: Request<Body>,
    next: Next,
    admitted: &mut Option<Admitted>,
) -> Response {
    if !is_public(route) {
        // A key or tenant over its request rate is refused before it takes a place.
        let limits = match principal {
            Some(p) => match state.quotas.admit_request(p).await {
                Ok(limits) => Some(limits),
                Err(e) => return e.into_response(),
            },
            None => None,
        };
        let caller = principal.zip(limits.as_ref()).map(|(p, l)| l.caller(p));
        match state.admission.admit(caller) {
            Ok(a) => *admitted = Some(a),
            Err(e) => return e.into_response(),
        }
    }
    if !interruptible(method, route) {
        return next.run(req).await;
    }
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("lakeledger_http_timeouts_total", "route" => route.to_string()).increment(1);
            Error::TimedOut(format!("the request took longer than the server's limit of {} s and was stopped", limit.as_secs())).into_response()
        }
    }
}

/// Answers an extractor's own rejection (a path segment that is not a number, a query
/// string that does not parse: axum writes those as plain text) with the error body, like
/// every other refusal.
async fn with_error_body(response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() || response.extensions().get::<ErrorCode>().is_some() {
        return response;
    }
    // Headers such as `Allow` on a 405 are kept; the body's own are replaced.
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() { status.canonical_reason().unwrap_or("refused").to_string() } else { text };
    let error = match status.as_u16() {
        415 => Error::UnsupportedMediaType(message),
        422 => Error::Unprocessable(message),
        _ => Error::BadRequest(message),
    };
    let mut r = error.into_response();
    *r.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            r.headers_mut().insert(name, value.clone());
        }
    }
    r
}

/// Requests that change nothing may be stopped part way: reads, queries, lookups, scoring.
pub(super) fn interruptible(method: &str, route: &str) -> bool {
    method == "GET"
        || matches!(
            route,
            "/v1/sql"
                | "/v1/online/features"
                | "/v1/audit/entity-hash"
                | "/v1/audit/export"
                | "/v1/models/{name}/versions/{version}/invocations"
                | "/v1/models/{target}/invocations"
        )
}

/// The scraper's principal when the request carries the configured metrics token.
fn scrape_token(state: &AppState, header: Option<&str>) -> Option<Principal> {
    let want = state.metrics_token?;
    let token = header?.strip_prefix("Bearer ")?.trim();
    let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Comparing digests, not secrets: timing reveals nothing about the token.
    (got == want).then(|| Principal {
        key_id: "metrics-token".into(),
        key_name: "metrics scrape token".into(),
        role: crate::platform::catalog::Role::Auditor,
        tenant_id: String::new(),
        tenant: crate::identity::DEFAULT_TENANT.into(),
        auth_method: "metrics_token",
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).filter(|v| !v.is_empty())
}

fn set_actor(e: &mut Event, p: Option<&Principal>, has_credentials: bool) {
    match p {
        Some(p) => p.stamp(e),
        None => {
            e.actor.principal_type = "anonymous".into();
            e.actor.auth_method = if has_credentials { "bearer".into() } else { "none".into() };
        }
    }
}

/// Routes that answer without a key: probes, the API description and the console's
/// files (the console then calls the API with the key the user signs in with). They are
/// still recorded. (`/metrics` takes an operator's key or the scrape token.)
fn is_public(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready" | "/docs" | "/openapi.json" | "/ui" | "/ui/" | "/ui/{file}")
}

struct PendingOutcome {
    audit: Arc<AuditLog>,
    event: Event,
    started: Instant,
}

/// The response body, counted and hashed as it streams; the outcome is recorded when it
/// ends, fails, or is dropped unfinished (the client went away).
struct AuditedBody {
    /// The request's place in the admission bounds, given up when the body ends.
    _admitted: Option<Admitted>,
    /// What the handler holds until its response has been sent (a query slot).
    _held: Option<HeldUntilSent>,
    rows_counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    inner: Body,
    bytes: u64,
    hasher: Sha256,
    pending: Option<PendingOutcome>,
}

impl AuditedBody {
    fn finish(&mut self, cut: Option<&str>) {
        let Some(mut p) = self.pending.take() else { return };
        if let Some(o) = p.event.outcome.as_mut() {
            o.bytes = Some(self.bytes);
            if let Some(c) = &self.rows_counter {
                o.rows = Some(c.load(Ordering::Relaxed));
            }
            o.duration_us = p.started.elapsed().as_micros() as u64;
            match cut {
                None => o.body_sha256 = Some(hex::encode(std::mem::take(&mut self.hasher).finalize())),
                Some(why) => {
                    o.result = "error".into();
                    p.event.details.push(("stream".into(), why.to_string()));
                }
            }
        }
        p.audit.record_later(&p.event);
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::result::Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                    this.hasher.update(d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some("the response stream failed"));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            if self.inner.is_end_stream() {
                self.finish(None);
            } else {
                self.finish(Some("the client stopped reading before the end"));
            }
        }
    }
}

/// The request id, for handlers that put it into commit metadata.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> std::result::Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string())))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AuditContext {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> std::result::Result<Self, Self::Rejection> {
        parts.extensions.get::<AuditContext>().cloned().ok_or_else(|| Error::Internal("request reached a handler unrecorded".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_from_the_route_parameters() {
        assert_eq!(resource("/v1/feature-groups/{name}/data", "/v1/feature-groups/rides%20x/data"), (Some("feature_group"), Some("rides x".into())));
        assert_eq!(resource("/v1/keys/{id}", "/v1/keys/key_1"), (Some("api_key"), Some("key_1".into())));
        assert_eq!(resource("/healthz", "/healthz"), (None, None));
    }
}
