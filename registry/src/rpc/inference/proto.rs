//! The messages and service of the Open Inference Protocol's gRPC API
//! (`inference.GRPCInferenceService`, as KServe and Triton define it), written out with
//! prost's derive: only the calls served here, with the protocol's field numbers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveResponse {
    #[prost(bool, tag = "1")]
    pub live: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMetadataRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, repeated, tag = "3")]
    pub extensions: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(string, tag = "3")]
    pub platform: String,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterChoice {
    #[prost(bool, tag = "1")]
    BoolParam(bool),
    #[prost(int64, tag = "2")]
    Int64Param(i64),
    #[prost(string, tag = "3")]
    StringParam(String),
    #[prost(double, tag = "4")]
    DoubleParam(f64),
    #[prost(uint64, tag = "5")]
    Uint64Param(u64),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferParameter {
    #[prost(oneof = "ParameterChoice", tags = "1, 2, 3, 4, 5")]
    pub parameter_choice: Option<ParameterChoice>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub bytes_contents: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferInputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequestedOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(map = "string, message", tag = "2")]
    pub parameters: HashMap<String, InferParameter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferInputTensor>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<InferRequestedOutputTensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferOutputTensor>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub raw_output_contents: Vec<Vec<u8>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Answer<T> = BoxFuture<Result<Response<T>, Status>>;

/// The calls of `inference.GRPCInferenceService` served here.
pub trait InferenceService: Send + Sync + 'static {
    fn server_live(self: Arc<Self>, request: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse>;
    fn server_ready(self: Arc<Self>, request: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse>;
    fn model_ready(self: Arc<Self>, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse>;
    fn server_metadata(self: Arc<Self>, request: Request<ServerMetadataRequest>) -> Answer<ServerMetadataResponse>;
    fn model_metadata(self: Arc<Self>, request: Request<ModelMetadataRequest>) -> Answer<ModelMetadataResponse>;
    fn model_infer(self: Arc<Self>, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse>;
}

/// The tonic service: routes each call by its path to the method, decoding and encoding
/// with prost. Calls of the protocol not served here (repository, statistics, shared
/// memory, streaming) answer `UNIMPLEMENTED`.
pub struct InferenceServer<T> {
    inner: Arc<T>,
}

impl<T> InferenceServer<T> {
    pub fn new(inner: T) -> Self {
        InferenceServer { inner: Arc::new(inner) }
    }
}

impl<T> Clone for InferenceServer<T> {
    fn clone(&self) -> Self {
        InferenceServer { inner: self.inner.clone() }
    }
}

impl<T> tonic::server::NamedService for InferenceServer<T> {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

/// One unary call: a function from the decoded request to the answer.
struct Unary<F>(F);

impl<F, Req, Res> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(Request<Req>) -> Answer<Res>,
{
    type Response = Res;
    type Future = Answer<Res>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        (self.0)(request)
    }
}

/// The largest request decoded: a batch of tensors for scoring.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

fn unary<B, Req, Res, F>(request: http::Request<B>, f: F) -> BoxFuture<Result<http::Response<tonic::body::Body>, Infallible>>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Answer<Res> + Send + 'static,
{
    Box::pin(async move {
        let codec = tonic_prost::ProstCodec::<Res, Req>::default();
        let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
        Ok(grpc.unary(Unary(f), request).await)
    })
}

impl<T, B> tower::Service<http::Request<B>> for InferenceServer<T>
where
    T: InferenceService,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match request.uri().path() {
            "/inference.GRPCInferenceService/ServerLive" => unary(request, move |r| inner.clone().server_live(r)),
            "/inference.GRPCInferenceService/ServerReady" => unary(request, move |r| inner.clone().server_ready(r)),
            "/inference.GRPCInferenceService/ModelReady" => unary(request, move |r| inner.clone().model_ready(r)),
            "/inference.GRPCInferenceService/ServerMetadata" => unary(request, move |r| inner.clone().server_metadata(r)),
            "/inference.GRPCInferenceService/ModelMetadata" => unary(request, move |r| inner.clone().model_metadata(r)),
            "/inference.GRPCInferenceService/ModelInfer" => unary(request, move |r| inner.clone().model_infer(r)),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            }),
        }
    }
}
