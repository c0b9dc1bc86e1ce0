//! Reports users look at: pictures (PNG) with the tables behind them (CSV/JSON) beside each,
//! the way practitioners expect to see a dataset and a model — the reference notebook's
//! figures and fastai's `ClassificationInterpretation` (`plot_confusion_matrix`,
//! `most_confused`), as files.
//!
//! - [`dataset`]: `trainer inspect --report DIR` — class sizes, sample grid, image sizes, stats.
//! - [`training`]: a run directory's curves, best-epoch confusion, per-class accuracy against
//!   class size, most-confused pairs and `report.html`, redrawn from the run's CSV files.
//! - [`evaluation`]: `predictor evaluate --report DIR` — the same confusion outputs for a model
//!   or an ensemble, plus `metrics.json`.
//! - [`tables`]: the pure computations (normalisation, ordering, most-confused) and CSV I/O.
//!
//! Pictures are drawn with `plotters` into an RGB buffer and written by `image`; text uses an
//! embedded DejaVu Sans, so no system font is needed. Every file is written atomically.
pub mod dataset;
mod draw;
pub mod evaluation;
pub mod tables;
pub mod training;
