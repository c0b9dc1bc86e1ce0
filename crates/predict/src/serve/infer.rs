//! A tensor inference request once its protocol is peeled off — the same for the Open Inference
//! Protocol over HTTP ([`super::oip`]) and over gRPC ([`super::grpc`]): validate, run, and the
//! rows each requested output is made of.
//!
//! Every size the client declares is checked before anything of that size exists: the shape's
//! element count is computed with checked arithmetic (an overflow is a 400), compared with the
//! values or bytes the request really carries (a mismatch is a 400: a declared
//! `[100000000, 3, 112, 112]` with one value allocates nothing), and the image count with what
//! the server admits at once (413) — only then are the bytes turned into floats, which are at
//! most as many as the body held. Non-finite values (NaN, ±inf, or JSON numbers beyond float32)
//! are refused with a 400: a model fed them answers NaN.
use axum::body::Bytes;
use ndarray::Array2;

use super::batcher::Target;
use super::http::ApiError;
use super::models::{Catalog, ServedModel};
use super::AppState;
use crate::engine::ensemble::top_k;

/// One input tensor as a request carries it.
#[derive(Debug)]
pub struct TensorIn {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Where an input's values are.
#[derive(Debug)]
pub enum TensorData {
    /// JSON numbers, flattened row-major, as float32 (one beyond float32's range is ±inf, refused);
    /// at most one per two bytes of the body.
    Numbers(Vec<f32>),
    /// Raw little-endian bytes (the binary tensor extension, gRPC's `raw_input_contents`).
    Raw(Bytes),
    /// Neither.
    Missing,
}

/// One output a request asks for.
#[derive(Clone, Debug)]
pub struct OutputWanted {
    pub name: String,
    /// Top-k labels instead of the tensor (the classification extension).
    pub classification: Option<u64>,
    /// Raw bytes instead of JSON numbers (HTTP only; gRPC answers raw bytes always).
    pub binary: bool,
}

/// An output to send back, checked.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub classification: Option<usize>,
    pub binary: bool,
}

/// A valid request: `n` images for preprocess `p`, their `n × 3 × s × s` floats, and the outputs.
#[derive(Debug)]
pub struct Checked {
    pub n: usize,
    pub p: usize,
    pub data: Vec<f32>,
    pub outputs: Vec<Output>,
}

/// The element count of a `[n, 3, s, s]` tensor, with checked arithmetic.
fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

/// Checks `inputs`/`outputs` against `model` and turns the input into floats; `max_queue` is
/// the most images the server admits at once. `all_binary` is the default of outputs that do
/// not say (and of the single output when `outputs` is empty).
pub fn validate(catalog: &Catalog, model: &ServedModel, max_queue: usize, inputs: Vec<TensorIn>, outputs: Vec<OutputWanted>, all_binary: bool) -> Result<Checked, ApiError> {
    let (input_name, p) = model.input.clone().ok_or_else(|| ApiError::bad_request(model.no_input.clone().unwrap_or_default()))?;
    let s = i64::from(catalog.crops[p]);
    let n_inputs = inputs.len();
    let Ok([input]) = <[TensorIn; 1]>::try_from(inputs) else {
        return Err(ApiError::bad_request(format!("model {:?} takes one input, {input_name:?}; the request has {n_inputs}", model.name)));
    };
    if input.name != input_name {
        return Err(ApiError::bad_request(format!("unknown input {:?}: model {:?} takes {input_name:?}", input.name, model.name)));
    }
    if input.datatype != "FP32" {
        return Err(ApiError::bad_request(format!("input {:?} has datatype {}; the model takes FP32", input.name, input.datatype)));
    }
    let shape = &input.shape;
    if shape.len() != 4 || shape[0] < 1 || shape[1..] != [3, s, s] {
        return Err(ApiError::bad_request(format!(
            "input {:?} has shape {shape:?}; the model takes [-1, 3, {s}, {s}] (N × 3 × {s} × {s} float32, preprocessed as its model card says)",
            input.name
        )));
    }
    let count = elements(shape).ok_or_else(|| ApiError::bad_request(format!("input {:?}: shape {shape:?} has more elements than this machine can count", input.name)))?;
    let n = shape[0] as usize;
    let data = match input.data {
        TensorData::Numbers(values) => {
            if values.len() != count {
                return Err(ApiError::bad_request(format!("input {:?} has {} values; shape {shape:?} needs {count}", input.name, values.len())));
            }
            admissible(n, max_queue)?;
            values
        }
        TensorData::Raw(bytes) => {
            let need = count.checked_mul(4).ok_or_else(|| ApiError::bad_request(format!("input {:?}: shape {shape:?} needs more bytes than this machine can count", input.name)))?;
            if bytes.len() != need {
                return Err(ApiError::bad_request(format!("input {:?} has {} bytes of FP32 data; shape {shape:?} needs {need}", input.name, bytes.len())));
            }
            admissible(n, max_queue)?;
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        TensorData::Missing => return Err(ApiError::bad_request(format!("input {:?} has no data (neither \"data\" nor binary_data_size)", input.name))),
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(format!("input {:?} holds a value that is not a finite float32 ({}) at element {i}: the model would answer NaN", input.name, data[i])));
    }
    let c = catalog.classes.len();
    let outputs = if outputs.is_empty() {
        vec![Output { classification: None, binary: all_binary }]
    } else {
        outputs
            .into_iter()
            .map(|o| {
                if o.name != catalog.output {
                    return Err(ApiError::bad_request(format!("unknown output {:?}: model {:?} has {:?}", o.name, model.name, catalog.output)));
                }
                let classification = match o.classification {
                    None => None,
                    Some(k) if (1..=c as u64).contains(&k) => Some(k as usize),
                    Some(k) => return Err(ApiError::bad_request(format!("classification must be a count from 1 to {c}, got {k}"))),
                };
                Ok(Output { classification, binary: o.binary })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(Checked { n, p, data, outputs })
}

/// 413 for more images than the server ever admits at once.
fn admissible(n: usize, max_queue: usize) -> Result<(), ApiError> {
    if n > max_queue {
        return Err(ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, format!("{n} images in one request, more than the server admits at once ({max_queue}, --max-queue)")));
    }
    Ok(())
}

/// Admits the request's images, splits its tensor into items and runs them on `target`:
/// `n × classes` rows. The images stay admitted until their work is done or dropped, even when
/// the client leaves first.
pub async fn run(state: &AppState, target: Target, checked: Checked) -> Result<Array2<f32>, ApiError> {
    let admitted = state.admit(checked.n)?;
    let items = state.prep.clone().tensors(checked.data, checked.n, checked.p, admitted.ticket()).await?;
    let reply = state.run(target, items, admitted.ticket()).await?;
    admitted.done();
    Ok(reply.rows)
}

/// An output's labels for the classification extension: the top `k` of each row as
/// `"<value>:<index>:<class>"`, row after row.
pub fn labels(rows: &Array2<f32>, k: usize, classes: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(rows.nrows() * k);
    for row in rows.rows() {
        let row = row.to_vec();
        out.extend(top_k(&row, k).into_iter().map(|i| format!("{}:{i}:{}", row[i], classes[i])));
    }
    out
}

/// Tensor data as the protocols send it: raw little-endian floats, and BYTES elements each
/// prefixed by its 4-byte little-endian length.
pub fn raw_floats(rows: &Array2<f32>) -> Vec<u8> {
    rows.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn raw_strings(labels: &[String]) -> Vec<u8> {
    labels.iter().flat_map(|l| (l.len() as u32).to_le_bytes().into_iter().chain(l.bytes())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts_are_checked() {
        assert_eq!(elements(&[2, 3, 64, 64]), Some(24576));
        assert_eq!(elements(&[i64::MAX, 3, 64, 64]), None);
        assert_eq!(elements(&[1 << 40, 1 << 30, 3, 3]), None);
        assert_eq!(elements(&[-1, 3, 64, 64]), None);
        assert_eq!(elements(&[100_000_000, 3, 112, 112]), Some(3_763_200_000_000));
    }
}
