//! The deterministic eval transform: resize the shorter side to `resize` (Pillow-style
//! antialiased filter), center-crop `crop`, scale to 0–1 and normalise, CHW float32 —
//! torchvision's `Resize(resize) + CenterCrop(crop) + ToTensor() + Normalize(mean, std)`.
//!
//! Geometry follows torchvision exactly: `_compute_resized_output_size` (the long side becomes
//! `int(resize·long/short)`, truncated) and `center_crop` (`int(round((h − crop)/2))` with
//! Python's round-half-to-even; zero padding when the image is smaller than the crop). The
//! resize is fast_image_resize's convolution, which uses Pillow's filters, supports and 8-bit
//! fixed-point scheme, so results are within a level or so of Pillow's. Crop, `/255`,
//! normalisation and HWC→CHW are fused in one pass through a 256-entry table per channel,
//! computed with the same f32 operations as `ToTensor` + `Normalize`.
use std::cell::RefCell;

use anyhow::{anyhow, bail, Result};
use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::{Interpolation, Preprocess};

/// Length of one eval tensor: `3·crop·crop`.
pub fn eval_tensor_len(p: &Preprocess) -> usize {
    3 * (p.crop as usize) * (p.crop as usize)
}

/// Writes the eval tensor of `img` into `out` (length [`eval_tensor_len`]).
pub fn eval_into(img: &RgbImage, p: &Preprocess, out: &mut [f32]) -> Result<()> {
    if out.len() != eval_tensor_len(p) {
        bail!("eval tensor buffer has {} values, expected {}", out.len(), eval_tensor_len(p));
    }
    if p.resize == 0 || p.crop == 0 {
        bail!("resize ({}) and crop ({}) must be positive", p.resize, p.crop);
    }
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_size(w, h, p.resize);
    with_scratch(|s| {
        let resized: &[u8] = if (nw, nh) == (w, h) {
            img.as_raw()
        } else {
            resize_rgb(&mut s.resizer, img, None, nw, nh, p.interpolation, &mut s.buf)?;
            &s.buf
        };
        let (top, left) = (center_crop_offset(nh, p.crop), center_crop_offset(nw, p.crop));
        let lut = NormLut::new(p);
        lut.crop_normalise_chw(resized, nw, nh, top, left, p.crop, out);
        Ok(())
    })
}

/// Output size `(w, h)` of torchvision's `Resize(size)` (shorter side to `size`), as
/// `_compute_resized_output_size` computes it: the long side is `int(size·long/short)`.
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    if short == 0 {
        return (w, h);
    }
    // Python: int(size * long / short) — an exact integer product, then a true division.
    let new_long = ((size as u64 * long as u64) as f64 / short as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `center_crop` offset along one axis of length `len` for a crop of `crop`:
/// `int(round((len − crop)/2))` (round half to even), or minus the left/top zero padding
/// `(crop − len)//2` when the crop is larger than the image.
pub fn center_crop_offset(len: u32, crop: u32) -> i64 {
    if crop > len {
        -(((crop - len) / 2) as i64)
    } else {
        ((len - crop) as f64 / 2.0).round_ties_even() as i64
    }
}

/// Per-thread resampling state: the resizer caches filter coefficients and scratch rows, and
/// the byte buffers are reused across images.
pub(crate) struct Scratch {
    pub resizer: Resizer,
    pub buf: Vec<u8>,
    pub buf2: Vec<u8>,
    pub planes: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch state.
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> Result<T>) -> Result<T> {
    SCRATCH.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| anyhow!("transform scratch state re-entered"))?;
        let s = slot.get_or_insert_with(|| Scratch { resizer: Resizer::new(), buf: Vec::new(), buf2: Vec::new(), planes: Vec::new() });
        f(s)
    })
}

fn resize_alg(i: Interpolation) -> ResizeAlg {
    match i {
        Interpolation::Nearest => ResizeAlg::Nearest,
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        // Pillow's BICUBIC is the a = −0.5 cubic, i.e. Catmull-Rom.
        Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
    }
}

/// Resizes `src` (or the integer sub-rectangle `crop = (left, top, w, h)` of it, treated as an
/// image of its own like `PIL.Image.crop(...).resize(...)`) to `dw`×`dh` into `dst`.
pub(crate) fn resize_rgb(
    resizer: &mut Resizer,
    src: &RgbImage,
    crop: Option<(u32, u32, u32, u32)>,
    dw: u32,
    dh: u32,
    interp: Interpolation,
    dst: &mut Vec<u8>,
) -> Result<()> {
    let (w, h) = src.dimensions();
    let src_ref = ImageRef::new(w, h, src.as_raw(), PixelType::U8x3).map_err(|e| anyhow!("resize source: {e}"))?;
    dst.clear();
    dst.resize(dw as usize * dh as usize * 3, 0);
    let mut dst_img = Image::from_slice_u8(dw, dh, dst.as_mut_slice(), PixelType::U8x3).map_err(|e| anyhow!("resize target: {e}"))?;
    let opts = ResizeOptions::new().resize_alg(resize_alg(interp));
    match crop {
        None => resizer.resize(&src_ref, &mut dst_img, &opts),
        Some((l, t, cw, ch)) => {
            // A cropped view (not a crop box): pixels outside the region must not leak in
            // through the filter support, as torchvision crops before resizing.
            let view = CroppedImage::new(&src_ref, l, t, cw, ch).map_err(|e| anyhow!("crop box: {e}"))?;
            resizer.resize(&view, &mut dst_img, &opts)
        }
    }
    .map_err(|e| anyhow!("resize to {dw}x{dh}: {e}"))
}

/// `((v/255) − mean)/std` for every byte value, per channel, in f32 as torch computes it.
pub(crate) struct NormLut {
    pub t: [[f32; 256]; 3],
}

impl NormLut {
    pub fn new(p: &Preprocess) -> Self {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = (v as f32 / 255.0 - p.mean[c]) / p.std[c];
            }
        }
        NormLut { t }
    }

    /// Crops `crop`×`crop` at (`top`, `left`) from the HWC image `src` (`w`×`h`; pixels outside
    /// it are zero, torchvision's padding) and writes normalised CHW into `out`.
    pub fn crop_normalise_chw(&self, src: &[u8], w: u32, h: u32, top: i64, left: i64, crop: u32, out: &mut [f32]) {
        let n = crop as usize;
        let plane = n * n;
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let zero = [self.t[0][0], self.t[1][0], self.t[2][0]];
        for y in 0..n {
            let sy = top + y as i64;
            let row = y * n;
            let (r_row, g_row, b_row) = (&mut r_out[row..row + n], &mut g_out[row..row + n], &mut b_out[row..row + n]);
            if sy < 0 || sy >= h as i64 {
                r_row.fill(zero[0]);
                g_row.fill(zero[1]);
                b_row.fill(zero[2]);
                continue;
            }
            // Columns [x0, x1) of the output read real pixels; the rest is padding.
            let x0 = (-left).clamp(0, n as i64) as usize;
            let x1 = (w as i64 - left).clamp(x0 as i64, n as i64) as usize;
            for x in (0..x0).chain(x1..n) {
                r_row[x] = zero[0];
                g_row[x] = zero[1];
                b_row[x] = zero[2];
            }
            let start = ((sy as usize) * w as usize + (left + x0 as i64) as usize) * 3;
            let src_row = &src[start..start + (x1 - x0) * 3];
            for (((px, r), g), b) in src_row.chunks_exact(3).zip(&mut r_row[x0..x1]).zip(&mut g_row[x0..x1]).zip(&mut b_row[x0..x1]) {
                *r = self.t[0][px[0] as usize];
                *g = self.t[1][px[1] as usize];
                *b = self.t[2][px[2] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_matches_torchvision() {
        // Values from torchvision.transforms.functional._compute_resized_output_size.
        assert_eq!(resized_size(500, 333, 256), (384, 256));
        assert_eq!(resized_size(333, 500, 256), (256, 384));
        assert_eq!(resized_size(240, 159, 256), (386, 256));
        assert_eq!(resized_size(240, 240, 256), (256, 256));
        assert_eq!(resized_size(1000, 3, 224), (74666, 224));
    }

    #[test]
    fn center_crop_offset_rounds_half_to_even_and_pads() {
        assert_eq!(center_crop_offset(256, 224), 16);
        assert_eq!(center_crop_offset(341, 224), 58); // 58.5 → 58
        assert_eq!(center_crop_offset(343, 224), 60); // 59.5 → 60
        assert_eq!(center_crop_offset(200, 224), -12);
        assert_eq!(center_crop_offset(201, 224), -11);
    }

    #[test]
    fn eval_shapes_values_and_normalisation() {
        let p = Preprocess { resize: 20, crop: 16, ..Default::default() };
        let img = RgbImage::from_pixel(40, 30, image::Rgb([255, 128, 0]));
        let mut out = vec![0f32; eval_tensor_len(&p)];
        eval_into(&img, &p, &mut out).unwrap();
        let plane = 16 * 16;
        for c in 0..3 {
            let want = ([255.0, 128.0, 0.0][c] / 255.0 - p.mean[c]) / p.std[c];
            assert!(out[c * plane..(c + 1) * plane].iter().all(|v| (v - want).abs() < 1e-6), "channel {c}");
        }
        let mut short = vec![0f32; 10];
        assert!(eval_into(&img, &p, &mut short).is_err());
    }

    #[test]
    fn eval_crops_the_center_and_keeps_orientation() {
        // Left half black, right half white; no resize needed (shorter side already 8).
        let mut img = RgbImage::new(12, 8);
        for (x, _, px) in img.enumerate_pixels_mut() {
            *px = if x < 6 { image::Rgb([0, 0, 0]) } else { image::Rgb([255, 255, 255]) };
        }
        let p = Preprocess { resize: 8, crop: 4, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let mut out = vec![0f32; eval_tensor_len(&p)];
        eval_into(&img, &p, &mut out).unwrap();
        // Crop columns 4..8: two black then two white, in every row and channel.
        for c in 0..3 {
            for y in 0..4 {
                let row = &out[c * 16 + y * 4..c * 16 + y * 4 + 4];
                assert_eq!(row, &[0.0, 0.0, 1.0, 1.0]);
            }
        }
    }

    #[test]
    fn crop_larger_than_image_pads_with_zero() {
        let img = RgbImage::from_pixel(3, 3, image::Rgb([255, 255, 255]));
        let p = Preprocess { resize: 3, crop: 6, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let mut out = vec![0f32; eval_tensor_len(&p)];
        eval_into(&img, &p, &mut out).unwrap();
        // Padding (6−3)//2 = 1 on top/left: rows/cols 1..4 are the image.
        let row1: Vec<f32> = out[6..12].to_vec();
        assert_eq!(row1, vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert!(out[0..6].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn bilinear_downscale_is_antialiased() {
        // A 1-pixel checkerboard halved must average to mid-grey (a point sampler gives 0/255).
        let mut img = RgbImage::new(64, 64);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let v = if (x + y) % 2 == 0 { 255 } else { 0 };
            *px = image::Rgb([v, v, v]);
        }
        let p = Preprocess { resize: 32, crop: 32, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let mut out = vec![0f32; eval_tensor_len(&p)];
        eval_into(&img, &p, &mut out).unwrap();
        let inner: Vec<f32> = (4..28).flat_map(|y| (4..28).map(move |x| (y, x))).map(|(y, x)| out[y * 32 + x]).collect();
        assert!(inner.iter().all(|v| (v - 0.5).abs() < 0.02), "{:?}", &inner[..4]);
    }
}
