//! The auditor's API: records, checkpoints, proofs, the public key and export. Only the
//! `auditor` role may call it, and every call is itself recorded by the audit layer.
//! Auditors of the default tenant see the whole log; other tenants' auditors see the
//! records of their own tenant (proofs and checkpoints reveal only hashes and sizes).

use axum::extract::{Query, State};
use lakeledger_audit::package::leaf_json;
use lakeledger_audit::{RecordFilter, StoredCheckpoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::ApiJson;
use super::auth::Caller;
use super::error::ErrorBody;
use super::state::AppState;
use crate::error::{Error, Result};
use crate::identity::{DEFAULT_TENANT, Principal};
use crate::platform::catalog::Role;

const AUDITOR: &[Role] = &[Role::Auditor];
const MAX_PAGE: usize = 1000;

/// Runs blocking ledger work (file reads, waiting on the writer) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("audit task failed: {e}")))?
}

fn parse_time(name: &str, v: &Option<String>) -> Result<Option<i64>> {
    v.as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| Error::BadRequest(format!("`{name}` must be an RFC 3339 time: {e}")))
                .and_then(|t| t.timestamp_nanos_opt().ok_or_else(|| Error::BadRequest(format!("`{name}` is out of range"))))
        })
        .transpose()
}

/// Which records; shared by listing and export.
#[derive(Clone, Debug, Default, Deserialize, IntoParams, ToSchema)]
pub struct FilterParams {
    /// First seq (inclusive).
    pub from_seq: Option<u64>,
    /// Last seq (exclusive).
    pub to_seq: Option<u64>,
    /// RFC 3339; records at or after.
    pub since: Option<String>,
    /// RFC 3339; records before.
    pub until: Option<String>,
    /// Principal (API key id).
    pub actor: Option<String>,
    /// Event kind (`data.read`) or a prefix ending in `.` (`feature_group.`).
    pub action: Option<String>,
    /// Resource name (a feature group, a key id…).
    pub resource: Option<String>,
    /// Tenant name (of the actor or the resource).
    pub tenant: Option<String>,
}

impl FilterParams {
    fn to_filter(&self, p: &Principal) -> Result<RecordFilter> {
        let tenant = if p.tenant == DEFAULT_TENANT {
            self.tenant.clone()
        } else {
            // Another tenant's auditor sees only their own tenant.
            if self.tenant.as_ref().is_some_and(|t| t != &p.tenant) {
                return Err(Error::Forbidden { role: "auditor".into(), action: "read another tenant's audit records".into() });
            }
            Some(p.tenant.clone())
        };
        Ok(RecordFilter {
            from_seq: self.from_seq,
            to_seq: self.to_seq,
            since_ns: parse_time("since", &self.since)?,
            until_ns: parse_time("until", &self.until)?,
            actor: self.actor.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            tenant,
        })
    }
}

#[derive(Deserialize, IntoParams)]
pub struct PageParams {
    /// At most this many records (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct RecordPage {
    /// Each record: seq, leaf_hash, leaf (base64 of the hashed bytes) and the decoded view.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<Value>,
    /// Pass as `from_seq` for the next page; absent at the end.
    pub next_seq: Option<u64>,
    /// Records in the log when the page was read.
    pub log_size: u64,
}

/// Lists records matching the filters, oldest first.
#[utoipa::path(get, path = "/v1/audit/records", params(FilterParams, PageParams),
    responses((status = 200, body = RecordPage), (status = 403, body = ErrorBody)))]
pub async fn records(
    State(state): State<AppState>,
    Caller(p): Caller,
    Query(f): Query<FilterParams>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<RecordPage>> {
    p.require(AUDITOR, "read the audit log")?;
    let filter = f.to_filter(&p)?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let ledger = state.audit.ledger.clone();
    // The ledger's search index finds the page; every record is read back from the log
    // and checked against the filter there.
    let page = blocking(move || {
        let found = ledger.search(&filter, limit)?;
        let records = found
            .leaves
            .iter()
            .map(|leaf| serde_json::from_str(&leaf_json(leaf)?).map_err(|e| Error::Internal(e.to_string())))
            .collect::<Result<Vec<Value>>>()?;
        Ok(RecordPage { records, next_seq: found.next_seq, log_size: found.size })
    })
    .await?;
    Ok(axum::Json(page))
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointView {
    pub size: u64,
    /// Hex SHA-256 Merkle root.
    pub root: String,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
    /// The C2SP signed note: keep it to check later exports against.
    pub note: String,
}

fn checkpoint_view(c: &StoredCheckpoint) -> CheckpointView {
    CheckpointView {
        size: c.checkpoint.size,
        root: hex::encode(c.checkpoint.root),
        signed_at: chrono::DateTime::from_timestamp_nanos(c.ts_unix_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        note: c.checkpoint.note.clone(),
    }
}

/// Signs a checkpoint over everything recorded so far and returns it.
#[utoipa::path(get, path = "/v1/audit/checkpoints/latest", responses((status = 200, body = CheckpointView)))]
pub async fn latest_checkpoint(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<CheckpointView>> {
    p.require(AUDITOR, "read audit checkpoints")?;
    let ledger = state.audit.ledger.clone();
    let cp = blocking(move || Ok(ledger.checkpoint()?)).await?;
    Ok(axum::Json(checkpoint_view(&cp)))
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryParams {
    /// Only checkpoints of at least this size.
    pub from_size: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Signed checkpoints, oldest first.
#[utoipa::path(get, path = "/v1/audit/checkpoints", params(HistoryParams), responses((status = 200, body = Vec<CheckpointView>)))]
pub async fn checkpoints(
    State(state): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<HistoryParams>,
) -> Result<axum::Json<Vec<CheckpointView>>> {
    p.require(AUDITOR, "read audit checkpoints")?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let ledger = state.audit.ledger.clone();
    let page = blocking(move || Ok(ledger.checkpoints_from(q.from_size.unwrap_or(0), limit)?)).await?;
    Ok(axum::Json(page.iter().map(checkpoint_view).collect()))
}

#[derive(Deserialize, IntoParams)]
pub struct InclusionParams {
    pub seq: u64,
    /// Tree size to prove against; defaults to the latest checkpoint's.
    pub size: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    pub size: u64,
    pub leaf_hash: String,
    pub root: String,
    /// Hex hashes, RFC 9162 order.
    pub proof: Vec<String>,
}

/// Proves that record `seq` is in the log of `size` records.
#[utoipa::path(get, path = "/v1/audit/proofs/inclusion", params(InclusionParams),
    responses((status = 200, body = InclusionProof), (status = 422, body = ErrorBody)))]
pub async fn inclusion(
    State(state): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<InclusionParams>,
) -> Result<axum::Json<InclusionProof>> {
    p.require(AUDITOR, "read audit proofs")?;
    let ledger = state.audit.ledger.clone();
    let proof = blocking(move || {
        let size = match q.size {
            Some(s) => s,
            None => ledger.checkpoint()?.checkpoint.size,
        };
        if size > ledger.size() {
            return Err(Error::Unprocessable(format!("size {size} is beyond the log")));
        }
        // Checked against a signed checkpoint before it leaves.
        let (leaf, root, proof) = ledger.prove_inclusion(q.seq, size)?;
        Ok(InclusionProof { seq: q.seq, size, leaf_hash: hex::encode(leaf.hash), root: hex::encode(root), proof: proof.iter().map(hex::encode).collect() })
    })
    .await?;
    Ok(axum::Json(proof))
}

#[derive(Deserialize, IntoParams)]
pub struct ConsistencyParams {
    pub from: u64,
    /// Defaults to the latest checkpoint's size.
    pub to: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub from_root: String,
    pub to_root: String,
    pub proof: Vec<String>,
}

/// Proves that the log of `to` records extends the log of `from` records.
#[utoipa::path(get, path = "/v1/audit/proofs/consistency", params(ConsistencyParams),
    responses((status = 200, body = ConsistencyProof), (status = 422, body = ErrorBody)))]
pub async fn consistency(
    State(state): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<ConsistencyParams>,
) -> Result<axum::Json<ConsistencyProof>> {
    p.require(AUDITOR, "read audit proofs")?;
    let ledger = state.audit.ledger.clone();
    let proof = blocking(move || {
        let to = match q.to {
            Some(s) => s,
            None => ledger.checkpoint()?.checkpoint.size,
        };
        if to > ledger.size() {
            return Err(Error::Unprocessable(format!("size {to} is beyond the log")));
        }
        // Checked against a signed checkpoint before it leaves.
        let (from_root, to_root, proof) = ledger.prove_consistency(q.from, to)?;
        Ok(ConsistencyProof { from: q.from, to, from_root: hex::encode(from_root), to_root: hex::encode(to_root), proof: proof.iter().map(hex::encode).collect() })
    })
    .await?;
    Ok(axum::Json(proof))
}

#[derive(Serialize, ToSchema)]
pub struct PublicKeys {
    pub origin: String,
    /// The verifier key checkpoints are signed with now (`<name>+<id>+<base64 key>`).
    pub key: String,
    /// Every key that has signed for this log, oldest first.
    pub history: Vec<String>,
}

/// The log's public key(s), to pass to `lakeledger audit verify --key`.
#[utoipa::path(get, path = "/v1/audit/public-key", responses((status = 200, body = PublicKeys)))]
pub async fn public_key(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::Json<PublicKeys>> {
    p.require(AUDITOR, "read the audit public key")?;
    let l = &state.audit.ledger;
    Ok(axum::Json(PublicKeys {
        origin: l.origin().to_string(),
        key: l.public_key().encode(),
        history: l.public_keys().iter().map(|k| k.encode()).collect(),
    }))
}

#[derive(Deserialize, ToSchema, Default)]
pub struct ExportRequest {
    #[serde(flatten)]
    pub filter: FilterParams,
    /// Size of a checkpoint you kept; the package then proves it extends that one.
    pub since_size: Option<u64>,
}

/// Exports a self-contained package (`{"format":…,"files":{name: content}}`) to check
/// with `lakeledger audit verify` or `tools/verify_audit_package.py`. The package streams
/// as it is read from the log, so an export of any size holds one batch of records in
/// memory; the outcome record carries the SHA-256 of the body sent.
#[utoipa::path(post, path = "/v1/audit/export", request_body = ExportRequest,
    responses((status = 200, description = "the package as JSON"), (status = 422, body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ExportRequest>,
) -> Result<axum::response::Response> {
    p.require(AUDITOR, "export the audit log")?;
    let filter = req.filter.to_filter(&p)?;
    let ledger = state.audit.ledger.clone();
    let since = req.since_size;
    // The export is checked and its end checkpoint signed before the response starts, so
    // a bad request still gets an error body; then the same thread writes the package.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let export = match lakeledger_audit::Export::prepare(&ledger, &filter, since) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let written = lakeledger_audit::JsonSink::new(ChannelWriter(tx.clone()))
            .and_then(|mut sink| export.write_to(&mut sink).map(|_| sink))
            .and_then(|sink| sink.into_inner().map(|_| ()));
        if let Err(e) = written {
            // The client sees a cut stream (and the outcome record says so); a package
            // cut short never verifies.
            tracing::warn!(error = %e, "audit export failed while streaming");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    ready_rx.await.map_err(|_| Error::Internal("audit export task failed".into()))??;
    let body = axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
    Ok(axum::response::IntoResponse::into_response(([(axum::http::header::CONTENT_TYPE, "application/json")], body)))
}

/// Hands the package to the response in 64 KiB pieces (the sink buffers), waiting while
/// the client is slower than the log.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log's newest signed checkpoint as a C2SP signed note (`tlog-checkpoint`), for
/// tools that speak the tlog-tiles protocol. Every auditor may read it: it holds a size
/// and a root, nothing of any record.
#[utoipa::path(get, path = "/v1/audit/tlog/checkpoint",
    responses((status = 200, description = "the signed note", content_type = "text/plain"), (status = 403, body = ErrorBody)))]
pub async fn tlog_checkpoint(State(state): State<AppState>, Caller(p): Caller) -> Result<axum::response::Response> {
    p.require(AUDITOR, "read audit checkpoints")?;
    let ledger = state.audit.ledger.clone();
    let cp = blocking(move || Ok(ledger.checkpoint()?)).await?;
    Ok(axum::response::IntoResponse::into_response(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], cp.checkpoint.note)))
}

/// A tile of the log in the C2SP tlog-tiles layout: `tile/<L>/<N>[.p/<W>]` (hashes) or
/// `tile/entries/<N>[.p/<W>]` (the exact record bytes, each after its 16-bit length).
/// Hash tiles reveal only hashes, so every auditor may read them; entry bundles hold
/// every tenant's records, so only auditors of the default tenant may read them (other
/// tenants' auditors read their records through `/v1/audit/records` and prove them with
/// the inclusion proofs and these hash tiles).
#[utoipa::path(get, path = "/v1/audit/tlog/tile/{path}", params(("path" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`")),
    responses((status = 200, description = "the tile's bytes", content_type = "application/octet-stream"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tlog_tile(State(state): State<AppState>, Caller(p): Caller, axum::extract::Path(path): axum::extract::Path<String>) -> Result<axum::response::Response> {
    use lakeledger_audit::tiles::{TileName, parse_path};
    p.require(AUDITOR, "read audit tiles")?;
    let name = parse_path(&format!("tile/{path}")).ok_or_else(|| Error::NotFound { kind: "tile", name: path.clone() })?;
    if matches!(name, TileName::Entries { .. }) && p.tenant != DEFAULT_TENANT {
        return Err(Error::Forbidden { role: format!("auditor of tenant `{}`", p.tenant), action: "read entry bundles, which hold every tenant's records".into() });
    }
    let ledger = state.audit.ledger.clone();
    let bytes = blocking(move || {
        Ok(match name {
            TileName::Hashes { level, index, width } => ledger.tile(level, index, width)?,
            TileName::Entries { index, width } => ledger.entry_bundle(index, width)?,
        })
    })
    .await?
    .ok_or_else(|| Error::NotFound { kind: "tile", name: path.clone() })?;
    // Full tiles never change; partial ones are replaced as the log grows.
    let cache = if path.contains(".p/") { "no-cache" } else { "public, max-age=31536000, immutable" };
    Ok(axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream"), (axum::http::header::CACHE_CONTROL, cache)],
        bytes,
    )))
}
