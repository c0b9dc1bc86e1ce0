//! Parallel batch loader for training and validation: decoding and transforms run on the
//! ordered worker pool of [`super::pool`]; batches come out in the given order (eval: dataset
//! order; train: sampler order), whatever the number of workers, and are reproducible for a
//! given seed.
//!
//! Each worker builds whole batches into one preallocated `Vec<f32>` with no collation copy.
//! Per-item RNG: ChaCha8 seeded from `(seed, position in order)`, so the augmentations do not
//! depend on the worker count or on scheduling. A decoder that panics on one image costs that
//! image (reported with its file name), not the batch.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::pool::{OrderedPool, Stop};
use crate::transforms::{eval_into, eval_tensor_len, load_rgb, train_into, Augment, Preprocess};

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

impl Mode {
    fn preprocess(&self) -> &Preprocess {
        match self {
            Mode::Eval(p) => p,
            Mode::Train { preprocess, .. } => preprocess,
        }
    }
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

/// The RNG seed of the item at `position` in the loading order: SplitMix64 of the pair, so
/// neighbouring positions get unrelated streams.
pub fn item_seed(seed: u64, position: usize) -> u64 {
    let mut z = seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decodes dataset item at `position` of the order and writes its tensor into `out`.
pub fn load_item(path: &std::path::Path, mode: &Mode, position: usize, out: &mut [f32]) -> Result<()> {
    let img = load_rgb(path)?;
    match mode {
        Mode::Eval(p) => eval_into(&img, p, out),
        Mode::Train { preprocess, augment, seed } => {
            let mut rng = ChaCha8Rng::seed_from_u64(item_seed(*seed, position));
            train_into(&img, preprocess, augment, &mut rng, out)
        }
    }
    .map_err(|e| e.context(format!("transforming image {}", path.display())))
}

struct Source {
    paths: Arc<[PathBuf]>,
    labels: Arc<[i64]>,
    order: Vec<usize>,
    mode: Mode,
    batch_size: usize,
}

impl Source {
    fn build(&self, b: usize, stop: &Stop) -> Option<Batch> {
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let p = self.mode.preprocess();
        let item_len = eval_tensor_len(p);
        let mut batch = Batch {
            images: vec![0f32; (end - start) * item_len],
            size: p.crop as usize,
            labels: Vec::with_capacity(end - start),
            indices: Vec::with_capacity(end - start),
            failed: Vec::new(),
        };
        for pos in start..end {
            if stop.is_set() {
                return None;
            }
            let idx = self.order[pos];
            let slot = batch.indices.len() * item_len;
            let out = &mut batch.images[slot..slot + item_len];
            let result = match self.paths.get(idx) {
                None => Err(anyhow!("dataset index {idx} out of range ({} items)", self.paths.len())),
                Some(path) => catch_unwind(AssertUnwindSafe(|| load_item(path, &self.mode, pos, out)))
                    .unwrap_or_else(|_| Err(anyhow!("decoder panicked on {}", path.display()))),
            };
            match result {
                Ok(()) => {
                    batch.indices.push(idx);
                    batch.labels.push(self.labels.get(idx).copied().unwrap_or(-1));
                }
                Err(e) => batch.failed.push((idx, format!("{e:#}"))),
            }
        }
        batch.images.truncate(batch.indices.len() * item_len);
        Some(batch)
    }
}

/// Iterator over batches; dropping it stops the workers. An `Err` item (a worker that died)
/// ends the iteration.
pub struct Loader {
    pool: OrderedPool<Batch>,
}

impl Loader {
    /// `paths[i]`/`labels[i]` describe dataset item i; `order` lists the items to load
    /// (repeats allowed, as from a sampler).
    pub fn new(paths: Arc<[PathBuf]>, labels: Arc<[i64]>, order: Vec<usize>, mode: Mode, cfg: LoaderConfig) -> Loader {
        Loader::starting_at(paths, labels, order, mode, cfg, 0)
    }

    /// As [`Loader::new`], but yields only the batches from `first_batch` on — each exactly
    /// as `new` would build it (same items, same per-position augmentation): how a run
    /// stopped mid-epoch continues the epoch.
    pub fn starting_at(paths: Arc<[PathBuf]>, labels: Arc<[i64]>, order: Vec<usize>, mode: Mode, cfg: LoaderConfig, first_batch: usize) -> Loader {
        let batch_size = cfg.batch_size.max(1);
        let num_batches = if cfg.drop_last { order.len() / batch_size } else { order.len().div_ceil(batch_size) };
        let first = first_batch.min(num_batches);
        let source = Source { paths, labels, order, mode, batch_size };
        let pool = OrderedPool::new("loader", num_batches - first, cfg.workers, cfg.prefetch, Box::new(move |b, stop| source.build(first + b, stop)));
        Loader { pool }
    }

    /// Number of batches this loader will yield.
    pub fn num_batches(&self) -> usize {
        self.pool.len()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.pool.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pool.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// `n` small PNGs of varied sizes, image i filled with grey level 10·i, plus labels i % 3.
    fn dataset(dir: &std::path::Path, n: usize) -> (Arc<[PathBuf]>, Arc<[i64]>) {
        let mut paths = Vec::new();
        for i in 0..n {
            let p = dir.join(format!("img {i:02}.png"));
            let v = (10 * i) as u8;
            image::RgbImage::from_pixel(20 + (i as u32 % 5) * 7, 16 + (i as u32 % 3) * 9, image::Rgb([v, v, v])).save(&p).unwrap();
            paths.push(p);
        }
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
        (paths.into(), labels.into())
    }

    fn pre() -> Preprocess {
        Preprocess { resize: 12, crop: 10, mean: [0.0; 3], std: [1.0; 3], ..Default::default() }
    }

    fn cfg(bs: usize, workers: usize) -> LoaderConfig {
        LoaderConfig { batch_size: bs, workers, prefetch: 2, drop_last: false }
    }

    fn collect(l: Loader) -> Vec<Batch> {
        l.map(|b| b.unwrap()).collect()
    }

    #[test]
    fn eval_batches_come_in_order_whatever_the_worker_count() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 11);
        let order: Vec<usize> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 0, 10];
        for workers in [1, 3] {
            let batches = collect(Loader::new(paths.clone(), labels.clone(), order.clone(), Mode::Eval(pre()), cfg(4, workers)));
            assert_eq!(batches.len(), 5);
            let got: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
            assert_eq!(got, order, "{workers} workers");
            for b in &batches {
                assert_eq!(b.size, 10);
                assert_eq!(b.images.len(), b.len() * 300);
                for (k, &idx) in b.indices.iter().enumerate() {
                    assert_eq!(b.labels[k], idx as i64 % 3);
                    // Each tensor is its own image (uniform grey 10·idx).
                    let want = (10 * idx) as f32 / 255.0;
                    assert!(b.images[k * 300..(k + 1) * 300].iter().all(|v| (v - want).abs() < 1e-6));
                }
            }
        }
    }

    #[test]
    fn train_output_does_not_depend_on_worker_count() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 9);
        // Gradient images so crops and flips actually change values.
        for (i, p) in paths.iter().enumerate() {
            image::RgbImage::from_fn(30 + i as u32, 24, |x, y| image::Rgb([(x * 8) as u8, (y * 10) as u8, (i * 20) as u8])).save(p).unwrap();
        }
        let order: Vec<usize> = (0..20).map(|i| (i * 7) % 9).collect();
        let mode = Mode::Train { preprocess: pre(), augment: Augment { rot90: true, color_jitter: 0.3, blur_sigma: 1.0, ..Default::default() }, seed: 42 };
        let run = |workers: usize, seed: u64| -> Vec<f32> {
            let mode = match &mode {
                Mode::Train { preprocess, augment, .. } => Mode::Train { preprocess: preprocess.clone(), augment: augment.clone(), seed },
                m => m.clone(),
            };
            collect(Loader::new(paths.clone(), labels.clone(), order.clone(), mode, cfg(3, workers))).into_iter().flat_map(|b| b.images).collect()
        };
        let one = run(1, 42);
        assert_eq!(one.len(), 20 * 300);
        assert_eq!(one, run(3, 42));
        assert_eq!(one, run(2, 42));
        assert_ne!(one, run(1, 43));
        // Repeated items in the order get different augmentations (different positions).
        assert_ne!(&one[..300], &one[9 * 300..10 * 300]);
    }

    #[test]
    fn failed_items_are_reported_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 6);
        std::fs::write(&paths[2], b"not an image at all").unwrap();
        std::fs::remove_file(&paths[4]).unwrap();
        let batches = collect(Loader::new(paths.clone(), labels, (0..6).collect(), Mode::Eval(pre()), cfg(4, 2)));
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].indices, vec![0, 1, 3]);
        assert_eq!(batches[0].images.len(), 3 * 300);
        assert_eq!(batches[1].indices, vec![5]);
        let failed: Vec<(usize, String)> = batches.iter().flat_map(|b| b.failed.clone()).collect();
        assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![2, 4]);
        assert!(failed[0].1.contains("img 02.png"), "{}", failed[0].1);
        assert!(failed[1].1.contains("img 04.png"), "{}", failed[1].1);
    }

    #[test]
    fn dropping_mid_iteration_stops_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 5);
        let order: Vec<usize> = (0..4000).map(|i| i % 5).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        std::thread::spawn(move || {
            let mut l = Loader::new(paths, labels, order, Mode::Eval(pre()), cfg(8, 3));
            assert_eq!(l.num_batches(), 500);
            let first = l.next().unwrap().unwrap();
            drop(l);
            tx.send(first.len()).unwrap();
        });
        let n = rx.recv_timeout(Duration::from_secs(20)).expect("dropping the loader hung");
        assert_eq!(n, 8);
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn num_batches_and_drop_last() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 3);
        let order: Vec<usize> = (0..10).map(|i| i % 3).collect();
        let mk = |drop_last: bool, bs: usize| {
            Loader::new(paths.clone(), labels.clone(), order.clone(), Mode::Eval(pre()), LoaderConfig { batch_size: bs, workers: 2, prefetch: 1, drop_last })
        };
        assert_eq!(mk(false, 4).num_batches(), 3);
        assert_eq!(mk(true, 4).num_batches(), 2);
        assert_eq!(mk(true, 5).num_batches(), 2);
        let sizes: Vec<usize> = mk(true, 4).map(|b| b.unwrap().len()).collect();
        assert_eq!(sizes, vec![4, 4]);
        let sizes: Vec<usize> = mk(false, 4).map(|b| b.unwrap().len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let empty = Loader::new(paths.clone(), labels.clone(), vec![], Mode::Eval(pre()), cfg(4, 2));
        assert_eq!(empty.num_batches(), 0);
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn starting_at_a_batch_yields_the_same_batches_as_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, labels) = dataset(dir.path(), 10);
        let mode = Mode::Train { preprocess: pre(), augment: Augment { color_jitter: 0.3, ..Default::default() }, seed: 7 };
        let order: Vec<usize> = (0..10).rev().collect();
        let all: Vec<Batch> = Loader::new(paths.clone(), labels.clone(), order.clone(), mode.clone(), cfg(3, 2)).map(|b| b.unwrap()).collect();
        let rest: Vec<Batch> = Loader::starting_at(paths, labels, order, mode, cfg(3, 2), 2).map(|b| b.unwrap()).collect();
        assert_eq!((all.len(), rest.len()), (4, 2));
        for (a, b) in all[2..].iter().zip(&rest) {
            assert_eq!((&a.indices, &a.images), (&b.indices, &b.images));
        }
    }

    #[test]
    fn item_seeds_differ_by_position_and_seed() {
        assert_ne!(item_seed(0, 0), item_seed(0, 1));
        assert_ne!(item_seed(0, 1), item_seed(1, 0));
        assert_eq!(item_seed(7, 3), item_seed(7, 3));
    }
}
