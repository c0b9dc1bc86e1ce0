//! Decoding and preprocessing off the HTTP threads: each upload is decoded on tokio's blocking
//! pool, at most `workers` at a time, with the `predict` pipeline's per-image steps
//! ([`guard_decoder`], [`append_views`]): the same decoder (EXIF, CMYK, 16-bit…, and the
//! decompression-bomb check from the header), the same eval transform of every member and
//! the same TTA variants, so a served image is the tensor `predict` makes of the same file.
//!
//! Decoding memory is budgeted across the workers, not only per image: before a photo is
//! decoded, its cost is estimated from its header ([`decode_cost`]: the decoder's output in
//! its own layout, e.g. 8 bytes a pixel for 16-bit RGBA, plus two 8-bit RGB copies for the
//! conversion and the EXIF rotation) and taken from a budget of `decode_budget` bytes
//! (`--decode-budget-mb`), returned when the photo is done. A photo that waits for budget
//! holds no worker; one whose cost alone is more than the whole budget is refused with 413.
//! Work for a request whose client has left is skipped before it starts.
use std::io::Cursor;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use image::{ImageDecoder, ImageReader};
use sorbier::transforms::{decode_rgb_limited, eval_tensor_len, Preprocess};
use tokio::sync::Semaphore;

use super::batcher::Item;
use super::http::ApiError;
use super::Ticket;
use crate::engine::pipeline::{append_variants, append_views, guard_decoder, scratch_for};
use crate::engine::tta::Variant;

/// The decoding pool and what it prepares images for.
pub struct Prep {
    slots: Semaphore,
    /// The decoding budget, in KiB.
    memory: Arc<Semaphore>,
    memory_kib: usize,
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

/// The memory decoding `bytes` takes, in bytes, estimated from the image's header: the decoded
/// image in the decoder's layout plus two 8-bit RGB copies. `None` when the header cannot be
/// read or claims more than `max_pixels` (the decoder then refuses the image with its message).
pub fn decode_cost(bytes: &[u8], max_pixels: u64) -> Option<u64> {
    let decoder = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?.into_decoder().ok()?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w).checked_mul(u64::from(h))?;
    if pixels > max_pixels {
        return None;
    }
    decoder.total_bytes().checked_add(pixels.checked_mul(6)?)
}

impl Prep {
    pub fn new(workers: usize, preprocesses: Vec<Preprocess>, variants: &'static [Variant], max_pixels: u64, decode_budget: usize) -> Prep {
        let memory_kib = decode_budget.div_ceil(1024).max(1);
        Prep { slots: Semaphore::new(workers.max(1)), memory: Arc::new(Semaphore::new(memory_kib)), memory_kib, preprocesses: preprocesses.into(), variants, max_pixels }
    }

    /// Empty per-variant buffers for one image, for the preprocesses in `used` (none for the others).
    fn buffers(&self, used: impl Fn(usize) -> bool) -> Vec<Vec<Vec<f32>>> {
        let nv = self.variants.len();
        let per = |pre: &Preprocess| (0..nv).map(|_| Vec::with_capacity(eval_tensor_len(pre))).collect();
        self.preprocesses.iter().enumerate().map(|(p, pre)| if used(p) { per(pre) } else { Vec::new() }).collect()
    }

    /// Decodes an uploaded file (`name` in error messages) and makes every member's tensor in
    /// every TTA variant, within the decoding budget. An undecodable or oversized image is a
    /// 400 naming it; one that needs more than the whole budget a 413.
    pub async fn photo(self: Arc<Self>, bytes: Bytes, name: String, ticket: Ticket) -> Result<Photo, ApiError> {
        let cost = decode_cost(&bytes, self.max_pixels).unwrap_or(0);
        let kib = cost.div_ceil(1024);
        if kib > self.memory_kib as u64 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("decoding {name} would take about {} MiB, more than the server's decoding budget of {} MiB (--decode-budget-mb)", cost >> 20, self.memory_kib >> 10),
            ));
        }
        let memory = self.memory.clone().acquire_many_owned(kib as u32).await.map_err(|_| ApiError::internal("the decoding pool is closed"))?;
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("the decoding pool is closed"))?;
        if ticket.cancelled() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "the client left"));
        }
        let prep = self.clone();
        // The budget and the admission stay held until the decoding is over, whoever waits for it.
        let job = tokio::task::spawn_blocking(move || -> anyhow::Result<Photo> {
            let _held = (memory, ticket);
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
    pub async fn tensors(self: Arc<Self>, data: Vec<f32>, n: usize, p: usize, ticket: Ticket) -> Result<Vec<Item>, ApiError> {
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("the decoding pool is closed"))?;
        if ticket.cancelled() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "the client left"));
        }
        let prep = self.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _held = ticket;
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
