//! Batched ONNX Runtime inference, ensembles, test-time augmentation and submissions: the
//! library behind the `predictor` binary, which links no libtorch.
//!
//! - [`runtime`]: finding `libonnxruntime` at run time, sessions on CPU or CUDA;
//! - [`pipeline`]: decode once, every member's eval transform and TTA variant, on workers;
//! - [`tta`]: flips and quarter turns of the preprocessed tensor;
//! - [`ensemble`]: members, class-list agreement, averaging of logits or probabilities;
//! - [`submit`]: `predictor predict` (submission CSV, top-k, skipped report, saved logits);
//! - [`evaluate`]: `predictor evaluate` on a labelled ImageFolder;
//! - [`score`]: `predictor score` of a submission against a solution (no ONNX Runtime);
//! - [`info`]: `predictor info`, read straight from the ONNX protobuf (no ONNX Runtime);
//! - [`quantize`]: `predictor quantize`, calibrated int8 (QDQ) models written in Rust;
//! - [`shard`]: `predict --shard K/N` and `predictor merge`;
//! - [`blend`]: `predictor blend` of saved logits, without running any model;
//! - [`fingerprint`]: content hashes of model files and image lists.
//! - [`serve`]: `predictor serve`, an Open Inference Protocol server with dynamic batching.
//!
//! Every model describes itself: class names and preprocessing come only from its metadata
//! (the model card written by `trainer export`, see [`sorbier::meta`]).
use std::path::PathBuf;

use sorbier::data::pool::default_threads;

use crate::ensemble::Average;
use crate::runtime::Device;
use crate::tta::Tta;

pub mod blend;
pub mod ensemble;
pub mod evaluate;
pub mod fingerprint;
pub mod info;
pub mod logits;
pub mod pipeline;
pub mod quantize;
pub mod runtime;
pub mod score;
pub mod shard;
pub mod serve;
pub mod submit;
pub mod tta;

pub use ensemble::{Ensemble, Outputs};
pub use runtime::Runtime;


/// Models, how to combine them, and where/how to run them (shared by predict, evaluate and
/// every other command that runs models).
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Exported models (.onnx); more than one is an ensemble.
    pub models: Vec<PathBuf>,
    /// Per-model weights for the average, one per model [None: equal].
    pub weights: Option<Vec<f64>>,
    /// Average raw logits or softmax probabilities across models and TTA variants.
    pub average: Average,
    /// Test-time augmentation, averaged like ensemble members.
    pub tta: Tta,
    pub device: Device,
    /// Images per inference batch.
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads [None: all cores].
    pub threads: Option<usize>,
    /// Decoding/preprocessing threads [None: all cores].
    pub workers: Option<usize>,
    /// ONNX Runtime library (file or folder); else $SORBIER_ORT_LIB, $ORT_DYLIB_PATH, or next to the executable.
    pub ort_lib: Option<PathBuf>,
    /// Show a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl ModelOptions {
    /// One model, every other setting at its default (CPU).
    pub fn new(models: Vec<PathBuf>) -> ModelOptions {
        ModelOptions {
            models,
            weights: None,
            average: Average::Logits,
            tta: Tta::None,
            device: Device::Cpu,
            batch_size: 32,
            threads: None,
            workers: None,
            ort_lib: None,
            progress: false,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(default_threads)
    }

    pub fn pipeline(&self) -> pipeline::PipelineConfig {
        let workers = self.workers.unwrap_or_else(default_threads).max(1);
        pipeline::PipelineConfig { batch_size: self.batch_size.max(1), workers, prefetch: 2 }
    }

    /// Loads ONNX Runtime and opens the models ([`Ensemble::summary`] says what was opened).
    pub fn open(&self) -> anyhow::Result<Ensemble> {
        let rt = Runtime::load(self.ort_lib.as_deref())?;
        Ensemble::open(&rt, &self.models, self.weights.as_deref(), self.average, self.device, self.threads())
    }
}
