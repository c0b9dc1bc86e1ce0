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
//! Two implementations of each, chosen by [`OptimConfig::fused`]: the per-tensor loop above
//! (torch's `foreach=False` path, its default on CPU) and ATen's fused kernels through
//! [`multi_tensor`](super::multi_tensor) (`fused=True`: one kernel for every parameter, the
//! trainer's default). Both are checked against PyTorch's values for the same settings.
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

use super::multi_tensor;

/// Which optimiser (`--optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

sorbier::spelled!(OptimizerKind, "optimizer", [Adam, Adamw, Sgd]);

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
    /// One fused kernel for all parameters (`torch.optim.*(fused=True)`) instead of a loop of
    /// per-tensor ops. Same results up to float rounding; runs recorded before this field
    /// existed resume with the loop they used.
    #[serde(default)]
    pub fused: bool,
}

impl OptimConfig {
    pub fn new(kind: OptimizerKind) -> Self {
        OptimConfig { kind, weight_decay: 0.0, momentum: 0.0, nesterov: false, betas: (0.9, 0.999), eps: 1e-8, fused: true }
    }
}

/// One optimised variable and its state.
struct Param {
    name: String,
    var: Tensor,
    decay: bool,
    /// Multiplies the scheduled learning rate (e.g. a smaller one for a pretrained backbone).
    lr_scale: f64,
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
    /// `step` as a float32 scalar on the parameter's device, for the fused kernels (which
    /// increment it); rebuilt from `step` after a resume.
    step_tensor: Option<Tensor>,
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
        if let Some((name, _, _)) = params.iter().find(|(_, v, _)| !v.requires_grad()) {
            bail!("{name} does not require a gradient and cannot be optimised");
        }
        let params = params
            .into_iter()
            .map(|(name, var, decay)| Param { name, var, decay, lr_scale: 1.0, step: 0, exp_avg: None, exp_avg_sq: None, momentum_buffer: None, step_tensor: None })
            .collect();
        Ok(Optimizer { config, params })
    }

    /// Learning-rate multipliers by variable name (1 for all by default), as PyTorch's
    /// per-parameter-group `lr`: discriminative fine-tuning gives a pretrained backbone a
    /// fraction of the new head's rate.
    pub fn set_lr_scales(&mut self, scale: impl Fn(&str) -> f64) -> Result<()> {
        for p in &mut self.params {
            let s = scale(&p.name);
            if !(s.is_finite() && s >= 0.0) {
                bail!("learning-rate scale {s} of {} must be finite and not negative", p.name);
            }
            p.lr_scale = s;
        }
        Ok(())
    }

    /// Gradients of `loss` with respect to the optimised variables, in their order, from the
    /// autograd engine without touching the variables' `.grad` (as `torch.autograd.grad`):
    /// nothing to zero before the backward pass and no accumulation pass over every gradient
    /// after it — what `zero_grad(set_to_none=True)`, PyTorch's default, buys it. A variable
    /// the loss does not reach gets an undefined tensor, which [`step`](Self::step) skips.
    pub fn gradients(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        let vars: Vec<&Tensor> = self.params.iter().map(|p| &p.var).collect();
        Tensor::f_run_backward(&[loss], &vars, false, false).context("the backward pass failed")
    }

    /// One update with learning rate `lr` from `grads` (one per variable, as
    /// [`gradients`](Self::gradients) returns them); undefined gradients are skipped, as torch
    /// skips variables whose `.grad` is `None`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("{} gradients for {} optimised variables", grads.len(), self.params.len());
        }
        let c = self.config.clone();
        if c.fused {
            return tch::no_grad(|| self.fused_step(grads, lr));
        }
        tch::no_grad(|| {
            for (p, grad) in self.params.iter_mut().zip(grads) {
                if !grad.defined() {
                    continue;
                }
                let wd = if p.decay { c.weight_decay } else { 0.0 };
                let lr = lr * p.lr_scale;
                p.step += 1;
                match c.kind {
                    OptimizerKind::Adam | OptimizerKind::Adamw => adam(p, grad, lr, wd, &c),
                    OptimizerKind::Sgd => sgd(p, grad, lr, wd, &c),
                }
            }
        });
        Ok(())
    }

    /// The fused path: one kernel call per weight-decay group of the variables that have a
    /// gradient (two for SGD when some momentum buffers are new).
    fn fused_step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config.clone();
        // The fused kernels walk a parameter, its gradient and its state in memory order, so
        // they must share one layout; a gradient laid out unlike its parameter (channels-last
        // weights) is copied into the parameter's layout first.
        let grads: Vec<Tensor> = grads
            .iter()
            .zip(&self.params)
            .map(|(g, p)| {
                if g.defined() && g.stride() != p.var.stride() {
                    let mut same = p.var.empty_like();
                    same.f_copy_(g).map(|_| same)
                } else {
                    Ok(g.shallow_clone())
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        // One kernel call per (weight decay, learning-rate scale) group, as torch runs one per
        // parameter group.
        let mut groups: Vec<(bool, f64)> = Vec::new();
        for p in &self.params {
            if !groups.contains(&(p.decay, p.lr_scale)) {
                groups.push((p.decay, p.lr_scale));
            }
        }
        for (decay, scale) in groups {
            let wd = if decay { c.weight_decay } else { 0.0 };
            let lr = lr * scale;
            let ready: Vec<usize> = (0..self.params.len()).filter(|&i| self.params[i].decay == decay && self.params[i].lr_scale == scale && grads[i].defined()).collect();
            let grads_of = |idx: &[usize]| idx.iter().map(|&i| &grads[i]).collect::<Vec<_>>();
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    for &i in &ready {
                        let p = &mut self.params[i];
                        p.exp_avg.get_or_insert_with(|| p.var.zeros_like());
                        p.exp_avg_sq.get_or_insert_with(|| p.var.zeros_like());
                        let step = p.step as f32;
                        p.step_tensor.get_or_insert_with(|| Tensor::from(step).to_device(p.var.device()));
                    }
                    let ps: Vec<&Param> = ready.iter().map(|&i| &self.params[i]).collect();
                    let state = |f: fn(&Param) -> &Option<Tensor>| ps.iter().filter_map(|p| f(p).as_ref()).collect::<Vec<_>>();
                    multi_tensor::fused_adam(
                        &ps.iter().map(|p| &p.var).collect::<Vec<_>>(),
                        &grads_of(&ready),
                        &state(|p| &p.exp_avg),
                        &state(|p| &p.exp_avg_sq),
                        &state(|p| &p.step_tensor),
                        lr,
                        c.betas,
                        wd,
                        c.eps,
                        c.kind == OptimizerKind::Adamw,
                    )?;
                }
                OptimizerKind::Sgd => {
                    // torch's fused SGD takes one first-step flag per call: variables whose
                    // momentum buffer does not exist yet go in a call of their own.
                    for first in [false, true] {
                        let idx: Vec<usize> =
                            ready.iter().copied().filter(|&i| (c.momentum != 0.0 && self.params[i].momentum_buffer.is_none()) == first).collect();
                        if idx.is_empty() {
                            continue;
                        }
                        if first {
                            for &i in &idx {
                                let p = &mut self.params[i];
                                p.momentum_buffer = Some(p.var.empty_like());
                            }
                        }
                        let ps: Vec<&Param> = idx.iter().map(|&i| &self.params[i]).collect();
                        multi_tensor::fused_sgd(
                            &ps.iter().map(|p| &p.var).collect::<Vec<_>>(),
                            &grads_of(&idx),
                            &ps.iter().filter_map(|p| p.momentum_buffer.as_ref()).collect::<Vec<_>>(),
                            lr,
                            wd,
                            c.momentum,
                            c.nesterov,
                            first,
                        )?;
                    }
                }
            }
            for &i in &ready {
                self.params[i].step += 1;
            }
        }
        Ok(())
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
            p.step_tensor = None;
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
                        // In the parameter's own layout (channels-last weights), which the
                        // fused kernels expect of their state.
                        let mut state = p.var.empty_like();
                        state.f_copy_(&t).with_context(|| format!("optimiser state {key}/{}", p.name))?;
                        Some(state)
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
    // denom = √v / √(1−β2^t) + ε, built in one buffer; then p += m / (denom / −step_size).
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_(bias_correction2_sqrt);
    let _ = denom.g_add_scalar_(c.eps);
    let _ = denom.g_div_scalar_(-step_size);
    if let Some(m) = &p.exp_avg {
        let _ = var.addcdiv_(m, &denom);
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

/// Clamps every gradient element to `[-clip, clip]` in place (`clip_grad_value_`, one
/// foreach kernel for all gradients).
pub fn clip_grad_value(grads: &[Tensor], clip: f64) -> Result<()> {
    let grads: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return Ok(());
    }
    tch::no_grad(|| multi_tensor::clip_grad_value(&grads, clip))
}

/// Scales gradients in place so their total L2 norm is at most `max_norm` (`clip_grad_norm_`
/// with torch's foreach kernels); returns the total norm before clipping.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<f64> {
    let grads: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let total = tch::no_grad(|| multi_tensor::clip_grad_norm(&grads, max_norm))?;
    f64::try_from(total.to_kind(Kind::Double)).context("cannot read the gradient norm")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    #[test]
    fn gradients_leave_grad_alone_and_unreached_variables_are_skipped() {
        for fused in [false, true] {
            let (a, b) = (var(&[1.0, 2.0]), var(&[3.0]));
            let params = vec![("a".to_string(), a.shallow_clone(), true), ("b".to_string(), b.shallow_clone(), true)];
            let mut c = OptimConfig::new(OptimizerKind::Sgd);
            c.fused = fused;
            let mut opt = Optimizer::new(c, params).unwrap();
            // loss = 3·a0 + 5·a1; b is not used.
            let loss = (&a * Tensor::from_slice(&[3f32, 5.0])).sum(Kind::Float);
            let grads = opt.gradients(&loss).unwrap();
            assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), [3.0, 5.0]);
            assert!(!grads[1].defined(), "b is not reached by the loss");
            assert!(!a.grad().defined(), "no accumulation into .grad");
            opt.step(&grads, 0.5).unwrap();
            assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [-0.5, -0.5], "fused {fused}");
            assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [3.0], "fused {fused}");
            assert_eq!(opt.steps(), BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 0)]));
            let err = opt.step(&grads[..1], 0.5).unwrap_err().to_string();
            assert!(err.contains("1 gradients for 2"), "{err}");
        }
    }

    /// A resumed fused optimiser rebuilds its step tensors from the saved counts: the fourth
    /// step after a save/load equals the fourth step of an uninterrupted one, bit for bit.
    /// A scaled variable moves exactly as it would alone at `lr · scale` (torch's per-group
    /// `lr`), in both implementations and for every optimiser.
    #[test]
    fn lr_scales_act_as_parameter_groups() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Adamw, OptimizerKind::Sgd] {
            for fused in [false, true] {
                let mut c = OptimConfig::new(kind);
                c.fused = fused;
                c.weight_decay = 0.01;
                c.momentum = if kind == OptimizerKind::Sgd { 0.9 } else { 0.0 };
                let run = |scales: &[(&str, f64)], names: &[&str], lr: f64| {
                    let vars: Vec<Tensor> = names.iter().map(|n| var(if *n == "head" { &[1.0, -2.0] } else { &[0.5, 3.0] })).collect();
                    let params = names.iter().zip(&vars).map(|(n, v)| (n.to_string(), v.shallow_clone(), true)).collect();
                    let mut opt = Optimizer::new(c.clone(), params).unwrap();
                    let map: BTreeMap<&str, f64> = scales.iter().copied().collect();
                    opt.set_lr_scales(|n| map.get(n).copied().unwrap_or(1.0)).unwrap();
                    for _ in 0..3 {
                        let loss = vars.iter().map(|v| (v * v * Tensor::from_slice(&[1.5f32, -0.5])).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
                        let grads = opt.gradients(&loss).unwrap();
                        opt.step(&grads, lr).unwrap();
                    }
                    vars.iter().map(|v| Vec::<f32>::try_from(v).unwrap()).collect::<Vec<_>>()
                };
                let both = run(&[("backbone", 0.1)], &["backbone", "head"], 0.05);
                let backbone_alone = run(&[], &["backbone"], 0.005);
                let head_alone = run(&[], &["head"], 0.05);
                let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6);
                assert!(close(&both[0], &backbone_alone[0]), "{kind:?} fused {fused}: {both:?} vs {backbone_alone:?}");
                assert!(close(&both[1], &head_alone[0]), "{kind:?} fused {fused}");
                assert!(!close(&both[0], &run(&[], &["backbone"], 0.05)[0]), "the scale changed nothing");
            }
        }
        let mut opt = Optimizer::new(OptimConfig::new(OptimizerKind::Adam), vec![("a".into(), var(&[1.0]), true)]).unwrap();
        assert!(opt.set_lr_scales(|_| f64::NAN).is_err());
    }

    #[test]
    fn fused_adam_resumes_exactly() {
        let make = || {
            let v = var(&[0.5, -1.0, 2.0]);
            let opt = Optimizer::new(OptimConfig::new(OptimizerKind::Adamw), vec![("w".into(), v.shallow_clone(), true)]).unwrap();
            (v, opt)
        };
        let step = |v: &Tensor, opt: &mut Optimizer, k: f32| {
            let loss = (v * Tensor::from_slice(&[k, -2.0 * k, 0.5])).sum(Kind::Float) + (v * v).sum(Kind::Float);
            let g = opt.gradients(&loss).unwrap();
            opt.step(&g, 0.1).unwrap();
        };
        let (va, mut a) = make();
        for k in 0..3 {
            step(&va, &mut a, k as f32);
        }
        let (vb, mut b) = make();
        tch::no_grad(|| vb.shallow_clone().copy_(&va));
        b.load_state(a.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect(), &a.steps()).unwrap();
        step(&va, &mut a, 3.0);
        step(&vb, &mut b, 3.0);
        assert!(va.equal(&vb), "{va:?} vs {vb:?}");
        assert_eq!(b.steps()["w"], 4);
    }

    #[test]
    fn a_variable_without_requires_grad_is_refused() {
        let frozen = Tensor::from_slice(&[1f32]);
        let err = Optimizer::new(OptimConfig::new(OptimizerKind::Adam), vec![("bn.running_mean".into(), frozen, false)]).err().unwrap();
        assert!(err.to_string().contains("bn.running_mean does not require a gradient"), "{err}");
    }
}
