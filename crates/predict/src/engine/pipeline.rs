//! The inference input pipeline: worker threads decode each image once and run every distinct
//! eval transform of an ensemble on it (models may use different input sizes), plus the
//! test-time-augmentation variants, so inference on the calling thread overlaps decoding.
//!
//! The workers are the core's ordered pool ([`sorbier::data::pool`], the one the training
//! loader uses): batches come out in order whatever the number of workers, memory stays bounded
//! by the prefetch window even when one image is slow to decode, and dropping the pipeline
//! stops the workers. A decoder that panics on one image costs that image (reported with its
//! file name), not the batch.
//!
//! The per-image steps ([`guard_decoder`], [`append_views`]) are public: the inference server
//! (`predictor serve`) runs the same ones on uploaded photos, so a served answer is computed
//! from the same tensors as the `predict` row for the same file.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use ndarray::Array4;
use sorbier::data::pool::{OrderedPool, Stop};
use image::RgbImage;
use sorbier::transforms::{eval_into, eval_tensor_len, load_rgb, Preprocess};

use crate::engine::tta::{self, Variant};

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
    pub tensors: Vec<Vec<Array4<f32>>>,
}

/// Iterator over prepared batches; an `Err` item (a worker that died) ends the iteration.
pub struct Pipeline {
    pool: OrderedPool<Result<Prepared>>,
}

impl Pipeline {
    pub fn new(paths: Arc<[PathBuf]>, preprocesses: Vec<Preprocess>, variants: Vec<Variant>, cfg: &PipelineConfig) -> Pipeline {
        let batch_size = cfg.batch_size.max(1);
        let num_batches = paths.len().div_ceil(batch_size);
        let job = move |b: usize, stop: &Stop| {
            let range = b * batch_size..((b + 1) * batch_size).min(paths.len());
            prepare(&paths, range, &preprocesses, &variants, stop)
        };
        Pipeline { pool: OrderedPool::new("decode", num_batches, cfg.workers, cfg.prefetch, Box::new(job)) }
    }

    pub fn num_batches(&self) -> usize {
        self.pool.len()
    }
}

impl Iterator for Pipeline {
    type Item = Result<Prepared>;
    fn next(&mut self) -> Option<Result<Prepared>> {
        self.pool.next().map(|r| r.and_then(|p| p))
    }
}

/// Decodes `paths[range]` once each and fills every (preprocess, variant) tensor.
fn prepare(paths: &[PathBuf], range: std::ops::Range<usize>, preprocesses: &[Preprocess], variants: &[Variant], stop: &Stop) -> Option<Result<Prepared>> {
    let cap = range.len();
    let mut items = Vec::with_capacity(cap);
    let mut failed = Vec::new();
    // Filled flat, image after image, then shaped once the number that loaded is known.
    let mut flat: Vec<Vec<Vec<f32>>> =
        preprocesses.iter().map(|p| variants.iter().map(|_| Vec::with_capacity(cap * eval_tensor_len(p))).collect()).collect();
    let mut scratch = scratch_for(preprocesses);
    for i in range {
        if stop.is_set() {
            return None;
        }
        let img = match guard_decoder(&paths[i].display(), || load_rgb(&paths[i])) {
            Ok(img) => img,
            Err(e) => {
                failed.push((i, format!("{e:#}")));
                continue;
            }
        };
        if let Err(e) = append_views(&img, preprocesses, variants, &mut scratch, &mut flat) {
            failed.push((i, format!("{}: {e:#}", paths[i].display())));
            continue;
        }
        items.push(i);
    }
    let k = items.len();
    let tensors = flat
        .into_iter()
        .zip(preprocesses)
        .map(|(per_variant, pre)| {
            let s = pre.crop as usize;
            per_variant.into_iter().map(|v| Array4::from_shape_vec((k, 3, s, s), v).map_err(|e| anyhow!("batch tensor shape: {e}"))).collect()
        })
        .collect::<Result<Vec<Vec<_>>>>();
    Some(tensors.map(|tensors| Prepared { items, failed, tensors }))
}

/// Runs a decoder, turning a panic into an error naming `name`: a decoder that panics on one
/// image costs that image, not the batch or the server.
pub fn guard_decoder(name: &dyn std::fmt::Display, decode: impl FnOnce() -> Result<RgbImage>) -> Result<RgbImage> {
    catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|_| Err(anyhow!("decoder panicked on {name}")))
}

/// One tensor's worth of workspace per preprocess, for [`append_views`].
pub fn scratch_for(preprocesses: &[Preprocess]) -> Vec<Vec<f32>> {
    preprocesses.iter().map(|p| vec![0.0; eval_tensor_len(p)]).collect()
}

/// Appends the eval tensor of `img` under every preprocess `p`, in every TTA variant `v`, to
/// `out[p][v]` (CHW float32, image after image) — what `predict` feeds the models, and what
/// the server feeds them for an uploaded photo. On error nothing is appended.
pub fn append_views(img: &RgbImage, preprocesses: &[Preprocess], variants: &[Variant], scratch: &mut [Vec<f32>], out: &mut [Vec<Vec<f32>>]) -> Result<()> {
    for (p, pre) in preprocesses.iter().enumerate() {
        if let Err(e) = eval_into(img, pre, &mut scratch[p]) {
            // Keep every tensor the same length as before: undo this image's earlier preprocesses.
            for (q, done) in preprocesses.iter().enumerate().take(p) {
                let len = eval_tensor_len(done);
                for t in out[q].iter_mut() {
                    t.truncate(t.len() - len);
                }
            }
            return Err(e);
        }
        append_variants(&scratch[p], pre.crop as usize, variants, &mut out[p]);
    }
    Ok(())
}

/// Appends every TTA variant of the `3 × s × s` tensor `src` to `out[v]`.
pub fn append_variants(src: &[f32], s: usize, variants: &[Variant], out: &mut [Vec<f32>]) {
    for (&variant, t) in variants.iter().zip(out.iter_mut()) {
        let start = t.len();
        t.resize(start + src.len(), 0.0);
        tta::apply(variant, src, s, &mut t[start..]);
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
            let batches: Vec<Prepared> = pipe.map(|b| b.unwrap()).collect();
            let items: Vec<usize> = batches.iter().flat_map(|b| b.items.clone()).collect();
            assert_eq!(items, vec![0, 1, 2, 4, 5, 6]);
            let failed: Vec<usize> = batches.iter().flat_map(|b| b.failed.iter().map(|f| f.0)).collect();
            assert_eq!(failed, vec![3]);
            assert!(batches[1].failed[0].1.contains("3.png"), "{}", batches[1].failed[0].1);
            for b in &batches {
                for (p, pr) in pre.iter().enumerate() {
                    let len = eval_tensor_len(pr);
                    assert_eq!(b.tensors[p][0].len(), b.items.len() * len);
                    let (t0, t1) = (b.tensors[p][0].as_slice().unwrap(), b.tensors[p][1].as_slice().unwrap());
                    // Variant 1 is the horizontal flip of variant 0, item by item.
                    for k in 0..b.items.len() {
                        let mut flipped = vec![0.0; len];
                        tta::apply(Variant::Hflip, &t0[k * len..(k + 1) * len], pr.crop as usize, &mut flipped);
                        assert_eq!(flipped, t1[k * len..(k + 1) * len]);
                    }
                }
                // Same as the eval transform alone.
                for (k, &i) in b.items.iter().enumerate() {
                    let img = load_rgb(&paths[i]).unwrap();
                    let mut one = vec![0.0; eval_tensor_len(&pre[1])];
                    eval_into(&img, &pre[1], &mut one).unwrap();
                    assert_eq!(one, b.tensors[1][0].as_slice().unwrap()[k * one.len()..(k + 1) * one.len()]);
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
        assert!(pipe.next().unwrap().is_ok());
        drop(pipe); // must return (join) rather than hang
    }
}
