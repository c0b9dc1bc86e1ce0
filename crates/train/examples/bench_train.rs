//! Training throughput benchmark: images/s of full training steps (forward, cross-entropy,
//! backward, Adam) of a ResNet fed by the real loader from JPEGs (decode + RandomResizedCrop +
//! flips + normalise on worker threads), beside the same steps on pre-made tensors (no data
//! loading), and their ratio — how much of the model's speed the data pipeline keeps.
//!
//! Prints `sorbier tensors <images/s>`, `sorbier jpeg <images/s>`, `sorbier ratio <r>`, the
//! format `tools/bench_train.py` prints for PyTorch; `tools/bench-train.sh` runs both.
//!
//!     cargo run --release --example bench_train -- [DATA_DIR] [OPTIONS]   (--help lists them)
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;
use rand::SeedableRng;
use sorbier::arch::Arch;
use sorbier::cli::spelled;
use sorbier::data::{Dataset, Loader, LoaderConfig, Mode};
use sorbier_train::model::autocast::{autocast, AmpDtype};
use sorbier_train::model::{memory_format, select_device, Net};
use sorbier_train::optim::{OptimConfig, Optimizer, OptimizerKind};
use sorbier::transforms::{Augment, Preprocess};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Training throughput: the real loader beside pre-made tensors.
#[derive(Parser)]
struct Opts {
    /// The training images (an ImageFolder tree, or a folder holding `train/`).
    #[arg(default_value_os_t = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/data/flowers/train"))]
    data: PathBuf,
    #[arg(long, value_parser = spelled::<Arch>(), default_value_t = Arch::Resnet18)]
    arch: Arch,
    #[arg(long, default_value_t = 112)]
    size: u32,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Timed steps of each run.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps before each run.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// cpu, cuda, cuda:N or auto, as the trainer takes it.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// NHWC activations and weights (torch.channels_last).
    #[arg(long)]
    channels_last: bool,
    /// bf16 autocast of the forward pass.
    #[arg(long)]
    bf16: bool,
    /// Stochastic depth rate (EfficientNet-Lite only; default: the family's).
    #[arg(long)]
    drop_path: Option<f64>,
}

struct Bench {
    net: Net,
    opt: Optimizer,
    device: Device,
    /// bf16 autocast for the forward pass (as `torch.autocast(dtype=torch.bfloat16)`).
    bf16: bool,
}

impl Bench {
    fn step(&mut self, x: &Tensor, y: &Tensor) {
        let logits = if self.bf16 {
            autocast(self.device, AmpDtype::Bf16, || self.net.forward_t(x, true)).expect("autocast").to_kind(Kind::Float)
        } else {
            self.net.forward_t(x, true)
        };
        let loss = logits.cross_entropy_for_logits(y);
        let grads = self.opt.gradients(&loss).expect("backward");
        self.opt.step(&grads, 1e-3).expect("step");
    }
    fn sync(&self) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }
}

fn main() -> Result<()> {
    // As the trainer does (SORBIER_MALLOC=default for glibc's own settings).
    let malloc = sorbier_train::malloc::tune_for_tensors()?;
    eprintln!("sorbier malloc {malloc:?}");
    let Opts { data, arch, size, batch, workers, steps, warmup, device, channels_last, bf16, drop_path } = Opts::parse();
    if drop_path.is_some() && Arch::RESNETS.contains(&arch) {
        bail!("--drop-path is for EfficientNet-Lite: the torchvision ResNets of the PyTorch peer have no stochastic depth");
    }
    let device = select_device(&device)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let ds = Dataset::scan(&sorbier::data::scan::resolve_train_dir(&data))?;
    let classes = ds.classes.len();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    // The family's training-time regularisation, as the PyTorch peer's model has it.
    let net = Net::new(&vs.root(), &arch.spec(classes), arch.default_dropout()).with_drop_path(drop_path.unwrap_or(arch.default_drop_path()));
    if channels_last {
        memory_format::vars_to_channels_last(&vs)?;
    }
    let layout = |x: Tensor| if channels_last { memory_format::channels_last(&x) } else { Ok(x) };
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let opt = Optimizer::new(OptimConfig::new(OptimizerKind::Adam), params.into_iter().map(|(n, v)| (n, v, true)).collect())?;
    let mut b = Bench { net, opt, device, bf16 };
    let s = size as i64;

    // Pre-made tensors: the model-only ceiling.
    let x = layout(Tensor::randn([batch as i64, 3, s, s], (Kind::Float, device)))?;
    let y = Tensor::randint(classes as i64, [batch as i64], (Kind::Int64, device));
    for _ in 0..warmup {
        b.step(&x, &y);
    }
    b.sync();
    let t = Instant::now();
    for _ in 0..steps {
        b.step(&x, &y);
    }
    b.sync();
    let tensors = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    println!("sorbier tensors {tensors:.1}");

    // From JPEGs through the loader, in weighted-sampler order as the trainer draws it.
    let labels: Vec<usize> = ds.labels();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let order = sorbier::data::sampler::weighted_indices(&labels, (steps + warmup) * batch, &mut rng);
    let paths: Arc<[PathBuf]> = ds.paths().into();
    let labels_i64: Arc<[i64]> = labels.iter().map(|&l| l as i64).collect();
    let mode = Mode::Train { preprocess: Preprocess::for_crop(size), augment: Augment::default(), seed: 0 };
    let cfg = LoaderConfig { batch_size: batch, workers, prefetch: 2 * workers.max(2), drop_last: true };
    let mut t = Instant::now();
    let mut n = 0usize;
    for (i, batch) in Loader::new(paths, labels_i64, order, mode, cfg).enumerate() {
        let batch = batch?;
        if let Some((_, e)) = batch.failed.first() {
            bail!("{e}");
        }
        let x = layout(Tensor::from_slice(&batch.images).view([batch.len() as i64, 3, s, s]).to_device(device))?;
        let y = Tensor::from_slice(&batch.labels).to_device(device);
        b.step(&x, &y);
        if i + 1 == warmup {
            b.sync();
            t = Instant::now();
        } else if i >= warmup {
            n += batch.len();
        }
    }
    b.sync();
    let jpeg = n as f64 / t.elapsed().as_secs_f64();
    println!("sorbier jpeg {jpeg:.1}");
    println!("sorbier ratio {:.3}", jpeg / tensors);
    Ok(())
}
