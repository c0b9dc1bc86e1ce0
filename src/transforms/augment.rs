//! Training augmentations (torchvision `RandomResizedCrop`, flips, rot90, automatic
//! augmentation, colour jitter, Gaussian blur, random erasing), each switchable, driven by an
//! explicit seeded RNG so a run is reproducible.
//!
//! Order, as in torchvision's classification presets and timm's `transforms_imagenet_train`:
//! crop (RandomResizedCrop, or the eval resize + center crop when it is off) → horizontal flip →
//! vertical flip → rot90 → auto-augment (RandAugment / TrivialAugmentWide on the 8-bit crop,
//! [`super::auto_augment`]) → colour jitter → normalise → Gaussian blur → random erasing. Random
//! draws happen in the order of [`Draw`]'s fields and only for the enabled steps, so one
//! `(config, RNG state)` always gives the same tensor; the draws of the later additions
//! (auto-augment, erasing) come after all the others, so a configuration without them draws and
//! produces exactly what it did before they existed.
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
//! - `RandomErasing` (timm, `mode='pixel'`, one box, area 2 %–⅓, aspect 0.3–1/0.3): with
//!   probability `reprob`, up to 10 attempts of (area, log-uniform aspect) for a box strictly
//!   smaller than the image, placed uniformly, filled with per-value N(0, 1) noise on the
//!   normalised tensor.
use anyhow::{bail, Result};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::auto_augment::{apply_ops, standard_normal, AutoAugment, AutoOps};
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
    /// timm's RandAugment (`rand-m9-mstd0.5`, …) or torchvision's TrivialAugmentWide (`ta-wide`)
    /// on the 8-bit crop after the flips; None = off.
    #[serde(default)]
    pub auto_augment: Option<AutoAugment>,
    /// timm's RandomErasing probability (per-pixel normal noise in one box); 0 = off.
    #[serde(default)]
    pub reprob: f32,
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
            auto_augment: None,
            reprob: 0.0,
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

/// Where the erasing box search takes its random numbers from: an RNG in training, chosen
/// values in tests. The two calls are Python's `random.uniform` and `random.randint`.
pub trait EraseDraws {
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    /// Uniform integer in [0, hi].
    fn int_to(&mut self, hi: u32) -> u32;
}

impl<R: Rng> EraseDraws for R {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        uniform(self, lo, hi)
    }
    fn int_to(&mut self, hi: u32) -> u32 {
        self.random_range(0..=hi)
    }
}

/// timm `RandomErasing._erase`'s box search for one box (`min_area=0.02, max_area=1/3,
/// min_aspect=0.3, max_count=1`) on a `height`×`width` tensor: up to 10 attempts of a target
/// area and a log-uniform aspect ratio, sides rounded half to even as Python's `round`; the first
/// box strictly smaller than the image in both directions is placed uniformly. None when all 10
/// attempts fail (timm then erases nothing).
pub fn erasing_box(height: u32, width: u32, d: &mut impl EraseDraws) -> Option<CropBox> {
    let area = height as f64 * width as f64;
    let (log_lo, log_hi) = (0.3f64.ln(), (1.0 / 0.3f64).ln());
    for _ in 0..10 {
        let target_area = d.uniform(0.02, 1.0 / 3.0) * area;
        let aspect = d.uniform(log_lo, log_hi).exp();
        let h = (target_area * aspect).sqrt().round_ties_even();
        let w = (target_area / aspect).sqrt().round_ties_even();
        if w < width as f64 && h < height as f64 {
            let (h, w) = (h as u32, w as u32);
            let top = d.int_to(height - h);
            let left = d.int_to(width - w);
            return Some(CropBox { top, left, height: h, width: w });
        }
    }
    None
}

/// One random-erasing box on the output tensor and the seed of its noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Erase {
    pub region: CropBox,
    pub seed: u64,
}

/// Fills `region` of every channel of the CHW `n`×`n` tensor `out` with N(0, 1) values drawn
/// from `seed` (timm's `mode='pixel'`: one value per pixel and channel); nothing else changes.
pub fn erase(out: &mut [f32], n: usize, e: &Erase) {
    let mut rng = ChaCha8Rng::seed_from_u64(e.seed);
    let r = e.region;
    let (top, left) = (r.top as usize, r.left as usize);
    let (bottom, right) = ((top + r.height as usize).min(n), (left + r.width as usize).min(n));
    if right <= left {
        return;
    }
    for plane in out.chunks_exact_mut(n * n) {
        for row in plane.chunks_exact_mut(n).take(bottom).skip(top) {
            for v in &mut row[left..right] {
                *v = standard_normal(&mut rng) as f32;
            }
        }
    }
}

/// The random choices for one image, drawn in the order of the fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draw {
    pub crop: Option<CropBox>,
    pub hflip: bool,
    pub vflip: bool,
    /// Counter-clockwise quarter turns (0–3).
    pub rot90: u8,
    /// Jitter factors `[brightness, contrast, saturation]` and the order they apply in.
    pub jitter: Option<([f32; 3], [u8; 3])>,
    pub blur_sigma: Option<f32>,
    /// The auto-augment ops with their resolved arguments (None when the policy is off).
    pub auto_augment: Option<AutoOps>,
    /// The random-erasing box (None when off, not drawn, or no attempt fitted).
    pub erase: Option<Erase>,
}

impl Draw {
    /// Draws every random choice of `a` for a `width`×`height` image that becomes the
    /// `p.crop`×`p.crop` tensor of `p` (the erasing box is on that tensor; the auto-augment fill
    /// is timm's rounded `p.mean`).
    pub fn sample<R: Rng>(a: &Augment, p: &Preprocess, width: u32, height: u32, rng: &mut R) -> Draw {
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
        // Added later: drawn after everything above, so the draws above are what they were.
        let auto_augment = a.auto_augment.map(|aa| aa.draw(p.mean, rng));
        // timm: `if random.random() > probability: return`.
        let erase = if a.reprob > 0.0 && rng.random::<f64>() <= a.reprob as f64 {
            erasing_box(p.crop, p.crop, rng).map(|region| Erase { region, seed: rng.random() })
        } else {
            None
        };
        Draw { crop, hflip, vflip, rot90, jitter, blur_sigma, auto_augment, erase }
    }
}

/// Applies the training transform to `img` and writes the normalised CHW float32 tensor of
/// `p.crop`×`p.crop` into `out` (length `3·crop·crop`).
pub fn train_into<R: Rng>(img: &RgbImage, p: &Preprocess, a: &Augment, rng: &mut R, out: &mut [f32]) -> Result<()> {
    if !(0.0..=1.0).contains(&a.reprob) {
        bail!("random erasing probability {} is outside [0, 1]", a.reprob);
    }
    let draw = Draw::sample(a, p, img.width(), img.height(), rng);
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
        let mut map = SquareMap::new(n as i64, d.hflip, d.vflip, d.rot90);
        // 2. Auto-augment on the 8-bit square. The flips and the turn are done first here, as
        //    timm and torchvision order them, rather than fused into step 3: shear and the
        //    translations act about the top-left corner, so they do not commute with a flip (a
        //    vertical flip turns a shear about the top edge into one about the bottom edge).
        if let Some(ops) = d.auto_augment.as_ref().filter(|a| !a.ops.is_empty()) {
            map.write_u8(&s.buf2, n as usize, &mut s.buf);
            std::mem::swap(&mut s.buf, &mut s.buf2);
            apply_ops(&mut s.buf2, n as usize, ops, &mut s.buf)?;
            map = SquareMap::new(n as i64, false, false, 0);
        }
        // 3. Flips and rotation (unless done above) fused with normalisation and HWC → CHW.
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
        // 4. Blur the normalised planes.
        if let Some(sigma) = d.blur_sigma {
            let plane = (n * n) as usize;
            for c in 0..3 {
                gaussian_blur(&mut out[c * plane..(c + 1) * plane], n as usize, sigma, &mut s.planes);
            }
        }
        // 5. Random erasing, last, as timm applies it to the normalised tensor.
        if let Some(e) = &d.erase {
            erase(out, n as usize, e);
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

    /// Writes the moved HWC square `src` into `dst` (8-bit, HWC).
    fn write_u8(&self, src: &[u8], n: usize, dst: &mut Vec<u8>) {
        dst.clear();
        dst.resize(n * n * 3, 0);
        for y in 0..n as i64 {
            for x in 0..n as i64 {
                let sy = self.yy * y + self.yx * x + self.y0;
                let sx = self.xy * y + self.xx * x + self.x0;
                let (si, o) = ((sy as usize * n + sx as usize) * 3, (y as usize * n + x as usize) * 3);
                dst[o..o + 3].copy_from_slice(&src[si..si + 3]);
            }
        }
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
    use super::super::auto_augment::{apply_op, Op, Resample};
    use super::*;

    /// `Draw::sample` of `Augment { rot90, blur_sigma: 1.5, color_jitter: 0.4, .. }` for a 97×61
    /// image, and the next `u64` of the RNG, recorded before auto-augment and erasing existed.
    const GOLDEN_DRAWS: [(u64, &str, u64); 3] = [
        (0, "(Some(CropBox { top: 1, left: 27, height: 60, width: 55 }), true, true, 2, Some(([1.0551906, 1.067355, 1.2887045], [1, 0, 2])), None)", 853541864733093004),
        (1, "(Some(CropBox { top: 2, left: 11, height: 58, width: 46 }), true, false, 1, Some(([1.1680332, 0.6334152, 0.7390675], [1, 0, 2])), None)", 15410066833432377950),
        (2, "(Some(CropBox { top: 21, left: 0, height: 39, width: 43 }), true, true, 2, Some(([0.95412135, 0.7822839, 0.89932173], [0, 1, 2])), Some(1.1340562))", 17246306575882330190),
    ];

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
        let base = Draw { crop: None, hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None, ..Default::default() };
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
        let d = Draw { crop: Some(CropBox { top: 4, left: 32, height: 20, width: 20 }), hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None, ..Default::default() };
        let mut out = vec![0f32; 3 * 64];
        apply_draw(&img, &p, &d, &mut out).unwrap();
        assert!(out[..64].iter().all(|v| *v == 0.0) && out[128..].iter().all(|v| *v == 1.0));
    }

    /// Draws chosen by the test: `uniform` returns the listed values as they are (the value of
    /// Python's `random.uniform`), `int_to` the listed integers.
    struct Chosen {
        uniforms: Vec<f64>,
        ints: Vec<u32>,
        used: (usize, usize),
    }

    impl EraseDraws for Chosen {
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            let v = self.uniforms[self.used.0];
            assert!((lo..hi).contains(&v), "{v} outside [{lo}, {hi})");
            self.used.0 += 1;
            v
        }
        fn int_to(&mut self, hi: u32) -> u32 {
            let v = self.ints[self.used.1];
            assert!(v <= hi);
            self.used.1 += 1;
            v
        }
    }

    #[test]
    fn erasing_box_search_is_timms() {
        // Read off timm's `_erase`: target_area = U(0.02, 1/3)·area, aspect = exp(U(ln 0.3,
        // ln 1/0.3)), h = round(√(target·aspect)), w = round(√(target/aspect)) with Python's
        // half-to-even round, accepted only if w < width and h < height, then top =
        // randint(0, height − h), left = randint(0, width − w).
        // 13×13, area fraction ¼, aspect 1: √42.25 = 6.5 rounds to 6 (half-up would give 7).
        let mut d = Chosen { uniforms: vec![0.25, 0.0], ints: vec![3, 4], used: (0, 0) };
        assert_eq!(erasing_box(13, 13, &mut d), Some(CropBox { top: 3, left: 4, height: 6, width: 6 }));
        assert_eq!(d.used, (2, 2));
        // 10×10, area fraction 0.3125 at aspect 3.2: h = √100 = 10 is not < 10, so the attempt
        // fails and the next one (¼, aspect 1: 5×5) is placed.
        let mut d = Chosen { uniforms: vec![0.3125, 3.2f64.ln(), 0.25, 0.0], ints: vec![5, 0], used: (0, 0) };
        assert_eq!(erasing_box(10, 10, &mut d), Some(CropBox { top: 5, left: 0, height: 5, width: 5 }));
        assert_eq!(d.used, (4, 2));
        // Tall boxes come from large aspects: h = √(0.1·2400·3) ≈ 26.8 → 27, w = √80 ≈ 8.9 → 9.
        let mut d = Chosen { uniforms: vec![0.1, 3f64.ln()], ints: vec![0, 31], used: (0, 0) };
        assert_eq!(erasing_box(40, 60, &mut d), Some(CropBox { top: 0, left: 31, height: 27, width: 9 }));
        // Ten failures: nothing, and no placement drawn.
        let mut d = Chosen { uniforms: [0.33, (1.0 / 0.3f64).ln() - 1e-9].repeat(10), ints: vec![], used: (0, 0) };
        assert_eq!(erasing_box(13, 13, &mut d), None);
        assert_eq!(d.used, (20, 0));
    }

    #[test]
    fn erase_fills_exactly_its_box_with_standard_normal_noise() {
        let n = 64;
        let e = Erase { region: CropBox { top: 5, left: 9, height: 40, width: 50 }, seed: 3 };
        let mut out = vec![7.0f32; 3 * n * n];
        erase(&mut out, n, &e);
        let mut inside = Vec::new();
        for c in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    let v = at(&out, n, c, y, x);
                    if (5..45).contains(&y) && (9..59).contains(&x) {
                        inside.push(v as f64);
                    } else {
                        assert_eq!(v, 7.0, "({c}, {y}, {x}) outside the box changed");
                    }
                }
            }
        }
        assert_eq!(inside.len(), 3 * 40 * 50);
        let mean = inside.iter().sum::<f64>() / inside.len() as f64;
        let std = (inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inside.len() as f64).sqrt();
        // 6000 values: the mean's standard error is 0.013.
        assert!(mean.abs() < 0.05 && (std - 1.0).abs() < 0.05, "mean {mean}, std {std}");
        assert!(inside.iter().all(|v| *v != 7.0));
        // Per value, not per channel or per box: no two neighbours equal.
        assert!(inside.windows(2).all(|w| w[0] != w[1]));
        let mut again = vec![7.0f32; 3 * n * n];
        erase(&mut again, n, &e);
        assert_eq!(out, again);
        erase(&mut again, n, &Erase { seed: 4, ..e });
        assert_ne!(out, again);
    }

    #[test]
    fn random_erasing_follows_its_probability() {
        let p = Preprocess { resize: 36, crop: 32, ..Default::default() };
        let count = |reprob: f32| {
            let a = Augment { reprob, ..plain() };
            let mut hits = 0;
            for seed in 0..4000 {
                let d = Draw::sample(&a, &p, 50, 40, &mut ChaCha8Rng::seed_from_u64(seed));
                if let Some(e) = d.erase {
                    let r = e.region;
                    assert!(r.top + r.height <= 32 && r.left + r.width <= 32 && r.height < 32 && r.width < 32, "{r:?}");
                    let area = (r.height * r.width) as f64 / 1024.0;
                    assert!((0.01..0.4).contains(&area), "{r:?}");
                    hits += 1;
                }
            }
            hits as f64 / 4000.0
        };
        let quarter = count(0.25);
        assert!((quarter - 0.25).abs() < 0.03, "{quarter}");
        assert!(count(1.0) > 0.97);
        assert_eq!(count(0.0), 0.0);
        let img = asym(40, 30);
        let mut out = vec![0f32; eval_tensor_len(&p)];
        let err = train_into(&img, &p, &Augment { reprob: 1.5, ..plain() }, &mut ChaCha8Rng::seed_from_u64(0), &mut out).unwrap_err();
        assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    }

    #[test]
    fn new_steps_draw_after_the_old_ones_and_cost_nothing_when_off() {
        let p = Preprocess { resize: 36, crop: 32, ..Default::default() };
        let old = Augment { rot90: true, blur_sigma: 1.5, color_jitter: 0.4, ..Default::default() };
        let new = Augment { auto_augment: Some("rand-m9-mstd0.5".parse().unwrap()), reprob: 0.5, ..old.clone() };
        for seed in 0..50 {
            let mut r_old = ChaCha8Rng::seed_from_u64(seed);
            let d_old = Draw::sample(&old, &p, 97, 61, &mut r_old);
            let d_new = Draw::sample(&new, &p, 97, 61, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(Draw { auto_augment: None, erase: None, ..d_new.clone() }, d_old);
            assert!(d_old.auto_augment.is_none() && d_old.erase.is_none());
            assert!(d_new.auto_augment.is_some());
        }
        // Without the new steps, the RNG ends where the old code left it (values recorded with
        // the code before they existed; the ChaCha8 stream is the same on every platform).
        let golden: [(u64, &str, u64); 3] = GOLDEN_DRAWS;
        for (seed, draw, next) in golden {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let d = Draw::sample(&old, &p, 97, 61, &mut rng);
            assert_eq!(format!("{:?}", (d.crop, d.hflip, d.vflip, d.rot90, d.jitter, d.blur_sigma)), draw, "seed {seed}");
            assert_eq!(rng.random::<u64>(), next, "seed {seed}");
        }
    }

    #[test]
    fn auto_augment_runs_on_the_flipped_8_bit_square() {
        let n = 16;
        let img = asym(16, 16);
        let p = Preprocess { resize: 16, crop: 16, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let run = |d: &Draw| {
            let mut out = vec![0f32; 3 * n * n];
            apply_draw(&img, &p, d, &mut out).unwrap();
            out
        };
        let ops = |ops: Vec<Op>| Some(AutoOps { ops, resample: Resample::Bilinear, fill: [124, 116, 104] });
        let flipped = Draw { vflip: true, ..Default::default() };
        // No op drawn (all skipped by p): exactly the output without auto-augment.
        assert_eq!(run(&Draw { auto_augment: ops(vec![]), ..flipped.clone() }), run(&flipped));
        // A shear about the top edge after the vertical flip, as timm orders them.
        let shear = Op::ShearX(0.3);
        let got = run(&Draw { auto_augment: ops(vec![shear]), ..flipped.clone() });
        let chw = |sq: &[u8]| -> Vec<f32> { (0..3).flat_map(|c| (0..n * n).map(move |i| sq[i * 3 + c] as f32 / 255.0)).collect() };
        let flip = |sq: &[u8]| -> Vec<u8> { (0..n).flat_map(|y| sq[(n - 1 - y) * n * 3..(n - y) * n * 3].to_vec()).collect() };
        let (mut sq, mut tmp) = (flip(img.as_raw()), Vec::new());
        apply_op(&mut sq, n, shear, Resample::Bilinear, [124, 116, 104], &mut tmp).unwrap();
        assert_eq!(got, chw(&sq));
        // The other order is a different picture.
        let mut sheared_first = img.as_raw().clone();
        apply_op(&mut sheared_first, n, shear, Resample::Bilinear, [124, 116, 104], &mut tmp).unwrap();
        assert_ne!(got, chw(&flip(&sheared_first)));
    }

    #[test]
    fn auto_augment_and_erasing_in_train_into() {
        let img = asym(97, 61);
        let p = Preprocess { resize: 36, crop: 32, ..Default::default() };
        let len = eval_tensor_len(&p);
        for policy in ["rand-m9-mstd0.5", "rand-m9-n3-mstd0.5-inc1", "ta-wide"] {
            let a = Augment { auto_augment: Some(policy.parse().unwrap()), reprob: 0.5, ..Default::default() };
            let mut changed = 0;
            for seed in 0..20 {
                let mut out = vec![0f32; len];
                train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(seed), &mut out).unwrap();
                let mut again = vec![0f32; len];
                train_into(&img, &p, &a, &mut ChaCha8Rng::seed_from_u64(seed), &mut again).unwrap();
                assert_eq!(out, again, "{policy} seed {seed} not reproducible");
                let mut plain_out = vec![0f32; len];
                train_into(&img, &p, &Augment::default(), &mut ChaCha8Rng::seed_from_u64(seed), &mut plain_out).unwrap();
                changed += (out != plain_out) as usize;
                assert!(out.iter().all(|v| v.is_finite()));
            }
            assert!(changed >= 12, "{policy}: only {changed} of 20 images changed");
        }
    }

    #[test]
    fn augment_config_without_the_new_fields_still_loads() {
        let old = r#"{"random_resized_crop":true,"scale":[0.08,1.0],"ratio":[0.75,1.3333334],"hflip":true,"vflip":false,"rot90":false,"blur_sigma":0.0,"color_jitter":0.0}"#;
        let a: Augment = serde_json::from_str(old).unwrap();
        assert_eq!(a, Augment { vflip: false, ..Default::default() });
        let with = Augment { auto_augment: Some("rand-m9-mstd0.5".parse().unwrap()), reprob: 0.25, ..Default::default() };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""auto_augment":"rand-m9-mstd0.5""#) && json.contains(r#""reprob":0.25"#), "{json}");
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), with);
        let bad = json.replace("rand-m9-mstd0.5", "rand-m9-bogus1");
        let err = serde_json::from_str::<Augment>(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown RandAugment section"), "{err}");
    }

    #[test]
    fn blur_smooths_and_keeps_the_mean_and_jitter_changes_colour() {
        let img = RgbImage::from_fn(32, 32, |x, y| if (x / 4 + y / 4) % 2 == 0 { image::Rgb([250, 250, 250]) } else { image::Rgb([5, 5, 5]) });
        let p = Preprocess { resize: 32, crop: 32, mean: [0.0; 3], std: [1.0; 3], ..Default::default() };
        let base = Draw { crop: None, hflip: false, vflip: false, rot90: 0, jitter: None, blur_sigma: None, ..Default::default() };
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
