//! The inference input pipeline: worker threads decode each image once and run every distinct
//! eval transform of an ensemble on it (models may use different input sizes), plus the
//! test-time-augmentation variants, so inference on the calling thread overlaps decoding.
//!
//! Batches come out in order whatever the number of workers. At most `prefetch` batches are
//! in flight or waiting (a token scheme: a worker takes a token before starting a batch and
//! the consumer returns it when it takes the batch), so memory stays bounded even when one
//! image is slow to decode. Dropping the pipeline stops the workers.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::predict::tta::{self, Variant};
use crate::transforms::{eval_into, eval_tensor_len, load_rgb, Preprocess};

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub batch_size: usize,
    /// Decoding threads (≥ 1).
    pub workers: usize,
    /// Batches decoded ahead of the consumer (≥ 1).
    pub prefetch: usize,
}

/// One batch of prepared inputs.
#[derive(Debug)]
pub struct Prepared {
    /// Indices (into the pipeline's paths) of the images that loaded, in order.
    pub items: Vec<usize>,
    /// Images that could not be read or decoded: index and the error (naming the file).
    pub failed: Vec<(usize, String)>,
    /// `tensors[p][v]`: NCHW float32 of `items` under preprocessing `p` and TTA variant `v`.
    pub tensors: Vec<Vec<Vec<f32>>>,
}

pub struct Pipeline {
    results: Option<Receiver<(usize, Prepared)>>,
    tokens: Option<SyncSender<()>>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Prepared>,
    next: usize,
    num_batches: usize,
}

impl Pipeline {
    pub fn new(paths: Arc<[PathBuf]>, preprocesses: Vec<Preprocess>, variants: Vec<Variant>, cfg: &PipelineConfig) -> Pipeline {
        let batch_size = cfg.batch_size.max(1);
        let num_batches = paths.len().div_ceil(batch_size);
        let window = cfg.prefetch.max(1) + cfg.workers.max(1);
        let (tok_tx, tok_rx) = sync_channel::<()>(window);
        for _ in 0..window {
            // Cannot fail: the channel has room for exactly `window` tokens and we hold the receiver.
            let _ = tok_tx.send(());
        }
        let tok_rx = Arc::new(Mutex::new(tok_rx));
        let (res_tx, res_rx) = sync_channel(window);
        let counter = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new((preprocesses, variants));
        let workers = (0..cfg.workers.max(1))
            .map(|_| {
                let (paths, tok_rx, res_tx, counter, shared) = (paths.clone(), tok_rx.clone(), res_tx.clone(), counter.clone(), shared.clone());
                std::thread::spawn(move || loop {
                    let token = match tok_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    if token.is_err() {
                        return; // consumer gone
                    }
                    let b = counter.fetch_add(1, Ordering::SeqCst);
                    if b >= num_batches {
                        return;
                    }
                    let range = b * batch_size..((b + 1) * batch_size).min(paths.len());
                    let prepared = prepare(&paths, range, &shared.0, &shared.1);
                    if res_tx.send((b, prepared)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Pipeline { results: Some(res_rx), tokens: Some(tok_tx), workers, pending: BTreeMap::new(), next: 0, num_batches }
    }

    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

/// Decodes `paths[range]` once each and fills every (preprocess, variant) tensor.
fn prepare(paths: &[PathBuf], range: std::ops::Range<usize>, preprocesses: &[Preprocess], variants: &[Variant]) -> Prepared {
    let cap = range.len();
    let mut out = Prepared {
        items: Vec::with_capacity(cap),
        failed: Vec::new(),
        tensors: preprocesses
            .iter()
            .map(|p| variants.iter().map(|_| Vec::with_capacity(cap * eval_tensor_len(p))).collect())
            .collect(),
    };
    let mut scratch: Vec<Vec<f32>> = preprocesses.iter().map(|p| vec![0.0; eval_tensor_len(p)]).collect();
    'items: for i in range {
        let img = match load_rgb(&paths[i]) {
            Ok(img) => img,
            Err(e) => {
                out.failed.push((i, format!("{e:#}")));
                continue;
            }
        };
        for (p, pre) in preprocesses.iter().enumerate() {
            if let Err(e) = eval_into(&img, pre, &mut scratch[p]) {
                out.failed.push((i, format!("{}: {e:#}", paths[i].display())));
                // Keep every tensor the same length as `items`: undo this item's earlier preprocesses.
                for q in 0..p {
                    let len = eval_tensor_len(&preprocesses[q]);
                    for t in out.tensors[q].iter_mut() {
                        t.truncate(t.len() - len);
                    }
                }
                continue 'items;
            }
            let s = pre.crop as usize;
            for (v, &variant) in variants.iter().enumerate() {
                let t = &mut out.tensors[p][v];
                let start = t.len();
                t.resize(start + scratch[p].len(), 0.0);
                tta::apply(variant, &scratch[p], s, &mut t[start..]);
            }
        }
        out.items.push(i);
    }
    out
}

impl Iterator for Pipeline {
    type Item = Prepared;
    fn next(&mut self) -> Option<Prepared> {
        if self.next >= self.num_batches {
            return None;
        }
        loop {
            if let Some(p) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(t) = &self.tokens {
                    let _ = t.send(());
                }
                return Some(p);
            }
            // A worker that panicked drops its sender; with all gone recv fails and we stop.
            let (b, p) = self.results.as_ref()?.recv().ok()?;
            self.pending.insert(b, p);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.tokens.take();
        self.results.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_per_image_in_order_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..7u8 {
            let p = dir.path().join(format!("{i}.png"));
            if i == 3 {
                std::fs::write(&p, b"not an image").unwrap();
            } else {
                image::RgbImage::from_pixel(20 + i as u32, 16, image::Rgb([i * 30, 10, 200])).save(&p).unwrap();
            }
            paths.push(p);
        }
        let pre = vec![Preprocess::for_crop(8), Preprocess::for_crop(12)];
        let variants = vec![Variant::Identity, Variant::Hflip];
        for workers in [1, 3] {
            let cfg = PipelineConfig { batch_size: 2, workers, prefetch: 1 };
            let pipe = Pipeline::new(paths.clone().into(), pre.clone(), variants.clone(), &cfg);
            assert_eq!(pipe.num_batches(), 4);
            let batches: Vec<Prepared> = pipe.collect();
            let items: Vec<usize> = batches.iter().flat_map(|b| b.items.clone()).collect();
            assert_eq!(items, vec![0, 1, 2, 4, 5, 6]);
            let failed: Vec<usize> = batches.iter().flat_map(|b| b.failed.iter().map(|f| f.0)).collect();
            assert_eq!(failed, vec![3]);
            assert!(batches[1].failed[0].1.contains("3.png"), "{}", batches[1].failed[0].1);
            for b in &batches {
                for (p, pr) in pre.iter().enumerate() {
                    let len = eval_tensor_len(pr);
                    assert_eq!(b.tensors[p][0].len(), b.items.len() * len);
                    // Variant 1 is the horizontal flip of variant 0, item by item.
                    for k in 0..b.items.len() {
                        let mut flipped = vec![0.0; len];
                        tta::apply(Variant::Hflip, &b.tensors[p][0][k * len..(k + 1) * len], pr.crop as usize, &mut flipped);
                        assert_eq!(flipped, b.tensors[p][1][k * len..(k + 1) * len]);
                    }
                }
                // Same as the eval transform alone.
                for (k, &i) in b.items.iter().enumerate() {
                    let img = load_rgb(&paths[i]).unwrap();
                    let mut one = vec![0.0; eval_tensor_len(&pre[1])];
                    eval_into(&img, &pre[1], &mut one).unwrap();
                    assert_eq!(one, b.tensors[1][0][k * one.len()..(k + 1) * one.len()]);
                }
            }
        }
    }

    #[test]
    fn dropping_early_stops_workers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        image::RgbImage::from_pixel(10, 10, image::Rgb([1, 2, 3])).save(&p).unwrap();
        let paths: Vec<PathBuf> = vec![p; 50];
        let cfg = PipelineConfig { batch_size: 1, workers: 2, prefetch: 1 };
        let mut pipe = Pipeline::new(paths.into(), vec![Preprocess::for_crop(4)], vec![Variant::Identity], &cfg);
        assert!(pipe.next().is_some());
        drop(pipe); // must return (join) rather than hang
    }
}
