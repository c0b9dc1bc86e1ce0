//! The inference engine: ONNX Runtime sessions ([`runtime`]), decoding and preprocessing on
//! workers ([`pipeline`]), test-time augmentation ([`tta`]) and ensembles that average their
//! members' logits or probabilities ([`ensemble`]). Everything above it — the offline
//! commands and the server — runs models only through [`ModelOptions`] and [`Ensemble`].
use std::path::PathBuf;

use sorbier::data::pool::default_threads;

pub mod ensemble;
pub mod pipeline;
pub mod runtime;
pub mod tta;

pub use ensemble::{Average, Ensemble, Outputs};
pub use runtime::{Device, Runtime};
pub use tta::Tta;

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
