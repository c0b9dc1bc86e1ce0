//! The distributed seam: what the trainer asks of its peers — world size, rank, allreduce,
//! broadcast, barrier — answered by a [`Collective`], which is either one process alone (every
//! call a no-op) or a c10d process group (`csrc/dist.cpp`: `c10d::TCPStore` for the
//! rendezvous, `ProcessGroupGloo` on CPU, `ProcessGroupNCCL` on CUDA). It follows PyTorch's
//! `DistributedDataParallel`: identical start from rank 0's weights, gradients averaged in
//! buckets by the process group, BatchNorm buffers broadcast from rank 0 before each forward.
//!
//! A process joins a group when the variables `torchrun`, Kubeflow's PyTorchJob and most Slurm
//! scripts set are there: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` (and
//! `LOCAL_RANK` for the GPU). Under `torchrun` its agent already hosts the store
//! (`TORCHELASTIC_USE_AGENT_STORE=True`) and every rank connects as a client; otherwise rank 0
//! hosts it.
use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::model::shim::{check, raw};
use sorbier::metrics::MetricsAccumulator;

/// DDP's default bucket size (`bucket_cap_mb = 25`).
pub const BUCKET_BYTES: i64 = 25 << 20;

/// Which c10d process group carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// NCCL when training on CUDA, Gloo on CPU (as `init_process_group` picks).
    Auto,
    Gloo,
    Nccl,
}

/// Where this process stands in the job, from the launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher's agent hosts the store (torchrun): every rank is a client.
    pub agent_store: bool,
}

impl Launch {
    /// The launch described by the process environment; `None` when it does not describe one
    /// (no `WORLD_SIZE`/`RANK`): then the process trains alone.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let (Some(world), Some(rank)) = (get("WORLD_SIZE"), get("RANK")) else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> { v.trim().parse().with_context(|| format!("{name}={v:?} is not a number")) };
        let world = num("WORLD_SIZE", &world)?;
        let rank = num("RANK", &rank)?;
        if world == 0 || rank >= world {
            bail!("RANK={rank} and WORLD_SIZE={world} do not describe a rank of the job");
        }
        let local_rank = get("LOCAL_RANK").map(|v| num("LOCAL_RANK", &v)).transpose()?.unwrap_or(0);
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port.trim().parse().with_context(|| format!("MASTER_PORT={port:?} is not a port number"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(Launch { rank, world, local_rank, master_addr, master_port, agent_store }))
    }

    /// The device this rank trains on: `auto` becomes `cuda:LOCAL_RANK` where CUDA is.
    pub fn device(&self, requested: &str) -> String {
        if requested.trim().eq_ignore_ascii_case("auto") && tch::Cuda::is_available() {
            format!("cuda:{}", self.local_rank)
        } else {
            requested.to_string()
        }
    }
}

extern "C" {
    fn sorbier_dist_gloo_compiled() -> c_int;
    fn sorbier_dist_nccl_compiled() -> c_int;
    fn sorbier_dist_connect(host: *const c_char, port: c_int, rank: c_int, world: c_int, host_store: c_int, backend: c_int, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    fn sorbier_dist_allreduce(group: *mut c_void, tensors: *const *mut c_void, n: c_int, average: c_int, bucket_bytes: i64) -> *mut c_char;
    fn sorbier_dist_broadcast(group: *mut c_void, tensors: *const *mut c_void, n: c_int, root: c_int, bucket_bytes: i64) -> *mut c_char;
    fn sorbier_dist_barrier(group: *mut c_void) -> *mut c_char;
    fn sorbier_dist_lost_ranks(group: *mut c_void, out: *mut c_int, cap: c_int) -> c_int;
    fn sorbier_dist_free(group: *mut c_void);
}

/// Whether this build has Gloo (and so distributed training at all) and NCCL.
pub fn compiled_backends() -> (bool, bool) {
    // SAFETY: plain functions without arguments.
    unsafe { (sorbier_dist_gloo_compiled() != 0, sorbier_dist_nccl_compiled() != 0) }
}

/// The variables of `vs` whose names pass `keep`, in name order (the same on every rank).
pub fn variables(vs: &nn::VarStore, keep: impl Fn(&str) -> bool) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| keep(n)).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

/// A joined c10d process group.
pub struct ProcessGroup {
    ptr: *mut c_void,
    rank: usize,
    world: usize,
    backend: Backend,
    /// Device of the small tensors (counts, flags) this side allreduces.
    scalars: Device,
    /// Rank 0 hosts the rendezvous store (not a launcher's agent).
    rank0_hosts_store: bool,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from sorbier_dist_connect and is freed once.
        unsafe { sorbier_dist_free(self.ptr) };
    }
}

/// The peers a training process works with.
pub enum Collective {
    /// One process: every collective is the identity.
    Single,
    Group(ProcessGroup),
}

impl Collective {
    /// Joins the group `launch` describes (or stays alone without one). `backend` Auto picks
    /// NCCL for a CUDA `device`, else Gloo; `timeout` bounds the rendezvous and every
    /// collective, so a lost peer ends the run instead of hanging it.
    pub fn join(launch: Option<&Launch>, backend: Backend, device: Device, timeout: Duration) -> Result<Collective> {
        let Some(l) = launch else { return Ok(Collective::Single) };
        let (gloo, nccl) = compiled_backends();
        let backend = match backend {
            Backend::Auto if device.is_cuda() && nccl => Backend::Nccl,
            Backend::Auto => Backend::Gloo,
            b => b,
        };
        if !gloo {
            bail!("distributed training is unavailable in this build: it was compiled without Gloo's headers (run tools/setup.sh, which fetches Debian's libgloo-dev into .venv/gloo, then rebuild)");
        }
        if backend == Backend::Nccl && !nccl {
            bail!("--dist-backend nccl: this trainer was built without NCCL (NCCL's and CUDA's headers were not found beside libtorch at build time); use --dist-backend gloo, or rebuild where the CUDA wheels' headers are installed");
        }
        if backend == Backend::Nccl && !device.is_cuda() {
            bail!("--dist-backend nccl: NCCL reduces CUDA tensors only, and this rank trains on {device:?}; use --dist-backend gloo (or auto) on CPU");
        }
        let host = CString::new(l.master_addr.clone()).context("MASTER_ADDR holds a NUL byte")?;
        let host_store = l.rank == 0 && !l.agent_store;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the shim reports failures as messages.
        let err = unsafe {
            sorbier_dist_connect(host.as_ptr(), l.master_port as c_int, l.rank as c_int, l.world as c_int, host_store as c_int, (backend == Backend::Nccl) as c_int, timeout.as_millis() as i64, &mut ptr)
        };
        check(err, || format!("cannot join the {backend:?} process group of {} ranks at {}:{} within the timeout", l.world, l.master_addr, l.master_port))?;
        let scalars = if backend == Backend::Nccl { device } else { Device::Cpu };
        Ok(Collective::Group(ProcessGroup { ptr, rank: l.rank, world: l.world, backend, scalars, rank0_hosts_store: !l.agent_store }))
    }

    pub fn rank(&self) -> usize {
        match self {
            Collective::Single => 0,
            Collective::Group(g) => g.rank,
        }
    }

    pub fn world(&self) -> usize {
        match self {
            Collective::Single => 1,
            Collective::Group(g) => g.world,
        }
    }

    /// Rank 0, the one that writes the run directory and prints.
    pub fn leads(&self) -> bool {
        self.rank() == 0
    }

    /// The BatchNorm running statistics that rank 0 broadcasts before every forward pass
    /// (DDP's default `broadcast_buffers=True`); none when training alone.
    pub fn replicated_buffers(&self, vs: &nn::VarStore) -> Vec<Tensor> {
        match self {
            Collective::Single => Vec::new(),
            Collective::Group(_) => variables(vs, |name| name.ends_with("running_mean") || name.ends_with("running_var")),
        }
    }

    /// The seed of this rank's augmentations: rank 0 keeps `seed` (so one process trains as
    /// it always did), the others draw unrelated streams.
    pub fn rank_seed(&self, seed: u64) -> u64 {
        let rank = self.rank() as u64;
        if rank == 0 {
            return seed;
        }
        let mut z = seed ^ rank.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Says which c10d backend carries the collectives, for the log.
    pub fn describe(&self) -> Option<String> {
        match self {
            Collective::Single => None,
            Collective::Group(g) => Some(format!("rank {} of {} ({:?}, c10d bucketed allreduce)", g.rank, g.world, g.backend)),
        }
    }

    /// Averages `tensors` over the ranks, in place (DDP's gradient reduction); undefined
    /// tensors (parameters without a gradient) are left out on every rank alike.
    pub fn average(&self, tensors: &[Tensor]) -> Result<()> {
        self.allreduce(tensors, true, "gradient allreduce")
    }

    /// Sums `tensors` over the ranks, in place.
    pub fn sum(&self, tensors: &[Tensor]) -> Result<()> {
        self.allreduce(tensors, false, "allreduce")
    }

    fn allreduce(&self, tensors: &[Tensor], average: bool, what: &str) -> Result<()> {
        let Collective::Group(g) = self else { return Ok(()) };
        let ptrs: Vec<*mut c_void> = tensors.iter().map(raw).collect();
        // SAFETY: live tensors for the duration of the call.
        let err = unsafe { sorbier_dist_allreduce(g.ptr, ptrs.as_ptr(), ptrs.len() as c_int, average as c_int, BUCKET_BYTES) };
        g.check(err, what)
    }

    /// Every rank's `tensors` become rank 0's, in place.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        let Collective::Group(g) = self else { return Ok(()) };
        let ptrs: Vec<*mut c_void> = tensors.iter().map(raw).collect();
        // SAFETY: live tensors for the duration of the call.
        let err = unsafe { sorbier_dist_broadcast(g.ptr, ptrs.as_ptr(), ptrs.len() as c_int, 0, BUCKET_BYTES) };
        g.check(err, "broadcast from rank 0")
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self) -> Result<()> {
        let Collective::Group(g) = self else { return Ok(()) };
        // SAFETY: a live group.
        let err = unsafe { sorbier_dist_barrier(g.ptr) };
        g.check(err, "barrier")
    }

    /// Sums `values` over the ranks (counts and loss sums; exact for integers below 2⁵³).
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        if matches!(self, Collective::Single) || values.is_empty() {
            return Ok(());
        }
        let t = Tensor::from_slice(values).to_kind(Kind::Double).to_device(self.device());
        self.sum(std::slice::from_ref(&t))?;
        let back = Vec::<f64>::try_from(&t.to_device(Device::Cpu)).context("cannot read an allreduced tensor")?;
        values.copy_from_slice(&back);
        Ok(())
    }

    /// Whether `flag` holds on every rank (a step runs only if every rank can take it).
    pub fn all(&self, flag: bool) -> Result<bool> {
        Ok(!self.any(!flag)?)
    }

    /// True on every rank when any rank passes true (a stop request seen by one rank stops all
    /// at the same step).
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [f64::from(u8::from(flag))];
        self.sum_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }

    /// The validation side's counts summed over the ranks, so the metrics are those of every
    /// image (each rank scored its own share).
    pub fn sum_metrics(&self, acc: MetricsAccumulator) -> Result<MetricsAccumulator> {
        if matches!(self, Collective::Single) {
            return Ok(acc);
        }
        let mut sums = acc.sums();
        self.sum_f64(&mut sums)?;
        MetricsAccumulator::from_sums(acc.num_classes(), &sums)
    }

    /// Where scalars travel: NCCL only moves CUDA tensors.
    fn device(&self) -> Device {
        match self {
            Collective::Group(g) => g.scalars,
            Collective::Single => Device::Cpu,
        }
    }
}

impl ProcessGroup {
    /// A failed collective's error, naming this rank and the ranks that were lost.
    fn check(&self, err: *mut c_char, what: &str) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        let lost = self.lost_ranks();
        check(err, || format!("{what} failed ({lost})"))
    }

    fn lost_ranks(&self) -> String {
        let mut out = vec![0 as c_int; self.world];
        // SAFETY: `out` holds `world` slots.
        let n = unsafe { sorbier_dist_lost_ranks(self.ptr, out.as_mut_ptr(), self.world as c_int) };
        match n {
            n if n < 0 && self.rank0_hosts_store => "lost rank 0: the rendezvous store it hosts cannot be reached".into(),
            n if n < 0 => "the launcher's rendezvous store cannot be reached".into(),
            0 => "every rank's heartbeat is alive: a peer failed or timed out".into(),
            n => {
                let list: Vec<String> = out[..n as usize].iter().map(|r| r.to_string()).collect();
                format!("lost rank {}: its heartbeat stopped", list.join(", rank "))
            }
        }
    }
}
