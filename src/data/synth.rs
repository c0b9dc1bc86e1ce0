//! `trainer synth`: a small procedural plant-like dataset in competition layout, so the
//! whole toolkit runs anywhere with no download.
//!
//! # Layout (what a plant-seedlings style competition ships)
//! ```text
//! OUT/train/<class>/<class>_0000.jpg   long-tailed: 120, 80, 50, 30, 20, 12 images by default
//! OUT/test/test_0000.jpg               balanced (15 per class), anonymous names, shuffled
//! OUT/sample_submission.csv            image_name,class (every row the largest class)
//! OUT/solution.csv                     image_name,class (the true classes)
//! ```
//! Class names are plant-genus folder names (`acer`, `bellis`, …) and one numeric-looking name,
//! `10`, so that every stage is seen to treat class names as strings, never as indices.
//!
//! # The generator
//! Each class is a [`ClassStyle`]: a petal count, a petal profile (round, pointed, notched,
//! narrow), a hue with a saturation/value range, a centre disc (size and colour) and an optional
//! inner ring of petals. Classes differ in colour *and* in petal count and shape, so that a small
//! CNN at 64 px separates them within a couple of CPU minutes, while each image varies: hue
//! ±8°, saturation/value, flower size (22–38 % of the short side), position, rotation, petal
//! length per petal, sometimes a second smaller flower, a curved stem with leaves, a background
//! of gradient + low-frequency blotches + blurred leaf shapes, brightness/contrast jitter and
//! per-pixel noise. Image sizes are drawn independently in 80–320 px with the aspect ratio kept
//! within 0.55–1.8, so the loaders' resize and crop paths are all exercised.
//!
//! Flowers are drawn analytically in polar coordinates around their centre: a pixel at angle θ
//! and radius r is inside a petal when r < R·profile(u), with u ∈ [−1, 1] the angle relative to
//! the nearest petal's axis. Edges are anti-aliased with a one-pixel ramp.
//!
//! # Determinism
//! Every image has its own ChaCha8 stream (`seed`, stream = image id), so the output bytes depend
//! only on the arguments, not on the number of threads or their scheduling. JPEGs are encoded
//! with the `image` crate at quality 90. The same seed gives byte-identical files.
use std::f32::consts::PI;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// What `trainer synth` generates (see the binary's `--help` for each field).
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Output folder (gets `train/<class>/`, `test/`, `sample_submission.csv`, `solution.csv`).
    pub out: PathBuf,
    /// Random seed; the same seed and options give byte-identical files.
    pub seed: u64,
    /// Number of classes (2–16).
    pub classes: usize,
    /// Multiplies every image count; each class keeps at least 2 train and 1 test image.
    pub scale: f64,
    /// Test images per class before scaling.
    pub test_per_class: usize,
    /// Write into a non-empty `out`: replaces its train/, test/ and the two CSVs.
    pub force: bool,
    /// Worker threads [None: all cores].
    pub threads: Option<usize>,
}

impl SynthOptions {
    /// The defaults of the command line, writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> SynthOptions {
        SynthOptions { out: out.into(), seed: 0, classes: 6, scale: 1.0, test_per_class: 15, force: false, threads: None }
    }
}

/// Class folder names, in generation order (the first gets the most images).
pub const CLASS_NAMES: [&str; 16] = [
    "acer",
    "bellis",
    "campanula",
    "dianthus",
    "echinacea",
    "10",
    "fuchsia",
    "geranium",
    "helianthus",
    "iris",
    "jasminum",
    "kalmia",
    "lavandula",
    "malva",
    "nigella",
    "oxalis",
];

/// Train images per class before scaling, for the first six classes; later ones keep shrinking.
const TRAIN_COUNTS: [usize; 6] = [120, 80, 50, 30, 20, 12];

const JPEG_QUALITY: u8 = 90;

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub out: PathBuf,
    /// Class names in generation order (not sorted), with their train and test counts.
    pub classes: Vec<String>,
    pub train_counts: Vec<usize>,
    pub test_counts: Vec<usize>,
    pub seconds: f64,
}

/// Train images per class (before any minimum), long-tailed.
pub fn train_counts(classes: usize, scale: f64) -> Vec<usize> {
    let mut base: Vec<f64> = Vec::with_capacity(classes);
    for i in 0..classes {
        let c = match TRAIN_COUNTS.get(i) {
            Some(&c) => c as f64,
            // Beyond the table: keep the tail going down, slowly, never below 8.
            None => (base[i - 1] * 0.8).max(8.0),
        };
        base.push(c);
    }
    base.into_iter().map(|c| ((c * scale).round() as usize).max(2)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Profile {
    /// Broad rounded petals that touch.
    Round,
    /// Triangular lobes, star- or maple-like.
    Pointed,
    /// Round petals with a notch at the tip.
    Notched,
    /// Thin strap-like petals with gaps (daisy).
    Narrow,
}

/// How one class looks.
#[derive(Clone, Copy, Debug)]
struct ClassStyle {
    petals: usize,
    profile: Profile,
    /// Hue in degrees.
    hue: f32,
    sat: (f32, f32),
    val: (f32, f32),
    /// Centre disc radius as a fraction of the petal radius (0 = none).
    centre: f32,
    centre_hsv: (f32, f32, f32),
    /// An inner ring of shorter petals, offset by half a petal (hue shift, length fraction).
    inner: Option<(f32, f32)>,
    /// Dark veins along the petal axes (leaves).
    veins: bool,
}

fn style(class: usize) -> ClassStyle {
    use Profile::*;
    let s = |petals, profile, hue, sat, val, centre, centre_hsv, inner, veins| ClassStyle {
        petals,
        profile,
        hue,
        sat,
        val,
        centre,
        centre_hsv,
        inner,
        veins,
    };
    match class % CLASS_NAMES.len() {
        // acer: a red maple leaf, five pointed lobes, veins, no disc.
        0 => s(5, Pointed, 6.0, (0.75, 0.95), (0.65, 0.9), 0.0, (0.0, 0.0, 0.0), None, true),
        // bellis: a daisy, many thin white petals, big yellow disc.
        1 => s(18, Narrow, 50.0, (0.02, 0.12), (0.9, 1.0), 0.3, (48.0, 0.9, 0.95), None, false),
        // campanula: five pointed blue-violet petals, small pale centre.
        2 => s(5, Pointed, 232.0, (0.55, 0.8), (0.7, 0.95), 0.12, (60.0, 0.2, 0.95), None, false),
        // dianthus: five notched magenta-pink petals, dark red eye.
        3 => s(5, Notched, 330.0, (0.45, 0.7), (0.85, 1.0), 0.22, (345.0, 0.9, 0.45), None, false),
        // echinacea: twelve narrow purple petals around a large orange-brown cone.
        4 => s(12, Narrow, 285.0, (0.45, 0.7), (0.6, 0.85), 0.38, (25.0, 0.85, 0.5), None, false),
        // "10": six round yellow petals, small orange centre.
        5 => s(6, Round, 55.0, (0.8, 1.0), (0.9, 1.0), 0.15, (28.0, 0.95, 0.8), None, false),
        // fuchsia: four pointed red petals over a purple inner ring.
        6 => s(4, Pointed, 350.0, (0.8, 0.95), (0.75, 0.95), 0.08, (300.0, 0.6, 0.5), Some((-60.0, 0.6)), false),
        // geranium: five round scarlet petals, white centre.
        7 => s(5, Round, 2.0, (0.8, 1.0), (0.8, 0.95), 0.12, (0.0, 0.05, 1.0), None, false),
        // helianthus: twenty narrow golden petals, huge brown disc.
        8 => s(20, Narrow, 45.0, (0.85, 1.0), (0.85, 1.0), 0.45, (25.0, 0.8, 0.3), None, false),
        // iris: three notched violet petals with a yellow inner ring.
        9 => s(3, Notched, 265.0, (0.6, 0.85), (0.55, 0.8), 0.1, (50.0, 0.9, 0.9), Some((-210.0, 0.5)), false),
        // jasminum: five narrow white petals, yellow-green centre.
        10 => s(5, Narrow, 70.0, (0.0, 0.08), (0.92, 1.0), 0.1, (75.0, 0.6, 0.8), None, false),
        // kalmia: five round pale pink petals, pink centre, red dots via inner ring.
        11 => s(5, Round, 340.0, (0.15, 0.35), (0.92, 1.0), 0.18, (340.0, 0.6, 0.7), Some((10.0, 0.45)), false),
        // lavandula: eight pointed lilac petals, lilac centre.
        12 => s(8, Pointed, 270.0, (0.3, 0.5), (0.75, 0.95), 0.15, (270.0, 0.6, 0.5), None, false),
        // malva: five notched mauve petals with dark veins.
        13 => s(5, Notched, 305.0, (0.35, 0.55), (0.7, 0.9), 0.12, (300.0, 0.3, 0.95), None, true),
        // nigella: ten pointed sky-blue petals, green centre.
        14 => s(10, Pointed, 205.0, (0.45, 0.7), (0.8, 1.0), 0.2, (110.0, 0.6, 0.45), None, false),
        // oxalis: five round lemon petals with a green inner ring.
        _ => s(5, Round, 62.0, (0.4, 0.6), (0.9, 1.0), 0.1, (100.0, 0.7, 0.6), Some((50.0, 0.45)), false),
    }
}

/// Petal radius (as a fraction of R) at the normalised angle u ∈ [−1, 1] from the petal axis.
fn profile(p: Profile, u: f32) -> f32 {
    let a = u.abs().min(1.0);
    match p {
        Profile::Round => (1.0 - a * a).max(0.0).powf(0.35),
        Profile::Pointed => (1.0 - a).max(0.0).powf(0.8),
        Profile::Notched => (1.0 - a * a).max(0.0).powf(0.4) * (1.0 - 0.3 * (-(a / 0.18).powi(2)).exp()),
        Profile::Narrow => {
            let w = 0.45;
            if a < w {
                (1.0 - (a / w).powi(4)).max(0.0).sqrt()
            } else {
                0.0
            }
        }
    }
}

/// HSV (h in degrees, s and v in 0–1) to RGB floats in 0–255.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// A float RGB canvas (blending in floats avoids banding before the final noise and rounding).
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Canvas {
    fn blend(&mut self, x: usize, y: usize, c: [f32; 3], a: f32) {
        if a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let p = &mut self.px[y * self.w + x];
        for k in 0..3 {
            p[k] += (c[k] - p[k]) * a;
        }
    }

    /// Bounding box of a disc, clipped to the canvas.
    fn bbox(&self, cx: f32, cy: f32, r: f32) -> (usize, usize, usize, usize) {
        let x0 = (cx - r - 1.0).floor().max(0.0) as usize;
        let y0 = (cy - r - 1.0).floor().max(0.0) as usize;
        let x1 = ((cx + r + 2.0).ceil().max(0.0) as usize).min(self.w);
        let y1 = ((cy + r + 2.0).ceil().max(0.0) as usize).min(self.h);
        (x0, y0, x1, y1)
    }

    /// A filled rotated ellipse with a soft one-pixel edge.
    fn ellipse(&mut self, (cx, cy): (f32, f32), (a, b): (f32, f32), angle: f32, c: [f32; 3], alpha: f32) {
        let (x0, y0, x1, y1) = self.bbox(cx, cy, a.max(b));
        let (s, co) = angle.sin_cos();
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = x as f32 + 0.5 - cx;
                let dy = y as f32 + 0.5 - cy;
                let u = (dx * co + dy * s) / a;
                let v = (-dx * s + dy * co) / b;
                let d = (u * u + v * v).sqrt();
                // Distance outside the edge in pixels, roughly.
                let edge = (1.0 - d) * a.min(b);
                self.blend(x, y, c, alpha * (edge + 0.5).clamp(0.0, 1.0));
            }
        }
    }

    /// A thick line segment (capsule).
    fn segment(&mut self, p: (f32, f32), q: (f32, f32), width: f32, c: [f32; 3]) {
        let r = width / 2.0;
        let x0 = (p.0.min(q.0) - r - 1.0).floor().max(0.0) as usize;
        let y0 = (p.1.min(q.1) - r - 1.0).floor().max(0.0) as usize;
        let x1 = ((p.0.max(q.0) + r + 2.0).ceil().max(0.0) as usize).min(self.w);
        let y1 = ((p.1.max(q.1) + r + 2.0).ceil().max(0.0) as usize).min(self.h);
        let (vx, vy) = (q.0 - p.0, q.1 - p.1);
        let len2 = (vx * vx + vy * vy).max(1e-6);
        for y in y0..y1 {
            for x in x0..x1 {
                let (px, py) = (x as f32 + 0.5 - p.0, y as f32 + 0.5 - p.1);
                let t = ((px * vx + py * vy) / len2).clamp(0.0, 1.0);
                let (dx, dy) = (px - t * vx, py - t * vy);
                let d = (dx * dx + dy * dy).sqrt();
                self.blend(x, y, c, (r - d + 0.5).clamp(0.0, 1.0));
            }
        }
    }

    fn into_image(self, rng: &mut ChaCha8Rng, noise: f32, gain: f32, bias: f32) -> RgbImage {
        let mut img = RgbImage::new(self.w as u32, self.h as u32);
        for (i, p) in self.px.iter().enumerate() {
            let n = (rng.random::<f32>() - 0.5) * 2.0 * noise;
            let q = p.map(|v| ((v - 128.0) * gain + 128.0 + bias + n).round().clamp(0.0, 255.0) as u8);
            img.put_pixel((i % self.w) as u32, (i / self.w) as u32, Rgb(q));
        }
        img
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// Background: a vertical gradient between two earthy/leafy colours, low-frequency blotches
/// and a few blurred leaves, none of it class-dependent.
fn background(rng: &mut ChaCha8Rng, w: usize, h: usize) -> Canvas {
    // Greens, browns, greys and a pale sky: what plant photos are taken against.
    const HUES: [(f32, f32, f32); 6] =
        [(95.0, 0.5, 0.45), (110.0, 0.6, 0.3), (30.0, 0.45, 0.35), (35.0, 0.25, 0.6), (0.0, 0.0, 0.5), (200.0, 0.25, 0.8)];
    let pick = |rng: &mut ChaCha8Rng| {
        let (h, s, v) = HUES[rng.random_range(0..HUES.len())];
        hsv(h + uniform(rng, -15.0, 15.0), (s + uniform(rng, -0.1, 0.1)).clamp(0.0, 1.0), (v + uniform(rng, -0.1, 0.1)).clamp(0.05, 1.0))
    };
    let (top, bottom) = (pick(rng), pick(rng));
    // Low-frequency blotches: a sum of three random plane waves.
    let waves: Vec<(f32, f32, f32, f32)> = (0..3)
        .map(|_| {
            let ang = uniform(rng, 0.0, 2.0 * PI);
            let freq = uniform(rng, 1.0, 4.0) * 2.0 * PI / w.max(h) as f32;
            (ang.cos() * freq, ang.sin() * freq, uniform(rng, 0.0, 2.0 * PI), uniform(rng, 6.0, 18.0))
        })
        .collect();
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        let t = y as f32 / (h - 1).max(1) as f32;
        for x in 0..w {
            let mut o = 0.0;
            for &(fx, fy, ph, amp) in &waves {
                o += amp * (fx * x as f32 + fy * y as f32 + ph).sin();
            }
            px.push([0, 1, 2].map(|k| top[k] * (1.0 - t) + bottom[k] * t + o));
        }
    }
    let mut c = Canvas { w, h, px };
    let s = w.min(h) as f32;
    for _ in 0..rng.random_range(2..7) {
        let col = hsv(uniform(rng, 80.0, 130.0), uniform(rng, 0.3, 0.7), uniform(rng, 0.15, 0.5));
        let (cx, cy) = (uniform(rng, 0.0, w as f32), uniform(rng, 0.0, h as f32));
        let a = uniform(rng, 0.15, 0.4) * s;
        c.ellipse((cx, cy), (a, a * uniform(rng, 0.25, 0.45)), uniform(rng, 0.0, PI), col, uniform(rng, 0.3, 0.7));
    }
    c
}

/// A stem from the flower centre to the bottom edge, with one or two leaves.
fn stem(c: &mut Canvas, rng: &mut ChaCha8Rng, cx: f32, cy: f32, r: f32) {
    let green = hsv(uniform(rng, 85.0, 125.0), uniform(rng, 0.5, 0.8), uniform(rng, 0.35, 0.6));
    let width = (r * uniform(rng, 0.07, 0.11)).max(1.5);
    let bend = uniform(rng, -0.6, 0.6) * r;
    let end = (cx + uniform(rng, -0.5, 0.5) * r, c.h as f32 + width);
    let mid = ((cx + end.0) / 2.0 + bend, (cy + end.1) / 2.0);
    c.segment((cx, cy), mid, width, green);
    c.segment(mid, end, width, green);
    for _ in 0..rng.random_range(1..3) {
        let t = uniform(rng, 0.2, 0.9);
        let (lx, ly) = (mid.0 + (end.0 - mid.0) * t, mid.1 + (end.1 - mid.1) * t);
        let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let len = r * uniform(rng, 0.35, 0.6);
        // Leaves point sideways and up, 17–57° above the horizontal.
        let ang = uniform(rng, 0.3, 1.0);
        let (dx, dy) = (ang.cos() * len * side, -ang.sin() * len);
        c.ellipse((lx + dx * 0.5, ly + dy * 0.5), (len * 0.5, len * 0.18), dy.atan2(dx), green, 1.0);
    }
}

/// One flower (or leaf) of `st` centred at (cx, cy) with petal radius r.
fn flower(c: &mut Canvas, rng: &mut ChaCha8Rng, st: &ClassStyle, cx: f32, cy: f32, r: f32) {
    let hue = st.hue + uniform(rng, -8.0, 8.0);
    let sat = uniform(rng, st.sat.0, st.sat.1);
    let val = uniform(rng, st.val.0, st.val.1);
    let base = hsv(hue, sat, val);
    let dark = hsv(hue, (sat + 0.15).min(1.0), val * 0.55);
    let k = st.petals as f32;
    let rot = uniform(rng, 0.0, 2.0 * PI);
    let lengths: Vec<f32> = (0..st.petals).map(|_| uniform(rng, 0.88, 1.0)).collect();
    let inner = st.inner.map(|(dh, frac)| (hsv(hue + dh, (sat + 0.1).min(1.0), val * 0.9), frac));
    let centre_col = {
        let (h, s, v) = st.centre_hsv;
        hsv(h + uniform(rng, -6.0, 6.0), s, v * uniform(rng, 0.85, 1.0))
    };
    let centre_r = st.centre * r * uniform(rng, 0.9, 1.1);
    let sector = 2.0 * PI / k;
    let (x0, y0, x1, y1) = c.bbox(cx, cy, r);
    for y in y0..y1 {
        for x in x0..x1 {
            let dx = x as f32 + 0.5 - cx;
            let dy = y as f32 + 0.5 - cy;
            let d = (dx * dx + dy * dy).sqrt();
            if d > r + 1.0 {
                continue;
            }
            let theta = (dy.atan2(dx) - rot).rem_euclid(2.0 * PI);
            let idx = ((theta / sector).round() as usize) % st.petals;
            let phi = theta - idx as f32 * sector;
            let phi = if phi > PI { phi - 2.0 * PI } else { phi };
            let u = phi / (sector / 2.0);
            let reach = r * lengths[idx] * profile(st.profile, u);
            let a = (reach - d + 0.5).clamp(0.0, 1.0);
            if a > 0.0 {
                // Darker towards the centre and along the rim: reads as a petal, not a blob.
                let t = d / reach.max(1.0);
                let shade = 0.75 + 0.25 * t.min(1.0) - 0.2 * ((t - 0.85).max(0.0) / 0.15).powi(2);
                let mut col = base.map(|v| v * shade);
                if st.veins && u.abs() * reach < 0.03 * r + 0.6 {
                    col = dark;
                }
                c.blend(x, y, col, a);
            }
            if let Some((icol, frac)) = inner {
                // The inner ring sits between the outer petals.
                let u2 = if u >= 0.0 { u - 1.0 } else { u + 1.0 };
                let reach2 = r * frac * profile(st.profile, u2);
                c.blend(x, y, icol, (reach2 - d + 0.5).clamp(0.0, 1.0));
            }
            if centre_r > 0.0 {
                let a = (centre_r - d + 0.5).clamp(0.0, 1.0);
                if a > 0.0 {
                    // A stippled disc, like the florets of a composite flower.
                    let speck = if ((x * 7 + y * 13) % 5) == 0 { 0.8 } else { 1.0 };
                    c.blend(x, y, centre_col.map(|v| v * speck), a);
                }
            }
        }
    }
}

/// Draws one image of class `class` from its own random stream.
pub fn render(class: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let st = style(class);
    let (w, h) = loop {
        let w = rng.random_range(80..=320usize);
        let h = rng.random_range(80..=320usize);
        let ratio = w as f32 / h as f32;
        if (0.55..=1.8).contains(&ratio) {
            break (w, h);
        }
    };
    let mut c = background(rng, w, h);
    let s = w.min(h) as f32;
    let mut flowers = vec![(uniform(rng, 0.32, 0.68) * w as f32, uniform(rng, 0.3, 0.62) * h as f32, uniform(rng, 0.22, 0.38) * s)];
    if rng.random::<f32>() < 0.25 {
        let (fx, fy, fr) = flowers[0];
        let ang = uniform(rng, 0.0, 2.0 * PI);
        flowers.push((fx + ang.cos() * fr * 1.6, fy + ang.sin() * fr * 1.6, fr * uniform(rng, 0.5, 0.7)));
    }
    // Stems first, so that every flower lies over every stem.
    for &(fx, fy, fr) in &flowers {
        stem(&mut c, rng, fx, fy, fr);
    }
    for &(fx, fy, fr) in &flowers {
        flower(&mut c, rng, &st, fx, fy, fr);
    }
    let noise = uniform(rng, 2.0, 12.0);
    let gain = uniform(rng, 0.8, 1.15);
    let bias = uniform(rng, -20.0, 20.0);
    c.into_image(rng, noise, gain, bias)
}

fn encode_jpeg(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
        .encode_image(img)
        .context("cannot encode a synthetic JPEG")?;
    Ok(buf)
}

/// One image to make.
struct Job {
    class: usize,
    /// Distinct per image: the ChaCha8 stream.
    stream: u64,
    path: PathBuf,
}

/// Refuses a non-empty `out` unless `force`; with `force`, removes what a previous run wrote.
fn prepare_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("{} exists and is not a folder", out.display());
        }
        let non_empty = fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.next().is_some();
        if non_empty {
            if !force {
                bail!("{} is not empty; choose an empty or new folder, or pass --force to replace its train/, test/ and CSVs", out.display());
            }
            for d in ["train", "test"] {
                let p = out.join(d);
                if p.exists() {
                    fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                }
            }
            for f in ["sample_submission.csv", "solution.csv"] {
                let p = out.join(f);
                if p.exists() {
                    fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                }
            }
        }
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// Writes the dataset described by `args`.
pub fn generate(args: &SynthOptions) -> Result<SynthSummary> {
    let t0 = Instant::now();
    if !(2..=CLASS_NAMES.len()).contains(&args.classes) {
        bail!("--classes must be between 2 and {} (got {})", CLASS_NAMES.len(), args.classes);
    }
    if !(args.scale.is_finite() && args.scale > 0.0) {
        bail!("--scale must be a positive number (got {})", args.scale);
    }
    let out = &args.out;
    prepare_out(out, args.force)?;
    let names: Vec<String> = CLASS_NAMES[..args.classes].iter().map(|s| s.to_string()).collect();
    let train_counts = train_counts(args.classes, args.scale);
    let test_n = ((args.test_per_class as f64 * args.scale).round() as usize).max(1);
    let test_counts = vec![test_n; args.classes];

    let mut jobs = Vec::new();
    // Streams: train images count up from 0, test images from 1<<32, so that changing one
    // split's size leaves the other's images unchanged.
    for (class, (name, &n)) in names.iter().zip(&train_counts).enumerate() {
        let dir = out.join("train").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for i in 0..n {
            let stream = (class as u64) << 20 | i as u64;
            jobs.push(Job { class, stream, path: dir.join(format!("{name}_{i:04}.jpg")) });
        }
    }
    let mut test: Vec<(usize, usize)> = (0..args.classes).flat_map(|c| (0..test_n).map(move |i| (c, i))).collect();
    // Anonymous, shuffled names so that neither name nor order gives the class away.
    test.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed ^ 0x7e57));
    let test_dir = out.join("test");
    fs::create_dir_all(&test_dir).with_context(|| format!("cannot create {}", test_dir.display()))?;
    let mut solution = Vec::with_capacity(test.len());
    for (j, &(class, i)) in test.iter().enumerate() {
        let file = format!("test_{j:04}.jpg");
        let stream = 1u64 << 32 | (class as u64) << 20 | i as u64;
        jobs.push(Job { class, stream, path: test_dir.join(&file) });
        solution.push((file, names[class].clone()));
    }

    let threads = args.threads.unwrap_or_else(super::pool::default_threads).max(1);
    let seed = args.seed;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = jobs.get(k) else { return Ok(()) };
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(job.stream);
                        let bytes = encode_jpeg(&render(job.class, &mut rng))?;
                        fs::write(&job.path, bytes).with_context(|| format!("cannot write {}", job.path.display()))?;
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a synth worker panicked")))).collect()
    });
    for r in results {
        r?;
    }

    // The largest class as the placeholder, as competition sample submissions do.
    let placeholder = &names[0];
    write_csv(&out.join("sample_submission.csv"), solution.iter().map(|(f, _)| (f.as_str(), placeholder.as_str())))?;
    write_csv(&out.join("solution.csv"), solution.iter().map(|(f, c)| (f.as_str(), c.as_str())))?;
    Ok(SynthSummary { out: out.clone(), classes: names, train_counts, test_counts, seconds: t0.elapsed().as_secs_f64() })
}

fn write_csv<'a>(path: &Path, rows: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("cannot create {}", path.display()))?;
    w.write_record(["image_name", "class"]).with_context(|| format!("cannot write {}", path.display()))?;
    for (f, c) in rows {
        w.write_record([f, c]).with_context(|| format!("cannot write {}", path.display()))?;
    }
    w.flush().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_long_tailed_and_scaled() {
        assert_eq!(train_counts(6, 1.0), vec![120, 80, 50, 30, 20, 12]);
        assert_eq!(train_counts(3, 0.1), vec![12, 8, 5]);
        // Never below two, so every class can be split.
        assert_eq!(train_counts(6, 0.01), vec![2; 6]);
        let c = train_counts(10, 1.0);
        assert!(c.windows(2).all(|w| w[0] >= w[1]), "{c:?}");
        assert_eq!(c[6], 10);
    }

    #[test]
    fn profiles_peak_on_the_axis_and_vanish_between_petals() {
        for p in [Profile::Round, Profile::Pointed, Profile::Notched, Profile::Narrow] {
            assert!(profile(p, 1.0) < 0.05, "{p:?}");
            assert!(profile(p, 0.3) > 0.3, "{p:?}");
        }
        // The notch dips at the tip.
        assert!(profile(Profile::Notched, 0.0) < profile(Profile::Notched, 0.3));
    }

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [255.0, 0.0, 0.0]);
        assert_eq!(hsv(120.0, 1.0, 1.0), [0.0, 255.0, 0.0]);
        assert_eq!(hsv(240.0, 1.0, 0.5), [0.0, 0.0, 127.5]);
    }

    #[test]
    fn render_is_deterministic_and_sized() {
        let img = |stream| {
            let mut r = ChaCha8Rng::seed_from_u64(3);
            r.set_stream(stream);
            render(2, &mut r)
        };
        let (a, b, c) = (img(1), img(1), img(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        for i in [a, c] {
            assert!((80..=320).contains(&i.width()) && (80..=320).contains(&i.height()));
        }
    }
}
