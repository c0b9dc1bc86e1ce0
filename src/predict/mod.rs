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
//! - [`info`]: `predictor info`, read straight from the ONNX protobuf (no ONNX Runtime).
//!
//! Every model describes itself: class names and preprocessing come only from its metadata
//! (the model card written by `trainer export`, see [`crate::meta`]).
use std::path::PathBuf;

use crate::predict::ensemble::Average;
use crate::predict::runtime::Device;
use crate::predict::tta::Tta;

pub mod ensemble;
pub mod evaluate;
pub mod info;
pub mod logits;
pub mod pipeline;
pub mod runtime;
pub mod score;
pub mod submit;
pub mod tta;

pub use ensemble::{Ensemble, Outputs};
pub use runtime::Runtime;

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Models, how to combine them, and where/how to run them (shared by predict and evaluate).
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// An exported model (.onnx); repeat for an ensemble.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Per-model weights for the average, comma-separated, one per --model [default: equal].
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// Average raw logits or softmax probabilities across models and TTA variants.
    #[arg(long, value_enum, default_value_t = Average::Logits)]
    pub average: Average,
    /// Test-time augmentation, averaged like ensemble members.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    pub tta: Tta,
    /// auto (CUDA if it starts, else CPU), cpu, cuda or cuda:N (an error if CUDA cannot start).
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Images per inference batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Decoding/preprocessing threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// ONNX Runtime library (file or folder); else $SORBIER_ORT_LIB, $ORT_DYLIB_PATH, or next to the executable.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl ModelArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(default_threads)
    }

    pub fn pipeline(&self) -> pipeline::PipelineConfig {
        let workers = self.workers.unwrap_or_else(default_threads).max(1);
        pipeline::PipelineConfig { batch_size: self.batch_size.max(1), workers, prefetch: 2 }
    }

    /// Loads ONNX Runtime and opens the models, printing which device they run on.
    pub fn open(&self) -> anyhow::Result<Ensemble> {
        let rt = Runtime::load(self.ort_lib.as_deref())?;
        let ens = Ensemble::open(&rt, &self.models, self.weights.as_deref(), self.average, self.device, self.threads())?;
        eprintln!(
            "{} model{} ({}), {} classes, device {}{}, ONNX Runtime {}",
            ens.members.len(),
            if ens.members.len() == 1 { "" } else { "s" },
            ens.members.iter().map(|m| format!("{} {}px", m.meta.arch, m.meta.preprocess.crop)).collect::<Vec<_>>().join(", "),
            ens.classes.len(),
            ens.device,
            if self.device == Device::Auto { " (auto)" } else { "" },
            rt.library.display()
        );
        Ok(ens)
    }
}
