//! The Open Inference Protocol (KServe v2) over HTTP/REST, as Triton, MLServer and KServe
//! implement it, so their clients (e.g. Python's `tritonclient[http]`) work unchanged:
//!
//! - health: `GET /v2/health/live`, `/v2/health/ready`, `/v2/models/{name}[/versions/{v}]/ready`
//!   (200 true, 4xx false, empty body);
//! - metadata: `GET /v2` (server), `GET /v2/models/{name}[/versions/{v}]` (inputs, outputs,
//!   datatypes, shapes with `-1` for the batch);
//! - inference: `POST /v2/models/{name}[/versions/{v}]/infer` with one FP32 input in the
//!   model's own layout, `N × 3 × S × S`, preprocessed as the model card says; the output is
//!   `N × classes` FP32 in the averaging space (`logits` or `probs`).
//!
//! Extensions (reported in the server metadata): `binary_tensor_data` (tensors as raw
//! little-endian bytes after the JSON header, `Inference-Header-Content-Length`; tritonclient's
//! default), `classification` (`"parameters": {"classification": K}` on an output returns the
//! top K as BYTES `"<value>:<index>:<class>"`), `model_configuration` (`GET …/config`, Triton's
//! shape). `POST /v2/repository/index` lists the models. Errors are `{"error": "…"}`: 400 for
//! a malformed request, 404 for an unknown model or version.
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use ndarray::Array2;
use serde_json::{json, Value};

use super::http::{read_body, ApiError, Images, ReadBody};
use super::infer::{self, Output, OutputWanted, TensorData, TensorIn};
use super::models::{Catalog, ServedModel};
use super::{blocking, AppState};

/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `{name}` or `{name}/versions/{version}` of a model route.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

impl ModelPath {
    /// A model name and version (empty: any) as gRPC carries them.
    pub fn new(name: &str, version: &str) -> ModelPath {
        ModelPath { name: name.to_string(), version: (!version.is_empty()).then(|| version.to_string()) }
    }
}

/// The protocol extensions the server implements.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "classification", "model_configuration"];

impl AppState {
    /// The model a route names; 404 (with the names served) for an unknown name or version.
    pub(super) fn model(&self, path: &ModelPath) -> Result<&ServedModel, ApiError> {
        let model = self.catalog.get(&path.name).ok_or_else(|| {
            ApiError::not_found(format!("unknown model {:?}: this server serves {}", path.name, self.catalog.names().join(", ")))
        })?;
        match &path.version {
            Some(v) if *v != model.version => Err(ApiError::not_found(format!("model {:?} has no version {v:?}: it serves version {}", model.name, model.version))),
            _ => Ok(model),
        }
    }

    /// Why the server is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.stopping() {
            Some("the server is shutting down")
        } else {
            None
        }
    }
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Result<StatusCode, ApiError> {
    match state.not_ready() {
        Some(why) => Err(ApiError::bad_request(why)),
        None => Ok(StatusCode::OK),
    }
}

pub async fn model_ready(State(state): State<Arc<AppState>>, Path(path): Path<ModelPath>) -> Result<StatusCode, ApiError> {
    state.model(&path)?;
    ready(State(state)).await
}

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "sorbier",
        "version": sorbier::VERSION,
        "extensions": EXTENSIONS,
    }))
}

/// The shape of the model's input, `[-1, 3, S, S]`, and of its output, `[-1, classes]`.
fn shapes(state: &AppState, model: &ServedModel) -> (Option<[i64; 4]>, [i64; 2]) {
    let input = model.input.as_ref().map(|(_, p)| {
        let s = state.catalog.crops[*p] as i64;
        [-1, 3, s, s]
    });
    (input, [-1, state.catalog.classes.len() as i64])
}

pub async fn model_metadata(State(state): State<Arc<AppState>>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    let model = state.model(&path)?;
    let (input, output) = shapes(&state, model);
    let inputs: Vec<Value> = match (&model.input, input) {
        (Some((name, _)), Some(shape)) => vec![json!({ "name": name, "datatype": "FP32", "shape": shape })],
        _ => Vec::new(),
    };
    let c = &state.catalog;
    let mut parameters = json!({
        "classes": c.classes,
        "average": c.average.to_string(),
        "tta": c.tta.to_string(),
        "runs": model.runs,
    });
    if !model.members.is_empty() {
        parameters["members"] = json!(model.members);
    }
    if let Some(why) = &model.no_input {
        parameters["no_tensor_input"] = json!(why);
    }
    Ok(Json(json!({
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": inputs,
        "outputs": [{ "name": c.output, "datatype": "FP32", "shape": output }],
        "parameters": parameters,
    })))
}

/// Triton's model configuration for the model (`max_batch_size` > 0, so `dims` leave out the batch).
pub async fn model_config(State(state): State<Arc<AppState>>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    let model = state.model(&path)?;
    let (input, output) = shapes(&state, model);
    let inputs: Vec<Value> = match (&model.input, input) {
        (Some((name, _)), Some(shape)) => vec![json!({ "name": name, "data_type": "TYPE_FP32", "dims": &shape[1..] })],
        _ => Vec::new(),
    };
    Ok(Json(json!({
        "name": model.name,
        "platform": model.platform,
        "backend": "onnxruntime",
        "max_batch_size": state.batch.max_batch,
        "input": inputs,
        "output": [{ "name": state.catalog.output, "data_type": "TYPE_FP32", "dims": &output[1..] }],
        "dynamic_batching": { "max_queue_delay_microseconds": state.batch.max_delay.as_micros() as u64 },
    })))
}

pub async fn repository_index(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(Value::Array(state.catalog.models.iter().map(|m| json!({ "name": m.name, "version": m.version, "state": "READY" })).collect()))
}

/// The parameters this server reads; others are skipped without being kept.
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    binary_data_output: Option<bool>,
    binary_data: Option<bool>,
    binary_data_size: Option<u64>,
    classification: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Vec<RequestOutput>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<Flat>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// The numbers of a (possibly nested) JSON array, flattened row-major into float32 as they
/// are parsed: no intermediate JSON tree, so at most 4 bytes per 2 bytes of body.
#[derive(Debug)]
struct Flat(Vec<f32>);

struct FlatInto<'a>(&'a mut Vec<f32>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        let mut out = Vec::new();
        serde::de::DeserializeSeed::deserialize(FlatInto(&mut out), d)?;
        Ok(Flat(out))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for FlatInto<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FlatInto<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers, or arrays of numbers")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FlatInto(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// Step 1, parse: the JSON header (`Inference-Header-Content-Length` bytes, or the whole body)
/// and each input's share of the binary data after it. Runs on the blocking pool.
fn parse(headers: &HeaderMap, body: &Bytes) -> Result<(InferRequest, Vec<TensorIn>, Vec<OutputWanted>), ApiError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| ApiError::bad_request(format!("{HEADER_LENGTH} must be a byte count, got {v:?}")))?),
    };
    let split = header_len.unwrap_or(body.len());
    if split > body.len() {
        return Err(ApiError::bad_request(format!("{HEADER_LENGTH} is {split} but the body has only {} bytes", body.len())));
    }
    let mut request: InferRequest = serde_json::from_slice(&body[..split]).map_err(|e| ApiError::bad_request(format!("malformed inference request JSON: {e}")))?;
    let mut at = split;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in std::mem::take(&mut request.inputs) {
        let data = match (input.parameters.binary_data_size, input.data) {
            (Some(size), _) => {
                let end = usize::try_from(size).ok().and_then(|size| at.checked_add(size)).filter(|&end| end <= body.len()).ok_or_else(|| {
                    ApiError::bad_request(format!("input {:?}: binary_data_size is {size} bytes but the body holds only {} after the JSON header", input.name, body.len() - at))
                })?;
                let raw = body.slice(at..end);
                at = end;
                TensorData::Raw(raw)
            }
            (None, Some(Flat(values))) => TensorData::Numbers(values),
            (None, None) => TensorData::Missing,
        };
        inputs.push(TensorIn { name: input.name, datatype: input.datatype, shape: input.shape, data });
    }
    if at != body.len() {
        return Err(ApiError::bad_request(format!("{} bytes of binary data follow the JSON header that no input claims", body.len() - at)));
    }
    let all_binary = request.parameters.binary_data_output.unwrap_or(false);
    let outputs = std::mem::take(&mut request.outputs)
        .into_iter()
        .map(|o| OutputWanted { binary: o.parameters.binary_data.unwrap_or(all_binary), classification: o.parameters.classification, name: o.name })
        .collect();
    Ok((request, inputs, outputs))
}

/// Step 4, encode: the response, JSON or JSON header + binary tensors. Runs on the blocking pool.
fn encode(catalog: &Catalog, model: &ServedModel, id: Option<String>, outputs: &[Output], rows: &Array2<f32>) -> Result<Response, ApiError> {
    let n = rows.nrows();
    let mut heads = Vec::with_capacity(outputs.len());
    let mut tail: Vec<u8> = Vec::new();
    for w in outputs {
        let out = match w.classification {
            Some(k) => {
                let labels = infer::labels(rows, k, &catalog.classes);
                let mut out = json!({ "name": catalog.output, "datatype": "BYTES", "shape": [n, k] });
                if w.binary {
                    let bytes = infer::raw_strings(&labels);
                    out["parameters"] = json!({ "binary_data_size": bytes.len() });
                    tail.extend_from_slice(&bytes);
                } else {
                    out["data"] = json!(labels);
                }
                out
            }
            None => {
                let mut out = json!({ "name": catalog.output, "datatype": "FP32", "shape": [n, rows.ncols()] });
                if w.binary {
                    let bytes = infer::raw_floats(rows);
                    out["parameters"] = json!({ "binary_data_size": bytes.len() });
                    tail.extend_from_slice(&bytes);
                } else {
                    out["data"] = json!(rows.iter().copied().collect::<Vec<f32>>());
                }
                out
            }
        };
        heads.push(out);
    }
    let mut head = json!({ "model_name": model.name, "model_version": model.version, "outputs": heads });
    if let Some(id) = id {
        head["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    let mut resp = if !outputs.iter().any(|w| w.binary) {
        let mut r = Response::new(Body::from(body));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    } else {
        let len = body.len();
        body.extend_from_slice(&tail);
        let mut r = Response::new(Body::from(Bytes::from(body)));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(len));
        r
    };
    resp.extensions_mut().insert(Images(n));
    Ok(resp)
}

/// `POST /v2/models/{name}[/versions/{v}]/infer`: read the body, then parse → validate → run →
/// encode, the parsing and encoding on the blocking pool (see [`super::infer`] for the checks).
pub async fn infer(State(state): State<Arc<AppState>>, Path(path): Path<ModelPath>, req: Request) -> Result<Response, ApiError> {
    // The body is read before anything can be refused: an answer sent while the client is
    // still writing would reach it as a reset connection instead of the message.
    let body = read_body(&state, req).await?;
    let model = state.model(&path)?.clone();
    let st = state.clone();
    let m = model.clone();
    // The body's room in the budget is kept for its floats until they have run.
    let (id, checked, room) = blocking(move || {
        let ReadBody { parts, bytes, room } = body;
        let (request, inputs, outputs) = parse(&parts.headers, &bytes)?;
        let all_binary = request.parameters.binary_data_output.unwrap_or(false);
        let checked = infer::validate(&st.catalog, &m, st.limits.max_queue, inputs, outputs, all_binary)?;
        Ok((request.id, checked, room))
    })
    .await?;
    let outputs = checked.outputs.clone();
    let rows = infer::run(&state, model.target, checked).await?;
    drop(room);
    let st = state.clone();
    blocking(move || encode(&st.catalog, &model, id, &outputs, &rows)).await
}
