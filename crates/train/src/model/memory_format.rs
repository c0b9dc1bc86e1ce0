//! Channels-last (NHWC) layout for training (`--channels-last`), through `csrc/memory_format.cpp`
//! because tch's `contiguous()` takes no memory format. Convolutions on channels-last tensors
//! use oneDNN's NHWC kernels on CPU and cuDNN's tensor-core-friendly NHWC path on CUDA; the
//! model's 4-D weights and every input batch are converted, and layers keep the layout.
//!
//! Nothing outside training sees the layout: checkpoints are written in the default layout
//! (`save_safetensors` makes every tensor contiguous), loading copies into whatever layout a
//! variable has, and optimiser state follows its parameter's layout.
use std::ffi::{c_char, c_int, c_void};

use anyhow::{bail, Result};
use tch::{nn, Tensor};

use super::shim;

extern "C" {
    fn sorbier_contiguous_as(t: *mut c_void, channels_last: c_int, out: *mut *mut c_void) -> *mut c_char;
    fn sorbier_is_channels_last(t: *mut c_void) -> c_int;
}

/// `t` in channels-last layout (`t.contiguous(memory_format=torch.channels_last)`); 4-D only.
pub fn channels_last(t: &Tensor) -> Result<Tensor> {
    contiguous_as(t, true)
}

/// `t` in the default contiguous layout.
pub fn standard_layout(t: &Tensor) -> Result<Tensor> {
    contiguous_as(t, false)
}

fn contiguous_as(t: &Tensor, channels_last: bool) -> Result<Tensor> {
    if channels_last && t.dim() != 4 {
        bail!("channels-last needs a 4-D tensor, got shape {:?}", t.size());
    }
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tch tensor; on success `out` is a new heap at::Tensor we own.
    let e = unsafe { sorbier_contiguous_as(shim::raw(t), channels_last as c_int, &mut out) };
    shim::check(e, || format!("cannot change the memory format of a {:?} tensor", t.size()))?;
    // SAFETY: allocated by the shim on success.
    Ok(unsafe { shim::adopt(out) })
}

/// Whether `t` is dense in channels-last order.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: `t` is a live tch tensor; the call only reads its strides.
    t.defined() && unsafe { sorbier_is_channels_last(shim::raw(t)) } == 1
}

/// Re-lays every 4-D variable of `vs` (the convolution weights) in channels-last order, in
/// place (`set_data`, as `model.to(memory_format=torch.channels_last)`); returns how many
/// needed it (a 1×1 convolution from contiguous channels already is both layouts).
pub fn vars_to_channels_last(vs: &nn::VarStore) -> Result<usize> {
    let mut n = 0;
    for (name, mut var) in vs.variables() {
        if var.dim() == 4 && !is_channels_last(&var) {
            let cl = tch::no_grad(|| channels_last(&var)).map_err(|e| e.context(format!("variable {name}")))?;
            var.set_data(&cl);
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn layouts_convert_and_keep_values() {
        let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        assert!(!is_channels_last(&x));
        let cl = channels_last(&x).unwrap();
        assert!(is_channels_last(&cl));
        assert_eq!(cl.stride(), [60, 1, 15, 3], "NHWC strides");
        assert!(cl.equal(&x), "same values, different layout");
        let back = standard_layout(&cl).unwrap();
        assert_eq!(back.stride(), [60, 20, 5, 1]);
        let err = channels_last(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("4-D"), "{err}");
    }

    #[test]
    fn variables_are_relaid_in_place_and_keep_requires_grad() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().randn("w", &[4, 3, 3, 3], 0.0, 1.0);
        let b = vs.root().zeros("b", &[4]);
        let before = w.copy();
        assert_eq!(vars_to_channels_last(&vs).unwrap(), 1);
        let vars = vs.variables();
        assert!(is_channels_last(&vars["w"]) && vars["w"].requires_grad());
        assert!(vars["w"].equal(&before));
        assert!(is_channels_last(&w), "the model's own handle sees the new layout");
        assert!(!is_channels_last(&b));
        assert_eq!(vars_to_channels_last(&vs).unwrap(), 0, "already converted");
    }

    /// One training-mode forward and backward of a ResNet-18: the channels-last gradients
    /// agree with the default layout's to float32 rounding (both within ~2e-5 of float64).
    #[test]
    fn a_channels_last_resnet_has_the_same_gradients() {
        use sorbier::arch::Arch;
        use crate::model::Net;
        use tch::nn::ModuleT;
        let x = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0]);
        // One set of initial weights for both (the global RNG is shared with parallel tests).
        let init = nn::VarStore::new(Device::Cpu);
        let _ = Net::new(&init.root(), &Arch::Resnet18.spec(5), 0.0);
        let grads = |channels_last: bool| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let net = Net::new(&vs.root(), &Arch::Resnet18.spec(5), 0.0);
            vs.copy(&init).unwrap();
            let x = if channels_last {
                // 20 convolutions, of which the three 1×1 downsamples are already both layouts.
                assert_eq!(vars_to_channels_last(&vs).unwrap(), 17);
                super::channels_last(&x).unwrap()
            } else {
                x.shallow_clone()
            };
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
            let g = Tensor::run_backward(&[&loss], &vars.iter().map(|(_, v)| v).collect::<Vec<_>>(), false, false);
            (loss.double_value(&[]), vars.into_iter().map(|(n, _)| n).zip(g).collect::<Vec<_>>())
        };
        let ((la, ga), (lb, gb)) = (grads(false), grads(true));
        assert!((la - lb).abs() < 1e-5, "loss {la} vs {lb}");
        for ((name, a), (_, b)) in ga.iter().zip(&gb) {
            let rel = (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]).max(1e-12);
            // 1e-3: once in a CI run (tests in parallel on 2 cores) a tensor exceeded 1e-4; typical 2e-5.
            assert!(rel < 1e-3, "{name}: gradients differ by {rel:.2e} (relative to the largest)");
        }
    }
}
