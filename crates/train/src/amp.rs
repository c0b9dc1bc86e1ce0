//! Dynamic loss scaling for fp16 mixed precision, as `torch.amp.GradScaler` does it: the loss
//! is multiplied by a scale (2¹⁶ at first) before the backward pass; the gradients are divided
//! by it again (one foreach kernel) and checked for inf/NaN. A step with a non-finite gradient
//! is skipped and the scale halves; after `growth_interval` finite steps in a row it doubles.
//! The scale and the run of finite steps are saved with every checkpoint.
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::multi_tensor;
use super::optim::Optimizer;

/// GradScaler's defaults.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Finite steps since the scale last changed (GradScaler's `_growth_tracker`).
    pub growth_tracker: u32,
    pub growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: INIT_SCALE, growth_tracker: 0, growth_interval: GROWTH_INTERVAL }
    }
}

impl LossScaler {
    /// The unscaled gradients of `loss`, or `None` when one of them is not finite: then the
    /// step must be skipped (the scale has already been halved). `reduce` sees the scaled
    /// gradients first (data-parallel averaging), so every rank finds the same overflow.
    pub fn gradients(&mut self, opt: &Optimizer, loss: &Tensor, reduce: impl FnOnce(&[Tensor]) -> Result<()>) -> Result<Option<Vec<Tensor>>> {
        let grads = opt.gradients(&(loss * self.scale))?;
        reduce(&grads)?;
        let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        let found_inf = tch::no_grad(|| multi_tensor::amp_unscale(&defined, self.scale))?.double_value(&[]) != 0.0;
        self.update(found_inf);
        Ok((!found_inf).then_some(grads))
    }

    /// `torch._amp_update_scale_`: backoff ×0.5 on inf/NaN, growth ×2 after
    /// `growth_interval` finite steps.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimConfig, OptimizerKind};
    use tch::Kind;

    #[test]
    fn skips_non_finite_steps_and_returns_unscaled_gradients() {
        let w = Tensor::from_slice(&[1f32, 2.0]).set_requires_grad(true);
        let opt = Optimizer::new(OptimConfig::new(OptimizerKind::Sgd), vec![("w".into(), w.shallow_clone(), true)]).unwrap();
        let mut scaler = LossScaler { growth_interval: 2, ..Default::default() };
        // loss = 3·w0 + 5·w1: finite at any scale.
        let loss = || (&w * Tensor::from_slice(&[3f32, 5.0])).sum(Kind::Float);
        let g = scaler.gradients(&opt, &loss(), |_| Ok(())).unwrap().expect("finite");
        assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), [3.0, 5.0], "unscaled");
        assert_eq!((scaler.scale, scaler.growth_tracker), (INIT_SCALE, 1));
        scaler.gradients(&opt, &loss(), |_| Ok(())).unwrap().expect("finite");
        assert_eq!((scaler.scale, scaler.growth_tracker), (2.0 * INIT_SCALE, 0), "grew after 2 finite steps");
        // 1e35·w overflows float32 once scaled by 2^17: the step is skipped, the scale halves.
        let huge = (&w * 1e35).sum(Kind::Float);
        assert!(scaler.gradients(&opt, &huge, |_| Ok(())).unwrap().is_none());
        assert_eq!((scaler.scale, scaler.growth_tracker), (INIT_SCALE, 0));
    }
}
