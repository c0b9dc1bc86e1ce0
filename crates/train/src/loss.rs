//! The training loss: cross-entropy with optional label smoothing (Szegedy et al. 2016) and
//! optional per-class weights, through libtorch's own `cross_entropy_loss` — the op behind
//! PyTorch's `F.cross_entropy(weight=…, label_smoothing=…)`, so the semantics are PyTorch's
//! (with weights, the mean divides by the summed weight of the targets).
//!
//! Class weights from the training split's class sizes `n_c`, normalised to mean 1 over the
//! classes present (absent classes get 0, they never appear as targets):
//! - `inverse`: `w_c ∝ 1 / n_c`;
//! - `effective`: `w_c ∝ (1 − β) / (1 − β^n_c)`, the "effective number of samples" of
//!   Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples".
use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

/// Class weighting of the loss (`--class-weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    None,
    Inverse,
    Effective,
}

sorbier::spelled!(ClassWeights, "class weighting", [None, Inverse, Effective]);

/// Per-class weights for `counts` (training images per class); `None` for [`ClassWeights::None`].
pub fn class_weights(kind: ClassWeights, counts: &[usize], beta: f64) -> Option<Vec<f64>> {
    let raw: Vec<f64> = match kind {
        ClassWeights::None => return None,
        ClassWeights::Inverse => counts.iter().map(|&n| if n == 0 { 0.0 } else { 1.0 / n as f64 }).collect(),
        ClassWeights::Effective => counts
            .iter()
            .map(|&n| if n == 0 { 0.0 } else { (1.0 - beta) / (1.0 - beta.powi(n as i32)) })
            .collect(),
    };
    let present = counts.iter().filter(|&&n| n > 0).count().max(1);
    let mean = raw.iter().sum::<f64>() / present as f64;
    Some(raw.iter().map(|w| if mean > 0.0 { w / mean } else { 0.0 }).collect())
}

/// Mean cross-entropy of `logits` (N×C) against `targets` (N, int64).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, weight: Option<&Tensor>, label_smoothing: f64) -> Tensor {
    logits.cross_entropy_loss(targets, weight, Reduction::Mean, -100, label_smoothing)
}

/// Mean cross-entropy of `logits` (N×C) against probability targets (N×C, each row summing
/// to one, label smoothing already inside them): `−Σ_c w_c·t_c·log p_c` averaged over the
/// batch — timm's `SoftTargetCrossEntropy` when `weight` is `None`, PyTorch's
/// `F.cross_entropy(weight=w)` for probability targets otherwise.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, weight: Option<&Tensor>) -> Tensor {
    logits.cross_entropy_loss(targets, weight, Reduction::Mean, -100, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised_and_ordered() {
        let w = class_weights(ClassWeights::Inverse, &[400, 100, 0, 20], 0.0).unwrap();
        let mean = (w[0] + w[1] + w[3]) / 3.0;
        assert!((mean - 1.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        assert!((w[3] / w[0] - 20.0).abs() < 1e-9);
        let e = class_weights(ClassWeights::Effective, &[400, 100, 20], 0.999).unwrap();
        assert!(e[0] < e[1] && e[1] < e[2]);
        // β → 0 gives equal weights; β → 1 approaches inverse frequency.
        let flat = class_weights(ClassWeights::Effective, &[400, 100, 20], 1e-9).unwrap();
        assert!(flat.iter().all(|w| (w - 1.0).abs() < 1e-6));
        let inv = class_weights(ClassWeights::Inverse, &[400, 100, 20], 0.0).unwrap();
        let near = class_weights(ClassWeights::Effective, &[400, 100, 20], 1.0 - 1e-9).unwrap();
        assert!(near.iter().zip(&inv).all(|(a, b)| (a - b).abs() < 1e-4), "{near:?} {inv:?}");
        assert!(class_weights(ClassWeights::None, &[1], 0.9).is_none());
    }

    #[test]
    fn soft_targets_are_timms_soft_target_cross_entropy_and_one_hot_is_the_hard_loss() {
        let logits = Tensor::from_slice(&[1.0f32, -0.5, 2.0, 0.3, 0.0, -1.0]).view([2, 3]);
        let t = Tensor::from_slice(&[0.7f32, 0.3, 0.0, 0.1, 0.1, 0.8]).view([2, 3]);
        // timm: torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1).mean()
        let want = (-(&t * logits.log_softmax(-1, tch::Kind::Float))).sum_dim_intlist(-1, false, tch::Kind::Float).mean(tch::Kind::Float);
        let got = soft_cross_entropy(&logits, &t, None);
        assert!((got.double_value(&[]) - want.double_value(&[])).abs() < 1e-6);
        // Class weights weigh each class's share; the mean divides by the batch size.
        let w = Tensor::from_slice(&[2.0f32, 1.0, 0.5]);
        let wt = &t * w.view([1, 3]);
        let want_w = (-(&wt * logits.log_softmax(-1, tch::Kind::Float))).sum_dim_intlist(-1, false, tch::Kind::Float).mean(tch::Kind::Float);
        assert!((soft_cross_entropy(&logits, &t, Some(&w)).double_value(&[]) - want_w.double_value(&[])).abs() < 1e-6);
        // One-hot targets: the hard-label loss (unweighted).
        let y = Tensor::from_slice(&[2i64, 0]);
        let one_hot = Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)).scatter_value(1, &y.view([-1, 1]), 1.0);
        let hard = cross_entropy(&logits, &y, None, 0.0).double_value(&[]);
        assert!((soft_cross_entropy(&logits, &one_hot, None).double_value(&[]) - hard).abs() < 1e-6);
    }
}
