//! Native ONNX export: walks `arch::NetSpec` over a run's safetensors weights and writes
//! an inference-optimised graph (BatchNorm folded) with the model card in its metadata.
//!
//! libtorch has no ONNX exporter (`torch.onnx` is Python), so the graph is written here with
//! message types generated from `onnx.proto` ([`crate::onnx`]). Export needs no libtorch: it
//! reads only the run directory (`config.json`, `{best,last}.safetensors`, `{best,last}.json`,
//! see [`crate::run`]). The output is written atomically, so an interrupted or failed export
//! never leaves a half-written `.onnx` behind.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;

use crate::meta::ModelMeta;
use crate::onnx::ModelProto;
use crate::run::{Checkpoint, CheckpointInfo, RunConfig};

pub mod graph;
pub mod weights;

pub use graph::{build_model, fold_bn, precision_name, BATCH_DIM, INPUT, IR_VERSION, OPSET, OUTPUT};
pub use weights::{check_state_dict, load_state_dict, StateDict, Tensor};

/// What `trainer export` does.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Run directory written by `trainer train`.
    pub run_dir: PathBuf,
    /// Which checkpoint of the run to export.
    pub checkpoint: Checkpoint,
    /// Output file [None: models/<run name>.onnx].
    pub output: Option<PathBuf>,
    /// Store weights and compute in float16 (input and output stay float32), for GPU inference.
    pub fp16: bool,
    /// Overwrite the output file if it exists.
    pub force: bool,
}

/// What [`export`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    pub path: PathBuf,
    pub bytes: u64,
    pub meta: ModelMeta,
}

/// The run's name: the last component of its directory (`runs/flowers` → `flowers`).
fn run_name(run_dir: &Path) -> String {
    let resolved = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".to_string())
}

/// Builds the ONNX model of `checkpoint` of the run in `run_dir`: architecture, classes and
/// preprocessing from `config.json`, weights from `<checkpoint>.safetensors` (checked against
/// the architecture, every mismatch listed), metrics from `<checkpoint>.json`.
pub fn export_run(run_dir: &Path, checkpoint: Checkpoint, fp16: bool) -> Result<ModelProto> {
    if !run_dir.is_dir() {
        bail!("run directory {} does not exist", run_dir.display());
    }
    let config = RunConfig::load(run_dir)?;
    let weights_path = checkpoint.weights(run_dir);
    if !weights_path.is_file() {
        bail!(
            "run directory {} has no {} checkpoint ({} is missing){}",
            run_dir.display(),
            checkpoint.name(),
            weights_path.display(),
            if checkpoint == Checkpoint::Ema { ": the run was trained without --model-ema" } else { "" }
        );
    }
    let info = CheckpointInfo::load(&checkpoint.info(run_dir))?;
    let weights = load_state_dict(&weights_path)?;
    let spec = config.arch.spec(config.classes.len());
    check_state_dict(&spec, &weights).with_context(|| {
        format!(
            "{} does not match {} ({}, {} classes)",
            weights_path.display(),
            run_dir.join(crate::run::CONFIG).display(),
            config.arch,
            config.classes.len()
        )
    })?;
    let mut metrics = info.metrics.clone();
    metrics.insert("epoch".to_string(), info.epoch as f64);
    let meta = ModelMeta {
        classes: config.classes.clone(),
        arch: config.arch.name().to_string(),
        preprocess: config.preprocess.clone(),
        metrics,
        data_fingerprint: config.data_fingerprint.clone(),
        sorbier_version: crate::VERSION.to_string(),
        precision: precision_name(fp16).to_string(),
        // `run:best (ema)` when the best checkpoint is the moving average of the weights.
        source: format!("{}:{}{}", run_name(run_dir), checkpoint.name(), if info.ema && checkpoint != Checkpoint::Ema { " (ema)" } else { "" }),
    };
    build_model(&spec, &weights, &meta, fp16)
        .with_context(|| format!("cannot export {}", weights_path.display()))
}

/// Serialises `model` to `path` atomically (temporary file + rename): the path holds either
/// its previous content or the complete model, never a partial file.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    crate::run::write_atomic(path, &bytes).with_context(|| format!("cannot write ONNX model {}", path.display()))
}

/// Reads an ONNX file back into its message types.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ModelProto::decode(bytes.as_slice()).with_context(|| format!("{} is not an ONNX model", path.display()))
}

/// The sorbier model card stored in `model`'s `metadata_props`.
pub fn model_meta(model: &ModelProto) -> Result<ModelMeta> {
    ModelMeta::from_props(
        model.metadata_props.iter().map(|p| (p.key.as_deref().unwrap_or(""), p.value.as_deref().unwrap_or(""))),
    )
}

/// Exports the run's checkpoint to its ONNX file (refusing to overwrite unless `force`).
pub fn export(args: &ExportOptions) -> Result<Exported> {
    let output = match &args.output {
        Some(p) => p.clone(),
        None => {
            let dir = PathBuf::from("models");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(format!("{}.onnx", run_name(&args.run_dir)))
        }
    };
    // Refuse early, before the (possibly long) export, rather than after it.
    if output.exists() && !args.force {
        bail!("{} already exists; pass --force to overwrite it", output.display());
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("cannot write {}: directory {} does not exist", output.display(), parent.display());
    }
    let model = export_run(&args.run_dir, args.checkpoint, args.fp16)?;
    write_model(&model, &output)?;
    let meta = model_meta(&model)?;
    let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    Ok(Exported { path: output, bytes, meta })
}
