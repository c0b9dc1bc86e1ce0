//! sorbier's training side, the only crate that links libtorch (through `tch`).
//!
//! [`model`] is the networks of [`sorbier::arch`] on libtorch under their reference
//! implementations' names (weights, ImageNet weights lookup, devices, the C++ shims in
//! `csrc/`); the rest is training: `trainer train` fine-tunes a ResNet or EfficientNet-Lite on an
//! ImageFolder dataset and writes a run directory (see [`sorbier::run`]); `--resume` continues an
//! interrupted run from its last completed epoch with the same result as an uninterrupted one.
//!
//! The recipe follows torchvision's `references/classification/train.py` and timm's
//! `train.py`: [`optim`] (Adam/AdamW/SGD, clipping), [`schedule`] (step, plateau,
//! warmup + cosine), [`loss`] (label smoothing, class weights), the epoch loop in `fit`, and
//! the crash-safe run-directory writes in [`files`].
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::dist::Collective;
use crate::model::autocast::AmpDtype;
use sorbier::arch::Arch;
use sorbier::data::split::SplitSpec;
use sorbier::run::RunConfig;
use sorbier::transforms::{Augment, Preprocess};

pub mod amp;
pub mod dist;
pub mod ema;
pub mod guard;
mod fit;
pub mod interrupt;
pub mod model;
pub mod files;
pub mod loss;
pub mod malloc;
pub mod mixup;
pub mod multi_tensor;
pub mod optim;
/// The learning-rate schedules: torch-free, in the core ([`sorbier::schedule`]).
pub use sorbier::schedule;

pub use fit::{train_run, Log, Output, Trainer};
use ema::EmaConfig;
use loss::ClassWeights;
use mixup::MixupConfig;
use optim::OptimConfig;
use schedule::{ScheduleConfig, ScheduleKind};

/// Full fine-tuning, or feature extraction (frozen backbone and BatchNorm statistics; only
/// `fc` trains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    Full,
    FeatureExtract,
}

sorbier::spelled!(TrainMode, "training mode", [Full, FeatureExtract]);

/// How each epoch's training order is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every training image once, shuffled.
    Shuffle,
    /// With replacement, weight 1/class size (classes come out uniformly).
    Weighted,
}

sorbier::spelled!(Sampling, "sampling", [Shuffle, Weighted]);

/// The validation metric that picks the best checkpoint (and drives `--schedule plateau`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BestMetric {
    Top1,
    Top5,
    MacroAcc,
    Loss,
}

sorbier::spelled!(BestMetric, "metric", [Top1, Top5, MacroAcc, Loss]);

impl BestMetric {
    pub fn maximize(self) -> bool {
        self != BestMetric::Loss
    }
    /// The metric's column in `history.csv` and its name in `best.json` (`macro_acc`; the
    /// flag value is `macro-acc`).
    pub fn column(self) -> &'static str {
        match self {
            BestMetric::Top1 => "top1",
            BestMetric::Top5 => "top5",
            BestMetric::MacroAcc => "macro_acc",
            BestMetric::Loss => "loss",
        }
    }
}

/// Every hyper-parameter not already a field of [`RunConfig`]; stored as its `train` value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub mode: TrainMode,
    /// The weights file the run started from (`--pretrained imagenet` is recorded as the file
    /// it found).
    pub pretrained: Option<PathBuf>,
    /// Learning-rate multiplier of every variable but the classifier's (discriminative
    /// fine-tuning). Absent from runs recorded before it existed: 1.
    #[serde(default = "one")]
    pub backbone_lr_scale: f64,
    /// Stochastic depth rate (the last block's drop probability). Absent from runs recorded
    /// before it existed: 0.
    #[serde(default)]
    pub drop_path: f64,
    pub optimizer: OptimConfig,
    /// Weight decay also on norm parameters and biases.
    pub decay_norm_bias: bool,
    pub schedule: ScheduleConfig,
    pub clip_value: Option<f64>,
    pub clip_norm: Option<f64>,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    pub effective_beta: f64,
    pub sampling: Sampling,
    pub samples_multiplier: f64,
    pub best_metric: BestMetric,
    pub max_steps_per_epoch: Option<usize>,
    pub amp: bool,
    /// Absent from runs recorded before bf16 was supported: fp16.
    #[serde(default)]
    pub amp_dtype: AmpDtype,
    /// Channels-last weights and batches during training (checkpoints stay in the standard
    /// layout). Absent from runs recorded before it existed: off.
    #[serde(default)]
    pub channels_last: bool,
    /// An exponential moving average of the weights (timm's ModelEmaV3). Absent from runs
    /// recorded before it existed: off.
    #[serde(default)]
    pub model_ema: Option<EmaConfig>,
    /// Mixup / CutMix with soft targets (timm's Mixup). Absent from runs recorded before it
    /// existed: off.
    #[serde(default)]
    pub mixup: Option<MixupConfig>,
    /// Training drops a final incomplete batch (a batch of one breaks BatchNorm).
    pub drop_last: bool,
    /// Runtime choices of the first run, for the record (resume may change them).
    pub runtime: Runtime,
}

fn one() -> f64 {
    1.0
}

/// Settings that do not change the result (or, for threads, only through float reordering).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub workers: usize,
    pub threads: Option<usize>,
    pub device: String,
    /// Processes training together (data-parallel ranks). Absent from runs recorded before
    /// distributed training: 1.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

impl TrainSettings {
    pub fn from_config(cfg: &RunConfig) -> Result<TrainSettings> {
        serde_json::from_value(cfg.train.clone()).context("config.json: the `train` settings are not valid")
    }
}

/// Epochs of a new run when --epochs is not given.
pub const DEFAULT_EPOCHS: usize = 15;


/// Settings that cannot work without a validation side.
pub fn check_split(spec: &SplitSpec, settings: &TrainSettings) -> Result<()> {
    if !spec.has_validation() && settings.schedule.kind == ScheduleKind::Plateau {
        bail!("--schedule plateau follows a validation metric, and --val-fraction 0 leaves none: use step, cosine or none");
    }
    Ok(())
}

/// True when `dir` is missing or an empty directory.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// A new run: where, on what data, and everything that decides its result.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// Run directory to create (must not exist or be empty).
    pub out: PathBuf,
    /// Dataset: `DATA_DIR/<class>/*.jpg`, or a competition root holding `train/<class>/`.
    pub data_dir: PathBuf,
    pub arch: Arch,
    pub dropout: f64,
    pub preprocess: Preprocess,
    pub augment: Augment,
    pub seed: u64,
    pub split: SplitSpec,
    pub settings: TrainSettings,
}

/// What may change when a run is resumed: a larger number of epochs, the data folder's
/// location, and the runtime (none of which changes the result).
#[derive(Clone, Debug, Default)]
pub struct ResumeOverrides {
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub workers: Option<usize>,
    pub threads: Option<usize>,
    pub device: Option<String>,
}

impl Runtime {
    /// The runtime from explicit choices, else `recorded` (a resumed run's), else defaults.
    pub fn choose(workers: Option<usize>, threads: Option<usize>, device: Option<String>, recorded: Option<&Runtime>) -> Runtime {
        Runtime {
            workers: workers.or(recorded.map(|r| r.workers)).unwrap_or_else(sorbier::data::pool::default_threads).max(1),
            threads: threads.or(recorded.and_then(|r| r.threads)),
            device: device.or(recorded.map(|r| r.device.clone())).unwrap_or_else(|| "auto".into()),
            world_size: 1,
        }
    }
}

/// `trainer train`: creates the run directory and trains it (with several ranks, rank 0
/// creates it and the others wait for it).
pub fn start(run: &NewRun, out: Output, comm: &Collective) -> Result<()> {
    if comm.leads() && !is_empty_dir(&run.out)? {
        bail!("{} already exists and is not empty: use --resume {} or choose another --out", run.out.display(), run.out.display());
    }
    let mut settings = run.settings.clone();
    settings.runtime.world_size = comm.world();
    check_split(&run.split, &settings)?;
    let root = sorbier::data::scan::resolve_train_dir(&run.data_dir);
    let ds = sorbier::data::Dataset::scan(&root)?;
    let cfg = RunConfig {
        sorbier_version: sorbier::VERSION.to_string(),
        arch: run.arch,
        classes: ds.classes.clone(),
        dropout: run.dropout,
        preprocess: run.preprocess.clone(),
        augment: run.augment.clone(),
        seed: run.seed,
        split: run.split.clone(),
        data_root: root,
        data_fingerprint: ds.fingerprint()?,
        train: serde_json::to_value(&settings)?,
    };
    if comm.leads() {
        std::fs::create_dir_all(&run.out).with_context(|| format!("cannot create {}", run.out.display()))?;
        cfg.save(&run.out)?;
    }
    comm.barrier()?;
    train_run(&run.out, &cfg, &settings, &settings.runtime, false, out, comm)
}

/// `trainer train --resume DIR`: continues the run in `dir` from its last completed epoch with
/// the settings of its `config.json`.
pub fn resume(dir: &Path, with: &ResumeOverrides, out: Output, comm: &Collective) -> Result<()> {
    let log = out.log.clone();
    let mut cfg = RunConfig::load(dir).with_context(|| format!("--resume {}", dir.display()))?;
    let mut settings = TrainSettings::from_config(&cfg)?;
    log.warn(&format!(
        "resuming {}: settings from its config.json (command-line hyper-parameters other than --epochs are ignored)",
        dir.display()
    ));
    let wanted_epochs = with.epochs.unwrap_or(settings.epochs);
    if wanted_epochs < settings.epochs {
        log.warn(&format!(
            "--epochs {} is below the run's {}; keeping {} (epochs can only be raised)",
            wanted_epochs, settings.epochs, settings.epochs
        ));
    } else if wanted_epochs > settings.epochs {
        if settings.schedule.kind == ScheduleKind::Cosine {
            log.warn(&format!("warning: the cosine schedule is re-stretched to {wanted_epochs} epochs from here on"));
        }
        settings.epochs = wanted_epochs;
    }
    let mut runtime = Runtime::choose(with.workers, with.threads, with.device.clone(), Some(&settings.runtime));
    runtime.world_size = comm.world();
    if runtime.world_size != settings.runtime.world_size {
        // Each epoch is committed whole, so the next one can be dealt to any number of ranks.
        log.warn(&format!(
            "resuming a run recorded with {} rank(s) on {}: a step now takes {} × {} images (it took {}), so the remaining epochs differ from an uninterrupted run; the learning rate is not rescaled",
            settings.runtime.world_size,
            runtime.world_size,
            runtime.world_size,
            settings.batch_size,
            settings.runtime.world_size * settings.batch_size,
        ));
    }
    if let Some(d) = &with.data_dir {
        cfg.data_root = sorbier::data::scan::resolve_train_dir(d);
    }
    cfg.train = serde_json::to_value(&settings)?;
    train_run(dir, &cfg, &settings, &runtime, true, out, comm)
}

#[cfg(test)]
mod torch_parity;
