//! An exponential moving average of the weights (`--model-ema DECAY`), with the semantics of
//! timm's `ModelEmaV3`: after every optimiser step `k` (counted from 1, as timm's `train.py`
//! counts `num_updates`), every floating-point variable — BatchNorm running statistics
//! included — moves towards the model's, `ema ← ema + (1 − d_k)·(model − ema)` (one
//! `torch._foreach_lerp_`), with
//!
//! - `d_k = 0` at the first step (the average starts as a copy of the model);
//! - with warmup (`use_warmup=True`, on by default here): `d_k = min(decay, 1 − (1 + k − 1)^(−2/3))`
//!   — timm's `warmup_gamma = 1`, `warmup_power = 2/3`, `min_decay = 0`, `update_after_step = 0`;
//! - without: `d_k = decay`.
//!
//! Warmup matters for fine-tuning: a 15-epoch run on a small set takes a few hundred steps,
//! and a constant decay of 0.999 would leave the average three quarters made of the
//! pretrained weights it started from; with warmup the average covers about the last third
//! of the steps taken so far until the decay reaches its cap.
//!
//! The average lives in a second copy of the network (its own `VarStore`, never trained), so
//! validating it is an ordinary forward pass and saving it an ordinary checkpoint whose names
//! are the model's.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::model::{self, Net};
use sorbier::arch::NetSpec;
use crate::multi_tensor;

/// `--model-ema DECAY` and its warmup; recorded in `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    pub decay: f64,
    pub warmup: bool,
}

impl EmaConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.decay.is_finite() && (0.0..1.0).contains(&self.decay)) {
            bail!("--model-ema {} is not a decay in [0, 1): timm's usual values are 0.998–0.9999", self.decay);
        }
        Ok(())
    }

    /// `ModelEmaV3.get_decay(step)` for the `step`-th optimiser step (1-based).
    pub fn decay_at(&self, step: u64) -> f64 {
        let step = step.saturating_sub(1);
        if step == 0 {
            return 0.0;
        }
        if self.warmup {
            let d = 1.0 - (1.0 + step as f64).powf(-2.0 / 3.0);
            d.min(self.decay).max(0.0)
        } else {
            self.decay
        }
    }
}

/// The averaged network and the pairs of (average, model) variables it follows.
pub struct ModelEma {
    pub config: EmaConfig,
    pub vs: nn::VarStore,
    pub net: Net,
    /// Floating-point variables, averaged (name order).
    lerp: (Vec<Tensor>, Vec<Tensor>),
    /// Any other variable (none in today's networks): copied, as timm does.
    copy: (Vec<Tensor>, Vec<Tensor>),
}

impl ModelEma {
    /// A copy of the model's variables (`model_vs`, built from `spec`) as the starting average.
    pub fn new(config: EmaConfig, model_vs: &nn::VarStore, spec: &NetSpec, device: Device, channels_last: bool) -> Result<ModelEma> {
        config.check()?;
        let mut vs = nn::VarStore::new(device);
        // Dropout and drop-path rates do not matter: the average is only ever evaluated.
        let net = Net::new(&vs.root(), spec, 0.0);
        vs.freeze();
        if channels_last {
            model::memory_format::vars_to_channels_last(&vs)?;
        }
        let ours = named(&vs);
        let theirs = named(model_vs);
        if ours.len() != theirs.len() || ours.iter().zip(&theirs).any(|(a, b)| a.0 != b.0 || a.1.size() != b.1.size()) {
            bail!("the EMA copy of the network does not have the model's variables");
        }
        let (mut lerp, mut copy) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for ((_, e), (_, m)) in ours.into_iter().zip(theirs) {
            tch::no_grad(|| e.shallow_clone().copy_(&m));
            let side = if e.is_floating_point() { &mut lerp } else { &mut copy };
            side.0.push(e);
            side.1.push(m);
        }
        Ok(ModelEma { config, vs, net, lerp, copy })
    }

    /// The update after optimiser step `step` (1-based).
    pub fn update(&self, step: u64) -> Result<()> {
        let decay = self.config.decay_at(step);
        let (e, m): (Vec<&Tensor>, Vec<&Tensor>) = (self.lerp.0.iter().collect(), self.lerp.1.iter().collect());
        tch::no_grad(|| multi_tensor::foreach_lerp(&e, &m, 1.0 - decay))?;
        for (e, m) in self.copy.0.iter().zip(&self.copy.1) {
            tch::no_grad(|| e.shallow_clone().copy_(m));
        }
        Ok(())
    }
}

fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v = vs.variables().into_iter().collect::<Vec<_>>();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_model_ema_v3() {
        let warm = EmaConfig { decay: 0.999, warmup: true };
        let flat = EmaConfig { decay: 0.999, warmup: false };
        // Steps 0 and 1: a copy of the model.
        for c in [warm, flat] {
            assert_eq!(c.decay_at(0), 0.0);
            assert_eq!(c.decay_at(1), 0.0);
        }
        assert_eq!(flat.decay_at(2), 0.999);
        // timm: 1 - (1 + step/1)^(-2/3) with step = k - 1.
        assert!((warm.decay_at(2) - (1.0 - 2f64.powf(-2.0 / 3.0))).abs() < 1e-15);
        assert!((warm.decay_at(101) - (1.0 - 101f64.powf(-2.0 / 3.0))).abs() < 1e-15);
        // Capped at the decay.
        assert_eq!(warm.decay_at(10_000_000), 0.999);
        assert!(EmaConfig { decay: 1.0, warmup: true }.check().is_err());
        assert!(EmaConfig { decay: f64::NAN, warmup: true }.check().is_err());
        assert!(EmaConfig { decay: 0.0, warmup: false }.check().is_ok());
    }
}
