//! The epoch loop as a [`Trainer`] with named steps — [`Trainer::set_up`] (device, data,
//! split, model, optimiser), [`Trainer::restore`] (resume), [`Trainer::train_epoch`],
//! [`Trainer::validate`] and [`Trainer::commit`] (best/last checkpoints) — in the shape of
//! torchvision `references/classification/train.py`'s `train_one_epoch`/`evaluate`, with
//! timm-style checkpointing. [`Trainer::fit`] runs them in order.
//!
//! Without a validation side (`--val-fraction 0`, a final fit on every image) nothing picks a
//! best epoch: `best.*` is the last epoch, the `.json` infos hold the training loss and
//! accuracy, the history's validation columns are NaN, and no confusion matrix is written.
//!
//! Reproducibility: every random stream of epoch `e` is seeded from `(seed, e)`: the sampling
//! order, the augmentations (the loader's seed and each item's position in the order) and
//! libtorch's generator (dropout; re-seeded at each step from `(seed, e, step)`). Together
//! with the weights, BatchNorm statistics, optimiser and schedule state saved after each epoch
//! — or, when a signal stops the run mid-epoch ([`crate::interrupt`]), after the step it was
//! in, with the epoch's running totals — this makes `--resume` continue exactly as an
//! uninterrupted run would (bit for bit on CPU with the same thread count).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::ema::ModelEma;
use super::files::{
    self, Best, Commit, EpochProgress, HistoryRow, ResumeState, StoppedState, BEST_CONFUSION, BEST_PER_CLASS, LAST_STATE_JSON, LAST_STATE_TENSORS, STOPPED_EMA,
    STOPPED_JSON, STOPPED_TENSORS, STOPPED_WEIGHTS,
};
use super::mixup;
use super::interrupt::{Interrupted, Interrupter};
use super::amp::LossScaler;
use super::dist::{self, Collective};
use super::guard::guarded;
use super::loss;
use super::optim::{self, Optimizer};
use super::schedule::LrSchedule;
use super::{Runtime, Sampling, TrainMode, TrainSettings};
use sorbier::arch::Family;
use sorbier::data::split::{self, SplitSpec};
use sorbier::data::{sampler, Batch, Dataset, Loader, LoaderConfig, Mode};
use sorbier::metrics::{Metrics, MetricsAccumulator};
use crate::model::autocast::{autocast, AmpDtype};
use crate::model::{self, Net};
use sorbier::run::{Checkpoint, CheckpointInfo, RunConfig, HISTORY};

/// Largest share of an epoch's images that may fail to load before training stops.
const MAX_FAILED_FRACTION: f64 = 0.01;

/// A 64-bit mix (splitmix64) so that nearby `(seed, epoch)` pairs give unrelated streams.
pub fn mix(seed: u64, epoch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn describe(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

/// Counts images that failed to load; errors out past [`MAX_FAILED_FRACTION`] of an epoch.
struct Failures {
    count: usize,
    limit: usize,
    what: &'static str,
}

impl Failures {
    fn new(epoch_images: usize, what: &'static str) -> Self {
        Failures { count: 0, limit: (epoch_images as f64 * MAX_FAILED_FRACTION).floor() as usize, what }
    }

    fn note(&mut self, batch: &Batch, log: &dyn Log) -> Result<()> {
        if batch.failed.is_empty() {
            return Ok(());
        }
        self.count += batch.failed.len();
        let list: Vec<&str> = batch.failed.iter().map(|(_, e)| e.as_str()).collect();
        log.warn(&format!("warning: {} {} image(s) could not be loaded and were left out: {}", batch.failed.len(), self.what, list.join("; ")));
        if self.count > self.limit {
            bail!(
                "{} {} images failed to load this epoch, more than {:.0}% ({}); fix or remove them",
                self.count,
                self.what,
                MAX_FAILED_FRACTION * 100.0,
                self.limit
            );
        }
        Ok(())
    }
}

/// A batch as an N×3×S×S tensor on `device`, in channels-last layout when asked (converted
/// on the device, where it is cheapest).
fn images_tensor(batch: &Batch, device: Device, channels_last: bool) -> Result<Tensor> {
    let n = batch.len() as i64;
    let s = batch.size as i64;
    let x = Tensor::from_slice(&batch.images).view([n, 3, s, s]).to_device(device);
    if channels_last {
        model::memory_format::channels_last(&x)
    } else {
        Ok(x)
    }
}

/// Float32 logits of `model`, under autocast when mixed precision is on.
fn forward(model: &Net, x: &Tensor, train: bool, device: Device, amp: Option<AmpDtype>) -> Result<Tensor> {
    match amp {
        Some(dtype) => Ok(autocast(device, dtype, || model.forward_t(x, train))?.to_kind(Kind::Float)),
        None => Ok(model.forward_t(x, train)),
    }
}

/// The validation pass: metrics and the confusion matrix.
#[allow(clippy::too_many_arguments)]
fn evaluate(model: &Net, loader: Loader, classes: usize, device: Device, amp: Option<AmpDtype>, channels_last: bool, images: usize, log: &dyn Log) -> Result<MetricsAccumulator> {
    let mut acc = MetricsAccumulator::new(classes);
    let mut failures = Failures::new(images, "validation");
    for batch in loader {
        let batch = batch?;
        failures.note(&batch, log)?;
        if batch.is_empty() {
            continue;
        }
        let x = images_tensor(&batch, device, channels_last)?;
        let logits = tch::no_grad(|| forward(model, &x, false, device, amp))?;
        let logits = logits.to_device(Device::Cpu).contiguous().view([-1]);
        let v = Vec::<f32>::try_from(&logits).context("cannot read validation logits")?;
        acc.push_i64(&v, &batch.labels)?;
    }
    Ok(acc)
}

fn metric_value(m: &Metrics, which: super::BestMetric) -> f64 {
    match which {
        super::BestMetric::Top1 => m.top1,
        super::BestMetric::Top5 => m.top5,
        super::BestMetric::MacroAcc => m.macro_acc,
        super::BestMetric::Loss => m.loss.unwrap_or(f64::NAN),
    }
}

/// Checkpoint info without validation: the epoch's training numbers, under names that cannot
/// be mistaken for validation metrics (and never NaN, which JSON cannot hold).
fn train_info(epoch: usize, train_loss: f64, train_acc: f64) -> CheckpointInfo {
    let metrics = [("train_loss".to_string(), train_loss), ("train_acc".to_string(), train_acc)].into_iter().filter(|(_, v)| v.is_finite()).collect();
    CheckpointInfo { epoch, metrics, ema: false }
}

fn info(epoch: usize, m: &Metrics) -> CheckpointInfo {
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".to_string(), m.top1);
    metrics.insert("top5".to_string(), m.top5);
    metrics.insert("macro_acc".to_string(), m.macro_acc);
    metrics.insert("loss".to_string(), m.loss.unwrap_or(f64::NAN));
    CheckpointInfo { epoch, metrics, ema: false }
}

/// Where the loop's messages go: `info` for the one-line-per-epoch summaries and set-up facts
/// (the binary prints them on stdout), `warn` for what went wrong but did not stop training
/// (stderr).
pub trait Log: Send + Sync {
    fn info(&self, msg: &str);
    fn warn(&self, msg: &str);
}

/// What the loop shows beside the run directory's files.
#[derive(Clone)]
pub struct Output {
    /// Progress bars (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Redraw the training report pictures after each epoch.
    pub report: bool,
    pub log: Arc<dyn Log>,
    /// Asked between steps whether to stop (SIGINT/SIGTERM); `None`: never stop early.
    pub interrupter: Option<Interrupter>,
}

/// The data side of a run: every image of the dataset, the split, and the training side's
/// labels and class sizes.
struct Data {
    paths: Arc<[PathBuf]>,
    labels: Arc<[i64]>,
    train: Vec<usize>,
    val: Vec<usize>,
    train_labels: Vec<usize>,
    train_sizes: Vec<usize>,
}

/// What one training epoch measured.
pub struct EpochTrain {
    pub lr: f64,
    pub loss: f64,
    pub acc: f64,
    pub images: usize,
    pub seconds: f64,
}

/// The validation side's accumulated confusion and its metrics.
pub type Validation = (MetricsAccumulator, Metrics);

/// An epoch's validation: the trained weights, and their moving average with `--model-ema`.
#[derive(Default)]
pub struct Validations {
    pub raw: Option<Validation>,
    pub ema: Option<Validation>,
}

/// The stream of the mixup/CutMix draws, apart from the others derived from `(seed, epoch, step)`.
const MIXUP_STREAM: u64 = 0x6d69_7875_705f_6375;

/// A run being trained: the model, its optimiser and schedule, and the loop's state.
pub struct Trainer<'a> {
    dir: PathBuf,
    cfg: &'a RunConfig,
    s: &'a TrainSettings,
    rt: &'a Runtime,
    out: Output,
    device: Device,
    amp: Option<AmpDtype>,
    data: Data,
    vs: nn::VarStore,
    net: Net,
    opt: Optimizer,
    schedule: LrSchedule,
    scaler: Option<LossScaler>,
    class_weight: Option<Tensor>,
    epoch_samples: usize,
    steps_per_epoch: usize,
    /// Completed epochs (the next epoch to train, 0-based).
    epoch: usize,
    global_step: u64,
    best: Option<Best>,
    history: Vec<HistoryRow>,
    /// Where the next epoch starts: step 0, or where a stopped run left it.
    progress: EpochProgress,
    /// The other ranks of a data-parallel run (or none), and the BatchNorm buffers rank 0
    /// broadcasts before each forward pass.
    comm: &'a Collective,
    buffers: Vec<Tensor>,
    /// The moving average of the weights (`--model-ema`) and its BatchNorm buffers, which
    /// rank 0 broadcasts before validating it.
    ema: Option<ModelEma>,
    ema_buffers: Vec<Tensor>,
}

/// Trains the run in `dir` (whose `config.json` is `cfg`): a new run from epoch 1, or with
/// `resume` from the epoch after the last completed one.
pub fn train_run(dir: &Path, cfg: &RunConfig, s: &TrainSettings, rt: &Runtime, resume: bool, out: Output, comm: &Collective) -> Result<()> {
    let mut trainer = Trainer::set_up(dir, cfg, s, rt, resume, out, comm)?;
    if resume && !trainer.restore()? {
        return Ok(());
    }
    // Every rank starts from rank 0's weights and buffers, as DDP's constructor does.
    comm.broadcast(&dist::variables(&trainer.vs, |_| true))?;
    if let Some(e) = &trainer.ema {
        comm.broadcast(&dist::variables(&e.vs, |_| true))?;
    }
    trainer.fit()?;
    // No rank reports success before rank 0 has committed the last epoch.
    comm.barrier()
}

impl<'a> Trainer<'a> {
    /// Device and precision, crash recovery of the run directory, the dataset and its split,
    /// the model (seeded, then pretrained weights for a new run), the optimiser and schedule:
    /// the steps below, in that order.
    #[allow(clippy::too_many_arguments)]
    pub fn set_up(dir: &Path, cfg: &'a RunConfig, s: &'a TrainSettings, rt: &'a Runtime, resume: bool, out: Output, comm: &'a Collective) -> Result<Trainer<'a>> {
        let log = out.log.clone();
        if let Some(t) = rt.threads {
            tch::set_num_threads(t as i32);
        }
        super::check_split(&cfg.split, s)?;
        let (device, amp) = Self::choose_device(cfg.arch.family(), s, rt, &*log)?;
        if resume && comm.leads() {
            if let Some(note) = files::recover(dir)? {
                log.warn(&format!("{}: {note}", dir.display()));
            }
        }
        comm.barrier()?;
        // Killed before the first epoch completed: nothing to continue, start from the beginning.
        let resume = resume && {
            let has_state = dir.join(LAST_STATE_JSON).exists() || dir.join(STOPPED_JSON).exists();
            if !has_state {
                log.warn(&format!("{}: no completed epoch yet; starting from epoch 1", dir.display()));
            }
            has_state
        };
        let data = Self::load_data(cfg, s, resume, &*log)?;

        let (vs, net) = Self::build_model(cfg, s, device, resume, &*log)?;
        let opt = Self::build_optimizer(&vs, &net, s)?;
        // The average starts as a copy of the model (a resumed run loads its own in `restore`).
        let ema = match s.model_ema {
            Some(c) => Some(ModelEma::new(c, &vs, net.spec(), device, s.channels_last)?),
            None => None,
        };
        let ema_buffers = ema.as_ref().map(|e| comm.replicated_buffers(&e.vs)).unwrap_or_default();

        let epoch_samples = match s.sampling {
            Sampling::Weighted => sampler::num_samples(data.train.len(), s.samples_multiplier),
            Sampling::Shuffle => data.train.len(),
        };
        // Each rank's share of the epoch, as DistributedSampler deals it (padded to equal counts).
        let rank_samples = epoch_samples.div_ceil(comm.world());
        let mut steps_per_epoch = if s.drop_last { rank_samples / s.batch_size } else { rank_samples.div_ceil(s.batch_size) };
        if let Some(m) = s.max_steps_per_epoch {
            steps_per_epoch = steps_per_epoch.min(m);
        }
        if steps_per_epoch == 0 {
            bail!("an epoch of {rank_samples} training images per rank does not fill one batch of {}", s.batch_size);
        }
        let schedule = LrSchedule::new(s.schedule.clone(), s.epochs, steps_per_epoch, s.best_metric.maximize());
        let class_weight = loss::class_weights(s.class_weights, &data.train_sizes, s.effective_beta)
            .map(|w| Tensor::from_slice(&w.iter().map(|&x| x as f32).collect::<Vec<f32>>()).to_device(device));
        let buffers = comm.replicated_buffers(&vs);
        Ok(Trainer {
            dir: dir.to_path_buf(),
            cfg,
            s,
            rt,
            out,
            device,
            amp,
            data,
            vs,
            net,
            opt,
            schedule,
            scaler: (amp == Some(AmpDtype::Fp16)).then(LossScaler::default),
            class_weight,
            epoch_samples,
            steps_per_epoch,
            epoch: 0,
            global_step: 0,
            best: None,
            history: Vec::new(),
            progress: EpochProgress::default(),
            buffers,
            comm,
            ema,
            ema_buffers,
        })
    }

    /// The device and the mixed precision that will really run there — fp16 autocast with
    /// loss scaling on CUDA; bf16 on CUDA or CPU, without scaling — said in the log with
    /// advice for this hardware.
    fn choose_device(family: Family, s: &TrainSettings, rt: &Runtime, log: &dyn Log) -> Result<(Device, Option<AmpDtype>)> {
        let device = model::select_device(&rt.device)?;
        let amp = match (s.amp, s.amp_dtype) {
            (false, _) => None,
            (true, AmpDtype::Fp16) if !device.is_cuda() => {
                log.warn("fp16 mixed precision (--amp) needs CUDA; training in fp32 (--amp-dtype bf16 also runs on CPU)");
                None
            }
            (true, dtype) => Some(dtype),
        };
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        log.info(&format!(
            "device {}{}{}, {} loader workers",
            describe(device),
            amp.map(|d| format!(" ({d} autocast)")).unwrap_or_default(),
            if s.channels_last { " channels-last" } else { "" },
            rt.workers
        ));
        if let Some(advice) = model::precision_advice(family, device, amp, s.channels_last, model::cpu_has_native_bf16()) {
            log.warn(&advice);
        }
        Ok((device, amp))
    }

    /// The dataset (checked against the run's classes, and on resume its fingerprint) and the
    /// run's split.
    fn load_data(cfg: &RunConfig, s: &TrainSettings, resume: bool, log: &dyn Log) -> Result<Data> {
        let ds = Dataset::scan(&cfg.data_root)?;
        if ds.classes != cfg.classes {
            bail!("the classes in {} differ from the run's config.json ({} vs {} classes)", cfg.data_root.display(), ds.classes.len(), cfg.classes.len());
        }
        if resume {
            let fp = ds.fingerprint()?;
            if fp != cfg.data_fingerprint {
                bail!(
                    "the data in {} changed since the run started (fingerprint {fp}, recorded {}): resuming would train on a different split",
                    cfg.data_root.display(),
                    cfg.data_fingerprint
                );
            }
        }
        let nc = cfg.classes.len();
        let labels = ds.labels();
        let split = split::split(&labels, nc, &cfg.split)?;
        for &c in &split.singletons {
            log.warn(&format!("warning: class {:?} has a single image: it is trained on but never validated", cfg.classes[c]));
        }
        if let SplitSpec::Kfold { folds, .. } = cfg.split {
            for c in split::classes_below(&labels, nc, folds) {
                log.warn(&format!("warning: class {:?} has fewer than {folds} images: some folds do not validate it", cfg.classes[c]));
            }
        }
        let train_labels: Vec<usize> = split.train.iter().map(|&i| labels[i]).collect();
        let mut train_sizes = vec![0usize; nc];
        for &l in &train_labels {
            train_sizes[l] += 1;
        }
        if cfg.split.has_validation() {
            log.info(&format!("{}: {} classes, {} training and {} validation images", cfg.data_root.display(), nc, split.train.len(), split.val.len()));
        } else {
            log.info(&format!(
                "{}: {} classes, {} training images, no validation split (--val-fraction 0): best.safetensors is the last epoch{}, --best-metric {} is not used",
                cfg.data_root.display(),
                nc,
                split.train.len(),
                if s.model_ema.is_some() { "'s moving average of the weights" } else { "" },
                s.best_metric.column()
            ));
        }
        Ok(Data {
            paths: ds.paths().into(),
            labels: labels.iter().map(|&l| l as i64).collect(),
            train: split.train,
            val: split.val,
            train_labels,
            train_sizes,
        })
    }

    /// The model, initialised from the run's seed, then (new runs) overwritten by the
    /// pretrained weights; frozen for feature extraction, NHWC when asked.
    fn build_model(cfg: &RunConfig, s: &TrainSettings, device: Device, resume: bool, log: &dyn Log) -> Result<(nn::VarStore, Net)> {
        tch::manual_seed(cfg.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let spec = cfg.arch.spec(cfg.classes.len());
        let mut net = Net::new(&vs.root(), &spec, cfg.dropout).with_drop_path(s.drop_path);
        if !resume {
            match &s.pretrained {
                Some(p) => log.info(&model::load_weights(&mut vs, p, &spec, true)?.summary()),
                None => log.warn(&format!("warning: no --pretrained weights: {} starts from random initialisation; accuracy will suffer", cfg.arch)),
            }
        }
        if s.mode == TrainMode::FeatureExtract {
            model::freeze_backbone(&vs, &spec);
            net.set_frozen_backbone(true);
        }
        if s.channels_last {
            model::memory_format::vars_to_channels_last(&vs)?;
        }
        Ok((vs, net))
    }

    /// The optimiser over the trainable variables in name order: weight decay on matrices
    /// and kernels (and on norms and biases with `decay_norm_bias`), the backbone's learning
    /// rate scaled by `backbone_lr_scale` against the new classifier's.
    fn build_optimizer(vs: &nn::VarStore, net: &Net, s: &TrainSettings) -> Result<Optimizer> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars.into_iter().map(|(n, v)| {
            let decay = s.decay_norm_bias || v.dim() > 1;
            (n, v, decay)
        });
        let mut opt = Optimizer::new(s.optimizer.clone(), params.collect())?;
        let spec = net.spec();
        opt.set_lr_scales(|name| if spec.is_classifier(name) { 1.0 } else { s.backbone_lr_scale })?;
        Ok(opt)
    }

    /// Resume: the last committed epoch's weights, optimiser, schedule, loss scale, best epoch
    /// and history. False when the run already has every epoch asked for.
    pub fn restore(&mut self) -> Result<bool> {
        let dir = self.dir.clone();
        let last = if dir.join(LAST_STATE_JSON).exists() { Some(ResumeState::load(&dir)?) } else { None };
        let stopped = StoppedState::load(&dir, last.as_ref().map_or(0, |st| st.epoch))?;
        let (st, weights, tensors, ema_weights) = match (stopped, last) {
            (Some(stop), _) => {
                self.progress = stop.progress;
                (stop.state, dir.join(STOPPED_WEIGHTS), dir.join(STOPPED_TENSORS), dir.join(STOPPED_EMA))
            }
            (None, Some(st)) => (st, Checkpoint::Last.weights(&dir), dir.join(LAST_STATE_TENSORS), Checkpoint::Ema.weights(&dir)),
            (None, None) => return Ok(true), // killed before its first epoch: set_up already starts over
        };
        let spec = self.cfg.arch.spec(self.cfg.classes.len());
        model::load_weights(&mut self.vs, &weights, &spec, false)?;
        if let Some(e) = self.ema.as_mut() {
            if !ema_weights.exists() {
                bail!("{}: the run keeps a moving average of its weights (--model-ema) but {} is missing", dir.display(), ema_weights.display());
            }
            model::load_weights(&mut e.vs, &ema_weights, &spec, false).context("the moving average of the weights")?;
        }
        let loaded = Tensor::read_safetensors(&tensors).with_context(|| format!("cannot read {}", tensors.display()))?;
        self.opt.load_state(loaded, &st.optimizer_steps).with_context(|| format!("{}", tensors.display()))?;
        self.schedule.state = st.schedule.state;
        self.best = st.best;
        self.epoch = st.epoch;
        self.global_step = st.global_step;
        if let Some(sc) = self.scaler.as_mut().filter(|_| st.loss_scale > 1.0) {
            sc.scale = st.loss_scale;
            sc.growth_tracker = st.amp_growth_tracker;
        }
        let mut history = if st.epoch > 0 { files::read_history(&dir.join(HISTORY))? } else { Vec::new() };
        history.retain(|r| r.epoch <= st.epoch);
        if history.len() != st.epoch {
            bail!("{}: history.csv has {} rows for {} completed epochs", dir.display(), history.len(), st.epoch);
        }
        self.history = history;
        if self.comm.leads() {
            self.cfg.save(&dir)?;
        }
        let log = &self.out.log;
        if self.epoch >= self.s.epochs {
            log.info(&format!("{} already completed {} of {} epochs; raise --epochs to train longer", dir.display(), self.epoch, self.s.epochs));
            return Ok(false);
        }
        if self.progress.step > 0 {
            log.info(&format!("resuming at step {} of epoch {} of {}", self.progress.step + 1, self.epoch + 1, self.s.epochs));
        } else {
            log.info(&format!("resuming after epoch {} of {}", self.epoch, self.s.epochs));
        }
        Ok(true)
    }

    /// The signal that asked the run to stop, if one did.
    /// Every rank of a data-parallel run agrees (one tiny allreduce), so all stop after the
    /// same step; a rank that got no signal itself reports SIGTERM, what its launcher sends.
    fn stop_requested(&self) -> Result<Option<i32>> {
        let local = self.out.interrupter.and_then(|i| i.requested());
        Ok(self.comm.any(local.is_some())?.then(|| local.unwrap_or(libc::SIGTERM)))
    }

    /// What `--resume` needs besides the tensors, with `completed` epochs done.
    fn resume_state(&self, completed: usize) -> ResumeState {
        ResumeState {
            sorbier_version: sorbier::VERSION.to_string(),
            epoch: completed,
            global_step: self.global_step,
            optimizer_steps: self.opt.steps(),
            schedule: self.schedule.clone(),
            best: self.best.clone(),
            seed: self.cfg.seed,
            loss_scale: self.scaler.as_ref().map_or(1.0, |sc| sc.scale),
            amp_growth_tracker: self.scaler.as_ref().map_or(0, |sc| sc.growth_tracker),
        }
    }

    /// Commits the state of a run stopped mid-epoch (weights, optimiser, schedule, the epoch's
    /// progress) beside the last completed epoch, which it leaves as it is.
    fn commit_stop(&self, mut progress: EpochProgress, signal: i32) -> Result<Interrupted> {
        // The record holds the epoch's totals over every rank (a resumed rank 0 carries them on).
        let mut totals = [progress.loss_sum, progress.correct as f64, progress.seen as f64, progress.failed as f64];
        self.comm.sum_f64(&mut totals)?;
        (progress.loss_sum, progress.correct, progress.seen, progress.failed) = (totals[0], totals[1] as i64, totals[2] as usize, totals[3] as usize);
        let interrupted = Interrupted { signal, epoch: self.epoch, step: progress.step, run_dir: self.dir.clone() };
        if !self.comm.leads() {
            return Ok(interrupted);
        }
        let mut commit = Commit::new(&self.dir);
        model::save_safetensors(&self.vs, &commit.path(STOPPED_WEIGHTS))?;
        commit.add(STOPPED_WEIGHTS);
        if let Some(e) = &self.ema {
            model::save_safetensors(&e.vs, &commit.path(STOPPED_EMA))?;
            commit.add(STOPPED_EMA);
        }
        commit.tensors(STOPPED_TENSORS, &self.opt.state_tensors())?;
        let record = StoppedState { state: self.resume_state(self.epoch), progress };
        commit.bytes(STOPPED_JSON, serde_json::to_string_pretty(&record)?.as_bytes())?;
        commit.finish()?;
        Ok(interrupted)
    }

    /// Every remaining epoch: train, validate, commit, report.
    pub fn fit(mut self) -> Result<()> {
        while self.epoch < self.s.epochs {
            let started = Instant::now();
            let (train, failed) = self.train_epoch()?;
            let val = self.validate()?;
            let (row, improved) = self.commit(&train, &val, started)?;
            self.print_epoch(&row, improved, val.raw.is_some(), failed);
            if let Some(signal) = self.stop_requested()?.filter(|_| self.epoch < self.s.epochs) {
                return Err(Interrupted { signal, epoch: self.epoch, step: 0, run_dir: self.dir.clone() }.into());
            }
        }
        let log = &self.out.log;
        if let Some(b) = &self.best {
            let which = if b.ema { " (the moving average of the weights)" } else { "" };
            log.info(&format!("best {} {:.4} at epoch {}{which}; run directory {}", self.s.best_metric.column(), b.value, b.epoch, self.dir.display()));
        } else if !self.cfg.split.has_validation() {
            log.info(&format!(
                "trained on every image for {} epochs (no validation); best.safetensors = last epoch; run directory {}",
                self.s.epochs,
                self.dir.display()
            ));
        }
        Ok(())
    }

    fn loader_config(&self, drop_last: bool) -> LoaderConfig {
        LoaderConfig { batch_size: self.s.batch_size, workers: self.rt.workers, prefetch: 2 * self.rt.workers.max(2), drop_last }
    }

    /// This epoch's training order: weighted oversampling or a shuffle, seeded from
    /// `(seed, epoch)`, this rank's share of it, cut to whole steps.
    fn epoch_order(&self, epoch_seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
        let order: Vec<usize> = match self.s.sampling {
            Sampling::Weighted => sampler::weighted_indices(&self.data.train_labels, self.epoch_samples, &mut rng).into_iter().map(|p| self.data.train[p]).collect(),
            Sampling::Shuffle => {
                let mut o = self.data.train.clone();
                o.shuffle(&mut rng);
                o
            }
        };
        let mut order = sampler::distributed(&order, self.comm.rank(), self.comm.world(), true);
        order.truncate(self.steps_per_epoch * self.s.batch_size);
        order
    }

    /// One epoch of training steps (from where a stopped run left it). Returns the epoch's
    /// numbers and how many images failed; a stop request between two steps commits the
    /// epoch's progress and returns [`Interrupted`].
    pub fn train_epoch(&mut self) -> Result<(EpochTrain, usize)> {
        let (epoch, s) = (self.epoch, self.s);
        let mut progress = std::mem::take(&mut self.progress);
        if !self.comm.leads() {
            // A stop record holds every rank's totals: rank 0 carries them on, the others add theirs.
            progress = EpochProgress { step: progress.step, seconds: progress.seconds, lr_first: progress.lr_first, ..EpochProgress::default() };
        }
        let epoch_seed = mix(self.cfg.seed, epoch as u64);
        let order = self.epoch_order(epoch_seed);
        let epoch_images = order.len();
        let mode = Mode::Train { preprocess: self.cfg.preprocess.clone(), augment: self.cfg.augment.clone(), seed: self.comm.rank_seed(epoch_seed) };
        let loader = Loader::starting_at(self.data.paths.clone(), self.data.labels.clone(), order, mode, self.loader_config(s.drop_last), progress.step);
        let bar = self.progress_bar(progress.step);
        if progress.step == 0 {
            progress.lr_first = self.schedule.lr(epoch, 0);
        }
        let mut failures = Failures::new(epoch_images, "training");
        failures.count = progress.failed;
        let loss_sum = Tensor::from(progress.loss_sum).to_device(self.device);
        let correct = Tensor::from(progress.correct).to_device(self.device);
        let started = Instant::now() - std::time::Duration::from_secs_f64(progress.seconds);
        for (step, batch) in (progress.step..).zip(loader) {
            if step >= self.steps_per_epoch {
                break;
            }
            let batch = batch?;
            failures.note(&batch, &*self.out.log)?;
            // BatchNorm cannot normalise a batch of one. With several ranks the step runs only
            // if every rank can take it: their collectives must pair up.
            if !self.comm.all(batch.len() >= 2)? {
                let why = if batch.len() < 2 { "this rank's batch holds" } else { "another rank's batch holds" };
                self.out.log.warn(&format!("warning: step {} of epoch {} skipped ({} image(s) left out here): {why} fewer than the 2 images BatchNorm needs (load failures, or the epoch's end)", step + 1, epoch + 1, batch.len()));
            } else {
                // libtorch's generator (dropout, stochastic depth) is seeded per step, so a run
                // resumed mid-epoch draws what an uninterrupted one would.
                tch::manual_seed((mix(epoch_seed, step as u64) >> 1) as i64);
                let (loss, hits) = guarded(|| format!("training step {} of epoch {}", step + 1, epoch + 1), || self.train_step(&batch, step))?;
                let n = batch.len();
                progress.seen += n;
                tch::no_grad(|| {
                    let _ = loss_sum.shallow_clone().g_add_(&(loss * n as f64));
                    let _ = correct.shallow_clone().g_add_(&hits);
                });
                if step % 10 == 0 || step + 1 == self.steps_per_epoch {
                    let mean = loss_sum.double_value(&[]) / progress.seen.max(1) as f64;
                    let rate = progress.seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("loss {mean:.4} {rate:.1} img/s"));
                }
            }
            bar.inc(1);
            if let Some(signal) = self.stop_requested()?.filter(|_| step + 1 < self.steps_per_epoch) {
                bar.finish_and_clear();
                progress.step = step + 1;
                progress.loss_sum = loss_sum.double_value(&[]);
                progress.correct = correct.int64_value(&[]);
                progress.failed = failures.count;
                progress.seconds = started.elapsed().as_secs_f64();
                return Err(self.commit_stop(progress, signal)?.into());
            }
        }
        bar.finish_and_clear();
        // The epoch's numbers over every rank's images.
        let mut totals = [loss_sum.double_value(&[]), correct.int64_value(&[]) as f64, progress.seen as f64];
        self.comm.sum_f64(&mut totals)?;
        let [loss_total, correct_total, seen] = totals;
        if seen == 0.0 {
            bail!("epoch {} trained on no images", epoch + 1);
        }
        let train = EpochTrain {
            lr: progress.lr_first,
            loss: loss_total / seen,
            acc: correct_total / seen,
            images: seen as usize,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((train, failures.count))
    }

    fn progress_bar(&self, done: usize) -> indicatif::ProgressBar {
        let bar = if self.out.progress { indicatif::ProgressBar::new(self.steps_per_epoch as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", self.epoch + 1, self.s.epochs));
        bar.set_position(done as u64);
        bar
    }

    /// One optimiser step on `batch`. Returns the batch's mean loss (a float64 scalar on the
    /// device) and its number of correct predictions, both left on the device so the step
    /// does not wait for them.
    fn train_step(&mut self, batch: &Batch, step: usize) -> Result<(Tensor, Tensor)> {
        let (s, device) = (self.s, self.device);
        let x = images_tensor(batch, device, s.channels_last)?;
        let y = Tensor::from_slice(&batch.labels).to_device(device);
        let lr = self.schedule.lr(self.epoch, step);
        // Mixup/CutMix: soft targets, with the label smoothing inside them (timm's Mixup).
        let (x, soft) = match s.mixup.filter(|m| m.active(self.epoch)) {
            Some(m) => {
                let seed = mix(mix(mix(self.cfg.seed, self.epoch as u64), step as u64), MIXUP_STREAM);
                let mut rng = ChaCha8Rng::seed_from_u64(self.comm.rank_seed(seed));
                let size = x.size();
                let draw = m.draw(size[2], size[3], &mut rng)?;
                let targets = mixup::mix_targets(&y, self.cfg.classes.len() as i64, draw.lam(), s.label_smoothing);
                (mixup::mix_images(&x, &draw), Some(targets))
            }
            None => (x, None),
        };
        self.comm.broadcast(&self.buffers)?;
        let logits = forward(&self.net, &x, true, device, self.amp)?;
        let loss = match &soft {
            Some(t) => loss::soft_cross_entropy(&logits, t, self.class_weight.as_ref()),
            None => loss::cross_entropy(&logits, &y, self.class_weight.as_ref(), s.label_smoothing),
        };
        // Gradients averaged over the ranks (before unscaling, so every rank sees the same
        // overflow). None: fp16 overflow, the step is skipped (and the loss scale has halved).
        let average = |g: &[Tensor]| self.comm.average(g);
        let grads = match self.scaler.as_mut() {
            Some(sc) => sc.gradients(&self.opt, &loss, average)?,
            None => {
                let g = self.opt.gradients(&loss)?;
                average(&g)?;
                Some(g)
            }
        };
        if let Some(grads) = grads {
            if let Some(v) = s.clip_value {
                optim::clip_grad_value(&grads, v)?;
            }
            if let Some(n) = s.clip_norm {
                optim::clip_grad_norm(&grads, n)?;
            }
            self.opt.step(&grads, lr)?;
        }
        self.global_step += 1;
        if let Some(e) = &self.ema {
            e.update(self.global_step)?;
        }
        // Accuracy against the unmixed labels.
        let hits = tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64));
        Ok((loss.detach().to_kind(Kind::Double), hits))
    }

    /// The validation pass, when the run has a validation side: the trained weights, then
    /// their moving average when the run keeps one.
    pub fn validate(&self) -> Result<Validations> {
        if !self.cfg.split.has_validation() {
            return Ok(Validations::default());
        }
        let raw = self.validate_net(&self.net, &self.buffers, "")?;
        let ema = match &self.ema {
            Some(e) => Some(self.validate_net(&e.net, &self.ema_buffers, " (moving average of the weights)")?),
            None => None,
        };
        Ok(Validations { raw: Some(raw), ema })
    }

    fn validate_net(&self, net: &Net, buffers: &[Tensor], what: &str) -> Result<Validation> {
        // Each rank scores its share with rank 0's BatchNorm statistics; the summed counts are
        // those of the whole validation side.
        self.comm.broadcast(buffers)?;
        let share = sampler::distributed(&self.data.val, self.comm.rank(), self.comm.world(), false);
        let images = share.len();
        let loader = Loader::new(self.data.paths.clone(), self.data.labels.clone(), share, Mode::Eval(self.cfg.preprocess.clone()), self.loader_config(false));
        let acc = guarded(
            || format!("validation{what} after epoch {}", self.epoch + 1),
            || evaluate(net, loader, self.cfg.classes.len(), self.device, self.amp, self.s.channels_last, images, &*self.out.log),
        )?;
        let acc = self.comm.sum_metrics(acc)?;
        let m = acc.finish();
        Ok((acc, m))
    }

    /// Records the epoch: the schedule's end-of-epoch step, the best epoch, the history row,
    /// and one atomic commit of every file (see [`files`] for why a kill -9 cannot leave a mix
    /// of epochs). Returns the history row and whether this epoch is the new best.
    ///
    /// With `--model-ema` the epoch's candidate for best is the better of the trained weights
    /// and their average (the average on a tie); without a validation side it is the average.
    /// The learning-rate plateau follows the trained weights, the ones it steers.
    pub fn commit(&mut self, train: &EpochTrain, val: &Validations, started: Instant) -> Result<(HistoryRow, bool)> {
        let (s, epoch) = (self.s, self.epoch);
        let better = |a: f64, b: f64| if s.best_metric.maximize() { a > b } else { a < b };
        // Without validation the last epoch is the best one, and `best` stays None: there is
        // no metric value to record or compare.
        let mut improved = true;
        let mut best_is_ema = self.ema.is_some();
        if let Some((_, m)) = &val.raw {
            let raw = metric_value(m, s.best_metric);
            self.schedule.end_epoch(raw);
            let (value, is_ema) = match &val.ema {
                Some((_, e)) => {
                    let ema = metric_value(e, s.best_metric);
                    if ema == raw || better(ema, raw) || raw.is_nan() {
                        (ema, true)
                    } else {
                        (raw, false)
                    }
                }
                None => (raw, false),
            };
            best_is_ema = is_ema;
            improved = !value.is_nan()
                && match &self.best {
                    None => true,
                    Some(b) => better(value, b.value),
                };
            if improved {
                self.best = Some(Best { epoch: epoch + 1, value, ema: is_ema });
            }
        }
        let (vm, em) = (val.raw.as_ref().map(|(_, m)| m), val.ema.as_ref().map(|(_, m)| m));
        let row = HistoryRow {
            epoch: epoch + 1,
            lr: train.lr,
            train_loss: train.loss,
            train_acc: train.acc,
            val_loss: vm.and_then(|m| m.loss).unwrap_or(f64::NAN),
            val_top1: vm.map_or(f64::NAN, |m| m.top1),
            val_top5: vm.map_or(f64::NAN, |m| m.top5),
            val_macro_acc: vm.map_or(f64::NAN, |m| m.macro_acc),
            train_images_per_s: train.images as f64 / train.seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
            ema_val_loss: em.and_then(|m| m.loss).unwrap_or(f64::NAN),
            ema_val_top1: em.map_or(f64::NAN, |m| m.top1),
            ema_val_top5: em.map_or(f64::NAN, |m| m.top5),
            ema_val_macro_acc: em.map_or(f64::NAN, |m| m.macro_acc),
        };
        self.history.push(row.clone());

        let raw_info = match vm {
            Some(m) => info(epoch + 1, m),
            None => train_info(epoch + 1, train.loss, train.acc),
        };
        let ema_info = self.ema.as_ref().map(|_| CheckpointInfo {
            ema: true,
            ..match em {
                Some(m) => info(epoch + 1, m),
                // No validation: the training numbers are the trained weights', not the average's.
                None => CheckpointInfo { epoch: epoch + 1, ..Default::default() },
            }
        });
        // Rank 0 alone writes the run directory; every rank keeps the same state.
        if self.comm.leads() {
            let best = if best_is_ema { (ema_info.as_ref().unwrap_or(&raw_info), val.ema.as_ref()) } else { (&raw_info, val.raw.as_ref()) };
            self.write_commit(&raw_info, ema_info.as_ref(), improved.then_some(best))?;
        }
        self.epoch += 1;
        Ok((row, improved))
    }

    /// The files of [`commit`](Self::commit), written in one atomic commit: `last.*` (the
    /// trained weights), `ema.*` (their average), and `best.*` when `best` is given (its info
    /// says which weights, and its validation gives the confusion and per-class tables).
    fn write_commit(&self, last: &CheckpointInfo, ema: Option<&CheckpointInfo>, best: Option<(&CheckpointInfo, Option<&Validation>)>) -> Result<()> {
        let (cfg, epoch) = (self.cfg, self.epoch);
        let mut commit = Commit::new(&self.dir);
        if let Some((ck, val)) = best {
            let vs = match (&self.ema, ck.ema) {
                (Some(e), true) => &e.vs,
                _ => &self.vs,
            };
            model::save_safetensors(vs, &commit.path("best.safetensors"))?;
            commit.add("best.safetensors");
            commit.bytes("best.json", serde_json::to_string_pretty(ck)?.as_bytes())?;
            if let Some((acc, _)) = val {
                commit.bytes(BEST_CONFUSION, &files::confusion_csv(&cfg.classes, acc.confusion())?)?;
                commit.bytes(BEST_PER_CLASS, &files::per_class_csv(&cfg.classes, &self.data.train_sizes, acc.confusion())?)?;
            }
        }
        model::save_safetensors(&self.vs, &commit.path("last.safetensors"))?;
        commit.add("last.safetensors");
        if let (Some(e), Some(ck)) = (&self.ema, ema) {
            let name = Checkpoint::Ema.name();
            model::save_safetensors(&e.vs, &commit.path(&format!("{name}.safetensors")))?;
            commit.add(&format!("{name}.safetensors"));
            commit.bytes(&format!("{name}.json"), serde_json::to_string_pretty(ck)?.as_bytes())?;
        }
        commit.tensors(LAST_STATE_TENSORS, &self.opt.state_tensors())?;
        commit.bytes("last.json", serde_json::to_string_pretty(last)?.as_bytes())?;
        commit.bytes(HISTORY, &files::history_csv(&self.history)?)?;
        let state = self.resume_state(epoch + 1);
        commit.bytes(LAST_STATE_JSON, serde_json::to_string_pretty(&state)?.as_bytes())?;
        commit.finish()?;
        // A stop record of this epoch is now superseded.
        StoppedState::remove(&self.dir)?;
        Ok(())
    }

    /// The epoch's summary line, and the report pictures when asked for.
    fn print_epoch(&self, row: &HistoryRow, improved: bool, validated: bool, failed: usize) {
        let log = &self.out.log;
        let mut val_part = if validated {
            format!(" | val loss {:.4} top1 {:.4} top5 {:.4} macro {:.4}", row.val_loss, row.val_top1, row.val_top5, row.val_macro_acc)
        } else {
            String::new()
        };
        if validated && self.ema.is_some() {
            val_part += &format!(" | ema loss {:.4} top1 {:.4} macro {:.4}", row.ema_val_loss, row.ema_val_top1, row.ema_val_macro_acc);
        }
        let best_mark = match &self.best {
            Some(b) if improved && validated && b.ema => " *best (ema)*",
            _ if improved && validated => " *best*",
            _ => "",
        };
        log.info(&format!(
            "epoch {}/{} lr {:.3e} | train loss {:.4} acc {:.4}{val_part} | {:.1} img/s {:.1}s{}",
            row.epoch,
            self.s.epochs,
            row.lr,
            row.train_loss,
            row.train_acc,
            row.train_images_per_s,
            row.seconds,
            best_mark
        ));
        if failed > 0 {
            log.warn(&format!("warning: {failed} training image(s) could not be loaded this epoch"));
        }
        // Pictures are a convenience: a failure to draw one must never stop training.
        if self.out.report {
            if let Err(e) = sorbier::report::training::render_run(&self.dir) {
                log.warn(&format!("warning: could not draw the training report: {e:#}"));
            }
        }
    }
}
