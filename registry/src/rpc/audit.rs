//! Every gRPC call (Flight SQL, inference) is admitted and recorded as an HTTP request is:
//! the caller is authenticated, admitted within the same bounds on requests in flight
//! (the server's and its tenant's), and an **intent** record made durable before the call
//! may touch data (if the ledger does not take it, the call is refused with
//! `UNAVAILABLE`); an **outcome** follows when the call answers or, for a stream, when the
//! stream ends, fails or is dropped by the client — with the bytes sent, a SHA-256 of the
//! Flight data, the rows and the versions read.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use arrow_flight::FlightData;
use futures::Stream;
use lakeledger_audit::{Event, Phase};
use sha2::{Digest, Sha256};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::error::Error;
use crate::identity::{Identity, Principal};
use crate::identity::quotas::Limits;
use crate::platform::admission::{Admission, Admitted};
use crate::platform::audit::{AuditContext, AuditLog};

/// What a call is, for its records: the protocol (`flight`, `grpc`), the RPC, the Flight
/// SQL command or ticket kind, the action (named as the same action over HTTP is) and the
/// resource it names.
pub struct CallKind {
    pub protocol: &'static str,
    pub rpc: &'static str,
    pub command: &'static str,
    pub action: &'static str,
    pub resource_kind: Option<&'static str>,
    pub resource_name: Option<String>,
}

/// What a call read, for its outcome.
#[derive(Default)]
pub struct Facts {
    pub resource_name: Option<String>,
    pub versions_read: Vec<i64>,
    pub rows: Option<u64>,
    pub details: Vec<(String, String)>,
}

/// A recorded call: its intent is durable; its outcome is written once, by whichever of
/// [`Call::fail`], [`Call::done`] or the end of [`Call::stream`] comes first.
pub struct Call {
    pub ctx: AuditContext,
    audit: Arc<AuditLog>,
    outcome: Event,
    started: Instant,
    /// The call's place in the bounds on requests in flight, given up with the call (for
    /// a stream, when it ends or is dropped).
    admitted: Option<Admitted>,
}

/// The handles recording a call needs.
#[derive(Clone)]
pub struct Recorder {
    pub identity: Arc<Identity>,
    pub quotas: Arc<Limits>,
    /// The server's bounds on requests in flight, shared with HTTP.
    pub admission: Arc<Admission>,
    pub audit: Arc<AuditLog>,
}

impl Recorder {
    /// Authenticates the caller from the `authorization` header, records the intent and
    /// applies the tenant's request rate. A refusal is recorded (intent and outcome) before
    /// it is returned.
    pub async fn begin(&self, meta: &MetadataMap, remote: Option<std::net::SocketAddr>, kind: CallKind) -> Result<(Principal, Call), Status> {
        let started = Instant::now();
        let header = meta.get("authorization").and_then(|v| v.to_str().ok());
        let authenticated = self.identity.authenticate(header).await;
        let request_id = meta
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());

        let mut intent = Event::new(kind.action, Phase::Intent);
        match &authenticated {
            Ok(p) => p.stamp(&mut intent),
            Err(_) => {
                intent.actor.principal_type = "anonymous".into();
                intent.actor.auth_method = if header.is_some() { "bearer".into() } else { "none".into() };
            }
        }
        intent.source.client = remote.map(|a| a.ip().to_string());
        intent.source.user_agent = meta.get("user-agent").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect());
        intent.source.request_id = Some(request_id.clone());
        intent.source.method = Some(kind.protocol.to_ascii_uppercase());
        intent.source.route = Some(format!("{}:{}/{}", kind.protocol, kind.rpc, kind.command));
        intent.resource.kind = kind.resource_kind.map(str::to_string);
        intent.resource.name = kind.resource_name;
        intent.resource.tenant = authenticated.as_ref().ok().map(|p| p.tenant.clone());
        intent.details.push(("protocol".into(), kind.protocol.into()));

        let receipt = match self.audit.record(&intent).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, request_id = %request_id, protocol = kind.protocol, "gRPC call could not be recorded; refusing it");
                return Err(Status::unavailable(format!(
                    "audit_unavailable: the audit ledger could not record this call, so it was not carried out: {e}"
                )));
            }
        };
        let mut outcome = Event::new(kind.action, Phase::Outcome);
        outcome.intent_seq = Some(receipt.seq);
        outcome.actor = intent.actor.clone();
        outcome.source.request_id = Some(request_id.clone());
        outcome.resource = intent.resource.clone();
        outcome.details.push(("intent_event_id".into(), intent.event_id.clone()));
        let ctx = AuditContext { request_id, event_id: intent.event_id.clone(), intent_seq: receipt.seq };
        if kind.protocol == "flight" {
            metrics::counter!("lakeledger_flight_calls_total", "rpc" => kind.rpc, "command" => kind.command).increment(1);
        } else {
            metrics::counter!("lakeledger_grpc_calls_total", "rpc" => kind.rpc).increment(1);
        }

        let mut call = Call { ctx, audit: self.audit.clone(), outcome, started, admitted: None };
        let principal = match authenticated {
            Ok(p) => p,
            Err(e) => {
                let e = match e {
                    Error::Unauthenticated | Error::InvalidKey | Error::InvalidToken(_) => e,
                    other => {
                        tracing::error!(error = %other, "authentication lookup failed");
                        Error::Unavailable("the identity service could not check the credentials; retry".into())
                    }
                };
                return Err(call.fail(e));
            }
        };
        // A key or tenant over its request rate is refused before it takes a place.
        let limits = match self.quotas.admit_request(&principal).await {
            Ok(limits) => limits,
            Err(e) => return Err(call.fail(e)),
        };
        match self.admission.admit(Some(limits.caller(&principal))) {
            Ok(a) => call.admitted = Some(a),
            Err(e) => return Err(call.fail(e)),
        }
        Ok((principal, call))
    }
}

impl Call {
    /// Records the refusal and turns it into the status the client gets: the same code,
    /// message and error id as the HTTP error body, the code and id also as metadata.
    pub fn fail(mut self, e: Error) -> Status {
        let public = e.public();
        let status = public.status.as_u16();
        self.set_result(status, Some(public.code.clone()));
        let event = self.finish_event(None);
        if let Error::NotVisible { kind, name, owners } = &e {
            self.audit.record_cross_tenant(&event, kind, name, owners);
        }
        self.audit.record_later(&event);
        let mut s = Status::new(grpc_code(status, &public.code), format!("{}: {} (error_id {})", public.code, public.message, public.error_id));
        if let Ok(v) = MetadataValue::try_from(public.code.as_str()) {
            s.metadata_mut().insert("x-lakeledger-error-code", v);
        }
        if let Ok(v) = MetadataValue::try_from(public.error_id.as_str()) {
            s.metadata_mut().insert("x-lakeledger-error-id", v);
        }
        s
    }

    /// Records a call this server does not offer (`UNIMPLEMENTED`, so Flight SQL clients
    /// fall back as they would with any server lacking it).
    pub fn unimplemented(mut self, what: &str) -> Status {
        self.set_result(501, Some("not_implemented".into()));
        let event = self.finish_event(None);
        self.audit.record_later(&event);
        Status::unimplemented(format!("not_implemented: {what}"))
    }

    /// Notes what a call read before it answers or fails (the version a refused scoring
    /// tried, for one).
    pub fn note(&mut self, facts: Facts) {
        self.apply(facts);
    }

    /// Records a call that answered in one message.
    pub fn done(mut self, facts: Facts) {
        self.apply(facts);
        self.set_result(200, None);
        let event = self.finish_event(None);
        self.audit.record_later(&event);
    }

    /// Wraps a response stream so the outcome is recorded when it ends, fails or is
    /// dropped; `held` (a query slot) is given up at the same moment.
    pub fn stream<S>(mut self, facts: Facts, rows: Option<Arc<AtomicU64>>, held: Option<tokio::sync::OwnedSemaphorePermit>, inner: S) -> Audited<S>
    where
        S: Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        self.apply(facts);
        self.set_result(200, None);
        Audited { inner, call: Some(self), rows, _held: held, bytes: 0, hasher: Sha256::new() }
    }

    fn apply(&mut self, facts: Facts) {
        if facts.resource_name.is_some() {
            self.outcome.resource.name = facts.resource_name;
        }
        self.outcome.resource.versions_read = facts.versions_read;
        self.outcome.details.extend(facts.details);
        if let Some(rows) = facts.rows {
            self.outcome.outcome.get_or_insert_with(Default::default).rows = Some(rows);
        }
    }

    fn set_result(&mut self, status: u16, error_code: Option<String>) {
        let result = match status {
            200..=399 => "success",
            401 | 403 | 429 => "denied",
            _ => "error",
        };
        let o = self.outcome.outcome.get_or_insert_with(Default::default);
        o.result = result.into();
        o.status = status;
        o.error_code = error_code;
    }

    fn finish_event(&mut self, sent: Option<(u64, Option<String>)>) -> Event {
        let mut e = std::mem::replace(&mut self.outcome, Event::new("", Phase::Outcome));
        let o = e.outcome.get_or_insert_with(Default::default);
        o.duration_us = self.started.elapsed().as_micros() as u64;
        if let Some((bytes, sha)) = sent {
            o.bytes = Some(bytes);
            o.body_sha256 = sha;
        }
        e
    }
}

/// The gRPC code for an HTTP status of the same refusal.
fn grpc_code(status: u16, code: &str) -> Code {
    match status {
        400 | 406 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 if code.ends_with("_already_exists") => Code::AlreadyExists,
        409 => Code::FailedPrecondition,
        413 | 429 | 507 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// A response stream, counted and hashed as it goes; the call's outcome is recorded when
/// it ends, fails, or is dropped unfinished (the client went away or cancelled).
pub struct Audited<S> {
    inner: S,
    call: Option<Call>,
    rows: Option<Arc<AtomicU64>>,
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: u64,
    hasher: Sha256,
}

impl<S> Audited<S> {
    fn finish(&mut self, cut: Option<String>) {
        let Some(mut call) = self.call.take() else { return };
        if let Some(rows) = &self.rows {
            call.outcome.outcome.get_or_insert_with(Default::default).rows = Some(rows.load(Ordering::Relaxed));
        }
        let sha = match &cut {
            None => Some(hex::encode(std::mem::take(&mut self.hasher).finalize())),
            Some(why) => {
                call.outcome.outcome.get_or_insert_with(Default::default).result = "error".into();
                call.outcome.details.push(("stream".into(), why.clone()));
                None
            }
        };
        let event = call.finish_event(Some((self.bytes, sha)));
        call.audit.record_later(&event);
    }
}

impl<S> Stream for Audited<S>
where
    S: Stream<Item = Result<FlightData, Status>> + Unpin,
{
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(data))) => {
                this.bytes += (data.data_header.len() + data.data_body.len()) as u64;
                this.hasher.update(&data.data_header);
                this.hasher.update(&data.data_body);
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.finish(Some(format!("the stream failed: {}", status.message())));
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for Audited<S> {
    fn drop(&mut self) {
        if self.call.is_some() {
            self.finish(Some("the client stopped reading before the end".into()));
        }
    }
}
