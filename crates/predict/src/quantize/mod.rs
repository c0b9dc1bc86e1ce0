//! `predictor quantize`: post-training static int8 quantisation of an exported float32 model,
//! written in Rust on the ONNX protobuf ([`sorbier::onnx`]) and ONNX Runtime — no Python.
//!
//! 1. [`plan`]: what the graph quantises (compute nodes, folded ReLU / ReLU6, data movement),
//!    read from the graph itself, so every architecture the exporter writes is covered;
//! 2. [`calibrate`]: a few hundred images (stratified over an ImageFolder's classes) run
//!    through the float model with its own preprocessing; MinMax or percentile ranges;
//! 3. [`rewrite`]: the QDQ graph — int8 symmetric per-channel weights, uint8 (or int8)
//!    asymmetric activations, int32 biases, scales and zero points as initializers
//!    ([`params`] holds the arithmetic);
//! 4. [`fusion`]: ONNX Runtime's optimised graph is inspected before anything is written, so a
//!    model that would silently run in float is refused, not shipped.
//!
//! The model card gets `precision` `int8` and a [`Quantization`] record (method, images,
//! their fingerprint, what was quantised, the parent's hash); nothing else changes, so
//! `predict`, `evaluate` and ensembles use the int8 file as any other.
//!
//! **Default calibration: MinMax.** On the flowers models (README, "Int8 accuracy") clipping at
//! the 99.999th, 99.99th or 99.9th percentile was never better than MinMax (equal on
//! ResNet-18, equal or worse on ResNet-50), and MinMax needs one pass over the images instead
//! of two, has no parameter to tune, and is what ONNX Runtime's `quantize_static` does by
//! default — the peer the benchmark compares against. With BatchNorm folded and per-channel
//! weights, the activation ranges of these CNNs have few rare outliers, which is where
//! percentile clipping would pay off.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use prost::Message;
use sorbier::export::{model_meta, read_model};
use sorbier::meta::{ModelMeta, Quantization, PRECISION_INT8};
use sorbier::onnx::{ModelProto, StringStringEntryProto};

use crate::output::fingerprint::file_sha256;
use crate::engine::pipeline::PipelineConfig;
use crate::engine::runtime::Runtime;

pub mod calibrate;
pub mod fusion;
pub mod params;
pub mod plan;
pub mod rewrite;

pub use calibrate::{CalibrationSet, Method, Source};
pub use fusion::Fusion;
pub use params::ActivationType;
pub use plan::Plan;
pub use rewrite::{rewrite, Ranges};

/// Calibration images used when `--images` is not given.
pub const DEFAULT_IMAGES: usize = 300;
/// Percentile used by [`Method::Percentile`] when `--percentile` is not given.
pub const DEFAULT_PERCENTILE: f64 = 99.999;

/// What `predictor quantize` does.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The float32 model (`trainer export` output).
    pub model: PathBuf,
    /// Calibration images: an ImageFolder (sampled per class), a competition root holding
    /// `train/`, or a flat folder.
    pub calibrate: PathBuf,
    /// The int8 model to write.
    pub out: PathBuf,
    /// About how many calibration images.
    pub images: usize,
    pub method: Method,
    /// For [`Method::Percentile`]: the share of values kept at each end, in percent.
    pub percentile: f64,
    pub activations: ActivationType,
    /// Seed of the stratified draw.
    pub seed: u64,
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads [None: all cores].
    pub threads: Option<usize>,
    /// Decoding threads [None: all cores].
    pub workers: Option<usize>,
    pub ort_lib: Option<PathBuf>,
    /// Overwrite `out`.
    pub force: bool,
    pub progress: bool,
}

impl QuantizeOptions {
    /// Every setting at its default.
    pub fn new(model: PathBuf, calibrate: PathBuf, out: PathBuf) -> QuantizeOptions {
        QuantizeOptions {
            model,
            calibrate,
            out,
            images: DEFAULT_IMAGES,
            method: Method::Minmax,
            percentile: DEFAULT_PERCENTILE,
            activations: ActivationType::Uint8,
            seed: 0,
            batch_size: 16,
            threads: None,
            workers: None,
            ort_lib: None,
            force: false,
            progress: false,
        }
    }

    /// As recorded in the model card: `minmax` or `percentile 99.999`.
    pub fn method_name(&self) -> String {
        match self.method {
            Method::Minmax => "minmax".into(),
            Method::Percentile => format!("percentile {}", self.percentile),
        }
    }
}

/// What [`quantize`] wrote.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub path: PathBuf,
    pub bytes: u64,
    pub parent_bytes: u64,
    pub card: Quantization,
    /// Operators ONNX Runtime runs for the int8 model.
    pub fusion: Fusion,
    /// Calibrated tensors.
    pub tensors: usize,
    pub calibration_seconds: f64,
}

/// A CPU session for a model held in memory, with every graph optimisation and no
/// spin-waiting (as [`Runtime`] opens the predictor's); `optimized` saves the optimised graph.
pub(crate) fn cpu_session(rt: &Runtime, bytes: &[u8], threads: usize, optimized: Option<&Path>) -> Result<Session> {
    fn build(env: &ort::environment::Environment, bytes: &[u8], threads: usize, optimized: Option<&Path>) -> ort::Result<Session> {
        let mut b = Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::Level3)?.with_intra_op_spinning(false)?;
        if threads > 0 {
            b = b.with_intra_threads(threads)?;
        }
        if let Some(p) = optimized {
            // ONNX Runtime warns that a graph optimised at this level is machine-specific: that
            // is the point here (it is inspected, never shipped).
            b = b.with_optimized_model_path(p)?.with_log_level(ort::logging::LogLevel::Error)?;
        }
        b.commit_from_memory(bytes)
    }
    build(rt.environment(), bytes, threads, optimized).map_err(|e| anyhow!("ONNX Runtime cannot open the model: {e}"))
}

/// The card of the int8 model: the parent's, with precision `int8` and `card` added (other
/// metadata kept).
pub fn with_card(model: &mut ModelProto, meta: &ModelMeta, card: &Quantization) -> Result<()> {
    let mut meta = meta.clone();
    meta.precision = PRECISION_INT8.to_string();
    let mut props = meta.to_props()?;
    props.push(card.to_prop()?);
    let others: Vec<StringStringEntryProto> =
        model.metadata_props.iter().filter(|p| !props.iter().any(|(k, _)| Some(k.as_str()) == p.key.as_deref())).cloned().collect();
    model.metadata_props = props.into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) }).chain(others).collect();
    let doc = model.doc_string.clone().unwrap_or_default();
    model.doc_string = Some(format!(
        "{doc} Quantised to int8 by sorbier {} ({} calibration on {} images; see sorbier.quantization).",
        sorbier::VERSION,
        card.method,
        card.images
    ));
    Ok(())
}

/// Quantises `o.model` into `o.out` (see the module header), loading ONNX Runtime from
/// `o.ort_lib` (or where [`Runtime::load`] looks).
pub fn quantize(o: &QuantizeOptions, log: &dyn Fn(&str)) -> Result<Quantized> {
    let rt = Runtime::load(o.ort_lib.as_deref())?;
    quantize_with(&rt, o, log)
}

/// [`quantize`] with an ONNX Runtime already loaded (a process holds one). `log` hears what was
/// chosen on the way. The output is written only once ONNX Runtime has been seen to run it in
/// int8.
pub fn quantize_with(rt: &Runtime, o: &QuantizeOptions, log: &dyn Fn(&str)) -> Result<Quantized> {
    // Cheap checks first, before calibrating.
    if o.out.exists() && !o.force {
        bail!("{} already exists; pass --force to overwrite it", o.out.display());
    }
    if o.out.exists() && o.out.canonicalize().ok() == o.model.canonicalize().ok() {
        bail!("the output {} is the input model; write the int8 model to another file", o.out.display());
    }
    let parent = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("cannot write {}: folder {} does not exist", o.out.display(), parent.display());
    }
    let model = read_model(&o.model)?;
    let meta = model_meta(&model).with_context(|| format!("model {}", o.model.display()))?;
    match meta.precision.as_str() {
        "float16" => bail!(
            "{} is a float16 model: int8 quantisation starts from float32 weights. Quantise the float32 export \
             instead (`trainer export` without --fp16)",
            o.model.display()
        ),
        PRECISION_INT8 => bail!("{} is already int8; quantise its float32 parent", o.model.display()),
        _ => {}
    }
    let plan = Plan::new(&model).with_context(|| format!("cannot quantise {}", o.model.display()))?;
    if !plan.nodes.iter().any(|n| matches!(n.role, plan::Role::Weighted { .. })) {
        bail!("{} has no convolution or matrix product with constant weights to quantise", o.model.display());
    }
    let set = calibrate::select(&o.calibrate, o.images, o.seed)?;
    log(&format!("calibration: {} images from {} (fingerprint {})", set.paths.len(), set.selection, set.fingerprint));

    let threads = o.threads.unwrap_or_else(sorbier::data::pool::default_threads);
    let workers = o.workers.unwrap_or_else(sorbier::data::pool::default_threads).max(1);
    let source = Source::Images {
        set: &set,
        preprocess: &meta.preprocess,
        pipeline: PipelineConfig { batch_size: o.batch_size.max(1), workers, prefetch: 2 },
        progress: o.progress,
    };
    let tensors = plan.calibrated();
    let start = Instant::now();
    let ranges = calibrate::measure(rt, &model, &tensors, &source, o.method, o.percentile, threads)?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    log(&format!("ranges: {} of {} tensors in {calibration_seconds:.1} s", o.method_name(), tensors.len()));

    let mut q = rewrite(&model, &plan, &ranges, o.activations).with_context(|| format!("cannot quantise {}", o.model.display()))?;
    let card = Quantization {
        method: o.method_name(),
        images: set.paths.len(),
        data_fingerprint: set.fingerprint.clone(),
        selection: set.selection.clone(),
        weights: "int8 symmetric per output channel".into(),
        activations: format!("{} asymmetric per tensor", o.activations.name()),
        nodes: plan.counts(),
        parent_sha256: file_sha256(&o.model)?,
        sorbier_version: sorbier::VERSION.into(),
    };
    with_card(&mut q, &meta, &card)?;
    let bytes = q.encode_to_vec();
    let fusion = fusion::optimized(rt, &bytes)?;
    fusion.check(&card.nodes, &Fusion::of(&model)).with_context(|| format!("refusing to write {}", o.out.display()))?;
    sorbier::run::write_atomic(&o.out, &bytes).with_context(|| format!("cannot write {}", o.out.display()))?;
    let parent_bytes = std::fs::metadata(&o.model).map_or(0, |m| m.len());
    Ok(Quantized { path: o.out.clone(), bytes: bytes.len() as u64, parent_bytes, card, fusion, tensors: tensors.len(), calibration_seconds })
}
