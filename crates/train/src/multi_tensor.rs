//! Safe wrappers over `csrc/multi_tensor.cpp`: ATen's fused optimiser kernels
//! (`_fused_adam_`, `_fused_adamw_`, `_fused_sgd_`), the AMP unscale-and-check kernel and the
//! foreach clipping ops, none of which tch wraps. One call updates every parameter; on CUDA
//! that is a few multi-tensor launches instead of ~10 kernels per parameter (ResNet-152 has
//! 467 parameter tensors), on CPU one vectorised pass (ResNet-18's Adam step on 2 cores:
//! about 7 ms fused against 17 ms for the per-tensor loop).
//!
//! The tensors must be defined, on one device, and (for the optimiser) float parameters with
//! gradients of their own dtype and shape; ATen checks this and its message comes back as an
//! error.
use std::ffi::{c_char, c_int, c_void};

use anyhow::{bail, Result};
use tch::Tensor;

use crate::model::shim;

extern "C" {
    fn sorbier_fused_adam(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
    ) -> *mut c_char;
    fn sorbier_fused_sgd(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        buffers: *const *mut c_void,
        n: c_int,
        lr: f64,
        weight_decay: f64,
        momentum: f64,
        nesterov: c_int,
        is_first_step: c_int,
    ) -> *mut c_char;
    fn sorbier_amp_unscale(
        grads: *const *mut c_void,
        n: c_int,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
    ) -> *mut c_char;
    fn sorbier_clip_grad_norm(
        grads: *const *mut c_void,
        n: c_int,
        max_norm: f64,
        total_out: *mut *mut c_void,
    ) -> *mut c_char;
    fn sorbier_clip_grad_value(grads: *const *mut c_void, n: c_int, clip: f64) -> *mut c_char;
    fn sorbier_foreach_lerp(ema: *const *mut c_void, model: *const *mut c_void, n: c_int, weight: f64) -> *mut c_char;
}

/// The C++ objects behind tch tensors. The kernels mutate them in place, which is what the
/// tensors' owners expect (parameters, optimiser state, gradients).
fn ptrs(ts: &[&Tensor]) -> Result<Vec<*mut c_void>> {
    if let Some(i) = ts.iter().position(|t| !t.defined()) {
        bail!("tensor {i} of {} is undefined", ts.len());
    }
    Ok(ts.iter().map(|t| shim::raw(t)).collect())
}

fn count(n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| anyhow::anyhow!("{n} tensors are too many for one call"))
}

fn check(error: *mut c_char, what: &str) -> Result<()> {
    shim::check(error, || what.to_string())
}

fn same_len(what: &str, n: usize, others: &[usize]) -> Result<()> {
    if others.iter().any(|&m| m != n) {
        bail!("{what}: lists of different lengths ({n} parameters, {others:?})");
    }
    Ok(())
}

/// One Adam (`decoupled = false`, L2 decay in the gradient) or AdamW step over all `params`,
/// as `torch.optim.Adam(fused=True)`. `steps` are float32 scalars on the parameters' device,
/// incremented by one before the update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<()> {
    same_len(
        "fused Adam",
        params.len(),
        &[grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()],
    )?;
    if params.is_empty() {
        return Ok(());
    }
    let (p, g, m, v, s) = (
        ptrs(params)?,
        ptrs(grads)?,
        ptrs(exp_avgs)?,
        ptrs(exp_avg_sqs)?,
        ptrs(steps)?,
    );
    // SAFETY: every pointer is a live tch tensor borrowed for the duration of the call.
    let e = unsafe {
        sorbier_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            count(p.len())?,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            decoupled as c_int,
        )
    };
    check(
        e,
        if decoupled {
            "fused AdamW step"
        } else {
            "fused Adam step"
        },
    )
}

/// One SGD step over all `params` (dampening 0), as `torch.optim.SGD(fused=True)`. With
/// momentum, `buffers` has one tensor per parameter; `is_first_step` fills them from the
/// gradients (their contents are ignored then).
#[allow(clippy::too_many_arguments)]
pub fn fused_sgd(
    params: &[&Tensor],
    grads: &[&Tensor],
    buffers: &[&Tensor],
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
    is_first_step: bool,
) -> Result<()> {
    same_len("fused SGD", params.len(), &[grads.len()])?;
    if momentum != 0.0 {
        same_len("fused SGD momentum buffers", params.len(), &[buffers.len()])?;
    }
    if params.is_empty() {
        return Ok(());
    }
    let (p, g) = (ptrs(params)?, ptrs(grads)?);
    let b = if momentum != 0.0 {
        ptrs(buffers)?
    } else {
        Vec::new()
    };
    // SAFETY: as in `fused_adam`; `b` is only read when momentum is non-zero.
    let e = unsafe {
        sorbier_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            count(p.len())?,
            lr,
            weight_decay,
            momentum,
            nesterov as c_int,
            is_first_step as c_int,
        )
    };
    check(e, "fused SGD step")
}

/// Multiplies every gradient by `1/scale` in place and returns a float32 scalar (on the
/// gradients' device) that is 1 if any element was inf or NaN, else 0 (`GradScaler.unscale_`).
pub fn amp_unscale(grads: &[&Tensor], scale: f64) -> Result<Tensor> {
    let device = match grads.first() {
        Some(g) => g.device(),
        None => return Ok(Tensor::zeros([], (tch::Kind::Float, tch::Device::Cpu))),
    };
    let mut found_inf = Tensor::zeros([], (tch::Kind::Float, device));
    let mut inv_scale = Tensor::from(1.0f32 / scale as f32).to_device(device);
    let g = ptrs(grads)?;
    // SAFETY: as in `fused_adam`; `found_inf` and `inv_scale` live across the call.
    let e = unsafe {
        sorbier_amp_unscale(
            g.as_ptr(),
            count(g.len())?,
            found_inf.as_mut_ptr() as *mut c_void,
            inv_scale.as_mut_ptr() as *mut c_void,
        )
    };
    check(e, "unscaling the gradients")?;
    Ok(found_inf)
}

/// `clip_grad_norm_(foreach=True)` in place; returns the total norm before clipping as a
/// scalar tensor on the gradients' device (reading it is the caller's choice of a sync).
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    let g = ptrs(grads)?;
    let mut total: *mut c_void = std::ptr::null_mut();
    // SAFETY: as in `fused_adam`; on success `total` is a new heap tensor that we own.
    let e = unsafe { sorbier_clip_grad_norm(g.as_ptr(), count(g.len())?, max_norm, &mut total) };
    check(e, "clipping the gradient norm")?;
    if total.is_null() {
        bail!("clipping the gradient norm returned no norm");
    }
    // SAFETY: allocated by the shim on success.
    Ok(unsafe { shim::adopt(total) })
}

/// `clip_grad_value_(foreach=True)` in place: every element clamped to `[-clip, clip]`.
pub fn clip_grad_value(grads: &[&Tensor], clip: f64) -> Result<()> {
    let g = ptrs(grads)?;
    // SAFETY: as in `fused_adam`.
    let e = unsafe { sorbier_clip_grad_value(g.as_ptr(), count(g.len())?, clip) };
    check(e, "clipping the gradient values")
}

/// `torch._foreach_lerp_(ema, model, weight)`: `ema += weight · (model − ema)` for every
/// pair, in place — the update of timm's `ModelEmaV3` (`weight = 1 − decay`).
pub fn foreach_lerp(ema: &[&Tensor], model: &[&Tensor], weight: f64) -> Result<()> {
    same_len("EMA update", ema.len(), &[model.len()])?;
    let (e, m) = (ptrs(ema)?, ptrs(model)?);
    // SAFETY: as in `fused_adam`.
    let err = unsafe { sorbier_foreach_lerp(e.as_ptr(), m.as_ptr(), count(e.len())?, weight) };
    check(err, "EMA update")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn unscale_divides_and_flags_non_finite_values() {
        let (a, b) = (Tensor::from_slice(&[2f32, -4.0]), Tensor::from_slice(&[8f32]));
        let found = amp_unscale(&[&a, &b], 4.0).unwrap();
        assert_eq!(found.double_value(&[]), 0.0);
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [0.5, -1.0]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [2.0]);
        let c = Tensor::from_slice(&[1f32, f32::INFINITY]);
        assert_eq!(amp_unscale(&[&a, &c], 2.0).unwrap().double_value(&[]), 1.0);
        let n = Tensor::from_slice(&[f32::NAN]);
        assert_eq!(amp_unscale(&[&n], 2.0).unwrap().double_value(&[]), 1.0);
    }

    #[test]
    fn aten_errors_come_back_as_errors() {
        let p = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        let g = Tensor::zeros([3], (Kind::Double, tch::Device::Cpu));
        let (m, v, s) = (p.zeros_like(), p.zeros_like(), Tensor::from(0f32));
        let err = fused_adam(&[&p], &[&g], &[&m], &[&v], &[&s], 0.1, (0.9, 0.999), 0.0, 1e-8, false).unwrap_err();
        assert!(err.to_string().starts_with("fused Adam step: "), "{err:#}");
        let err = fused_adam(&[&p], &[], &[&m], &[&v], &[&s], 0.1, (0.9, 0.999), 0.0, 1e-8, false).unwrap_err();
        assert!(err.to_string().contains("different lengths"), "{err:#}");
        let undefined = Tensor::new();
        let err = clip_grad_value(&[&undefined], 1.0).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err:#}");
    }
}
