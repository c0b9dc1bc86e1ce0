//! Data-parallel throughput: images/s of the trainer's step — BatchNorm buffers broadcast from
//! rank 0, forward, cross-entropy, backward, gradients averaged by the c10d process group in
//! DDP-sized buckets, Adam — on pre-made random batches (no data loading), alone or as one
//! rank of a group launched by torchrun; and with `--allreduce-mib M` the bus bandwidth of
//! c10d allreduces of M MiB. `tools/bench-dist.sh` runs it beside PyTorch DDP
//! (`tools/ddp_peer.py bench`), and prints one JSON line per run from rank 0.
//!
//!     torchrun --standalone --nproc-per-node 2 --no-python target/release/examples/bench_dist \
//!         [OPTIONS]   (--help lists them)
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use sorbier::arch::Arch;
use sorbier::cli::spelled;
use sorbier_train::dist::{self, Backend, Collective, Launch};
use sorbier_train::model::Net;
use sorbier_train::optim::{OptimConfig, Optimizer, OptimizerKind};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Data-parallel step throughput (or allreduce bandwidth) of one rank.
#[derive(Parser)]
struct Args {
    #[arg(long, value_parser = spelled::<Arch>(), default_value_t = Arch::Resnet18)]
    arch: Arch,
    #[arg(long, default_value_t = 112)]
    size: i64,
    /// Images per rank and step.
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// libtorch intra-op threads per rank.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Measure allreduces of this many MiB instead of training steps.
    #[arg(long)]
    allreduce_mib: Option<usize>,
}

/// Bus bandwidth of a ring allreduce of `mib` MiB (nccl-tests' definition:
/// bytes · 2(n−1)/n per second), from the median of 5 runs after one warm-up.
fn allreduce_bandwidth(comm: &Collective, mib: usize) -> Result<(f64, f64)> {
    let t = Tensor::ones([(mib as i64) << 18], (Kind::Float, Device::Cpu));
    comm.sum(std::slice::from_ref(&t))?;
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        comm.barrier()?;
        let start = Instant::now();
        comm.sum(std::slice::from_ref(&t))?;
        times.push(start.elapsed());
    }
    times.sort();
    let secs = times[2].as_secs_f64();
    let n = comm.world() as f64;
    let bus = (mib as f64 * 1048576.0) * 2.0 * (n - 1.0) / n / secs / 1e9;
    Ok((secs * 1e3, bus))
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let launch = Launch::from_env()?;
    let comm = Collective::join(launch.as_ref(), Backend::Gloo, Device::Cpu, Duration::from_secs(120))?;
    if let Some(mib) = a.allreduce_mib {
        let (ms, gbs) = allreduce_bandwidth(&comm, mib)?;
        if comm.leads() {
            println!("{{\"impl\": \"sorbier\", \"allreduce_mib\": {mib}, \"world\": {}, \"ms\": {ms:.1}, \"bus_gb_per_s\": {gbs:.2}}}", comm.world());
        }
        return Ok(());
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &a.arch.spec(5), 0.0);
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|x, y| x.0.cmp(&y.0));
    let mut opt = Optimizer::new(OptimConfig::new(OptimizerKind::Adam), params.into_iter().map(|(n, t)| (n, t, true)).collect())?;
    comm.broadcast(&dist::variables(&vs, |_| true))?;
    let buffers = comm.replicated_buffers(&vs);
    tch::manual_seed(comm.rank() as i64);
    let x = Tensor::randn([a.batch, 3, a.size, a.size], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(5, [a.batch], (Kind::Int64, Device::Cpu));
    let mut reduce = Duration::ZERO;
    let mut step = |reduce: &mut Duration| -> Result<()> {
        comm.broadcast(&buffers)?;
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
        let g = opt.gradients(&loss)?;
        let t = Instant::now();
        comm.average(&g)?;
        *reduce += t.elapsed();
        opt.step(&g, 1e-3)
    };
    for _ in 0..a.warmup {
        step(&mut reduce)?;
    }
    reduce = Duration::ZERO;
    comm.barrier()?;
    let start = Instant::now();
    for _ in 0..a.steps {
        step(&mut reduce)?;
    }
    comm.barrier()?;
    let secs = start.elapsed().as_secs_f64();
    if comm.leads() {
        let rate = (comm.world() as i64 * a.batch) as f64 * a.steps as f64 / secs;
        let share = reduce.as_secs_f64() / secs;
        println!(
            "{{\"impl\": \"sorbier\", \"arch\": \"{}\", \"size\": {}, \"world\": {}, \"threads\": {}, \"img_per_s\": {rate:.2}, \"allreduce_share\": {share:.3}}}",
            a.arch, a.size, comm.world(), a.threads
        );
    }
    Ok(())
}
