//! The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService`
//! (`proto/grpc_service.proto`, the protocol's own names and field numbers, so Triton's and
//! KServe's clients work unchanged) on `--grpc-listen`, with tonic.
//!
//! ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, RepositoryIndex, and
//! ModelInfer with the input as `raw_input_contents` (little-endian FP32, what tritonclient
//! sends) or `contents.fp32_contents`, and every output as `raw_output_contents` (the
//! classification extension's labels as length-prefixed BYTES). Other methods answer
//! UNIMPLEMENTED.
//!
//! It shares everything with HTTP: the models and names ([`super::models`]), the checks of
//! [`super::infer`], the body budget (a message holds room for its encoded size), the admission
//! queue, the decoding pool, the batcher and the metrics (`sorbier_grpc_requests_total{method,
//! code}`). Its limits: messages of at most `--max-body-mb` (RESOURCE_EXHAUSTED beyond, by
//! tonic), at most `--max-connections` connections (its own count), 64 streams a connection,
//! HTTP/2 keep-alive pings every `--idle-timeout-s` that must be answered within
//! `--header-timeout-s`. HTTP statuses map onto gRPC codes: 400 → INVALID_ARGUMENT, 404 →
//! NOT_FOUND, 413 → RESOURCE_EXHAUSTED, 503 → UNAVAILABLE, others → INTERNAL.
//!
//! As for HTTP bodies, an `infer` message takes its room in the body budget before it is read,
//! from its gRPC length prefix, and must arrive within `--body-timeout-s` ([`gate`]).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use super::http::ApiError;
use super::infer::{self, OutputWanted, TensorData, TensorIn};
use super::models::ServedModel;
use super::oip::ModelPath;
use super::{blocking, AppState};

mod gate;

/// The messages and service generated from `proto/grpc_service.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use pb::model_metadata_response::TensorMetadata;
use pb::*;

/// Streams one HTTP/2 connection may carry at once.
const STREAMS_PER_CONNECTION: u32 = 64;

/// The gRPC side of the server, bound to its address.
pub struct Bound {
    pub addr: SocketAddr,
    listener: TcpListener,
    state: Arc<AppState>,
}

/// Binds `addr` for the gRPC service.
pub async fn bind(addr: &str, state: Arc<AppState>) -> Result<Bound> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--grpc-listen)"))?;
    let addr = listener.local_addr().context("cannot read the gRPC listening address")?;
    Ok(Bound { addr, listener, state })
}

/// A connection holding one of the gRPC connection places.
struct Placed {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Placed {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Placed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Placed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Bound {
    /// Serves until the server is told to stop, then drains the open connections.
    pub async fn serve(self, limits: super::ConnLimits) -> Result<()> {
        let state = self.state.clone();
        let service = GrpcInferenceServiceServer::new(Grpc { state: state.clone() })
            .max_decoding_message_size(state.limits.max_body)
            .max_encoding_message_size(usize::MAX);
        // Accepting runs apart, one connection place at a time, as for HTTP.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Placed>>(1);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let listener = self.listener;
        let accepting = state.clone();
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    _ = accepting.stopped() => break,
                    s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
                };
                let stream = tokio::select! {
                    _ = accepting.stopped() => break,
                    r = listener.accept() => match r {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                if tx.send(Ok(Placed { stream, _slot: slot })).await.is_err() {
                    break;
                }
            }
        });
        let stop = state.clone();
        tonic::transport::Server::builder()
            .max_concurrent_streams(STREAMS_PER_CONNECTION)
            .concurrency_limit_per_connection(STREAMS_PER_CONNECTION as usize)
            .http2_keepalive_interval(Some(limits.idle_timeout))
            .http2_keepalive_timeout(Some(limits.header_timeout))
            .add_service(gate::Gate::new(service, state.clone()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), async move { stop.stopped().await })
            .await
            .context("the gRPC server failed")
    }
}

struct Grpc {
    state: Arc<AppState>,
}

/// The gRPC status for an HTTP error.
fn status(e: ApiError) -> Status {
    match e.status {
        StatusCode::BAD_REQUEST => Status::invalid_argument(e.message),
        StatusCode::NOT_FOUND => Status::not_found(e.message),
        StatusCode::PAYLOAD_TOO_LARGE => Status::resource_exhausted(e.message),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(e.message),
        StatusCode::REQUEST_TIMEOUT => Status::deadline_exceeded(e.message),
        _ => Status::internal(e.message),
    }
}

/// The label of a gRPC code (a closed set).
fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Ok => "OK",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

impl Grpc {
    /// Answers `r` as gRPC and counts it under `method`.
    fn answer<T>(&self, method: &'static str, start: Instant, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        let r = r.map(Response::new).map_err(status);
        let code = r.as_ref().map_or_else(|s| code_name(s.code()), |_| "OK");
        self.state.metrics.grpc_request(method, code, start.elapsed().as_secs_f64());
        if let Some(log) = &self.state.log {
            log(&format!("gRPC {method} {code} {:.1} ms", start.elapsed().as_secs_f64() * 1e3));
        }
        r
    }

    fn model(&self, name: &str, version: &str) -> Result<&ServedModel, ApiError> {
        self.state.model(&ModelPath::new(name, version))
    }

    fn metadata(&self, req: &ModelMetadataRequest) -> Result<ModelMetadataResponse, ApiError> {
        let model = self.model(&req.name, &req.version)?;
        let c = &self.state.catalog;
        let inputs = match &model.input {
            Some((name, p)) => {
                let s = i64::from(c.crops[*p]);
                vec![TensorMetadata { name: name.clone(), datatype: "FP32".into(), shape: vec![-1, 3, s, s] }]
            }
            None => Vec::new(),
        };
        Ok(ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec![model.version.clone()],
            platform: model.platform.to_string(),
            inputs,
            outputs: vec![TensorMetadata { name: c.output.to_string(), datatype: "FP32".into(), shape: vec![-1, c.classes.len() as i64] }],
        })
    }

    async fn infer(&self, room: Option<gate::Room>, req: ModelInferRequest) -> Result<ModelInferResponse, ApiError> {
        let state = self.state.clone();
        let model = self.model(&req.model_name, &req.model_version)?.clone();
        // The message holds its room in the body budget (taken by the gate before it was read)
        // until its floats have run.
        let room = room.ok_or_else(|| ApiError::internal("the message reached the service without passing the body budget"))?;
        let (st, m) = (state.clone(), model.clone());
        let (id, checked) = blocking(move || {
            let (id, inputs, outputs) = parse(req)?;
            Ok((id, infer::validate(&st.catalog, &m, st.limits.max_queue, inputs, outputs, true)?))
        })
        .await?;
        let outputs = checked.outputs.clone();
        let rows = infer::run(&state, model.target, checked).await?;
        drop(room);
        blocking(move || {
            let c = &state.catalog;
            let n = rows.nrows() as i64;
            let mut tensors = Vec::with_capacity(outputs.len());
            let mut raw = Vec::with_capacity(outputs.len());
            for o in &outputs {
                let (datatype, shape, bytes) = match o.classification {
                    Some(k) => ("BYTES", vec![n, k as i64], infer::raw_strings(&infer::labels(&rows, k, &c.classes))),
                    None => ("FP32", vec![n, rows.ncols() as i64], infer::raw_floats(&rows)),
                };
                tensors.push(InferOutputTensor { name: c.output.to_string(), datatype: datatype.into(), shape, parameters: HashMap::new(), contents: None });
                raw.push(bytes);
            }
            Ok(ModelInferResponse { model_name: model.name, model_version: model.version, id, parameters: HashMap::new(), outputs: tensors, raw_output_contents: raw })
        })
        .await
    }
}

/// A parameter as a count (the classification extension's `k`).
fn count(p: &InferParameter) -> Result<u64, ApiError> {
    match &p.parameter_choice {
        Some(ParameterChoice::Int64Param(v)) => u64::try_from(*v).map_err(|_| ApiError::bad_request(format!("classification must be a count, got {v}"))),
        Some(ParameterChoice::Uint64Param(v)) => Ok(*v),
        other => Err(ApiError::bad_request(format!("classification must be an integer parameter, got {other:?}"))),
    }
}

/// The request's inputs (each with its raw bytes or typed contents) and outputs.
fn parse(req: ModelInferRequest) -> Result<(String, Vec<TensorIn>, Vec<OutputWanted>), ApiError> {
    let mut raw = req.raw_input_contents.into_iter();
    let use_raw = raw.len() > 0;
    if use_raw && raw.len() != req.inputs.len() {
        return Err(ApiError::bad_request(format!("{} raw_input_contents for {} inputs", raw.len(), req.inputs.len())));
    }
    let inputs = req
        .inputs
        .into_iter()
        .map(|i: InferInputTensor| {
            let data = match (use_raw, i.contents) {
                (true, Some(_)) => return Err(ApiError::bad_request(format!("input {:?} has both contents and raw_input_contents", i.name))),
                (true, None) => TensorData::Raw(raw.next().unwrap_or_default().into()),
                (false, Some(c)) if !c.fp32_contents.is_empty() => TensorData::Numbers(c.fp32_contents),
                (false, _) => TensorData::Missing,
            };
            Ok(TensorIn { name: i.name, datatype: i.datatype, shape: i.shape, data })
        })
        .collect::<Result<_, _>>()?;
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| {
            let classification = o.parameters.get("classification").map(count).transpose()?;
            Ok(OutputWanted { name: o.name, classification, binary: true })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok((req.id, inputs, outputs))
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        self.answer("ServerLive", Instant::now(), Ok(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        self.answer("ServerReady", Instant::now(), Ok(ServerReadyResponse { ready: !self.state.stopping() }))
    }

    async fn model_ready(&self, req: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let req = req.into_inner();
        let ready = self.model(&req.name, &req.version).is_ok() && !self.state.stopping();
        self.answer("ModelReady", Instant::now(), Ok(ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        let extensions = super::oip::EXTENSIONS.iter().map(|e| e.to_string()).collect();
        self.answer("ServerMetadata", Instant::now(), Ok(ServerMetadataResponse { name: "sorbier".into(), version: sorbier::VERSION.into(), extensions }))
    }

    async fn model_metadata(&self, req: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let start = Instant::now();
        let r = self.metadata(req.get_ref());
        self.answer("ModelMetadata", start, r)
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let start = Instant::now();
        let room = req.extensions().get::<gate::Room>().cloned();
        let r = self.infer(room, req.into_inner()).await;
        self.answer("ModelInfer", start, r)
    }

    async fn repository_index(&self, _: Request<RepositoryIndexRequest>) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = self
            .state
            .catalog
            .models
            .iter()
            .map(|m| repository_index_response::ModelIndex { name: m.name.clone(), version: m.version.clone(), state: "READY".into(), reason: String::new() })
            .collect();
        self.answer("RepositoryIndex", Instant::now(), Ok(RepositoryIndexResponse { models }))
    }
}
