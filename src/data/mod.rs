//! The data layer shared by trainer and predictor: scanning an ImageFolder tree or a flat
//! test folder (`scan`), class statistics (`stats`), stratified splits and k-folds (`split`),
//! the class-balancing sampler (`sampler`) and the parallel batch loader (`loader`).
pub mod inspect;
pub mod loader;
pub mod pool;
pub mod sampler;
pub mod scan;
pub mod split;
pub mod stats;
pub mod synth;

pub use loader::{Batch, Loader, LoaderConfig, Mode};
pub use scan::{Dataset, Sample, ScanReport, TestSet};
