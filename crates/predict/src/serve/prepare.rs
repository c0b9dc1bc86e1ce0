//! Decoding and preprocessing off the HTTP threads: each upload is decoded on tokio's blocking
//! pool, at most `workers` at a time, with the `predict` pipeline's per-image steps
//! ([`guard_decoder`], [`append_views`]): the same decoder (EXIF, CMYK, 16-bit…, and the
//! decompression-bomb check from the header), the same eval transform of every member and
//! the same TTA variants, so a served image is the tensor `predict` makes of the same file.
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use sorbier::transforms::{decode_rgb_limited, eval_tensor_len, Preprocess};
use tokio::sync::Semaphore;

use super::batcher::Item;
use super::http::ApiError;
use crate::engine::pipeline::{append_variants, append_views, guard_decoder, scratch_for};
use crate::engine::tta::Variant;

/// The decoding pool and what it prepares images for.
pub struct Prep {
    slots: Semaphore,
    /// The ensemble's distinct eval transforms ([`crate::engine::Ensemble::preprocesses`]).
    pub preprocesses: Arc<[Preprocess]>,
    pub variants: &'static [Variant],
    pub max_pixels: u64,
}

/// An uploaded photo, decoded and preprocessed.
pub struct Photo {
    pub item: Item,
    pub width: u32,
    pub height: u32,
}

impl Prep {
    pub fn new(workers: usize, preprocesses: Vec<Preprocess>, variants: &'static [Variant], max_pixels: u64) -> Prep {
        Prep { slots: Semaphore::new(workers.max(1)), preprocesses: preprocesses.into(), variants, max_pixels }
    }

    /// Empty per-variant buffers for one image, for the preprocesses in `used` (none for the others).
    fn buffers(&self, used: impl Fn(usize) -> bool) -> Vec<Vec<Vec<f32>>> {
        let nv = self.variants.len();
        let per = |pre: &Preprocess| (0..nv).map(|_| Vec::with_capacity(eval_tensor_len(pre))).collect();
        self.preprocesses.iter().enumerate().map(|(p, pre)| if used(p) { per(pre) } else { Vec::new() }).collect()
    }

    /// Decodes an uploaded file (`name` in error messages) and makes every member's tensor in
    /// every TTA variant. An undecodable or oversized image is a 400 naming it.
    pub async fn photo(self: Arc<Self>, bytes: Bytes, name: String) -> Result<Photo, ApiError> {
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("the decoding pool is closed"))?;
        let prep = self.clone();
        let job = tokio::task::spawn_blocking(move || -> anyhow::Result<Photo> {
            let img = guard_decoder(&name, || decode_rgb_limited(&bytes, &name, prep.max_pixels))?;
            let mut tensors = prep.buffers(|_| true);
            append_views(&img, &prep.preprocesses, prep.variants, &mut scratch_for(&prep.preprocesses), &mut tensors).with_context(|| format!("cannot preprocess {name}"))?;
            Ok(Photo { item: Item { tensors }, width: img.width(), height: img.height() })
        });
        match job.await {
            Ok(done) => done.map_err(|e| ApiError::bad_request(format!("{e:#}"))),
            Err(e) => Err(ApiError::internal(format!("the decoding task failed: {e}"))),
        }
    }

    /// Splits `n` tensors in a model's own input layout (`n × 3 × s × s` values, already
    /// preprocessed, for preprocess `p`) into items, each with the server's TTA variants.
    pub async fn tensors(self: Arc<Self>, data: Vec<f32>, n: usize, p: usize) -> Result<Vec<Item>, ApiError> {
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("the decoding pool is closed"))?;
        let prep = self.clone();
        let job = tokio::task::spawn_blocking(move || {
            let s = prep.preprocesses[p].crop as usize;
            let len = 3 * s * s;
            data.chunks_exact(len)
                .take(n)
                .map(|one| {
                    let mut tensors = prep.buffers(|q| q == p);
                    append_variants(one, s, prep.variants, &mut tensors[p]);
                    Item { tensors }
                })
                .collect()
        });
        job.await.map_err(|e| ApiError::internal(format!("the preprocessing task failed: {e}")))
    }
}
