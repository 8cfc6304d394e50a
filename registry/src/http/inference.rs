//! The Open Inference Protocol (KServe / Triton "V2") over HTTP, beside the MLflow-shaped
//! routes, for every model (native or imported): health, server and model metadata, model
//! readiness and inference, with Triton's binary tensor extension (tensors after the JSON
//! header, its length in `Inference-Header-Content-Length`). A model is named as in the
//! MLflow routes: `name@alias` follows the alias and its canary; a bare name is its latest
//! active version. Scoring goes through the same serving path (checks, batching, canary,
//! inference log) and is audited as `model.invoke`.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::ScoringBytes;
use super::audit_layer::{AuditFacts, RequestId};
use super::auth::Caller;
use super::state::AppState;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::models::onnx::Values;
use crate::platform::catalog::Role;
use crate::serving::tensors::{NamedTensor, TensorMetadata, decode_raw, encode_raw, rows_from_tensors};
use crate::serving::{Invocation, OutputTensor, ScoringBody};

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's error body: one line with the message, the stable code and the error id
/// to quote to an operator.
#[derive(Serialize, ToSchema)]
pub struct InferenceErrorBody {
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    /// `onnx` for imported ONNX graphs, `lakeledger` for models trained here.
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub version: String,
    pub ready: bool,
}

/// One input tensor of an inference request. `data` is row-major, flat or nested; with
/// the binary extension it is absent and `parameters.binary_data_size` says how many of
/// the bytes after the JSON header are this tensor's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    /// BOOL, INT8–INT64, UINT8–UINT64, FP32, FP64 or BYTES.
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data: true` returns this output after the JSON header.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    pub id: Option<String>,
    /// `binary_data_output: true` returns every output after the JSON header.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    /// The outputs wanted (default: all).
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Serialize, ToSchema)]
pub struct InferOutput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Vec<Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

/// Liveness, for Triton clients (`is_server_live`).
#[utoipa::path(get, path = "/v2/health/live", security(()), responses((status = 200, description = "the server is up")))]
pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// Readiness, for Triton clients (`is_server_ready`): as `/readyz` (catalog, storage and
/// the audit ledger answer, and the server is not stopping).
#[utoipa::path(get, path = "/v2/health/ready", security(()), responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.readiness.check(&state.audit).await.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// The server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", responses((status = 200, body = ServerMetadata)))]
pub async fn server_metadata(Caller(p): Caller) -> Result<axum::Json<ServerMetadata>> {
    p.require(READ, "read server metadata")?;
    Ok(axum::Json(ServerMetadata { name: "lakeledger".into(), version: env!("CARGO_PKG_VERSION").into(), extensions: vec!["binary_tensor_data".into()] }))
}

async fn metadata(state: &AppState, p: &Principal, name: &str, version: Option<&str>) -> Result<(Extension<AuditFacts>, axum::Json<ModelMetadata>)> {
    p.require(READ, "read models")?;
    let d = state.serving.describe(p, name, version).await?;
    let facts = AuditFacts { resource_name: Some(d.model.clone()), versions_read: vec![d.version], ..Default::default() };
    Ok((Extension(facts), axum::Json(ModelMetadata { name: name.to_string(), versions: d.versions, platform: d.platform.into(), inputs: d.inputs, outputs: d.outputs })))
}

/// A model's inputs and outputs (its latest active version, or the alias's in `name@alias`).
#[utoipa::path(get, path = "/v2/models/{name}", params(("name" = String, Path, description = "`model` or `model@alias`")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = InferenceErrorBody)))]
pub async fn model_metadata(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<(Extension<AuditFacts>, axum::Json<ModelMetadata>)> {
    metadata(&state, &p, &name, None).await
}

/// One version's inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = InferenceErrorBody)))]
pub async fn version_metadata(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, String)>) -> Result<(Extension<AuditFacts>, axum::Json<ModelMetadata>)> {
    metadata(&state, &p, &name, Some(&version)).await
}

async fn readiness(state: &AppState, p: &Principal, name: &str, version: Option<&str>) -> Result<(Extension<AuditFacts>, axum::Json<ModelReady>)> {
    p.require(READ, "read models")?;
    let (model, _, v) = state.serving.resolve(p, name, version).await?;
    // Ready means loaded and verified (hash and signature), as the first request would.
    state.serving.loaded(p, &model, v).await?;
    let facts = AuditFacts { resource_name: Some(model), versions_read: vec![v], ..Default::default() };
    Ok((Extension(facts), axum::Json(ModelReady { name: name.to_string(), version: v.to_string(), ready: true })))
}

/// Whether the model is loaded and verified (loading it if it was not).
#[utoipa::path(get, path = "/v2/models/{name}/ready", params(("name" = String, Path)),
    responses((status = 200, body = ModelReady), (status = 404, body = InferenceErrorBody), (status = 409, body = InferenceErrorBody)))]
pub async fn model_ready(State(state): State<AppState>, Caller(p): Caller, Path(name): Path<String>) -> Result<(Extension<AuditFacts>, axum::Json<ModelReady>)> {
    readiness(&state, &p, &name, None).await
}

/// Whether a version is loaded and verified (loading it if it was not).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelReady), (status = 404, body = InferenceErrorBody), (status = 409, body = InferenceErrorBody)))]
pub async fn version_ready(State(state): State<AppState>, Caller(p): Caller, Path((name, version)): Path<(String, String)>) -> Result<(Extension<AuditFacts>, axum::Json<ModelReady>)> {
    readiness(&state, &p, &name, Some(&version)).await
}

/// Scores input tensors with the model (its latest active version, or through the alias
/// in `name@alias`, following its canary).
#[utoipa::path(post, path = "/v2/models/{name}/infer", params(("name" = String, Path, description = "`model` or `model@alias`")), request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = InferenceErrorBody), (status = 404, body = InferenceErrorBody), (status = 422, body = InferenceErrorBody)))]
pub async fn infer(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path(name): Path<String>, headers: HeaderMap, ScoringBytes(body): ScoringBytes) -> Result<Response> {
    run_infer(&state, &p, &id.0, &name, None, &headers, body).await
}

/// Scores input tensors with one version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", params(("name" = String, Path), ("version" = String, Path)), request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = InferenceErrorBody), (status = 404, body = InferenceErrorBody), (status = 422, body = InferenceErrorBody)))]
pub async fn infer_version(State(state): State<AppState>, Caller(p): Caller, id: RequestId, Path((name, version)): Path<(String, String)>, headers: HeaderMap, ScoringBytes(body): ScoringBytes) -> Result<Response> {
    run_infer(&state, &p, &id.0, &name, Some(&version), &headers, body).await
}

async fn run_infer(state: &AppState, p: &Principal, request_id: &str, name: &str, version: Option<&str>, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    p.require(READ, "score with models")?;
    // The model first: a name that is not the caller's is 404 whatever the body says.
    let (model, target, _) = state.serving.resolve(p, name, version).await?;
    let (json, binary) = split_binary(headers, &body)?;
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| Error::Unprocessable(format!("the inference request: {e}")))?;
    let tensors = input_tensors(&request.inputs, binary)?;
    let rows = rows_from_tensors(&tensors)?;
    let Invocation { outcome, version, rows: scored_rows, details } = state.serving.invoke(p, request_id, &model, target, ScoringBody::Rows(rows, body.clone())).await?;
    let facts = AuditFacts { resource_name: Some(model.clone()), versions_read: vec![version], rows: scored_rows, details, ..Default::default() };
    let response = outcome.and_then(|answer| encode_response(&model, version, request.id, &request.parameters, &request.outputs, answer.tensors));
    let mut r = match response {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    r.extensions_mut().insert(facts);
    Ok(r)
}

/// The JSON header and the binary tensor data after it.
fn split_binary<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(length) = headers.get(HEADER_LENGTH) else { return Ok((body, &[])) };
    let length: usize = length
        .to_str()
        .ok()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| Error::BadRequest(format!("{HEADER_LENGTH} must be a byte count")))?;
    if length > body.len() {
        return Err(Error::BadRequest(format!("{HEADER_LENGTH} is {length}, but the body has {} bytes", body.len())));
    }
    Ok(body.split_at(length))
}

fn input_tensors(inputs: &[InferInput], mut binary: &[u8]) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::with_capacity(inputs.len());
    for i in inputs {
        let count = i.shape.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
        let count = count.ok_or_else(|| Error::Unprocessable(format!("input `{}`: shape {:?} is not a list of sizes", i.name, i.shape)))?;
        let values = match (i.parameters.get("binary_data_size"), &i.data) {
            (Some(size), None) => {
                let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| Error::Unprocessable(format!("input `{}`: binary_data_size must be a byte count", i.name)))?;
                if size > binary.len() {
                    return Err(Error::Unprocessable(format!("input `{}`: binary_data_size is {size}, but only {} bytes are left", i.name, binary.len())));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_raw(&i.name, &i.datatype, mine)?
            }
            (None, Some(data)) => from_json(&i.name, &i.datatype, data, count)?,
            (Some(_), Some(_)) => return Err(Error::Unprocessable(format!("input `{}`: give `data` or `binary_data_size`, not both", i.name))),
            (None, None) => return Err(Error::Unprocessable(format!("input `{}` has no `data`", i.name))),
        };
        if values.len() != count {
            return Err(Error::Unprocessable(format!("input `{}`: shape {:?} holds {count} values, {} were given", i.name, i.shape, values.len())));
        }
        out.push(NamedTensor { name: i.name.clone(), shape: i.shape.clone(), values });
    }
    if !binary.is_empty() {
        return Err(Error::Unprocessable(format!("{} bytes of binary data belong to no input", binary.len())));
    }
    Ok(out)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn from_json(name: &str, datatype: &str, data: &Value, count: usize) -> Result<Values> {
    // `count` comes from the caller's shape: checked against the data, never trusted for memory.
    let mut flat = Vec::with_capacity(count.min(1 << 16));
    flatten(data, &mut flat);
    let bad = |i: usize, want: &str| Error::Unprocessable(format!("input `{name}` element {i}: expected {want}, got {}", flat[i]));
    Ok(match datatype {
        "FP32" | "FP64" => Values::Double(flat.iter().enumerate().map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, "a number"))).collect::<Result<_>>()?),
        "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => {
            Values::Int64(flat.iter().enumerate().map(|(i, v)| v.as_i64().ok_or_else(|| bad(i, "an integer"))).collect::<Result<_>>()?)
        }
        "BOOL" => Values::Bool(flat.iter().enumerate().map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, "true or false"))).collect::<Result<_>>()?),
        "BYTES" => Values::String(flat.iter().enumerate().map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| bad(i, "text"))).collect::<Result<_>>()?),
        other => return Err(Error::Unprocessable(format!("input `{name}`: datatype {other} is not supported (BOOL, INT8–INT64, UINT8–UINT64, FP32, FP64, BYTES)"))),
    })
}

fn wants_binary(parameters: &Map<String, Value>, key: &str) -> bool {
    parameters.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn encode_response(model: &str, version: i64, id: Option<String>, parameters: &Map<String, Value>, requested: &[RequestedOutput], tensors: Vec<OutputTensor>) -> Result<Response> {
    let all_binary = wants_binary(parameters, "binary_data_output");
    let chosen: Vec<(OutputTensor, bool)> = if requested.is_empty() {
        tensors.into_iter().map(|t| (t, all_binary)).collect()
    } else {
        let mut tensors = tensors;
        let mut out = Vec::with_capacity(requested.len());
        for r in requested {
            let Some(at) = tensors.iter().position(|t| t.name == r.name) else {
                return Err(Error::Unprocessable(format!("output `{}` is not one of the model's ({})", r.name, tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "))));
            };
            out.push((tensors.remove(at), all_binary || wants_binary(&r.parameters, "binary_data")));
        }
        out
    };
    let mut binary = Vec::new();
    let outputs = chosen
        .into_iter()
        .map(|(t, as_binary)| {
            let shape = t.shape.iter().map(|&d| d as i64).collect();
            let datatype = t.values.elem().oip().to_string();
            if as_binary {
                let bytes = encode_raw(&t.values);
                let mut parameters = Map::new();
                parameters.insert("binary_data_size".into(), Value::from(bytes.len()));
                binary.extend(bytes);
                InferOutput { name: t.name, datatype, shape, parameters, data: None }
            } else {
                let data = (0..t.values.len()).map(|i| t.values.json(i)).collect();
                InferOutput { name: t.name, datatype, shape, parameters: Map::new(), data: Some(data) }
            }
        })
        .collect();
    let body = InferResponse { model_name: model.to_string(), model_version: version.to_string(), id, outputs };
    let json = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    if binary.is_empty() {
        let mut r = (StatusCode::OK, json).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(r);
    }
    let length = json.len();
    let mut all = json;
    all.extend(binary);
    let mut r = (StatusCode::OK, all).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LENGTH, HeaderValue::from(length));
    Ok(r)
}
