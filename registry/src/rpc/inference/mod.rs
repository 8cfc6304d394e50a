//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, what Triton's
//! and KServe's clients call), for every model, native or imported. Same names as over HTTP
//! (`name@alias` follows the alias and its canary; a bare name is its latest active
//! version), same authentication, serving path (checks, batching, canary, inference log)
//! and audit: each call that names a model is recorded, scoring as `model.invoke`.
//! Input tensors come as typed contents or as `raw_input_contents`; outputs are returned
//! as `raw_output_contents`, as Triton returns them.

pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

pub use self::proto::InferenceServer;
use self::proto::*;
use super::audit::{CallKind, Facts, Recorder};
use crate::error::{Error, Result};
use crate::models::onnx::Values;
use crate::platform::catalog::Role;
use crate::platform::readiness::Readiness;
use crate::serving::tensors::{NamedTensor, decode_raw, encode_raw, rows_from_tensors};
use crate::serving::{Invocation, ScoringBody, Serving};

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];

/// The inference service: the handles its calls use.
pub struct Inference {
    recorder: Recorder,
    serving: Arc<Serving>,
    readiness: Arc<Readiness>,
}

impl Inference {
    pub fn new(recorder: Recorder, serving: Arc<Serving>, readiness: Arc<Readiness>) -> Inference {
        Inference { recorder, serving, readiness }
    }
}

fn kind(rpc: &'static str, action: &'static str, model: Option<&str>) -> CallKind {
    CallKind {
        protocol: "grpc",
        rpc,
        command: rpc,
        action,
        resource_kind: model.map(|_| "model"),
        resource_name: model.map(|m| m.split_once('@').map_or(m, |(name, _)| name).to_string()),
    }
}

type Answer<T> = std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<Response<T>, Status>> + Send + 'static>>;

impl InferenceService for Inference {
    fn server_live(self: Arc<Self>, _request: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Box::pin(async move { Ok(Response::new(ServerLiveResponse { live: true })) })
    }

    fn server_ready(self: Arc<Self>, _request: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Box::pin(async move {
            let ready = self.readiness.check(&self.recorder.audit).await.ready();
            Ok(Response::new(ServerReadyResponse { ready }))
        })
    }

    fn server_metadata(self: Arc<Self>, request: Request<ServerMetadataRequest>) -> Answer<ServerMetadataResponse> {
        Box::pin(async move {
            let (p, call) = self.recorder.begin(request.metadata(), request.remote_addr(), kind("ServerMetadata", "inference.server_metadata", None)).await?;
            if let Err(e) = p.require(READ, "read server metadata") {
                return Err(call.fail(e));
            }
            call.done(Facts::default());
            Ok(Response::new(ServerMetadataResponse { name: "lakeledger".into(), version: env!("CARGO_PKG_VERSION").into(), extensions: vec![] }))
        })
    }

    fn model_ready(self: Arc<Self>, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        Box::pin(async move {
            let m = request.get_ref();
            let (p, call) = self.recorder.begin(request.metadata(), request.remote_addr(), kind("ModelReady", "model.ready", Some(&m.name))).await?;
            let ready = async {
                p.require(READ, "read models")?;
                let (model, _, v) = self.serving.resolve(&p, &m.name, Some(&m.version)).await?;
                // Ready means loaded and verified (hash and signature), as the first request would.
                self.serving.loaded(&p, &model, v).await?;
                Ok::<_, Error>(v)
            }
            .await;
            match ready {
                Ok(v) => {
                    call.done(Facts { versions_read: vec![v], ..Default::default() });
                    Ok(Response::new(ModelReadyResponse { ready: true }))
                }
                Err(e) => Err(call.fail(e)),
            }
        })
    }

    fn model_metadata(self: Arc<Self>, request: Request<ModelMetadataRequest>) -> Answer<ModelMetadataResponse> {
        Box::pin(async move {
            let m = request.get_ref();
            let (p, call) = self.recorder.begin(request.metadata(), request.remote_addr(), kind("ModelMetadata", "model.metadata", Some(&m.name))).await?;
            let described = async {
                p.require(READ, "read models")?;
                self.serving.describe(&p, &m.name, Some(&m.version)).await
            }
            .await;
            let d = match described {
                Ok(d) => d,
                Err(e) => return Err(call.fail(e)),
            };
            call.done(Facts { versions_read: vec![d.version], ..Default::default() });
            let meta = |t: crate::serving::tensors::TensorMetadata| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape };
            Ok(Response::new(ModelMetadataResponse {
                name: m.name.clone(),
                versions: d.versions,
                platform: d.platform.into(),
                inputs: d.inputs.into_iter().map(meta).collect(),
                outputs: d.outputs.into_iter().map(meta).collect(),
            }))
        })
    }

    fn model_infer(self: Arc<Self>, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        Box::pin(async move {
            let m = request.get_ref();
            let (p, mut call) = self.recorder.begin(request.metadata(), request.remote_addr(), kind("ModelInfer", "model.invoke", Some(&m.model_name))).await?;
            let invoked = async {
                p.require(READ, "score with models")?;
                let (model, target, _) = self.serving.resolve(&p, &m.model_name, Some(&m.model_version)).await?;
                let rows = rows_from_tensors(&input_tensors(m)?)?;
                // The input hash is over the request message as sent.
                let raw = bytes::Bytes::from(m.encode_to_vec());
                self.serving.invoke(&p, &call.ctx.request_id, &model, target, ScoringBody::Rows(rows, raw)).await
            }
            .await;
            let Invocation { outcome, version, rows, details } = match invoked {
                Ok(i) => i,
                Err(e) => return Err(call.fail(e)),
            };
            call.note(Facts { versions_read: vec![version], rows, details, ..Default::default() });
            let answer = match outcome.and_then(|a| outputs(m, a.tensors)) {
                Ok(a) => a,
                Err(e) => return Err(call.fail(e)),
            };
            call.done(Facts { versions_read: vec![version], ..Default::default() });
            let (outputs, raw_output_contents) = answer;
            Ok(Response::new(ModelInferResponse {
                model_name: m.model_name.clone(),
                model_version: version.to_string(),
                id: m.id.clone(),
                parameters: HashMap::new(),
                outputs,
                raw_output_contents,
            }))
        })
    }
}

/// The request's input tensors, from raw contents (one per input, in order) or typed contents.
fn input_tensors(m: &ModelInferRequest) -> Result<Vec<NamedTensor>> {
    if !m.raw_input_contents.is_empty() && m.raw_input_contents.len() != m.inputs.len() {
        return Err(Error::Unprocessable(format!("{} raw input contents for {} inputs", m.raw_input_contents.len(), m.inputs.len())));
    }
    m.inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let values = match (m.raw_input_contents.get(i), &t.contents) {
                (Some(raw), _) => decode_raw(&t.name, &t.datatype, raw)?,
                (None, Some(c)) => from_contents(&t.name, &t.datatype, c)?,
                (None, None) => return Err(Error::Unprocessable(format!("input `{}` has no contents", t.name))),
            };
            Ok(NamedTensor { name: t.name.clone(), shape: t.shape.clone(), values })
        })
        .collect()
}

fn from_contents(name: &str, datatype: &str, c: &InferTensorContents) -> Result<Values> {
    Ok(match datatype {
        "FP32" => Values::Float(c.fp32_contents.clone()),
        "FP64" => Values::Double(c.fp64_contents.clone()),
        "INT8" | "INT16" | "INT32" => Values::Int64(c.int_contents.iter().map(|&v| i64::from(v)).collect()),
        "INT64" => Values::Int64(c.int64_contents.clone()),
        "UINT8" | "UINT16" | "UINT32" => Values::Int64(c.uint_contents.iter().map(|&v| i64::from(v)).collect()),
        "UINT64" => Values::Int64(c.uint64_contents.iter().map(|&v| v.min(i64::MAX as u64) as i64).collect()),
        "BOOL" => Values::Bool(c.bool_contents.clone()),
        "BYTES" => Values::String(
            c.bytes_contents
                .iter()
                .map(|b| String::from_utf8(b.clone()).map_err(|_| Error::Unprocessable(format!("input `{name}`: BYTES elements must be UTF-8 text"))))
                .collect::<Result<_>>()?,
        ),
        other => return Err(Error::Unprocessable(format!("input `{name}`: datatype {other} is not supported (BOOL, INT8–INT64, UINT8–UINT64, FP32, FP64, BYTES)"))),
    })
}

/// The outputs asked for (all when none are named), as raw contents.
fn outputs(m: &ModelInferRequest, mut tensors: Vec<crate::serving::OutputTensor>) -> Result<(Vec<InferOutputTensor>, Vec<Vec<u8>>)> {
    if !m.outputs.is_empty() {
        let mut chosen = Vec::with_capacity(m.outputs.len());
        for r in &m.outputs {
            let Some(at) = tensors.iter().position(|t| t.name == r.name) else {
                return Err(Error::Unprocessable(format!("output `{}` is not one of the model's ({})", r.name, tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "))));
            };
            chosen.push(tensors.remove(at));
        }
        tensors = chosen;
    }
    Ok(tensors
        .into_iter()
        .map(|t| {
            let raw = encode_raw(&t.values);
            let out = InferOutputTensor {
                name: t.name,
                datatype: t.values.elem().oip().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            };
            (out, raw)
        })
        .unzip())
}
