//! Stratified train/validation split and stratified k-fold, seeded and reproducible
//! (scikit-learn's `train_test_split(stratify=…)` and `StratifiedKFold(shuffle=True)`).
//!
//! Each class's indices are shuffled with its own ChaCha8 stream (`seed`, stream = class), so a
//! class's split does not change when another class gains or loses images. Holdout puts
//! `round(fraction · n)` images of each class on the validation side, clamped to `[1, n−1]` so
//! every class with at least two images is on both sides. K-fold deals each class's shuffled
//! indices round-robin into the folds, continuing where the previous class stopped, so fold
//! sizes differ by at most one overall and per class.
//!
//! `val_fraction` 0 is the final-fit mode: no validation side, every image trains (what one does
//! once the recipe is settled, and what the PyTorch reference recipe does with its train folder).
//!
//! A class with a single image always goes to `train` and is listed in `singletons`, in both
//! modes (a validation-only class can never be learned). In k-fold, a class with fewer than
//! `k` images (but at least two) has validation images in only some folds; it still has
//! training images in every fold. [`classes_below`] lists such classes for a warning.
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Default validation fraction of a holdout split.
pub const DEFAULT_VAL_FRACTION: f64 = 0.2;

/// How a run divides the labelled data; recorded in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SplitSpec {
    /// Hold out `val_fraction` of each class (default 0.2); 0 = no validation side, every
    /// sample trains.
    Holdout { val_fraction: f64, seed: u64 },
    /// Fold `fold` (0-based) of `folds` is the validation side.
    Kfold { folds: usize, fold: usize, seed: u64 },
}

impl SplitSpec {
    /// False for the no-validation holdout (`val_fraction` 0), where every sample trains.
    pub fn has_validation(&self) -> bool {
        !matches!(*self, SplitSpec::Holdout { val_fraction, .. } if val_fraction == 0.0)
    }
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec::Holdout { val_fraction: DEFAULT_VAL_FRACTION, seed: 0 }
    }
}

/// Indices into the dataset's samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    /// Classes with a single image, which all went to `train` (a warning for the caller to print).
    pub singletons: Vec<usize>,
}

/// Splits according to `spec`. `labels[i]` is sample i's class; `num_classes` the class count.
/// `train` and `val` come out sorted ascending.
///
/// `Holdout { val_fraction: 0.0, .. }` puts every sample in `train` (sorted; `val` and
/// `singletons` empty).
///
/// Errors: a label ≥ `num_classes`; a fraction outside [0, 1); fewer than 2 folds; `fold ≥
/// folds`; more folds than samples; no samples at all; or a split whose validation side would
/// be empty although a validation side was asked for.
pub fn split(labels: &[usize], num_classes: usize, spec: &SplitSpec) -> Result<Split> {
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        bail!("sample {i} has label {l} but there are only {num_classes} classes");
    }
    if !spec.has_validation() {
        if labels.is_empty() {
            bail!("there are no samples to train on");
        }
        return Ok(Split { train: (0..labels.len()).collect(), ..Split::default() });
    }
    let mut out = match *spec {
        SplitSpec::Holdout { val_fraction, seed } => holdout(labels, num_classes, val_fraction, seed)?,
        SplitSpec::Kfold { folds, fold, seed } => kfold(labels, num_classes, folds, fold, seed)?,
    };
    if out.val.is_empty() {
        bail!(
            "the validation side is empty ({} samples, {} single-image classes kept for training); add images or change the split",
            labels.len(),
            out.singletons.len()
        );
    }
    out.train.sort_unstable();
    out.val.sort_unstable();
    Ok(out)
}

/// Classes with at least one but fewer than `k` images: in a `k`-fold split they have
/// validation images in only some folds.
pub fn classes_below(labels: &[usize], num_classes: usize, k: usize) -> Vec<usize> {
    let mut counts = vec![0usize; num_classes];
    for &l in labels {
        if l < num_classes {
            counts[l] += 1;
        }
    }
    (0..num_classes).filter(|&c| counts[c] > 0 && counts[c] < k).collect()
}

/// Each class's sample indices, shuffled by the class's own stream of `seed`.
fn shuffled_by_class(labels: &[usize], num_classes: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    for (c, idx) in by_class.iter_mut().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(c as u64);
        idx.shuffle(&mut rng);
    }
    by_class
}

fn holdout(labels: &[usize], num_classes: usize, frac: f64, seed: u64) -> Result<Split> {
    if !(frac > 0.0 && frac < 1.0) {
        bail!("validation fraction must be 0 (no validation) or strictly between 0 and 1, got {frac}");
    }
    let mut out = Split::default();
    for (c, idx) in shuffled_by_class(labels, num_classes, seed).into_iter().enumerate() {
        let n = idx.len();
        match n {
            0 => {}
            1 => {
                out.singletons.push(c);
                out.train.extend(idx);
            }
            _ => {
                let n_val = ((frac * n as f64).round() as usize).clamp(1, n - 1);
                out.val.extend_from_slice(&idx[..n_val]);
                out.train.extend_from_slice(&idx[n_val..]);
            }
        }
    }
    Ok(out)
}

fn kfold(labels: &[usize], num_classes: usize, k: usize, fold: usize, seed: u64) -> Result<Split> {
    if k < 2 {
        bail!("k-fold needs at least 2 folds, got {k}");
    }
    if fold >= k {
        bail!("fold {fold} does not exist: folds are numbered 0 to {} for {k} folds", k - 1);
    }
    if k > labels.len() {
        bail!("cannot make {k} folds from {} samples", labels.len());
    }
    let mut out = Split::default();
    // Where the next image is dealt: carried across classes so small classes do not all land
    // in fold 0 and fold sizes stay within one of each other.
    let mut next = 0usize;
    for (c, idx) in shuffled_by_class(labels, num_classes, seed).into_iter().enumerate() {
        if idx.len() == 1 {
            out.singletons.push(c);
            out.train.extend(idx);
            continue;
        }
        for i in idx {
            if next % k == fold {
                out.val.push(i);
            } else {
                out.train.push(i);
            }
            next += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flowers class sizes, labels in sorted-sample order.
    fn labels(counts: &[usize]) -> Vec<usize> {
        counts.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat_n(c, n)).collect()
    }

    fn count(idx: &[usize], labels: &[usize], c: usize) -> usize {
        idx.iter().filter(|&&i| labels[i] == c).count()
    }

    fn assert_partition(s: &Split, n: usize) {
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "train and val must be disjoint and cover every sample");
    }

    #[test]
    fn holdout_is_stratified_and_leak_free() {
        let counts = [30, 400, 60, 120, 220];
        let l = labels(&counts);
        let s = split(&l, 5, &SplitSpec::Holdout { val_fraction: 0.2, seed: 7 }).unwrap();
        assert_partition(&s, l.len());
        for (c, &n) in counts.iter().enumerate() {
            assert_eq!(count(&s.val, &l, c), (0.2 * n as f64).round() as usize, "class {c}");
        }
        assert_eq!(s.val.len(), 6 + 80 + 12 + 24 + 44);
        assert!(s.singletons.is_empty());
        assert!(s.train.windows(2).all(|w| w[0] < w[1]) && s.val.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn holdout_is_reproducible_and_seed_dependent() {
        let l = labels(&[30, 400, 60]);
        let spec = |seed| SplitSpec::Holdout { val_fraction: 0.25, seed };
        let a = split(&l, 3, &spec(1)).unwrap();
        assert_eq!(a, split(&l, 3, &spec(1)).unwrap());
        let b = split(&l, 3, &spec(2)).unwrap();
        assert_ne!(a.val, b.val);
        assert_eq!(a.val.len(), b.val.len());
        // A class's split does not depend on the other classes.
        let c = split(&labels(&[30, 100, 60]), 3, &spec(1)).unwrap();
        let first: Vec<_> = a.val.iter().filter(|&&i| i < 30).collect();
        let first_c: Vec<_> = c.val.iter().filter(|&&i| i < 30).collect();
        assert_eq!(first, first_c);
    }

    #[test]
    fn small_classes_keep_an_image_on_each_side() {
        // 2 and 3 images: 0.2·n rounds to 0 or 1, clamped to one validation image.
        // 1 image: training only, reported. 0 images: nothing.
        let l = labels(&[2, 3, 1, 0, 10]);
        let s = split(&l, 5, &SplitSpec::Holdout { val_fraction: 0.2, seed: 3 }).unwrap();
        assert_partition(&s, l.len());
        assert_eq!(s.singletons, vec![2]);
        assert_eq!([0, 1, 2, 4].map(|c| count(&s.val, &l, c)), [1, 1, 0, 2]);
        assert_eq!([0, 1, 2, 4].map(|c| count(&s.train, &l, c)), [1, 2, 1, 8]);
        // Even a large fraction leaves one training image.
        let s = split(&l, 5, &SplitSpec::Holdout { val_fraction: 0.95, seed: 3 }).unwrap();
        assert_eq!(count(&s.train, &l, 4), 1);
    }

    #[test]
    fn bad_specs_are_errors() {
        let l = labels(&[5, 5]);
        for f in [1.0, -0.1, f64::NAN] {
            assert!(split(&l, 2, &SplitSpec::Holdout { val_fraction: f, seed: 0 }).is_err(), "{f}");
        }
        let err = split(&l, 2, &SplitSpec::Kfold { folds: 1, fold: 0, seed: 0 }).unwrap_err();
        assert!(err.to_string().contains("at least 2 folds"));
        let err = split(&l, 2, &SplitSpec::Kfold { folds: 5, fold: 5, seed: 0 }).unwrap_err();
        assert!(err.to_string().contains("0 to 4"));
        assert!(split(&l, 2, &SplitSpec::Kfold { folds: 11, fold: 0, seed: 0 }).is_err());
        assert!(split(&[0, 2], 2, &SplitSpec::default()).is_err());
        // Only single-image classes: nothing to validate on.
        let err = split(&[0, 1], 2, &SplitSpec::default()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn classes_below_lists_only_nonempty_classes_under_k_and_ignores_foreign_labels() {
        // Class 0: 3 images (= k, not listed), 1: none, 2: 2 (listed), 3: 1 (listed); label 4 is
        // outside the 4 classes and counts for none.
        let l = [0, 0, 0, 2, 2, 3, 4];
        assert_eq!(classes_below(&l, 4, 3), vec![2, 3]);
        assert_eq!(classes_below(&l, 4, 4), vec![0, 2, 3]);
        assert_eq!(classes_below(&l, 4, 1), Vec::<usize>::new());
    }

    #[test]
    fn holdout_itself_refuses_a_zero_fraction() {
        // `split` routes 0 to "no validation"; the holdout never draws a validation side from it.
        let err = holdout(&[0, 0, 1, 1], 2, 0.0, 1).unwrap_err();
        assert!(err.to_string().contains("strictly between 0 and 1"), "{err}");
    }

    #[test]
    fn zero_fraction_trains_on_everything() {
        let l = labels(&[2, 1, 0, 5]);
        let spec = SplitSpec::Holdout { val_fraction: 0.0, seed: 4 };
        assert!(!spec.has_validation());
        assert!(SplitSpec::default().has_validation() && SplitSpec::Kfold { folds: 3, fold: 0, seed: 0 }.has_validation());
        let s = split(&l, 4, &spec).unwrap();
        assert_eq!(s.train, (0..l.len()).collect::<Vec<_>>());
        assert!(s.val.is_empty() && s.singletons.is_empty());
        // Even where every class is a singleton (an error with a validation side).
        assert_eq!(split(&[0, 1], 2, &spec).unwrap().train, vec![0, 1]);
        assert!(split(&[0, 2], 2, &spec).is_err(), "labels are still checked");
        assert!(split(&[], 2, &spec).is_err());
        // -0.0 is the same request; config.json keeps the plain holdout shape.
        assert!(!SplitSpec::Holdout { val_fraction: -0.0, seed: 0 }.has_validation());
        assert_eq!(serde_json::to_string(&spec).unwrap(), r#"{"kind":"holdout","val_fraction":0.0,"seed":4}"#);
    }

    #[test]
    fn kfold_folds_partition_the_data() {
        let counts = [30, 400, 60, 120, 220, 3, 1];
        let l = labels(&counts);
        let k = 5;
        let mut seen = vec![0usize; l.len()];
        let mut sizes = Vec::new();
        for fold in 0..k {
            let s = split(&l, counts.len(), &SplitSpec::Kfold { folds: k, fold, seed: 11 }).unwrap();
            assert_partition(&s, l.len());
            assert_eq!(s.singletons, vec![6]);
            for &i in &s.val {
                seen[i] += 1;
            }
            for (c, &n) in counts.iter().enumerate().take(5) {
                // Stratified: each big class contributes n/k to every fold.
                assert_eq!(count(&s.val, &l, c), n / k, "fold {fold} class {c}");
            }
            // The 3-image class always keeps training images.
            assert!(count(&s.train, &l, 5) >= 2);
            sizes.push(s.val.len());
        }
        // Every sample but the singleton is validated exactly once across folds.
        let last = l.len() - 1;
        assert!(seen[..last].iter().all(|&n| n == 1));
        assert_eq!(seen[last], 0);
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 1, "{sizes:?}");
        assert_eq!(classes_below(&l, counts.len(), k), vec![5, 6]);
    }

    #[test]
    fn kfold_accepts_its_edges_two_folds_and_one_fold_per_sample() {
        let l = [0, 0, 1, 1];
        for fold in 0..2 {
            let s = split(&l, 2, &SplitSpec::Kfold { folds: 2, fold, seed: 1 }).unwrap();
            assert_eq!((s.val.len(), s.train.len()), (2, 2), "2 folds, fold {fold}");
        }
        for fold in 0..4 {
            let s = split(&l, 2, &SplitSpec::Kfold { folds: 4, fold, seed: 1 }).unwrap();
            assert_eq!((s.val.len(), s.train.len()), (1, 3), "as many folds as samples, fold {fold}");
        }
    }

    #[test]
    fn kfold_is_reproducible_and_seed_dependent() {
        let l = labels(&[20, 30]);
        let spec = |seed| SplitSpec::Kfold { folds: 4, fold: 2, seed };
        assert_eq!(split(&l, 2, &spec(5)).unwrap(), split(&l, 2, &spec(5)).unwrap());
        assert_ne!(split(&l, 2, &spec(5)).unwrap().val, split(&l, 2, &spec(6)).unwrap().val);
    }

    #[test]
    fn spec_serialises_with_a_kind_tag() {
        let j = serde_json::to_string(&SplitSpec::Kfold { folds: 5, fold: 1, seed: 3 }).unwrap();
        assert_eq!(j, r#"{"kind":"kfold","folds":5,"fold":1,"seed":3}"#);
    }
}
