//! The deterministic eval transform: resize the shorter side to `resize` (Pillow-style
//! antialiased filter), center-crop `crop`, scale to 0–1 and normalise, CHW float32 —
//! torchvision's `Resize(resize) + CenterCrop(crop) + ToTensor() + Normalize(mean, std)`.
use anyhow::Result;
use image::RgbImage;

use super::Preprocess;

/// Length of one eval tensor: `3·crop·crop`.
pub fn eval_tensor_len(p: &Preprocess) -> usize {
    3 * (p.crop as usize) * (p.crop as usize)
}

/// Writes the eval tensor of `img` into `out` (length [`eval_tensor_len`]).
pub fn eval_into(img: &RgbImage, p: &Preprocess, out: &mut [f32]) -> Result<()> {
    todo!("{} {p:?} {}", img.width(), out.len())
}
