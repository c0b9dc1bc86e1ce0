//! Training augmentations (torchvision `RandomResizedCrop`, flips, rot90, Gaussian blur,
//! colour jitter), each switchable, driven by an explicit seeded RNG so a run is reproducible.
use anyhow::Result;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Preprocess;

/// Which training augmentations run; recorded in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// RandomResizedCrop to `crop` (else: the eval resize + center crop).
    pub random_resized_crop: bool,
    /// Area fraction range of RandomResizedCrop.
    pub scale: (f32, f32),
    /// Aspect-ratio range of RandomResizedCrop.
    pub ratio: (f32, f32),
    /// Horizontal flip with probability 0.5.
    pub hflip: bool,
    /// Vertical flip with probability 0.5.
    pub vflip: bool,
    /// Rotation by a uniformly drawn multiple of 90°.
    pub rot90: bool,
    /// Gaussian blur with probability 0.5 and sigma uniform in (0.1, blur_sigma); 0 = off.
    pub blur_sigma: f32,
    /// Colour jitter strength (brightness, contrast, saturation factors in [1-j, 1+j]); 0 = off.
    pub color_jitter: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            random_resized_crop: true,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            vflip: true,
            rot90: false,
            blur_sigma: 0.0,
            color_jitter: 0.0,
        }
    }
}

/// Applies the training transform to `img` and writes the normalised CHW float32 tensor of
/// `p.crop`×`p.crop` into `out` (length `3·crop·crop`).
pub fn train_into<R: Rng>(img: &RgbImage, p: &Preprocess, a: &Augment, rng: &mut R, out: &mut [f32]) -> Result<()> {
    todo!("{} {p:?} {a:?} {} {}", img.width(), rng.random::<u8>(), out.len())
}
