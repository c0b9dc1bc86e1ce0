//! Optimisers and gradient clipping with tch tensor ops, following `torch.optim` exactly
//! (single-tensor, non-fused code paths of torch 2.x):
//!
//! - `Adam`: L2 weight decay added to the gradient (`g += wd·p`), then
//!   `m = lerp(m, g, 1−β1)`, `v = β2·v + (1−β2)·g²`,
//!   `p −= lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps)`.
//! - `AdamW` (Loshchilov & Hutter): decoupled decay `p ·= 1 − lr·wd` first, then Adam without L2.
//! - `SGD` with momentum (dampening 0) and optional Nesterov: `g += wd·p`; `b = g` on the first
//!   step, else `b = μ·b + g`; `g = g + μ·b` (Nesterov) or `b`; `p −= lr·g`.
//!
//! Our own rather than `tch::nn::Optimizer` because the state (step counts, `exp_avg`,
//! `exp_avg_sq`, `momentum_buffer`) must be saved with every checkpoint for an exact `--resume`,
//! and tch cannot export its optimiser's state. Each parameter carries a decay flag, so norm
//! and bias vectors can be exempted from weight decay.
//!
//! Clipping follows `torch.nn.utils`: `clip_grad_value_` clamps each element to ±v;
//! `clip_grad_norm_` scales all gradients by `min(1, max_norm / (‖g‖₂ + 1e-6))`, where ‖g‖₂ is the
//! L2 norm of the per-tensor L2 norms.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which optimiser (`--optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

/// Optimiser settings, recorded in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
    /// SGD momentum μ (0 = plain SGD).
    pub momentum: f64,
    pub nesterov: bool,
    /// Adam β1, β2.
    pub betas: (f64, f64),
    /// Adam ε.
    pub eps: f64,
}

impl OptimConfig {
    pub fn new(kind: OptimizerKind) -> Self {
        OptimConfig { kind, weight_decay: 0.0, momentum: 0.0, nesterov: false, betas: (0.9, 0.999), eps: 1e-8 }
    }
}

/// One optimised variable and its state.
struct Param {
    name: String,
    var: Tensor,
    decay: bool,
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
}

/// The optimiser: parameters in a fixed order with per-parameter state.
pub struct Optimizer {
    pub config: OptimConfig,
    params: Vec<Param>,
}

impl Optimizer {
    /// `params`: (name, variable, takes weight decay). The variables are updated in place.
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor, bool)>) -> Result<Self> {
        if config.nesterov && (config.kind != OptimizerKind::Sgd || config.momentum <= 0.0) {
            bail!("--nesterov needs --optimizer sgd with --momentum > 0");
        }
        let params = params
            .into_iter()
            .map(|(name, var, decay)| Param { name, var, decay, step: 0, exp_avg: None, exp_avg_sq: None, momentum_buffer: None })
            .collect();
        Ok(Optimizer { config, params })
    }

    /// The optimised variables (for clipping and zeroing gradients).
    pub fn vars(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// One update with learning rate `lr`; variables without a gradient are skipped, as torch does.
    pub fn step(&mut self, lr: f64) {
        let c = self.config.clone();
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let wd = if p.decay { c.weight_decay } else { 0.0 };
                p.step += 1;
                match c.kind {
                    OptimizerKind::Adam | OptimizerKind::Adamw => adam(p, &grad, lr, wd, &c),
                    OptimizerKind::Sgd => sgd(p, &grad, lr, wd, &c),
                }
            }
        })
    }

    /// State tensors under `exp_avg/<name>`, `exp_avg_sq/<name>`, `momentum_buffer/<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            for (key, t) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq), ("momentum_buffer", &p.momentum_buffer)] {
                if let Some(t) = t {
                    out.push((format!("{key}/{}", p.name), t.shallow_clone()));
                }
            }
        }
        out
    }

    /// Step count per parameter name.
    pub fn steps(&self) -> BTreeMap<String, u64> {
        self.params.iter().map(|p| (p.name.clone(), p.step)).collect()
    }

    /// Restores what [`state_tensors`](Self::state_tensors) and [`steps`](Self::steps) saved.
    /// Every saved tensor must belong to a parameter of the same shape, and every parameter
    /// that has taken steps must have its state.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: &BTreeMap<String, u64>) -> Result<()> {
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        for p in &mut self.params {
            p.step = steps.get(&p.name).copied().unwrap_or(0);
            let device = p.var.device();
            for key in ["exp_avg", "exp_avg_sq", "momentum_buffer"] {
                let slot = match key {
                    "exp_avg" => &mut p.exp_avg,
                    "exp_avg_sq" => &mut p.exp_avg_sq,
                    _ => &mut p.momentum_buffer,
                };
                *slot = match by_name.remove(&format!("{key}/{}", p.name)) {
                    Some(t) => {
                        if t.size() != p.var.size() {
                            bail!("optimiser state {key}/{} has shape {:?}, the parameter {:?}", p.name, t.size(), p.var.size());
                        }
                        Some(t.to_kind(p.var.kind()).to_device(device))
                    }
                    None => None,
                };
            }
            let needs = match self.config.kind {
                OptimizerKind::Sgd => self.config.momentum != 0.0 && p.momentum_buffer.is_none(),
                _ => p.exp_avg.is_none() || p.exp_avg_sq.is_none(),
            };
            if p.step > 0 && needs {
                bail!("optimiser state for {} is missing although it has taken {} steps", p.name, p.step);
            }
        }
        if let Some(name) = by_name.keys().next() {
            bail!("optimiser state {name} belongs to no parameter ({} unmatched)", by_name.len());
        }
        Ok(())
    }
}

fn adam(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, c: &OptimConfig) {
    let (b1, b2) = c.betas;
    let mut var = p.var.shallow_clone();
    let g = if c.kind == OptimizerKind::Adam && wd != 0.0 { grad + &var * wd } else { grad.shallow_clone() };
    if c.kind == OptimizerKind::Adamw && wd != 0.0 {
        let _ = var.g_mul_scalar_(1.0 - lr * wd);
    }
    let m = p.exp_avg.get_or_insert_with(|| var.zeros_like());
    let _ = m.lerp_(&g, 1.0 - b1);
    let v = p.exp_avg_sq.get_or_insert_with(|| var.zeros_like());
    let _ = v.g_mul_scalar_(b2);
    let _ = v.addcmul_(&(&g * (1.0 - b2)), &g);
    let t = p.step as f64;
    let bias_correction1 = 1.0 - b1.powf(t);
    let bias_correction2_sqrt = (1.0 - b2.powf(t)).sqrt();
    let step_size = lr / bias_correction1;
    let denom = (v.sqrt() / bias_correction2_sqrt) + c.eps;
    let m = p.exp_avg.as_ref().map(|m| m * -step_size);
    if let Some(m) = m {
        let _ = var.addcdiv_(&m, &denom);
    }
}

fn sgd(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, c: &OptimConfig) {
    let mut var = p.var.shallow_clone();
    let mut g = if wd != 0.0 { grad + &var * wd } else { grad.shallow_clone() };
    if c.momentum != 0.0 {
        let buf = match p.momentum_buffer.take() {
            None => g.detach().copy(),
            Some(mut b) => {
                let _ = b.g_mul_scalar_(c.momentum);
                let _ = b.g_add_(&g);
                b
            }
        };
        g = if c.nesterov { &g + &buf * c.momentum } else { buf.shallow_clone() };
        p.momentum_buffer = Some(buf);
    }
    let _ = var.g_add_(&(g * -lr));
}

/// Clamps every gradient element to `[-clip, clip]` (`clip_grad_value_`).
pub fn clip_grad_value(vars: &[Tensor], clip: f64) {
    tch::no_grad(|| {
        for v in vars {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.clamp_(-clip, clip);
            }
        }
    })
}

/// Scales gradients so their total L2 norm is at most `max_norm` (`clip_grad_norm_`);
/// returns the total norm before clipping.
pub fn clip_grad_norm(vars: &[Tensor], max_norm: f64) -> Result<f64> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars.iter().map(|v| v.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0).norm();
        // torch multiplies by the clamped coefficient even when it is 1, without a host sync.
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_(&coef.to_kind(g.kind()));
        }
        f64::try_from(total.to_kind(Kind::Double)).context("cannot read the gradient norm")
    })
}
