//! ONNX message types generated at build time from the vendored `proto/onnx.proto`
//! (the file shipped by the `onnx` Python package) with prost + protox.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
