//! Classification metrics shared by training, evaluation and scoring: top-k accuracy,
//! macro-average (balanced) accuracy, per-class accuracy, confusion matrix, most-confused pairs.
