//! Native ONNX export: walks `arch::ResNetSpec` over a run's safetensors weights and writes
//! an inference-optimised graph (BatchNorm folded) with the model card in its metadata.
use anyhow::Result;

/// Export a run's checkpoint to ONNX.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Run directory written by `trainer train`.
    pub run_dir: std::path::PathBuf,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    todo!("{args:?}")
}
