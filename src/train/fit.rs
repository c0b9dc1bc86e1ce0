//! The epoch loop: split, per-epoch sampling, training steps, validation, best/last
//! checkpoints and resume (torchvision `references/classification/train.py`'s
//! `train_one_epoch`/`evaluate` shape, with timm-style checkpointing).
//!
//! Without a validation side (`--val-fraction 0`, a final fit on every image) nothing picks a
//! best epoch: `best.*` is the last epoch, the `.json` infos hold the training loss and
//! accuracy, the history's validation columns are NaN, and no confusion matrix is written.
//!
//! Reproducibility: every random stream of epoch `e` — the sampling order, the augmentations
//! (the loader's seed) and libtorch's generator (dropout) — is seeded from `(seed, e)` at the
//! start of the epoch. Together with the weights, BatchNorm statistics, optimiser and schedule
//! state saved after each epoch, this makes `--resume` continue exactly as an uninterrupted
//! run would (bit for bit on CPU with the same thread count).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::files::{self, Best, Commit, HistoryRow, ResumeState, BEST_CONFUSION, BEST_PER_CLASS, LAST_STATE_JSON, LAST_STATE_TENSORS};
use super::amp::LossScaler;
use super::loss;
use super::optim::{self, Optimizer};
use super::schedule::LrSchedule;
use super::{Runtime, Sampling, TrainMode, TrainSettings};
use crate::data::split::{self, SplitSpec};
use crate::data::{sampler, Batch, Dataset, Loader, LoaderConfig, Mode};
use crate::metrics::{Metrics, MetricsAccumulator};
use crate::model::autocast::{autocast, AmpDtype};
use crate::model::{self, ResNet};
use crate::run::{Checkpoint, CheckpointInfo, RunConfig, HISTORY};

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

    fn note(&mut self, batch: &Batch) -> Result<()> {
        if batch.failed.is_empty() {
            return Ok(());
        }
        self.count += batch.failed.len();
        let list: Vec<&str> = batch.failed.iter().map(|(_, e)| e.as_str()).collect();
        eprintln!("warning: {} {} image(s) could not be loaded and were left out: {}", batch.failed.len(), self.what, list.join("; "));
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
fn forward(model: &ResNet, x: &Tensor, train: bool, device: Device, amp: Option<AmpDtype>) -> Result<Tensor> {
    match amp {
        Some(dtype) => Ok(autocast(device, dtype, || model.forward_t(x, train))?.to_kind(Kind::Float)),
        None => Ok(model.forward_t(x, train)),
    }
}

/// The validation pass: metrics and the confusion matrix.
fn evaluate(model: &ResNet, loader: Loader, classes: usize, device: Device, amp: Option<AmpDtype>, channels_last: bool, images: usize) -> Result<MetricsAccumulator> {
    let mut acc = MetricsAccumulator::new(classes);
    let mut failures = Failures::new(images, "validation");
    for batch in loader {
        failures.note(&batch)?;
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
    CheckpointInfo { epoch, metrics }
}

fn info(epoch: usize, m: &Metrics) -> CheckpointInfo {
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".to_string(), m.top1);
    metrics.insert("top5".to_string(), m.top5);
    metrics.insert("macro_acc".to_string(), m.macro_acc);
    metrics.insert("loss".to_string(), m.loss.unwrap_or(f64::NAN));
    CheckpointInfo { epoch, metrics }
}

/// What the loop shows beside the run directory's files.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// Progress bars (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Redraw the training report pictures after each epoch.
    pub report: bool,
}

/// Trains the run in `dir` (whose `config.json` is `cfg`): a new run from epoch 1, or with
/// `resume` from the epoch after the last completed one.
pub fn train_run(dir: &Path, cfg: &RunConfig, s: &TrainSettings, rt: &Runtime, resume: bool, out: Output) -> Result<()> {
    if let Some(t) = rt.threads {
        tch::set_num_threads(t as i32);
    }
    super::check_split(&cfg.split, s)?;
    let validate = cfg.split.has_validation();
    let device = model::select_device(&rt.device)?;
    // fp16 autocast with loss scaling on CUDA; bf16 on CUDA or CPU, without scaling.
    let amp = match (s.amp, s.amp_dtype) {
        (false, _) => None,
        (true, AmpDtype::Fp16) if !device.is_cuda() => {
            eprintln!("fp16 mixed precision (--amp) needs CUDA; training in fp32 (--amp-dtype bf16 also runs on CPU)");
            None
        }
        (true, dtype) => Some(dtype),
    };
    let scaled = amp == Some(AmpDtype::Fp16);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    println!(
        "device {}{}{}, {} loader workers",
        describe(device),
        amp.map(|d| format!(" ({d} autocast)")).unwrap_or_default(),
        if s.channels_last { " channels-last" } else { "" },
        rt.workers
    );

    if resume {
        if let Some(note) = files::recover(dir)? {
            eprintln!("{}: {note}", dir.display());
        }
    }
    // Killed before the first epoch completed: nothing to continue, start from the beginning.
    let resume = resume && {
        let has_state = dir.join(LAST_STATE_JSON).exists();
        if !has_state {
            eprintln!("{}: no completed epoch yet; starting from epoch 1", dir.display());
        }
        has_state
    };

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
        eprintln!("warning: class {:?} has a single image: it is trained on but never validated", cfg.classes[c]);
    }
    if let SplitSpec::Kfold { folds, .. } = cfg.split {
        for c in split::classes_below(&labels, nc, folds) {
            eprintln!("warning: class {:?} has fewer than {folds} images: some folds do not validate it", cfg.classes[c]);
        }
    }
    let train_labels: Vec<usize> = split.train.iter().map(|&i| labels[i]).collect();
    let mut train_sizes = vec![0usize; nc];
    for &l in &train_labels {
        train_sizes[l] += 1;
    }
    let paths: Arc<[PathBuf]> = ds.paths().into();
    let labels_i64: Arc<[i64]> = labels.iter().map(|&l| l as i64).collect();
    if validate {
        println!("{}: {} classes, {} training and {} validation images", cfg.data_root.display(), nc, split.train.len(), split.val.len());
    } else {
        println!(
            "{}: {} classes, {} training images, no validation split (--val-fraction 0): best.safetensors is the last epoch, --best-metric {} is not used",
            cfg.data_root.display(),
            nc,
            split.train.len(),
            s.best_metric.name()
        );
    }

    // Model, initialised from the run's seed (then optionally overwritten by pretrained weights).
    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let spec = cfg.arch.spec(nc);
    let mut net = ResNet::new(&vs.root(), &spec, cfg.dropout);
    if !resume {
        match &s.pretrained {
            Some(p) => println!("{}", model::load_weights(&mut vs, p, &spec, true)?.summary()),
            None => eprintln!("warning: no --pretrained weights: {} starts from random initialisation; accuracy will suffer", cfg.arch),
        }
    }
    if s.mode == TrainMode::FeatureExtract {
        model::freeze_backbone(&vs);
        net.set_frozen_backbone(true);
    }
    if s.channels_last {
        model::memory_format::vars_to_channels_last(&vs)?;
    }
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let params = vars.into_iter().map(|(n, v)| {
        let decay = s.decay_norm_bias || v.dim() > 1;
        (n, v, decay)
    });
    let mut opt = Optimizer::new(s.optimizer.clone(), params.collect())?;

    let epoch_samples = match s.sampling {
        Sampling::Weighted => sampler::num_samples(split.train.len(), s.samples_multiplier),
        Sampling::Shuffle => split.train.len(),
    };
    let mut steps_per_epoch = if s.drop_last { epoch_samples / s.batch_size } else { epoch_samples.div_ceil(s.batch_size) };
    if let Some(m) = s.max_steps_per_epoch {
        steps_per_epoch = steps_per_epoch.min(m);
    }
    if steps_per_epoch == 0 {
        bail!("an epoch of {epoch_samples} training images does not fill one batch of {}", s.batch_size);
    }
    let mut schedule = LrSchedule::new(s.schedule.clone(), s.epochs, steps_per_epoch, s.best_metric.maximize());
    let class_weight = loss::class_weights(s.class_weights, &train_sizes, s.effective_beta)
        .map(|w| Tensor::from_slice(&w.iter().map(|&x| x as f32).collect::<Vec<f32>>()).to_device(device));

    let mut start_epoch = 0;
    let mut best: Option<Best> = None;
    let mut history: Vec<HistoryRow> = Vec::new();
    let mut global_step = 0u64;
    let mut scaler = scaled.then(LossScaler::default);
    if resume {
        let st = ResumeState::load(dir)?;
        model::load_weights(&mut vs, &Checkpoint::Last.weights(dir), &spec, false)?;
        let state_path = dir.join(LAST_STATE_TENSORS);
        let tensors = Tensor::read_safetensors(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
        opt.load_state(tensors, &st.optimizer_steps).with_context(|| format!("{}", state_path.display()))?;
        schedule.state = st.schedule.state;
        best = st.best;
        start_epoch = st.epoch;
        global_step = st.global_step;
        if let Some(sc) = scaler.as_mut().filter(|_| st.loss_scale > 1.0) {
            sc.scale = st.loss_scale;
            sc.growth_tracker = st.amp_growth_tracker;
        }
        history = files::read_history(&dir.join(HISTORY))?;
        history.retain(|r| r.epoch <= st.epoch);
        if history.len() != st.epoch {
            bail!("{}: history.csv has {} rows for {} completed epochs", dir.display(), history.len(), st.epoch);
        }
        cfg.save(dir)?;
        if start_epoch >= s.epochs {
            println!("{} already completed {} of {} epochs; raise --epochs to train longer", dir.display(), start_epoch, s.epochs);
            return Ok(());
        }
        println!("resuming after epoch {start_epoch} of {}", s.epochs);
    }

    let loader_cfg = |drop_last| LoaderConfig { batch_size: s.batch_size, workers: rt.workers, prefetch: 2 * rt.workers.max(2), drop_last };
    for epoch in start_epoch..s.epochs {
        let started = Instant::now();
        let epoch_seed = mix(cfg.seed, epoch as u64);
        tch::manual_seed((epoch_seed >> 1) as i64);
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
        let mut order: Vec<usize> = match s.sampling {
            Sampling::Weighted => sampler::weighted_indices(&train_labels, epoch_samples, &mut rng).into_iter().map(|p| split.train[p]).collect(),
            Sampling::Shuffle => {
                let mut o = split.train.clone();
                o.shuffle(&mut rng);
                o
            }
        };
        order.truncate(steps_per_epoch * s.batch_size);
        let epoch_images = order.len();
        let mode = Mode::Train { preprocess: cfg.preprocess.clone(), augment: cfg.augment.clone(), seed: epoch_seed };
        let loader = Loader::new(paths.clone(), labels_i64.clone(), order, mode, loader_cfg(s.drop_last));
        let bar = if out.progress { indicatif::ProgressBar::new(steps_per_epoch as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, s.epochs));

        let lr_first = schedule.lr(epoch, 0);
        let mut failures = Failures::new(epoch_images, "training");
        let loss_sum = Tensor::zeros([], (Kind::Double, device));
        let correct = Tensor::zeros([], (Kind::Int64, device));
        let mut seen = 0usize;
        let train_started = Instant::now();
        for (step, batch) in loader.enumerate() {
            if step >= steps_per_epoch {
                break;
            }
            failures.note(&batch)?;
            // BatchNorm cannot normalise a batch of one.
            if batch.len() < 2 {
                continue;
            }
            let x = images_tensor(&batch, device, s.channels_last)?;
            let y = Tensor::from_slice(&batch.labels).to_device(device);
            let lr = schedule.lr(epoch, step);
            let logits = forward(&net, &x, true, device, amp)?;
            let loss = loss::cross_entropy(&logits, &y, class_weight.as_ref(), s.label_smoothing);
            // None: fp16 overflow, the step is skipped (and the loss scale has halved).
            let grads = match scaler.as_mut() {
                Some(sc) => sc.gradients(&opt, &loss)?,
                None => Some(opt.gradients(&loss)?),
            };
            if let Some(grads) = grads {
                if let Some(v) = s.clip_value {
                    optim::clip_grad_value(&grads, v)?;
                }
                if let Some(n) = s.clip_norm {
                    optim::clip_grad_norm(&grads, n)?;
                }
                opt.step(&grads, lr)?;
            }
            global_step += 1;
            let n = batch.len();
            seen += n;
            tch::no_grad(|| {
                let _ = loss_sum.shallow_clone().g_add_(&(loss.detach().to_kind(Kind::Double) * n as f64));
                let _ = correct.shallow_clone().g_add_(&logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64));
            });
            if step % 10 == 0 || step + 1 == steps_per_epoch {
                let mean = loss_sum.double_value(&[]) / seen as f64;
                let rate = seen as f64 / train_started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {mean:.4} {rate:.1} img/s"));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = train_started.elapsed().as_secs_f64();
        if seen == 0 {
            bail!("epoch {} trained on no images", epoch + 1);
        }
        let train_loss = loss_sum.double_value(&[]) / seen as f64;
        let train_acc = correct.int64_value(&[]) as f64 / seen as f64;

        // Without validation the last epoch is the best one, and `best` stays None: there is
        // no metric value to record or compare.
        let val = if validate {
            let val_loader = Loader::new(paths.clone(), labels_i64.clone(), split.val.clone(), Mode::Eval(cfg.preprocess.clone()), loader_cfg(false));
            let acc = evaluate(&net, val_loader, nc, device, amp, s.channels_last, split.val.len())?;
            let m = acc.finish();
            Some((acc, m))
        } else {
            None
        };
        let mut improved = true;
        if let Some((_, m)) = &val {
            let value = metric_value(m, s.best_metric);
            schedule.end_epoch(value);
            improved = !value.is_nan()
                && match &best {
                    None => true,
                    Some(b) if s.best_metric.maximize() => value > b.value,
                    Some(b) => value < b.value,
                };
            if improved {
                best = Some(Best { epoch: epoch + 1, value });
            }
        }
        let vm = val.as_ref().map(|(_, m)| m);
        let row = HistoryRow {
            epoch: epoch + 1,
            lr: lr_first,
            train_loss,
            train_acc,
            val_loss: vm.and_then(|m| m.loss).unwrap_or(f64::NAN),
            val_top1: vm.map_or(f64::NAN, |m| m.top1),
            val_top5: vm.map_or(f64::NAN, |m| m.top5),
            val_macro_acc: vm.map_or(f64::NAN, |m| m.macro_acc),
            train_images_per_s: seen as f64 / train_seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
        };
        history.push(row.clone());

        // One commit per epoch: see `files` for why a kill -9 cannot leave a mix of epochs.
        let ck = match vm {
            Some(m) => info(epoch + 1, m),
            None => train_info(epoch + 1, train_loss, train_acc),
        };
        let mut commit = Commit::new(dir);
        if improved {
            model::save_safetensors(&vs, &commit.path("best.safetensors"))?;
            commit.add("best.safetensors");
            commit.bytes("best.json", serde_json::to_string_pretty(&ck)?.as_bytes())?;
            if let Some((acc, _)) = &val {
                commit.bytes(BEST_CONFUSION, &files::confusion_csv(&cfg.classes, acc.confusion())?)?;
                commit.bytes(BEST_PER_CLASS, &files::per_class_csv(&cfg.classes, &train_sizes, acc.confusion())?)?;
            }
        }
        model::save_safetensors(&vs, &commit.path("last.safetensors"))?;
        commit.add("last.safetensors");
        commit.tensors(LAST_STATE_TENSORS, &opt.state_tensors())?;
        commit.bytes("last.json", serde_json::to_string_pretty(&ck)?.as_bytes())?;
        commit.bytes(HISTORY, &files::history_csv(&history)?)?;
        let state = ResumeState {
            sorbier_version: crate::VERSION.to_string(),
            epoch: epoch + 1,
            global_step,
            optimizer_steps: opt.steps(),
            schedule: schedule.clone(),
            best: best.clone(),
            seed: cfg.seed,
            loss_scale: scaler.as_ref().map_or(1.0, |sc| sc.scale),
            amp_growth_tracker: scaler.as_ref().map_or(0, |sc| sc.growth_tracker),
        };
        commit.bytes(LAST_STATE_JSON, serde_json::to_string_pretty(&state)?.as_bytes())?;
        commit.finish()?;

        let val_part = match vm {
            Some(_) => format!(
                " | val loss {:.4} top1 {:.4} top5 {:.4} macro {:.4}",
                row.val_loss, row.val_top1, row.val_top5, row.val_macro_acc
            ),
            None => String::new(),
        };
        println!(
            "epoch {}/{} lr {:.3e} | train loss {:.4} acc {:.4}{val_part} | {:.1} img/s {:.1}s{}",
            epoch + 1,
            s.epochs,
            row.lr,
            row.train_loss,
            row.train_acc,
            row.train_images_per_s,
            row.seconds,
            if improved && validate { " *best*" } else { "" }
        );
        if failures.count > 0 {
            eprintln!("warning: {} training image(s) could not be loaded this epoch", failures.count);
        }
        // Pictures are a convenience: a failure to draw one must never stop training.
        if out.report {
            if let Err(e) = crate::report::training::render_run(dir) {
                eprintln!("warning: could not draw the training report: {e:#}");
            }
        }
    }
    if let Some(b) = &best {
        println!("best {} {:.4} at epoch {}; run directory {}", s.best_metric.name(), b.value, b.epoch, dir.display());
    } else if !validate {
        println!("trained on every image for {} epochs (no validation); best.safetensors = last epoch; run directory {}", s.epochs, dir.display());
    }
    Ok(())
}
