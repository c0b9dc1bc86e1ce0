//! sorbier's core: everything the trainer and the predictor share, with neither libtorch nor
//! ONNX Runtime behind it.
//!
//! The workspace is one crate per side (see the README's layout section):
//! - this crate (`sorbier`): [`data`] → [`transforms`] → [`export`] → [`report`], plus
//!   [`arch`] (the networks described once, for libtorch and for ONNX), [`run`] (the
//!   run-directory contract between training and export), [`meta`] (the model card inside
//!   every ONNX file, the only thing the predictor trusts), [`metrics`] and [`onnx`];
//! - `sorbier-train` (`crates/train`): the libtorch model, the training loop and the `trainer`
//!   binary — the only crate that links libtorch;
//! - `sorbier-predict` (`crates/predict`): ONNX Runtime inference and the `predictor` binary,
//!   which no build can link to libtorch because nothing in its dependency graph does.
pub mod arch;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod export;
pub mod meta;
pub mod metrics;
pub mod onnx;
pub mod report;
pub mod run;
pub mod schedule;
pub mod spelling;
pub mod transforms;

/// The crate version, recorded in run directories and ONNX metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
