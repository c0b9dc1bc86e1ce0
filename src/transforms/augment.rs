//! Training augmentations (torchvision `RandomResizedCrop`, flips, rot90, Gaussian blur,
//! colour jitter), each switchable, driven by an explicit seeded RNG so a run is reproducible.
//!
//! Order, as in torchvision's classification presets: crop (RandomResizedCrop, or the eval
//! resize + center crop when it is off) → horizontal flip → vertical flip → rot90 → colour
//! jitter → Gaussian blur → normalise. Random draws happen in that order and only for the
//! enabled steps, so one `(config, RNG state)` always gives the same tensor.
//!
//! - `RandomResizedCrop.get_params`: 10 attempts of (area fraction ~ U(scale), aspect ratio
//!   log-uniform in `ratio`), then the central-crop fallback; the region is cropped first and
//!   then resized (so no pixel outside it leaks in through the filter), like `F.resized_crop`.
//! - `ColorJitter(b, c, s)`: factors uniform in `[max(0, 1−j), 1+j]`, applied in a random
//!   order, each clamped to [0, 1]; computed in float rather than Pillow's 8-bit steps.
//! - `GaussianBlur`: with probability 0.5, sigma ~ U(0.1, blur_sigma), torchvision's sampled
//!   Gaussian kernel with reflect padding; kernel size `2·ceil(3σ)+1` (torchvision makes the
//!   caller choose one; ±3σ holds 99.7 % of the mass). The blur runs on the normalised planes:
//!   a kernel summing to one commutes with the per-channel affine normalisation.
use anyhow::{bail, Result};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::eval::{center_crop_offset, eval_tensor_len, resize_rgb, resized_size, with_scratch, NormLut};
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

/// A crop region in pixels: torchvision's `(i, j, h, w)` = (top, left, height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// torchvision `RandomResizedCrop.get_params` for a `width`×`height` image.
pub fn random_resized_crop_params<R: Rng>(width: u32, height: u32, scale: (f32, f32), ratio: (f32, f32), rng: &mut R) -> CropBox {
    let area = (width as f64) * (height as f64);
    let (log_r0, log_r1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0 as f64, scale.1 as f64);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        // Python's round() is half-to-even.
        let w = (target_area * aspect).sqrt().round_ties_even() as i64;
        let h = (target_area / aspect).sqrt().round_ties_even() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let top = rng.random_range(0..=(height as i64 - h)) as u32;
            let left = rng.random_range(0..=(width as i64 - w)) as u32;
            return CropBox { top, left, height: h as u32, width: w as u32 };
        }
    }
    // Fallback: central crop clamped to the ratio range.
    let in_ratio = width as f64 / height as f64;
    let (rmin, rmax) = ((ratio.0.min(ratio.1)) as f64, (ratio.0.max(ratio.1)) as f64);
    let (w, h) = if in_ratio < rmin {
        (width, ((width as f64 / rmin).round_ties_even() as u32).clamp(1, height))
    } else if in_ratio > rmax {
        (((height as f64 * rmax).round_ties_even() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// The random choices for one image, drawn in the documented order.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    pub crop: Option<CropBox>,
    pub hflip: bool,
    pub vflip: bool,
    /// Counter-clockwise quarter turns (0–3).
    pub rot90: u8,
    /// Jitter factors `[brightness, contrast, saturation]` and the order they apply in.
    pub jitter: Option<([f32; 3], [u8; 3])>,
    pub blur_sigma: Option<f32>,
}

impl Draw {
    /// Draws every random choice of `a` for a `width`×`height` image.
    pub fn sample<R: Rng>(a: &Augment, width: u32, height: u32, rng: &mut R) -> Draw {
        let crop = a.random_resized_crop.then(|| random_resized_crop_params(width, height, a.scale, a.ratio, rng));
        let hflip = a.hflip && rng.random_bool(0.5);
        let vflip = a.vflip && rng.random_bool(0.5);
        let rot90 = if a.rot90 { rng.random_range(0..4u8) } else { 0 };
        let jitter = (a.color_jitter > 0.0).then(|| {
            let j = a.color_jitter as f64;
            let lo = (1.0 - j).max(0.0);
            let f = [uniform(rng, lo, 1.0 + j) as f32, uniform(rng, lo, 1.0 + j) as f32, uniform(rng, lo, 1.0 + j) as f32];
            let mut order = [0u8, 1, 2];
            // Fisher–Yates, as torch.randperm.
            for i in (1..3).rev() {
                let k = rng.random_range(0..=i);
                order.swap(i, k);
            }
            (f, order)
        });
        let blur_sigma = if a.blur_sigma > 0.0 && rng.random_bool(0.5) {
            Some(uniform(rng, 0.1, a.blur_sigma as f64) as f32)
        } else {
            None
        };
        Draw { crop, hflip, vflip, rot90, jitter, blur_sigma }
    }
}

/// Applies the training transform to `img` and writes the normalised CHW float32 tensor of
/// `p.crop`×`p.crop` into `out` (length `3·crop·crop`).
pub fn train_into<R: Rng>(img: &RgbImage, p: &Preprocess, a: &Augment, rng: &mut R, out: &mut [f32]) -> Result<()> {
    let draw = Draw::sample(a, img.width(), img.height(), rng);
    apply_draw(img, p, &draw, out)
}

/// The deterministic part of [`train_into`]: applies the given random choices.
pub fn apply_draw(img: &RgbImage, p: &Preprocess, d: &Draw, out: &mut [f32]) -> Result<()> {
    if out.len() != eval_tensor_len(p) {
        bail!("train tensor buffer has {} values, expected {}", out.len(), eval_tensor_len(p));
    }
    if p.resize == 0 || p.crop == 0 || img.width() == 0 || img.height() == 0 {
        bail!("empty image or zero resize/crop");
    }
    let n = p.crop;
    let lut = NormLut::new(p);
    with_scratch(|s| {
        // 1. Geometry to an n×n 8-bit square in s.buf2.
        match d.crop {
            Some(c) => resize_rgb(&mut s.resizer, img, Some((c.left, c.top, c.width, c.height)), n, n, p.interpolation, &mut s.buf2)?,
            None => {
                let (w, h) = img.dimensions();
                let (nw, nh) = resized_size(w, h, p.resize);
                let src: &[u8] = if (nw, nh) == (w, h) {
                    img.as_raw()
                } else {
                    resize_rgb(&mut s.resizer, img, None, nw, nh, p.interpolation, &mut s.buf)?;
                    &s.buf
                };
                crop_u8(src, nw, nh, center_crop_offset(nh, n), center_crop_offset(nw, n), n, &mut s.buf2);
            }
        }
        // 2. Flips and rotation fused with normalisation and HWC → CHW.
        let map = SquareMap::new(n as i64, d.hflip, d.vflip, d.rot90);
        match d.jitter {
            None => map.write(out, n as usize, |si, c| lut.t[c][s.buf2[si * 3 + c] as usize]),
            Some((factors, order)) => {
                s.planes.clear();
                s.planes.extend(s.buf2.iter().map(|v| *v as f32 / 255.0));
                color_jitter(&mut s.planes, factors, order);
                let planes = &s.planes;
                map.write(out, n as usize, |si, c| (planes[si * 3 + c] - p.mean[c]) / p.std[c]);
            }
        }
        // 3. Blur the normalised planes.
        if let Some(sigma) = d.blur_sigma {
            let plane = (n * n) as usize;
            for c in 0..3 {
                gaussian_blur(&mut out[c * plane..(c + 1) * plane], n as usize, sigma, &mut s.planes);
            }
        }
        Ok(())
    })
}

/// Copies an `n`×`n` window at (`top`, `left`) of an HWC image, zero outside it.
fn crop_u8(src: &[u8], w: u32, h: u32, top: i64, left: i64, n: u32, dst: &mut Vec<u8>) {
    let n = n as usize;
    dst.clear();
    dst.resize(n * n * 3, 0);
    for y in 0..n {
        let sy = top + y as i64;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        let x0 = (-left).clamp(0, n as i64) as usize;
        let x1 = (w as i64 - left).clamp(x0 as i64, n as i64) as usize;
        let s0 = (sy as usize * w as usize + (left + x0 as i64) as usize) * 3;
        dst[(y * n + x0) * 3..(y * n + x1) * 3].copy_from_slice(&src[s0..s0 + (x1 - x0) * 3]);
    }
}

/// Output pixel (y, x) of hflip → vflip → rot90^k of an n×n square, as an affine map back to
/// the source pixel: `sy = yy·y + yx·x + y0`, `sx = xy·y + xx·x + x0`.
struct SquareMap {
    yy: i64,
    yx: i64,
    y0: i64,
    xy: i64,
    xx: i64,
    x0: i64,
}

impl SquareMap {
    fn new(n: i64, hflip: bool, vflip: bool, rot90: u8) -> Self {
        let m = n - 1;
        // Start from "source = output" and undo the last step first.
        let (mut yy, mut yx, mut y0, mut xy, mut xx, mut x0) = (1, 0, 0, 0, 1, 0);
        for _ in 0..rot90 % 4 {
            // Counter-clockwise quarter turn (numpy/torch rot90): out[y][x] = in[x][m − y].
            (yy, yx, y0, xy, xx, x0) = (xy, xx, x0, -yy, -yx, m - y0);
        }
        if vflip {
            (yy, yx, y0) = (-yy, -yx, m - y0);
        }
        if hflip {
            (xy, xx, x0) = (-xy, -xx, m - x0);
        }
        SquareMap { yy, yx, y0, xy, xx, x0 }
    }

    /// Fills the three CHW planes of `out` with `value(source pixel index, channel)`.
    fn write(&self, out: &mut [f32], n: usize, value: impl Fn(usize, usize) -> f32) {
        let plane = n * n;
        for y in 0..n as i64 {
            for x in 0..n as i64 {
                let sy = self.yy * y + self.yx * x + self.y0;
                let sx = self.xy * y + self.xx * x + self.x0;
                let si = sy as usize * n + sx as usize;
                let o = y as usize * n + x as usize;
                out[o] = value(si, 0);
                out[plane + o] = value(si, 1);
                out[2 * plane + o] = value(si, 2);
            }
        }
    }
}

/// Brightness (0), contrast (1), saturation (2) on interleaved RGB in [0, 1], as torchvision's
/// tensor ops: blend with black, with the mean grey level, with the grey image; clamp each time.
fn color_jitter(px: &mut [f32], factors: [f32; 3], order: [u8; 3]) {
    let gray = |p: &[f32]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    for op in order {
        let f = factors[op as usize];
        match op {
            0 => px.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0)),
            1 => {
                let n = (px.len() / 3).max(1) as f32;
                let mean = px.chunks_exact(3).map(gray).sum::<f32>() / n;
                px.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
            }
            _ => {
                for p in px.chunks_exact_mut(3) {
                    let g = gray(p);
                    for v in p.iter_mut() {
                        *v = (f * *v + (1.0 - f) * g).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}

/// torchvision's `_get_gaussian_kernel1d`.
pub fn gaussian_kernel(sigma: f32, ksize: usize) -> Vec<f32> {
    let half = (ksize as f32 - 1.0) * 0.5;
    let k: Vec<f32> = (0..ksize).map(|i| (-0.5 * ((i as f32 - half) / sigma).powi(2)).exp()).collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Separable Gaussian blur of one n×n plane with reflect padding (edge not repeated).
fn gaussian_blur(plane: &mut [f32], n: usize, sigma: f32, tmp: &mut Vec<f32>) {
    if n < 2 {
        return;
    }
    let radius = ((3.0 * sigma).ceil() as usize).clamp(1, n - 1);
    let k = gaussian_kernel(sigma, 2 * radius + 1);
    let reflect = |i: i64| -> usize {
        let m = n as i64 - 1;
        let i = if i < 0 { -i } else { i };
        (if i > m { 2 * m - i } else { i }) as usize
    };
    tmp.clear();
    tmp.resize(n * n, 0.0);
    // Horizontal pass into tmp, vertical pass back into plane.
    for y in 0..n {
        let row = &plane[y * n..(y + 1) * n];
        for x in 0..n {
            let mut acc = 0.0;
            for (t, w) in k.iter().enumerate() {
                acc += w * row[reflect(x as i64 + t as i64 - radius as i64)];
            }
            tmp[y * n + x] = acc;
        }
    }
    for y in 0..n {
        for x in 0..n {
            let mut acc = 0.0;
            for (t, w) in k.iter().enumerate() {
                acc += w * tmp[reflect(y as i64 + t as i64 - radius as i64) * n + x];
            }
            plane[y * n + x] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Every pixel distinct and the picture asymmetric, so any flip or turn shows.
    fn asym(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, ((x + 2 * y) % 256) as u8]))
    }

    fn plain() -> Augment {
        Augment { random_resized_crop: false, hflip: false, vflip: false, rot90: false, blur_sigma: 0.0, color_jitter: 0.0, ..Default::default() }
    }

    fn at(t: &[f32], n: usize, c: usize, y: usize, x: usize) -> f32 {
        t[c * n * n + y * n + x]
    }

    #[test]
    fn rrc_params_stay_inside_and_follow_the_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let c = random_resized_crop_params(500, 333, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(c.width >= 1 && c.height >= 1 && c.left + c.width <= 500 && c.top + c.height <= 333, "{c:?}");
            areas.push((c.width * c.height) as f64 / (500.0 * 333.0));
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // Uniform on (0.08, 1) has mean 0.54; rejections of large crops pull it down a little.
        assert!(mean > 0.35 && mean < 0.56, "mean area fraction {mean}");
        // Impossible ratios take the documented central fallback.
        let c = random_resized_crop_params(100, 10, (0.9, 1.0), (1.0, 1.0), &mut rng);
        assert_eq!(c, CropBox { top: 0, left: 45, height: 10, width: 10 });
    }

    #[test]
    fn shapes_value_ranges_and_reproducibility() {
        let img = asym(97, 61);
        let p = Preprocess { resize: 36, crop: 32, ..Default::default() };
        let a = Augment { rot90: true, blur_sigma: 1.5, color_jitter: 0.4, ..Default::default() };
        let len = eval_tensor_len(&p);
        for seed in 0..20 {
            let mut out = vec![0f32; len];
            train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(seed), &mut out).unwrap();
            for c in 0..3 {
                for v in &out[c * 1024..(c + 1) * 1024] {
                    let x = v * p.std[c] + p.mean[c];
                    assert!((-1e-5..=1.0 + 1e-5).contains(&x), "denormalised {x} out of [0,1]");
                }
            }
            let mut again = vec![0f32; len];
            train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(seed), &mut again).unwrap();
            assert_eq!(out, again, "seed {seed} not reproducible");
        }
        let (mut x, mut y) = (vec![0f32; len], vec![0f32; len]);
        train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(1), &mut x).unwrap();
        train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(2), &mut y).unwrap();
        assert_ne!(x, y);
        assert!(train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(1), &mut vec![0f32; 5]).is_err());
    }

    #[test]
    fn without_random_crop_and_flips_it_is_the_eval_transform() {
        let img = asym(50, 37);
        let p = Preprocess { resize: 20, crop: 16, ..Default::default() };
        let mut want = vec![0f32; eval_tensor_len(&p)];
        super::super::eval_into(&img, &p, &mut want).unwrap();
        let mut got = vec![0f32; want.len()];
        train_into(&img, &p, &plain(), &mut ChaCha8Rng::seed_from_u64(0), &mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn flips_and_rotations_move_pixels_as_documented() {
        let img = asym(16, 16);
        let p = Preprocess { resize: 16, crop: 16, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let n = 16;
        let base = Draw { crop: None, hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None };
        let run = |d: &Draw| {
            let mut out = vec![0f32; 3 * n * n];
            apply_draw(&img, &p, d, &mut out).unwrap();
            out
        };
        let id = run(&base);
        let h = run(&Draw { hflip: true, ..base.clone() });
        let v = run(&Draw { vflip: true, ..base.clone() });
        let r1 = run(&Draw { rot90: 1, ..base.clone() });
        let r2 = run(&Draw { rot90: 2, ..base.clone() });
        let hv = run(&Draw { hflip: true, vflip: true, ..base.clone() });
        for c in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    let px = at(&id, n, c, y, x);
                    assert_eq!(px, img.get_pixel(x as u32, y as u32)[c] as f32 / 255.0);
                    assert_eq!(at(&h, n, c, y, n - 1 - x), px);
                    assert_eq!(at(&v, n, c, n - 1 - y, x), px);
                    // numpy rot90 (counter-clockwise): out[y][x] = in[x][n-1-y].
                    assert_eq!(at(&r1, n, c, y, x), at(&id, n, c, x, n - 1 - y));
                    assert_eq!(at(&r2, n, c, n - 1 - y, n - 1 - x), px);
                    assert_eq!(hv, r2);
                }
            }
        }
        assert_ne!(id, h);
        // Random flips: over seeds, both flipped and unflipped outputs occur and nothing else.
        let a = Augment { hflip: true, ..plain() };
        let (mut seen_id, mut seen_h) = (false, false);
        for seed in 0..32 {
            let mut out = vec![0f32; 3 * n * n];
            train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(seed), &mut out).unwrap();
            seen_id |= out == id;
            seen_h |= out == h;
            assert!(out == id || out == h);
        }
        assert!(seen_id && seen_h);
    }

    #[test]
    fn random_resized_crop_resizes_the_region_alone() {
        // Left half red, right half blue: a crop inside the right half must be pure blue (no
        // red pulled in by the filter support from outside the region).
        let img = RgbImage::from_fn(64, 32, |x, _| if x < 32 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let p = Preprocess { resize: 8, crop: 8, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let d = Draw { crop: Some(CropBox { top: 4, left: 32, height: 20, width: 20 }), hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None };
        let mut out = vec![0f32; 3 * 64];
        apply_draw(&img, &p, &d, &mut out).unwrap();
        assert!(out[..64].iter().all(|v| *v == 0.0) && out[128..].iter().all(|v| *v == 1.0));
    }

    #[test]
    fn blur_smooths_and_keeps_the_mean_and_jitter_changes_colour() {
        let img = RgbImage::from_fn(32, 32, |x, y| if (x / 4 + y / 4) % 2 == 0 { image::Rgb([250, 250, 250]) } else { image::Rgb([5, 5, 5]) });
        let p = Preprocess { resize: 32, crop: 32, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let base = Draw { crop: None, hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None };
        let mut sharp = vec![0f32; 3 * 1024];
        apply_draw(&img, &p, &base, &mut sharp).unwrap();
        let mut blurred = vec![0f32; 3 * 1024];
        apply_draw(&img, &p, &Draw { blur_sigma: Some(2.0), ..base.clone() }, &mut blurred).unwrap();
        let var = |t: &[f32]| {
            let m = t.iter().sum::<f32>() / t.len() as f32;
            (m, t.iter().map(|v| (v - m).powi(2)).sum::<f32>() / t.len() as f32)
        };
        let ((m0, v0), (m1, v1)) = (var(&sharp[..1024]), var(&blurred[..1024]));
        assert!((m0 - m1).abs() < 0.01 && v1 < 0.5 * v0, "mean {m0}->{m1}, var {v0}->{v1}");
        let k = gaussian_kernel(1.0, 7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6 && k[3] > k[2] && (k[0] - k[6]).abs() < 1e-9);

        let mut dark = vec![0f32; 3 * 1024];
        apply_draw(&img, &p, &Draw { jitter: Some(([0.5, 1.0, 1.0], [0, 1, 2])), ..base.clone() }, &mut dark).unwrap();
        for (d, s) in dark.iter().zip(&sharp) {
            assert!((d - 0.5 * s).abs() < 1e-6);
        }
    }
}
