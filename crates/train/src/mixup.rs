//! Mixup and CutMix with soft targets, as timm's `Mixup` in its default batch mode
//! (`--mixup ALPHA`, `--cutmix ALPHA`, `--mixup-prob`, `--mixup-switch-prob`,
//! `--mixup-off-epoch`): one draw per batch, every image mixed with the batch reversed
//! (`x.flip(0)`).
//!
//! - With probability `prob` a batch is mixed; when both are on, CutMix is chosen with
//!   probability `switch_prob`; λ ~ Beta(α, α) of the chosen kind.
//! - Mixup: `x ← λ·x + (1 − λ)·flip(x)`.
//! - CutMix: a box of side `⌊H·√(1−λ)⌋ × ⌊W·√(1−λ)⌋` around a uniform centre, clipped to the
//!   image, is pasted from `flip(x)`; λ is then corrected to the pasted area
//!   (`1 − area / (H·W)`, timm's `correct_lam`).
//! - Targets: `λ·onehot(y) + (1 − λ)·onehot(flip(y))`, each one-hot smoothed by
//!   `--label-smoothing` (off value `ε/C`, on value `1 − ε + ε/C`), as timm's `mixup_target`.
//!   The loss is the soft-target cross-entropy (timm's `SoftTargetCrossEntropy`).
//!
//! With the rest of the recipe: weighted oversampling decides which images enter a batch, and
//! mixing pairs images of that batch, so the classes stay as balanced as the sampler made them;
//! class weights (`--class-weights`) weigh each class's share of the soft target, as
//! PyTorch's `F.cross_entropy(weight=w)` does for probability targets:
//! `−Σ_c w_c·t_c·log p_c`, averaged over the batch.
//!
//! Randomness: each batch's draw comes from its own generator seeded from `(seed, epoch,
//! step)`, so a run resumed mid-epoch draws what an uninterrupted one would. (timm draws from
//! NumPy's global generator; the distributions are the same, the streams are not.)
use anyhow::{bail, Result};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The mixing recipe; recorded in `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixupConfig {
    /// Beta(α, α) of mixup; 0 = no mixup.
    pub mixup_alpha: f64,
    /// Beta(α, α) of CutMix; 0 = no CutMix.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// Probability of CutMix rather than mixup when both are on.
    pub switch_prob: f64,
    /// Epoch (1-based count of completed epochs) from which batches are no longer mixed;
    /// `None`: every epoch. As timm's `--mixup-off-epoch`: mixing stops when `epoch ≥ off`
    /// with 0-based epochs.
    pub off_epoch: Option<usize>,
}

impl MixupConfig {
    pub fn check(&self) -> Result<()> {
        for (name, a) in [("--mixup", self.mixup_alpha), ("--cutmix", self.cutmix_alpha)] {
            if !(a.is_finite() && a >= 0.0) {
                bail!("{name} {a} is not a Beta parameter (≥ 0; 0 turns it off)");
            }
        }
        if self.mixup_alpha == 0.0 && self.cutmix_alpha == 0.0 {
            bail!("mixing needs --mixup or --cutmix above 0");
        }
        for (name, p) in [("--mixup-prob", self.prob), ("--mixup-switch-prob", self.switch_prob)] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} {p} is not a probability");
            }
        }
        Ok(())
    }

    /// Whether batches of `epoch` (0-based) are mixed.
    pub fn active(&self, epoch: usize) -> bool {
        self.off_epoch.is_none_or(|off| epoch < off)
    }

    /// timm's `_params_per_batch` and, for CutMix, `cutmix_bbox_and_lam` for an `h`×`w` batch.
    pub fn draw<R: Rng>(&self, h: i64, w: i64, rng: &mut R) -> Result<Mix> {
        if rng.random::<f64>() >= self.prob {
            return Ok(Mix::None);
        }
        let beta = |a: f64, rng: &mut R| -> Result<f64> { Ok(Beta::new(a, a).map_err(|e| anyhow::anyhow!("Beta({a}, {a}): {e}"))?.sample(rng)) };
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        if cutmix {
            let lam = beta(self.cutmix_alpha, rng)?;
            Ok(cutmix_box(h, w, lam, rng))
        } else {
            let lam = beta(self.mixup_alpha, rng)?;
            Ok(if lam == 1.0 { Mix::None } else { Mix::Mixup { lam } })
        }
    }
}

/// A CutMix box: rows `top..bottom`, columns `left..right` (timm's `yl, yh, xl, xh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Box {
    pub top: i64,
    pub bottom: i64,
    pub left: i64,
    pub right: i64,
}

/// One batch's mixing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    /// Not mixed (λ = 1).
    None,
    Mixup { lam: f64 },
    /// The pasted box and λ corrected to its area.
    Cutmix { area: Box, lam: f64 },
}

impl Mix {
    pub fn lam(&self) -> f64 {
        match self {
            Mix::None => 1.0,
            Mix::Mixup { lam } | Mix::Cutmix { lam, .. } => *lam,
        }
    }
}

/// timm's `rand_bbox` (no margin) and the area-corrected λ.
pub fn cutmix_box<R: Rng>(h: i64, w: i64, lam: f64, rng: &mut R) -> Mix {
    let ratio = (1.0 - lam).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let cy = rng.random_range(0..h.max(1));
    let cx = rng.random_range(0..w.max(1));
    let area = Box {
        top: (cy - cut_h / 2).clamp(0, h),
        bottom: (cy + cut_h / 2).clamp(0, h),
        left: (cx - cut_w / 2).clamp(0, w),
        right: (cx + cut_w / 2).clamp(0, w),
    };
    Mix::Cutmix { area, lam: corrected(area, h, w) }
}

/// `1 − box area / image area`.
pub fn corrected(b: Box, h: i64, w: i64) -> f64 {
    1.0 - ((b.bottom - b.top) * (b.right - b.left)) as f64 / (h * w) as f64
}

/// The mixed batch (`x`: N×C×H×W), as timm's `_mix_batch` computes it.
pub fn mix_images(x: &Tensor, mix: &Mix) -> Tensor {
    match *mix {
        Mix::None => x.shallow_clone(),
        Mix::Mixup { lam } => {
            let mut flipped = x.flip([0]);
            let _ = flipped.g_mul_scalar_(1.0 - lam);
            let mut out = x.copy();
            let _ = out.g_mul_scalar_(lam);
            let _ = out.g_add_(&flipped);
            out
        }
        Mix::Cutmix { area, .. } => {
            let out = x.copy();
            let flipped = x.flip([0]);
            let src = flipped.narrow(2, area.top, area.bottom - area.top).narrow(3, area.left, area.right - area.left);
            out.narrow(2, area.top, area.bottom - area.top).narrow(3, area.left, area.right - area.left).copy_(&src);
            out
        }
    }
}

/// timm's `mixup_target`: smoothed one-hot targets of `y` (int64, N) mixed with the batch
/// reversed by `lam`; float32 N×`classes` on `y`'s device.
pub fn mix_targets(y: &Tensor, classes: i64, lam: f64, smoothing: f64) -> Tensor {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let one_hot = |t: &Tensor| {
        let n = t.size()[0];
        Tensor::full([n, classes], off, (Kind::Float, t.device())).scatter_value(1, &t.view([-1, 1]), on)
    };
    let y1 = one_hot(y);
    let y2 = one_hot(&y.flip([0]));
    y1 * lam + y2 * (1.0 - lam)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn cfg(mixup: f64, cutmix: f64) -> MixupConfig {
        MixupConfig { mixup_alpha: mixup, cutmix_alpha: cutmix, prob: 1.0, switch_prob: 0.5, off_epoch: None }
    }

    #[test]
    fn draws_follow_the_probabilities_and_the_box_stays_inside() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut none, mut mixup, mut cut, mut lam_sum) = (0, 0, 0, 0.0);
        let c = MixupConfig { prob: 0.6, ..cfg(0.2, 1.0) };
        for _ in 0..4000 {
            match c.draw(20, 30, &mut rng).unwrap() {
                Mix::None => none += 1,
                Mix::Mixup { lam } => {
                    assert!((0.0..1.0).contains(&lam));
                    mixup += 1
                }
                Mix::Cutmix { area, lam } => {
                    assert!(0 <= area.top && area.top <= area.bottom && area.bottom <= 20);
                    assert!(0 <= area.left && area.left <= area.right && area.right <= 30);
                    assert_eq!(lam, corrected(area, 20, 30));
                    lam_sum += lam;
                    cut += 1
                }
            }
        }
        let n = 4000.0;
        assert!((none as f64 / n - 0.4).abs() < 0.03, "{none}");
        assert!((mixup as f64 / n - 0.3).abs() < 0.03 && (cut as f64 / n - 0.3).abs() < 0.03, "{mixup} {cut}");
        // Beta(1, 1) is uniform: the uncorrected mean is 0.5, clipping boxes at the border
        // raises the corrected one.
        let mean = lam_sum / cut as f64;
        assert!((0.5..0.75).contains(&mean), "{mean}");
        // Only one kind on: always that kind.
        assert!((0..100).all(|_| matches!(cfg(0.0, 1.0).draw(8, 8, &mut rng).unwrap(), Mix::Cutmix { .. })));
        assert!((0..100).all(|_| matches!(cfg(0.4, 0.0).draw(8, 8, &mut rng).unwrap(), Mix::Mixup { .. })));
        assert!((0..100).all(|_| MixupConfig { prob: 0.0, ..cfg(0.4, 1.0) }.draw(8, 8, &mut rng).unwrap() == Mix::None));
    }

    #[test]
    fn settings_are_checked_and_the_off_epoch_counts_from_zero() {
        assert!(cfg(0.0, 0.0).check().is_err());
        assert!(cfg(-1.0, 1.0).check().is_err());
        assert!(cfg(f64::NAN, 1.0).check().is_err());
        assert!(MixupConfig { prob: 1.5, ..cfg(0.2, 0.0) }.check().is_err());
        assert!(MixupConfig { switch_prob: -0.1, ..cfg(0.2, 0.0) }.check().is_err());
        assert!(cfg(0.2, 0.0).check().is_ok());
        let c = MixupConfig { off_epoch: Some(3), ..cfg(0.2, 0.0) };
        assert!(c.active(2) && !c.active(3) && cfg(0.2, 0.0).active(1000));
    }

    #[test]
    fn targets_sum_to_one_and_images_mix_linearly() {
        let y = Tensor::from_slice(&[0i64, 2, 1]);
        let t = mix_targets(&y, 4, 0.7, 0.1);
        let v = Vec::<f32>::try_from(t.view([-1])).unwrap();
        for row in v.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Row 0: 0.7 of class 0 and 0.3 of class 1 (the last label), each smoothed.
        let (off, on) = (0.1 / 4.0, 0.9 + 0.1 / 4.0);
        assert!((v[0] - (0.7 * on + 0.3 * off) as f32).abs() < 1e-6 && (v[1] - (0.7 * off + 0.3 * on) as f32).abs() < 1e-6);
        let x = Tensor::arange(3 * 2 * 2 * 2, (Kind::Float, tch::Device::Cpu)).view([3, 2, 2, 2]);
        let m = mix_images(&x, &Mix::Mixup { lam: 0.25 });
        let want = &x * 0.25 + x.flip([0]) * 0.75;
        assert!(m.allclose(&want, 1e-6, 1e-6, false));
        let b = Box { top: 0, bottom: 1, left: 1, right: 2 };
        let c = mix_images(&x, &Mix::Cutmix { area: b, lam: corrected(b, 2, 2) });
        assert_eq!(corrected(b, 2, 2), 0.75);
        // Inside the box: the reversed batch; outside: unchanged.
        assert_eq!(c.double_value(&[0, 1, 0, 1]), x.double_value(&[2, 1, 0, 1]));
        assert_eq!(c.double_value(&[0, 1, 1, 1]), x.double_value(&[0, 1, 1, 1]));
        assert_eq!(c.double_value(&[1, 0, 0, 1]), x.double_value(&[1, 0, 0, 1]));
    }
}
