//! Stratified train/validation split and stratified k-fold, seeded and reproducible
//! (scikit-learn's `train_test_split(stratify=…)` and `StratifiedKFold(shuffle=True)`).
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// How a run divides the labelled data; recorded in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SplitSpec {
    /// Hold out `val_fraction` of each class (default 0.2).
    Holdout { val_fraction: f64, seed: u64 },
    /// Fold `fold` (0-based) of `folds` is the validation side.
    Kfold { folds: usize, fold: usize, seed: u64 },
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
pub fn split(labels: &[usize], num_classes: usize, spec: &SplitSpec) -> Result<Split> {
    todo!("{labels:?} {num_classes} {spec:?}")
}
