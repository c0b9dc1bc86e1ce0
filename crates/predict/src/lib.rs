//! Batched ONNX Runtime inference, ensembles, test-time augmentation and submissions: the
//! library behind the `predictor` binary, which links no libtorch.
//!
//! Layers, each using only those above it in this list:
//! - [`engine`]: ONNX Runtime sessions on CPU or CUDA, the decode/preprocess pipeline, TTA,
//!   ensembles and how their outputs are averaged;
//! - [`output`]: the files the predictor writes — submissions, saved logits with their shard
//!   record, fingerprints;
//! - [`commands`]: `predict`, `evaluate`, `score`, `info`, `merge`, `blend`;
//! - [`quantize`]: `predictor quantize`, calibrated int8 (QDQ) models written in Rust;
//! - [`serve`]: `predictor serve`, an Open Inference Protocol server with dynamic batching.
//!
//! Every model describes itself: class names and preprocessing come only from its metadata
//! (the model card written by `trainer export`, see [`sorbier::meta`]).
pub mod commands;
pub mod engine;
pub mod output;
pub mod quantize;
pub mod serve;

pub use engine::{Ensemble, ModelOptions, Outputs, Runtime};
