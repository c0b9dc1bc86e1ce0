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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::http::{read_body, ApiError, Images};
use super::models::ServedModel;
use super::AppState;
use crate::engine::ensemble::top_k;

/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `{name}` or `{name}/versions/{version}` of a model route.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

impl AppState {
    /// The model a route names; 404 (with the names served) for an unknown name or version.
    fn model(&self, path: &ModelPath) -> Result<&ServedModel, ApiError> {
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
        if self.shutting_down.load(Ordering::SeqCst) {
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
        "extensions": ["binary_tensor_data", "classification", "model_configuration"],
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

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RequestInput>,
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// One output to send back.
struct Wanted {
    classification: Option<usize>,
    binary: bool,
}

fn flag(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!("parameter {key:?} must be true or false, got {v}"))),
    }
}

/// Appends the numbers of a (possibly nested) JSON array, row-major.
fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flatten_numbers(x, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| ApiError::bad_request(format!("input data holds {n}, not a number")))? as f32);
            Ok(())
        }
        other => Err(ApiError::bad_request(format!("input data must be numbers, found {other}"))),
    }
}

pub async fn infer(State(state): State<Arc<AppState>>, Path(path): Path<ModelPath>, req: Request) -> Result<Response, ApiError> {
    // The body is read before anything can be refused: an answer sent while the client is
    // still writing would reach it as a reset connection instead of the message.
    let (parts, body) = read_body(req, state.limits.max_body).await?;
    let model = state.model(&path)?.clone();
    let header_len = match parts.headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| ApiError::bad_request(format!("{HEADER_LENGTH} must be a byte count, got {v:?}")))?),
    };
    let split = header_len.unwrap_or(body.len());
    if split > body.len() {
        return Err(ApiError::bad_request(format!("{HEADER_LENGTH} is {split} but the body has only {} bytes", body.len())));
    }
    let request: InferRequest = serde_json::from_slice(&body[..split]).map_err(|e| ApiError::bad_request(format!("malformed inference request JSON: {e}")))?;
    let mut binary = &body[split..];

    let (input_name, p) = model.input.clone().ok_or_else(|| ApiError::bad_request(model.no_input.clone().unwrap_or_default()))?;
    let s = state.catalog.crops[p] as i64;
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!("model {:?} takes one input, {input_name:?}; the request has {}", model.name, request.inputs.len())));
    };
    if input.name != input_name {
        return Err(ApiError::bad_request(format!("unknown input {:?}: model {:?} takes {input_name:?}", input.name, model.name)));
    }
    if input.datatype != "FP32" {
        return Err(ApiError::bad_request(format!("input {:?} has datatype {}; the model takes FP32", input.name, input.datatype)));
    }
    if input.shape.len() != 4 || input.shape[0] < 1 || input.shape[1..] != [3, s, s] {
        return Err(ApiError::bad_request(format!(
            "input {:?} has shape {:?}; the model takes [-1, 3, {s}, {s}] (N × 3 × {s} × {s} float32, preprocessed as its model card says)",
            input.name, input.shape
        )));
    }
    let n = input.shape[0] as usize;
    let count = n * 3 * (s * s) as usize;
    let data: Vec<f32> = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| ApiError::bad_request(format!("binary_data_size must be a byte count, got {size}")))? as usize;
            if size != count * 4 {
                return Err(ApiError::bad_request(format!("binary_data_size is {size} bytes; shape {:?} of FP32 needs {}", input.shape, count * 4)));
            }
            if binary.len() < size {
                return Err(ApiError::bad_request(format!("the body holds {} bytes of binary tensor data, binary_data_size says {size}", binary.len())));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            mine.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        None => {
            let v = input.data.as_ref().ok_or_else(|| ApiError::bad_request(format!("input {:?} has neither \"data\" nor binary_data_size", input.name)))?;
            let mut out = Vec::with_capacity(count);
            flatten_numbers(v, &mut out)?;
            if out.len() != count {
                return Err(ApiError::bad_request(format!("input {:?} has {} values; shape {:?} needs {count}", input.name, out.len(), input.shape)));
            }
            out
        }
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!("{} bytes of binary data follow the JSON header that no input claims", binary.len())));
    }
    let c = state.catalog.classes.len();
    let all_binary = flag(&request.parameters, "binary_data_output")?.unwrap_or(false);
    let wanted: Vec<Wanted> = match &request.outputs {
        None => vec![Wanted { classification: None, binary: all_binary }],
        Some(outs) => outs
            .iter()
            .map(|o| {
                if o.name != state.catalog.output {
                    return Err(ApiError::bad_request(format!("unknown output {:?}: model {:?} has {:?}", o.name, model.name, state.catalog.output)));
                }
                let classification = match o.parameters.get("classification") {
                    None => None,
                    Some(k) => match k.as_u64() {
                        Some(k) if (1..=c as u64).contains(&k) => Some(k as usize),
                        _ => return Err(ApiError::bad_request(format!("classification must be a count from 1 to {c}, got {k}"))),
                    },
                };
                Ok(Wanted { classification, binary: flag(&o.parameters, "binary_data")?.unwrap_or(all_binary) })
            })
            .collect::<Result<_, _>>()?,
    };

    let _admitted = state.admit(n)?;
    let items = state.prep.clone().tensors(data, n, p).await?;
    let reply = state.run(model.target, items).await?;
    let rows = reply.rows;

    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for w in &wanted {
        let (datatype, shape, json_data, bytes): (&str, Vec<usize>, Value, Vec<u8>) = match w.classification {
            Some(k) => {
                let classes = &state.catalog.classes;
                let mut labels: Vec<String> = Vec::with_capacity(n * k);
                for row in rows.rows() {
                    let row = row.to_vec();
                    labels.extend(top_k(&row, k).into_iter().map(|i| format!("{}:{i}:{}", row[i], classes[i])));
                }
                let bytes = if w.binary { labels.iter().flat_map(|l| (l.len() as u32).to_le_bytes().into_iter().chain(l.bytes())).collect() } else { Vec::new() };
                ("BYTES", vec![n, k], json!(labels), bytes)
            }
            None => {
                let flat: Vec<f32> = rows.iter().copied().collect();
                let bytes = if w.binary { flat.iter().flat_map(|v| v.to_le_bytes()).collect() } else { Vec::new() };
                ("FP32", vec![n, c], json!(flat), bytes)
            }
        };
        let mut out = json!({ "name": state.catalog.output, "datatype": datatype, "shape": shape });
        if w.binary {
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            tail.extend_from_slice(&bytes);
        } else {
            out["data"] = json_data;
        }
        outputs.push(out);
    }
    let mut head = json!({ "model_name": model.name, "model_version": model.version, "outputs": outputs });
    if let Some(id) = &request.id {
        head["id"] = json!(id);
    }
    let head = serde_json::to_vec(&head).map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    let mut resp = if !wanted.iter().any(|w| w.binary) {
        let mut r = Response::new(Body::from(head));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    } else {
        let len = head.len();
        let mut body = head;
        body.extend_from_slice(&tail);
        let mut r = Response::new(Body::from(Bytes::from(body)));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(len));
        r
    };
    resp.extensions_mut().insert(Images(n));
    Ok(resp)
}
