//! Decoding any supported image file to 8-bit RGB: JPEG, PNG, WebP, BMP; EXIF orientation
//! applied; grayscale, CMYK, alpha and 16-bit inputs converted. Errors name the file.
use std::path::Path;

use anyhow::Result;
use image::RgbImage;

/// Reads and decodes `path` to upright 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    todo!("{path:?}")
}
