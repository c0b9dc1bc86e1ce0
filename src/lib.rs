//! sorbier: fine-tune torchvision-compatible ResNets on a folder of labelled plant photos
//! with libtorch, export them to self-describing ONNX, and predict with ONNX Runtime.
//!
//! Stages, one module each: [`data`] → [`transforms`] → `model` → `train` → [`export`] →
//! `predict` → [`report`]. [`arch`] describes the networks once for both libtorch and ONNX;
//! [`run`] is the run-directory contract between training and export; [`meta`] the model card
//! inside every ONNX file, the only thing the predictor trusts.
pub mod arch;
pub mod data;
pub mod export;
pub mod meta;
pub mod metrics;
pub mod onnx;
pub mod report;
pub mod run;
pub mod transforms;

#[cfg(feature = "train")]
pub mod model;
#[cfg(feature = "train")]
pub mod train;

#[cfg(feature = "predict")]
pub mod predict;

/// The crate version, recorded in run directories and ONNX metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
