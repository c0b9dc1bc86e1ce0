//! Parallel batch loader: decoding and transforms run on a pool of worker threads with a
//! bounded prefetch queue; batches come out in the given order (eval: dataset order; train:
//! sampler order), whatever the number of workers, and are reproducible for a given seed.
use std::path::PathBuf;
use std::sync::Arc;

use crate::transforms::{Augment, Preprocess};

/// Loader settings.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decoding threads (≥ 1).
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Drop a final incomplete batch (training).
    pub drop_last: bool,
}

/// Eval: the deterministic transform. Train: augmentations, with a per-sample RNG derived from
/// `(seed, position in order)` so results do not depend on the worker count.
#[derive(Clone, Debug)]
pub enum Mode {
    Eval(Preprocess),
    Train { preprocess: Preprocess, augment: Augment, seed: u64 },
}

/// One batch, NCHW float32, `size`×`size` images.
#[derive(Debug)]
pub struct Batch {
    /// `n·3·size·size` values.
    pub images: Vec<f32>,
    pub size: usize,
    /// Labels of the loaded items (from the `labels` given to the loader).
    pub labels: Vec<i64>,
    /// Dataset indices of the loaded items (`order[k]`), in order.
    pub indices: Vec<usize>,
    /// Items that could not be loaded: dataset index and the error (naming the file).
    pub failed: Vec<(usize, String)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Iterator over batches; dropping it stops the workers.
pub struct Loader {
    _private: (),
}

impl Loader {
    /// `paths[i]`/`labels[i]` describe dataset item i; `order` lists the items to load
    /// (repeats allowed, as from a sampler).
    pub fn new(paths: Arc<[PathBuf]>, labels: Arc<[i64]>, order: Vec<usize>, mode: Mode, cfg: LoaderConfig) -> Loader {
        todo!("{} {} {} {mode:?} {cfg:?}", paths.len(), labels.len(), order.len())
    }

    /// Number of batches this loader will yield.
    pub fn num_batches(&self) -> usize {
        todo!()
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        todo!()
    }
}
