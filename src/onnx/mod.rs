//! ONNX in one place: the message types generated at build time from the vendored
//! `proto/onnx.proto` (the file shipped by the `onnx` Python package) with prost + protox, and
//! [`helpers`] — typed access to tensors and attributes that the exporter, the quantiser and
//! `predictor info` all use (tract's `pb_helpers` idea).
mod generated;
pub mod helpers;

pub use generated::*;
