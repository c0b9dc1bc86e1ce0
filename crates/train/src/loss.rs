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
}
