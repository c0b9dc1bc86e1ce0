//! Automatic augmentation of the 8-bit training square: timm's RandAugment (`rand-m9-mstd0.5`,
//! … as `timm.data.auto_augment.rand_augment_transform` reads them) and torchvision's
//! `TrivialAugmentWide` (`ta-wide`). Papers: RandAugment (Cubuk et al., 2019,
//! arXiv:1909.13719), TrivialAugment (Müller & Hutter, 2021, arXiv:2103.10158).
//!
//! Both references run their ops on a PIL image, so every op here is Pillow's, with Pillow's
//! arithmetic (the parity test, `tests/auto_augment_parity.rs`, checks each one against timm and
//! torchvision on real photos):
//! - point ops are 256-entry tables built as `ImageOps` builds them (autocontrast, equalize,
//!   posterize, solarize, invert) or as timm's `solarize_add` does;
//! - `ImageEnhance` is `Image.blend(degenerate, image, factor)`: `in1 + α·(in2 − in1)` in f32,
//!   clamped and truncated (libImaging `Blend.c`), against the degenerate image Pillow makes:
//!   black (brightness); the rounded mean of the grey image `L = (19595 R + 38470 G + 7471 B +
//!   2¹⁵) >> 16` (contrast); that grey per pixel (colour); the 3×3 `SMOOTH` filter (1 1 1 / 1 5 1
//!   / 1 1 1)/13 in f32 with the border copied (sharpness);
//! - geometry is `Image.transform(AFFINE)` with the inverse matrix each reference builds,
//!   sampled as libImaging `Geometry.c` does: bilinear per output pixel centre in f64, edge
//!   neighbours clamped, truncated to 8 bits; nearest in its 16.16 fixed point (or its scale-only
//!   path for pure translations); `Image.rotate` with its matrix rounded to 15 digits and its
//!   exact transposes at 90°, 180° and 270°. Each output pixel is written once.
//!
//! Sampling follows the references. RandAugment: `n` ops drawn uniformly with replacement from
//! timm's `_RAND_TRANSFORMS` (or `_RAND_INCREASING_TRANSFORMS` with `inc1`), each applied with
//! probability `p`, its magnitude `m` plus Gaussian noise of std `mstd` (uniform in [0, m] when
//! `mstd` > 100) clamped to [0, `mmax`], turned into the op's argument by timm's level function
//! (a random sign for the signed ones). TrivialAugmentWide: one of its 14 ops, one of 31 magnitude
//! bins (torch's float32 `linspace` values), a random sign for the signed ops.
//!
//! Two deliberate departures, both where the reference would fail or be ambiguous: timm's
//! `posterize` with 0 bits kept (magnitude < 2.5, or 10 with `inc1`) raises in current Pillow (13) and
//! gives a black image in older Pillow and in TensorFlow's RandAugment — here it is black; and
//! strings timm silently ignores or misreads (a section without a number, `inc0`, which timm
//! reads as *on*) are refused with a message.
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// An automatic augmentation policy, recorded in `config.json` as its canonical string.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum AutoAugment {
    /// timm's RandAugment, `rand-m9-mstd0.5` etc.
    Rand(RandAugment),
    /// torchvision's `TrivialAugmentWide()` (31 bins, nearest, fill 0), `ta-wide`.
    TrivialWide,
}

/// timm's RandAugment settings, as `rand_augment_transform` reads them from its string.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandAugment {
    /// `m`: the magnitude level (timm's scale: 10 is the largest of the default range).
    pub magnitude: u32,
    /// `n`: ops per image (default 2).
    pub num_ops: u32,
    /// `mstd`: std of the Gaussian noise on the magnitude, drawn per op; 0 = none, > 100 = uniform in [0, m].
    pub magnitude_std: f64,
    /// `mmax`: the magnitude is clamped to [0, mmax] (default 10).
    pub magnitude_max: u32,
    /// `inc1`: timm's `_RAND_INCREASING_TRANSFORMS` (severity grows with the magnitude for every op).
    pub increasing: bool,
    /// `p`: probability of applying each drawn op (default 0.5).
    pub prob: f64,
}

impl Default for RandAugment {
    fn default() -> Self {
        RandAugment { magnitude: 10, num_ops: 2, magnitude_std: 0.0, magnitude_max: 10, increasing: false, prob: 0.5 }
    }
}

/// More ops per image than this is refused (the papers use 1–3; a typo must not stall the loader).
pub const MAX_OPS: u32 = 16;

impl FromStr for AutoAugment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "ta-wide" {
            return Ok(AutoAugment::TrivialWide);
        }
        let mut sections = s.split('-');
        if sections.next() != Some("rand") {
            return Err(format!(
                "unknown auto-augment policy {s:?}: expected timm's RandAugment string (e.g. rand-m9-mstd0.5, rand-m9-n2-mstd0.5-inc1) or ta-wide"
            ));
        }
        let mut r = RandAugment::default();
        let mut seen: Vec<&str> = Vec::new();
        for c in sections {
            if c.starts_with('t') {
                return Err(format!("{s:?}: transform sets ({c:?}) are not supported; only timm's default set, or its increasing set with inc1"));
            }
            // timm splits a section at its first digit: key, then value.
            let Some(at) = c.find(|ch: char| ch.is_ascii_digit()) else {
                return Err(format!("{s:?}: section {c:?} has no number (sections are m, n, mstd, mmax, inc, p followed by a value)"));
            };
            let (key, val) = c.split_at(at);
            if seen.contains(&key) {
                return Err(format!("{s:?}: {key:?} is given twice"));
            }
            seen.push(key);
            let bad = |what: &str| format!("{s:?}: {c:?}: {key} takes {what}, not {val:?}");
            match key {
                "m" => r.magnitude = val.parse().map_err(|_| bad("a whole number"))?,
                "n" => {
                    r.num_ops = val.parse().map_err(|_| bad("a whole number"))?;
                    if r.num_ops > MAX_OPS {
                        return Err(format!("{s:?}: at most {MAX_OPS} ops per image, not {}", r.num_ops));
                    }
                }
                "mstd" => {
                    r.magnitude_std = val.parse().map_err(|_| bad("a number"))?;
                    if !r.magnitude_std.is_finite() {
                        return Err(bad("a finite number"));
                    }
                }
                // timm: `magnitude_max or 10`, so mmax0 is the default.
                "mmax" => r.magnitude_max = val.parse::<u32>().map_err(|_| bad("a whole number"))?,
                "inc" => match val.parse::<u64>() {
                    Ok(0) => return Err(format!("{s:?}: inc0 is ambiguous (timm reads any inc value as on: bool('0') is True); write inc1, or leave it out")),
                    Ok(_) => r.increasing = true,
                    Err(_) => return Err(bad("1")),
                },
                "p" => {
                    r.prob = val.parse().map_err(|_| bad("a probability"))?;
                    if !(0.0..=1.0).contains(&r.prob) {
                        return Err(bad("a probability in [0, 1]"));
                    }
                }
                _ => return Err(format!("{s:?}: unknown RandAugment section {c:?} (known: m, n, mstd, mmax, inc, p)")),
            }
        }
        if r.magnitude_max == 0 {
            r.magnitude_max = 10;
        }
        Ok(AutoAugment::Rand(r))
    }
}

impl fmt::Display for AutoAugment {
    /// The canonical string: timm's spelling, defaults left out (`rand-m9-mstd0.5`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = match self {
            AutoAugment::TrivialWide => return f.write_str("ta-wide"),
            AutoAugment::Rand(r) => r,
        };
        let d = RandAugment::default();
        write!(f, "rand-m{}", r.magnitude)?;
        if r.num_ops != d.num_ops {
            write!(f, "-n{}", r.num_ops)?;
        }
        if r.magnitude_std != 0.0 {
            write!(f, "-mstd{}", r.magnitude_std)?;
        }
        if r.magnitude_max != d.magnitude_max {
            write!(f, "-mmax{}", r.magnitude_max)?;
        }
        if r.increasing {
            f.write_str("-inc1")?;
        }
        if r.prob != d.prob {
            write!(f, "-p{}", r.prob)?;
        }
        Ok(())
    }
}

impl From<AutoAugment> for String {
    fn from(a: AutoAugment) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for AutoAugment {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Resampling of the geometric ops: timm's (given `interpolation=BILINEAR`) and torchvision's
/// TrivialAugmentWide default (`NEAREST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Bilinear,
}

/// One op with its resolved argument, as the Pillow-level call the references make takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Identity,
    AutoContrast,
    Equalize,
    Invert,
    /// Degrees, counter-clockwise, about the centre (`Image.rotate`).
    Rotate(f64),
    /// Bits kept per channel; ≥ 8 leaves the image as it is, 0 makes it black.
    Posterize(u8),
    /// Values at or above the threshold are inverted (`ImageOps.solarize`).
    Solarize(f64),
    /// timm's `solarize_add(add, thresh=128)`: values below 128 get `add`, saturating.
    SolarizeAdd(u32),
    /// `ImageEnhance` factors: 1 leaves the image as it is.
    Color(f64),
    Contrast(f64),
    Brightness(f64),
    Sharpness(f64),
    /// Affine matrix `(1, f, 0, 0, 1, 0)`: output (x, y) samples input (x + f·y, y).
    ShearX(f64),
    /// Affine matrix `(1, 0, 0, f, 1, 0)`: output (x, y) samples input (x, y + f·x).
    ShearY(f64),
    /// Affine offset in pixels: output (x, y) samples input (x + t, y).
    TranslateX(f64),
    TranslateY(f64),
    /// Offset as a fraction of the width (timm's `translate_x_rel`: `t = pct · width`).
    TranslateXRel(f64),
    TranslateYRel(f64),
}

/// The ops drawn for one image and how the geometric ones resample and fill.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoOps {
    pub ops: Vec<Op>,
    pub resample: Resample,
    /// Colour of the area a geometric op uncovers.
    pub fill: [u8; 3],
}

impl AutoAugment {
    pub fn resample(&self) -> Resample {
        match self {
            AutoAugment::Rand(_) => Resample::Bilinear,
            AutoAugment::TrivialWide => Resample::Nearest,
        }
    }

    /// Fill colour for a preprocessing `mean` (0–1 scale): timm's `img_mean`,
    /// `min(255, round(255·mean))` (half to even, as Python rounds), or 0 for torchvision.
    pub fn fill(&self, mean: [f32; 3]) -> [u8; 3] {
        match self {
            AutoAugment::Rand(_) => mean.map(|m| (255.0 * m as f64).round_ties_even().clamp(0.0, 255.0) as u8),
            AutoAugment::TrivialWide => [0; 3],
        }
    }

    /// Draws the ops for one image.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Vec<Op> {
        match self {
            AutoAugment::Rand(r) => r.sample(rng),
            AutoAugment::TrivialWide => {
                let op = TA_WIDE_OPS[rng.random_range(0..TA_WIDE_OPS.len())];
                let mut m = op.magnitudes().map_or(0.0, |t| t[rng.random_range(0..TA_BINS)] as f64);
                if op.signed() && rng.random_bool(0.5) {
                    m = -m;
                }
                vec![op.op(m)]
            }
        }
    }

    /// [`AutoAugment::sample`] with the resampling and fill for a preprocessing `mean`.
    pub fn draw<R: Rng>(&self, mean: [f32; 3], rng: &mut R) -> AutoOps {
        AutoOps { ops: self.sample(rng), resample: self.resample(), fill: self.fill(mean) }
    }
}

impl RandAugment {
    /// The op set timm uses for these settings.
    pub fn transforms(&self) -> &'static [RandOp; 15] {
        if self.increasing {
            &RAND_INCREASING_TRANSFORMS
        } else {
            &RAND_TRANSFORMS
        }
    }

    /// timm's `RandAugment.__call__` + `AugmentOp.__call__`, with this RNG.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Vec<Op> {
        let set = self.transforms();
        let mut ops = Vec::with_capacity(self.num_ops as usize);
        for _ in 0..self.num_ops {
            let op = set[rng.random_range(0..set.len())];
            if self.prob < 1.0 && rng.random::<f64>() > self.prob {
                continue;
            }
            let mut m = self.magnitude as f64;
            if self.magnitude_std > 100.0 {
                m *= rng.random::<f64>();
            } else if self.magnitude_std > 0.0 {
                m += self.magnitude_std * standard_normal(rng);
            }
            m = m.min(self.magnitude_max as f64).max(0.0);
            let negate = op.signed() && rng.random::<f64>() > 0.5;
            ops.push(op.op(m, negate));
        }
        ops
    }
}

/// One N(0, 1) value (Box–Muller).
pub(crate) fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// timm's op names (`NAME_TO_OP` / `LEVEL_TO_ARG` keys) for the RandAugment sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// timm's `_RAND_TRANSFORMS`.
pub const RAND_TRANSFORMS: [RandOp; 15] = {
    use RandOp::*;
    [AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness, Sharpness, ShearX, ShearY, TranslateXRel, TranslateYRel]
};

/// timm's `_RAND_INCREASING_TRANSFORMS`.
pub const RAND_INCREASING_TRANSFORMS: [RandOp; 15] = {
    use RandOp::*;
    [
        AutoContrast,
        Equalize,
        Invert,
        Rotate,
        PosterizeIncreasing,
        SolarizeIncreasing,
        SolarizeAdd,
        ColorIncreasing,
        ContrastIncreasing,
        BrightnessIncreasing,
        SharpnessIncreasing,
        ShearX,
        ShearY,
        TranslateXRel,
        TranslateYRel,
    ]
};

impl RandOp {
    /// Whether timm's level function negates the argument with probability ½.
    pub fn signed(self) -> bool {
        use RandOp::*;
        matches!(
            self,
            Rotate | ColorIncreasing | ContrastIncreasing | BrightnessIncreasing | SharpnessIncreasing | ShearX | ShearY | TranslateXRel | TranslateYRel
        )
    }

    /// timm's `LEVEL_TO_ARG[name](level)` (with the sign drawn as `negate`) and the op it feeds.
    pub fn op(self, level: f64, negate: bool) -> Op {
        use RandOp::*;
        let sign = |v: f64| if negate { -v } else { v };
        // Python: `level / _LEVEL_DENOM` first, then the scale; `int()` truncates.
        let l = level / 10.0;
        let posterize = (l * 4.0) as i64;
        let solarize = ((l * 256.0) as i64).min(256);
        let enhance = l * 1.8 + 0.1;
        let enhance_increasing = (1.0 + sign(l * 0.9)).max(0.1);
        match self {
            AutoContrast => Op::AutoContrast,
            Equalize => Op::Equalize,
            Invert => Op::Invert,
            Rotate => Op::Rotate(sign(l * 30.0)),
            // Outside 0–8 only with mmax > 10: no bits left (black) or all of them.
            Posterize => Op::Posterize(posterize.clamp(0, 8) as u8),
            PosterizeIncreasing => Op::Posterize((4 - posterize).clamp(0, 8) as u8),
            Solarize => Op::Solarize(solarize as f64),
            SolarizeIncreasing => Op::Solarize((256 - solarize) as f64),
            SolarizeAdd => Op::SolarizeAdd(((l * 110.0) as i64).clamp(0, 128) as u32),
            Color => Op::Color(enhance),
            Contrast => Op::Contrast(enhance),
            Brightness => Op::Brightness(enhance),
            Sharpness => Op::Sharpness(enhance),
            ColorIncreasing => Op::Color(enhance_increasing),
            ContrastIncreasing => Op::Contrast(enhance_increasing),
            BrightnessIncreasing => Op::Brightness(enhance_increasing),
            SharpnessIncreasing => Op::Sharpness(enhance_increasing),
            ShearX => Op::ShearX(sign(l * 0.3)),
            ShearY => Op::ShearY(sign(l * 0.3)),
            TranslateXRel => Op::TranslateXRel(sign(l * 0.45)),
            TranslateYRel => Op::TranslateYRel(sign(l * 0.45)),
        }
    }
}

/// torchvision's TrivialAugmentWide ops, in `_augmentation_space` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaOp {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

pub const TA_WIDE_OPS: [TaOp; 14] = {
    use TaOp::*;
    [Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize]
};

/// TrivialAugmentWide's number of magnitude bins.
pub const TA_BINS: usize = 31;

/// `torch.linspace(0.0, 0.99, 31)` and `torch.linspace(0.0, 32.0, 31)`, float32 as torch computes
/// them (a few differ by an ulp from `start + i·step`, enough for `int()` to turn the 16th
/// translation into 15 pixels); the parity test compares them with torch.
const LINSPACE_0_099: [f32; TA_BINS] = [
    0.0, 0.033, 0.066, 0.099, 0.132, 0.16499999, 0.198, 0.231, 0.264, 0.297, 0.32999998, 0.363, 0.396, 0.429, 0.462, 0.495, 0.528, 0.561,
    0.594, 0.62700003, 0.66, 0.693, 0.726, 0.759, 0.792, 0.825, 0.85800004, 0.89100003, 0.924, 0.957, 0.99,
];
const LINSPACE_0_32: [f32; TA_BINS] = [
    0.0, 1.0666667, 2.1333334, 3.2000003, 4.266667, 5.3333335, 6.4000006, 7.466667, 8.533334, 9.6, 10.666667, 11.733334, 12.800001,
    13.866668, 14.933334, 15.999999, 17.066666, 18.133333, 19.199999, 20.266666, 21.333332, 22.4, 23.466667, 24.533333, 25.6, 26.666666,
    27.733334, 28.8, 29.866667, 30.933332, 32.0,
];

impl TaOp {
    /// The op's 31 magnitudes (`_augmentation_space(31)`), or None for the ops without one.
    pub fn magnitudes(self) -> Option<[f32; TA_BINS]> {
        use TaOp::*;
        match self {
            ShearX | ShearY | Brightness | Color | Contrast | Sharpness => Some(LINSPACE_0_099),
            TranslateX | TranslateY => Some(LINSPACE_0_32),
            // linspace(0, 135) and linspace(255, 0): steps of 4.5 and 8.5, exact in float32.
            Rotate => Some(std::array::from_fn(|i| 4.5 * i as f32)),
            Solarize => Some(std::array::from_fn(|i| 255.0 - 8.5 * i as f32)),
            // 8 − round(arange(31) / 5), float32, half to even.
            Posterize => Some(std::array::from_fn(|i| 8.0 - (i as f32 / 5.0).round_ties_even())),
            Identity | AutoContrast | Equalize => None,
        }
    }

    /// Whether the magnitude gets a random sign.
    pub fn signed(self) -> bool {
        use TaOp::*;
        matches!(self, ShearX | ShearY | TranslateX | TranslateY | Rotate | Brightness | Color | Contrast | Sharpness)
    }

    /// torchvision's `_apply_op(img, name, magnitude)` on a PIL image, as the Pillow call it makes.
    pub fn op(self, magnitude: f64) -> Op {
        use TaOp::*;
        let shear = |sx: f64, sy: f64| tv_inverse_affine([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [sx, sy]);
        let atan_degrees = magnitude.atan() * (180.0 / std::f64::consts::PI);
        match self {
            Identity => Op::Identity,
            // F.affine(shear=degrees(atan(m)), center=[0, 0]) hands PIL (1, tan, 0, 0, 1, 0)
            // computed through the degrees; the other entries are exactly 1 and 0 (tested).
            ShearX => Op::ShearX(shear(atan_degrees, 0.0)[1]),
            ShearY => Op::ShearY(shear(0.0, atan_degrees)[3]),
            // F.affine(translate=[int(m), 0]) about the centre: the matrix offset is −int(m)
            // exactly (the centre cancels: integers and halves are exact).
            TranslateX => Op::TranslateX(-magnitude.trunc()),
            TranslateY => Op::TranslateY(-magnitude.trunc()),
            Rotate => Op::Rotate(magnitude),
            Brightness => Op::Brightness(1.0 + magnitude),
            Color => Op::Color(1.0 + magnitude),
            Contrast => Op::Contrast(1.0 + magnitude),
            Sharpness => Op::Sharpness(1.0 + magnitude),
            Posterize => Op::Posterize(magnitude.clamp(0.0, 8.0) as u8),
            Solarize => Op::Solarize(magnitude),
            AutoContrast => Op::AutoContrast,
            Equalize => Op::Equalize,
        }
    }
}

/// torchvision's `_get_inverse_affine_matrix(center, angle, translate, scale, shear)`, line for
/// line (angles in degrees), so the matrix PIL gets is bit for bit torchvision's.
pub(crate) fn tv_inverse_affine(center: [f64; 2], angle: f64, translate: [f64; 2], scale: f64, shear: [f64; 2]) -> [f64; 6] {
    let radians = |d: f64| d * (std::f64::consts::PI / 180.0);
    let (rot, sx, sy) = (radians(angle), radians(shear[0]), radians(shear[1]));
    let ([cx, cy], [tx, ty]) = (center, translate);
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|v| v / scale);
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
    m
}

// ---------------------------------------------------------------------------------------------
// Applying the ops.

/// Applies `ops` in order to the `n`×`n` RGB square `img` (HWC bytes); `tmp` is scratch space.
pub fn apply_ops(img: &mut Vec<u8>, n: usize, ops: &AutoOps, tmp: &mut Vec<u8>) -> Result<()> {
    for op in &ops.ops {
        apply_op(img, n, *op, ops.resample, ops.fill, tmp)?;
    }
    Ok(())
}

/// Applies one op to the `n`×`n` RGB square `img` (HWC bytes); `tmp` is scratch space.
pub fn apply_op(img: &mut Vec<u8>, n: usize, op: Op, resample: Resample, fill: [u8; 3], tmp: &mut Vec<u8>) -> Result<()> {
    if img.len() != n * n * 3 {
        bail!("auto-augment image has {} bytes, expected {n}×{n}×3", img.len());
    }
    let size = n as f64;
    let affine = |img: &mut Vec<u8>, tmp: &mut Vec<u8>, m: [f64; 6]| {
        transform_affine(img, n, m, resample, fill, tmp);
        std::mem::swap(img, tmp);
    };
    match op {
        Op::Identity => {}
        Op::AutoContrast => {
            let luts = histograms(img).map(|h| autocontrast_lut(&h));
            apply_luts(img, &luts);
        }
        Op::Equalize => {
            let luts = histograms(img).map(|h| equalize_lut(&h));
            apply_luts(img, &luts);
        }
        Op::Invert => apply_lut(img, &std::array::from_fn(|i| 255 - i as u8)),
        Op::Posterize(bits) => {
            // ImageOps.posterize: `i & ~(2^(8−bits) − 1)`.
            let mask = if bits >= 8 { 0xff } else { !((1u16 << (8 - bits)) - 1) as u8 };
            apply_lut(img, &std::array::from_fn(|i| i as u8 & mask));
        }
        Op::Solarize(threshold) => apply_lut(img, &std::array::from_fn(|i| if (i as f64) < threshold { i as u8 } else { 255 - i as u8 })),
        Op::SolarizeAdd(add) => apply_lut(img, &std::array::from_fn(|i| if i < 128 { (i as u32 + add).min(255) as u8 } else { i as u8 })),
        Op::Brightness(f) => {
            let alpha = f as f32;
            apply_lut(img, &std::array::from_fn(|i| blend(0, i as u8, alpha)));
        }
        Op::Contrast(f) => {
            let alpha = f as f32;
            // ImageStat mean of the grey image, `int(mean + 0.5)`.
            let sum: u64 = img.chunks_exact(3).map(|p| grey(p) as u64).sum();
            let mean = ((sum as f64 / (n * n).max(1) as f64 + 0.5) as i64).clamp(0, 255) as u8;
            apply_lut(img, &std::array::from_fn(|i| blend(mean, i as u8, alpha)));
        }
        Op::Color(f) => {
            let alpha = f as f32;
            for p in img.chunks_exact_mut(3) {
                let l = grey(p);
                for v in p.iter_mut() {
                    *v = blend(l, *v, alpha);
                }
            }
        }
        Op::Sharpness(f) => {
            sharpness(img, n, f as f32, tmp);
            std::mem::swap(img, tmp);
        }
        Op::Rotate(degrees) => match pil_rotation(degrees, n) {
            Rotation::Transpose(0) => {}
            Rotation::Transpose(quarter_turns) => {
                rotate_quarter_turns(img, n, quarter_turns, tmp);
                std::mem::swap(img, tmp);
            }
            Rotation::Affine(m) => affine(img, tmp, m),
        },
        Op::ShearX(f) => affine(img, tmp, [1.0, f, 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY(f) => affine(img, tmp, [1.0, 0.0, 0.0, f, 1.0, 0.0]),
        Op::TranslateX(t) => affine(img, tmp, [1.0, 0.0, t, 0.0, 1.0, 0.0]),
        Op::TranslateY(t) => affine(img, tmp, [1.0, 0.0, 0.0, 0.0, 1.0, t]),
        Op::TranslateXRel(pct) => affine(img, tmp, [1.0, 0.0, pct * size, 0.0, 1.0, 0.0]),
        Op::TranslateYRel(pct) => affine(img, tmp, [1.0, 0.0, 0.0, 0.0, 1.0, pct * size]),
    }
    Ok(())
}

/// Pillow's RGB → L: ITU-R 601-2 luma in 16-bit fixed point, rounded.
#[inline]
fn grey(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(im1, im2, alpha)` for one value: `in1 + α·(in2 − in1)` in f32, clamped to
/// [0, 255] and truncated — which is exactly Rust's saturating `as u8`.
#[inline]
fn blend(in1: u8, in2: u8, alpha: f32) -> u8 {
    (in1 as f32 + alpha * (in2 as f32 - in1 as f32)) as u8
}

fn apply_lut(img: &mut [u8], lut: &[u8; 256]) {
    for v in img.iter_mut() {
        *v = lut[*v as usize];
    }
}

fn apply_luts(img: &mut [u8], luts: &[[u8; 256]; 3]) {
    for p in img.chunks_exact_mut(3) {
        p[0] = luts[0][p[0] as usize];
        p[1] = luts[1][p[1] as usize];
        p[2] = luts[2][p[2] as usize];
    }
}

fn histograms(img: &[u8]) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.chunks_exact(3) {
        h[0][p[0] as usize] += 1;
        h[1][p[1] as usize] += 1;
        h[2][p[2] as usize] += 1;
    }
    h
}

/// `ImageOps.autocontrast(img)` (cutoff 0) for one channel's histogram.
fn autocontrast_lut(h: &[u64; 256]) -> [u8; 256] {
    let lo = h.iter().position(|&c| c > 0);
    let hi = h.iter().rposition(|&c| c > 0);
    match (lo, hi) {
        (Some(lo), Some(hi)) if hi > lo => {
            let scale = 255.0 / (hi - lo) as f64;
            let offset = -(lo as f64) * scale;
            std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
        }
        _ => std::array::from_fn(|i| i as u8),
    }
}

/// `ImageOps.equalize(img)` for one channel's histogram (Pillow clamps the table to 255).
fn equalize_lut(h: &[u64; 256]) -> [u8; 256] {
    let identity = std::array::from_fn(|i| i as u8);
    let Some(last) = h.iter().rposition(|&c| c > 0) else { return identity };
    if h.iter().filter(|&&c| c > 0).count() <= 1 {
        return identity;
    }
    let step = (h.iter().sum::<u64>() - h[last]) / 255;
    if step == 0 {
        return identity;
    }
    let mut acc = step / 2;
    std::array::from_fn(|i| {
        let v = (acc / step).min(255) as u8;
        acc += h[i];
        v
    })
}

/// `ImageEnhance.Sharpness(img).enhance(alpha)` into `dst`: blend of the `SMOOTH`-filtered image
/// (f32 kernel 1/13 and 5/13 with 0.5 added for rounding, as libImaging's `ImagingFilter3x3`
/// sums it) with the image; the one-pixel border, which the filter copies, stays as it is.
/// Rows are converted to f32 once and the sums run over whole rows, in Pillow's order.
fn sharpness(src: &[u8], n: usize, alpha: f32, dst: &mut Vec<u8>) {
    dst.clear();
    dst.extend_from_slice(src);
    if n < 3 {
        return;
    }
    let (k1, k5) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let stride = n * 3;
    let to_f32 = |y: usize| -> Vec<f32> { src[y * stride..(y + 1) * stride].iter().map(|v| *v as f32).collect() };
    let (mut up, mut row) = (to_f32(0), to_f32(1));
    let mut smooth = vec![0f32; stride - 6];
    // One row's 1×3 sums for the interior values: neighbours at ±3 bytes (the same channel).
    fn line(r: &[f32], k1: f32, kc: f32) -> impl Iterator<Item = f32> + '_ {
        let len = r.len() - 6;
        r[..len].iter().zip(&r[3..len + 3]).zip(&r[6..]).map(move |((a, b), c)| a * k1 + b * kc + c * k1)
    }
    for y in 1..n - 1 {
        let down = to_f32(y + 1);
        // Pillow's order: offset, then the row below, the row, the row above.
        for (((s, d), r), u) in smooth.iter_mut().zip(line(&down, k1, k1)).zip(line(&row, k1, k5)).zip(line(&up, k1, k1)) {
            let mut ss = 0.5f32;
            ss += d;
            ss += r;
            ss += u;
            *s = ss;
        }
        let out = &mut dst[y * stride + 3..(y + 1) * stride - 3];
        for ((o, ss), v) in out.iter_mut().zip(&smooth).zip(&src[y * stride + 3..(y + 1) * stride - 3]) {
            // clip8: ≤ 0 → 0, ≥ 255 → 255, else truncated: the saturating cast.
            *o = blend(*ss as u8, *v, alpha);
        }
        (up, row) = (row, down);
    }
}

/// What `Image.rotate(angle)` (no expand, no centre) does for an `n`×`n` image.
#[derive(Debug, PartialEq)]
enum Rotation {
    /// Its exact fast paths: counter-clockwise quarter turns (0 = copy).
    Transpose(u8),
    /// Otherwise the inverse affine matrix it hands to `transform`.
    Affine([f64; 6]),
}

fn pil_rotation(angle: f64, n: usize) -> Rotation {
    // Python's `angle % 360.0`: the sign of the divisor.
    let mut angle = angle % 360.0;
    if angle != 0.0 {
        if angle < 0.0 {
            angle += 360.0;
        }
    } else {
        angle = 0.0;
    }
    // The fast paths (for any filter): 90° and 270° only for square images, which ours are.
    if let Some(k) = [0.0, 90.0, 180.0, 270.0].iter().position(|&q| angle == q) {
        return Rotation::Transpose(k as u8);
    }
    let center = n as f64 / 2.0;
    let a = -(angle * (std::f64::consts::PI / 180.0));
    let mut m = [round15(a.cos()), round15(a.sin()), 0.0, round15(-a.sin()), round15(a.cos()), 0.0];
    m[2] = m[0] * -center + m[1] * -center + 0.0;
    m[5] = m[3] * -center + m[4] * -center + 0.0;
    m[2] += center;
    m[5] += center;
    Rotation::Affine(m)
}

/// Python's `round(x, 15)`: correctly rounded to 15 decimals (both sides print exactly).
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse().unwrap_or(x)
}

/// `Image.transpose(ROTATE_90 · k)`: k counter-clockwise quarter turns of the square into `dst`.
fn rotate_quarter_turns(src: &[u8], n: usize, k: u8, dst: &mut Vec<u8>) {
    dst.resize(src.len(), 0);
    let m = n - 1;
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = match k % 4 {
                1 => (x, m - y),
                2 => (m - y, m - x),
                3 => (m - x, y),
                _ => (y, x),
            };
            let (o, s) = ((y * n + x) * 3, (sy * n + sx) * 3);
            dst[o..o + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
}

/// `Image.transform(size, AFFINE, m, resample, fillcolor=fill)` of the square into `dst`:
/// output pixel (x, y) samples the input at `(m0·x' + m1·y' + m2, m3·x' + m4·y' + m5)` with
/// `x' = x + ½`, `y' = y + ½`, as libImaging's `ImagingTransformAffine` picks its path. Every
/// output pixel is written once: the sample, or `fill` where the position falls outside.
fn transform_affine(src: &[u8], n: usize, m: [f64; 6], resample: Resample, fill: [u8; 3], dst: &mut Vec<u8>) {
    // Only a new scratch buffer is initialised here; each path writes every pixel.
    dst.resize(src.len(), 0);
    match resample {
        Resample::Bilinear => affine_bilinear(src, n, m, fill, dst),
        Resample::Nearest if m[1] == 0.0 && m[3] == 0.0 => affine_scale_nearest(src, n, m, fill, dst),
        Resample::Nearest => {
            let fits = |x: f64, y: f64| (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0;
            let s = n as f64;
            if fits(0.0, 0.0) && fits(s, s) && fits(0.0, s) && fits(s, 0.0) {
                affine_fixed_nearest(src, n, m, fill, dst)
            } else {
                affine_float_nearest(src, n, m, fill, dst)
            }
        }
    }
}

/// libImaging's `COORD`: −1 for negatives (outside), else truncation.
#[inline]
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

/// Output pixel `o` (byte offset) = input pixel (`sx`, `sy`) when inside the image, else `fill`.
#[inline]
fn put_px(src: &[u8], n: usize, sx: i64, sy: i64, fill: &[u8; 3], dst: &mut [u8], o: usize) {
    let size = n as i64;
    if (0..size).contains(&sx) && (0..size).contains(&sy) {
        let s = (sy as usize * n + sx as usize) * 3;
        dst[o..o + 3].copy_from_slice(&src[s..s + 3]);
    } else {
        dst[o..o + 3].copy_from_slice(fill);
    }
}

/// `ImagingScaleAffine` (nearest, no rotation or shear): positions accumulated per step.
fn affine_scale_nearest(src: &[u8], n: usize, m: [f64; 6], fill: [u8; 3], dst: &mut [u8]) {
    let mut yo = m[5] + m[4] * 0.5;
    for y in 0..n {
        let yi = coord(yo);
        yo += m[4];
        let mut xo = m[2] + m[0] * 0.5;
        for x in 0..n {
            let xi = coord(xo);
            xo += m[0];
            put_px(src, n, xi, yi, &fill, dst, (y * n + x) * 3);
        }
    }
}

/// `affine_fixed`: nearest neighbour in 16.16 fixed point, increments accumulated exactly.
fn affine_fixed_nearest(src: &[u8], n: usize, m: [f64; 6], fill: [u8; 3], dst: &mut [u8]) {
    let fix = |v: f64| {
        let t = v * 65536.0 + 0.5;
        if t < 0.0 {
            t.floor() as i64
        } else {
            t as i64
        }
    };
    let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
    let (mut a2, mut a5) = (fix(m[2] + m[0] * 0.5 + m[1] * 0.5), fix(m[5] + m[3] * 0.5 + m[4] * 0.5));
    for y in 0..n {
        let (mut xx, mut yy) = (a2, a5);
        for x in 0..n {
            put_px(src, n, xx >> 16, yy >> 16, &fill, dst, (y * n + x) * 3);
            xx += a0;
            yy += a3;
        }
        a2 += a1;
        a5 += a4;
    }
}

/// libImaging's floating-point nearest affine, for matrices too large for 16.16.
fn affine_float_nearest(src: &[u8], n: usize, m: [f64; 6], fill: [u8; 3], dst: &mut [u8]) {
    let (mut xo, mut yo) = (m[2] + m[1] * 0.5 + m[0] * 0.5, m[5] + m[4] * 0.5 + m[3] * 0.5);
    for y in 0..n {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..n {
            put_px(src, n, coord(xx), coord(yy), &fill, dst, (y * n + x) * 3);
            xx += m[0];
            yy += m[3];
        }
        xo += m[1];
        yo += m[4];
    }
}

/// `floor` for `v ≥ −1` without a libm call (x86-64's baseline has no rounding instruction).
#[inline]
fn floor_from_minus_one(v: f64) -> i64 {
    let t = v as i64; // truncates towards zero
    t - ((t as f64) > v) as i64
}

/// libImaging's generic transform with `bilinear_filter32RGB`: the position of each output
/// pixel centre is `m0·x' + m1·y' + m2` in f64 (the products are computed once per column and
/// per row, the sums per pixel in Pillow's order, so every position is bit for bit Pillow's);
/// outside → fill; the four neighbours clamped to the edge (a missing row below repeats the
/// row, which is what Pillow's `v2 = v1` amounts to); interpolated in f64 and truncated.
fn affine_bilinear(src: &[u8], n: usize, m: [f64; 6], fill: [u8; 3], dst: &mut [u8]) {
    let (size, last) = (n as f64, n as i64 - 1);
    let stride = n * 3;
    let centre = |i: usize| i as f64 + 0.5;
    let (col_x, col_y): (Vec<f64>, Vec<f64>) = (0..n).map(|x| (m[0] * centre(x), m[3] * centre(x))).unzip();
    for y in 0..n {
        let (row_x, row_y) = (m[1] * centre(y), m[4] * centre(y));
        let out_row = &mut dst[y * stride..(y + 1) * stride];
        for ((out, cx), cy) in out_row.chunks_exact_mut(3).zip(&col_x).zip(&col_y) {
            let xin = cx + row_x + m[2];
            let yin = cy + row_y + m[5];
            if !(xin >= 0.0 && xin < size && yin >= 0.0 && yin < size) {
                out.copy_from_slice(&fill);
                continue;
            }
            let (xs, ys) = (xin - 0.5, yin - 0.5);
            let (ix, iy) = (floor_from_minus_one(xs), floor_from_minus_one(ys));
            let (dx, dy) = (xs - ix as f64, ys - iy as f64);
            let (c0, c1) = (ix.clamp(0, last) as usize * 3, (ix + 1).min(last) as usize * 3);
            let r0 = &src[iy.clamp(0, last) as usize * stride..][..stride];
            let r1 = &src[(iy + 1).min(last) as usize * stride..][..stride];
            for (c, o) in out.iter_mut().enumerate() {
                let lerp = |r: &[u8]| {
                    let (a, b) = (r[c0 + c] as f64, r[c1 + c] as f64);
                    a + (b - a) * dx
                };
                let (v1, v2) = (lerp(r0), lerp(r1));
                *o = (v1 + (v2 - v1) * dy) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rand_str(s: &str) -> RandAugment {
        match s.parse::<AutoAugment>() {
            Ok(AutoAugment::Rand(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn parses_timm_strings_and_writes_them_back() {
        assert_eq!(rand_str("rand-m9-mstd0.5"), RandAugment { magnitude: 9, magnitude_std: 0.5, ..Default::default() });
        assert_eq!(
            rand_str("rand-m9-n2-mstd0.5-mmax10-inc1-p0.5"),
            RandAugment { magnitude: 9, num_ops: 2, magnitude_std: 0.5, magnitude_max: 10, increasing: true, prob: 0.5 }
        );
        assert_eq!(rand_str("rand-m7-n3-mstd101-mmax15-p1"), RandAugment { magnitude: 7, num_ops: 3, magnitude_std: 101.0, magnitude_max: 15, prob: 1.0, ..Default::default() });
        // Sections in any order; timm's defaults when absent (m10, n2, p0.5, mmax10).
        assert_eq!(rand_str("rand-p0.25-n1"), RandAugment { num_ops: 1, prob: 0.25, ..Default::default() });
        assert_eq!(rand_str("rand"), RandAugment::default());
        // timm: `magnitude_max or 10`.
        assert_eq!(rand_str("rand-m9-mmax0").magnitude_max, 10);
        assert_eq!("ta-wide".parse::<AutoAugment>(), Ok(AutoAugment::TrivialWide));
        for (text, canonical) in [
            ("rand-m9-mstd0.5", "rand-m9-mstd0.5"),
            ("rand-m9-n2-mstd0.5-mmax10-inc1-p0.5", "rand-m9-mstd0.5-inc1"),
            ("rand-p0.25-m9-n3", "rand-m9-n3-p0.25"),
            ("rand-m7-mstd101-mmax15-p1", "rand-m7-mstd101-mmax15-p1"),
            ("rand", "rand-m10"),
            ("ta-wide", "ta-wide"),
        ] {
            let a: AutoAugment = text.parse().unwrap();
            assert_eq!(a.to_string(), canonical);
            assert_eq!(canonical.parse::<AutoAugment>().unwrap(), a, "{canonical} reads back");
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{canonical}\""));
            assert_eq!(serde_json::from_str::<AutoAugment>(&json).unwrap(), a);
        }
    }

    #[test]
    fn refuses_every_malformed_string_with_a_reason() {
        for (text, says) in [
            ("", "unknown auto-augment policy"),
            ("rand9", "unknown auto-augment policy"),
            ("original-mstd0.5", "unknown auto-augment policy"),
            ("augmix-m5", "unknown auto-augment policy"),
            ("ta_wide", "unknown auto-augment policy"),
            ("rand-m9-foo", "has no number"),
            ("rand-m9-", "has no number"),
            ("rand--m9", "has no number"),
            ("rand-x3", "unknown RandAugment section"),
            ("rand-9", "unknown RandAugment section"),
            ("rand-m9-mstd0.5-w0", "unknown RandAugment section"),
            ("rand-m9-tweights", "transform sets"),
            ("rand-m9.5", "whole number"),
            ("rand-n2.0", "whole number"),
            ("rand-mmax1.5", "whole number"),
            ("rand-mstd0.5x", "a number"),
            ("rand-mstd1e999", "finite"),
            ("rand-p1.5", "[0, 1]"),
            ("rand-p0.5.5", "probability"),
            ("rand-inc0", "ambiguous"),
            ("rand-inc1x", "takes 1"),
            ("rand-m9-m8", "given twice"),
            ("rand-n17", "at most 16"),
        ] {
            let err = text.parse::<AutoAugment>().unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        assert!(serde_json::from_str::<AutoAugment>("\"rand-q3\"").is_err());
    }

    #[test]
    fn timm_level_functions() {
        // Hand-computed from timm's LEVEL_TO_ARG (the parity test also compares with timm).
        assert_eq!(RandOp::Rotate.op(9.0, false), Op::Rotate(9.0 / 10.0 * 30.0));
        assert_eq!(RandOp::Rotate.op(9.0, true), Op::Rotate(-(9.0 / 10.0 * 30.0)));
        assert_eq!(RandOp::Posterize.op(9.0, false), Op::Posterize(3));
        assert_eq!(RandOp::Posterize.op(2.4, false), Op::Posterize(0));
        assert_eq!(RandOp::PosterizeIncreasing.op(9.0, false), Op::Posterize(1));
        assert_eq!(RandOp::Solarize.op(9.0, false), Op::Solarize(230.0));
        assert_eq!(RandOp::SolarizeIncreasing.op(9.0, false), Op::Solarize(26.0));
        assert_eq!(RandOp::SolarizeAdd.op(9.0, false), Op::SolarizeAdd(99));
        assert_eq!(RandOp::SolarizeAdd.op(10.0, false), Op::SolarizeAdd(110));
        assert_eq!(RandOp::Color.op(5.0, true), Op::Color(0.5 * 1.8 + 0.1));
        assert_eq!(RandOp::ColorIncreasing.op(5.0, true), Op::Color(0.55));
        assert_eq!(RandOp::ContrastIncreasing.op(10.0, true), Op::Contrast((1.0f64 - 0.9).max(0.1)));
        assert_eq!(RandOp::ShearY.op(10.0, true), Op::ShearY(-0.3));
        assert_eq!(RandOp::TranslateXRel.op(10.0, false), Op::TranslateXRel(0.45));
        // With mmax > 10 the levels run past timm's default range.
        assert_eq!(RandOp::Posterize.op(25.0, false), Op::Posterize(8));
        assert_eq!(RandOp::PosterizeIncreasing.op(15.0, false), Op::Posterize(0));
        assert_eq!(RandOp::Solarize.op(15.0, false), Op::Solarize(256.0));
        assert!(RAND_TRANSFORMS.iter().zip(&RAND_INCREASING_TRANSFORMS).all(|(a, b)| a.signed() == b.signed() || format!("{b:?}").ends_with("Increasing")));
    }

    #[test]
    fn trivial_augment_matrices_are_torchvisions() {
        for &m in &LINSPACE_0_099 {
            for m in [m as f64, -(m as f64)] {
                let deg = m.atan() * (180.0 / std::f64::consts::PI);
                let x = tv_inverse_affine([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [deg, 0.0]);
                assert!(x[0] == 1.0 && x[2] == 0.0 && x[3] == 0.0 && x[4] == 1.0 && x[5] == 0.0, "{x:?}");
                assert!((x[1] - m).abs() < 1e-12);
                let y = tv_inverse_affine([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [0.0, deg]);
                assert!(y[0] == 1.0 && y[1] == 0.0 && y[2] == 0.0 && y[4] == 1.0 && y[5] == 0.0, "{y:?}");
                assert!((y[3] - m).abs() < 1e-12);
                assert_eq!(TaOp::ShearX.op(m), Op::ShearX(x[1]));
                assert_eq!(TaOp::ShearY.op(m), Op::ShearY(y[3]));
            }
        }
        for n in [31.0, 64.0, 224.0] {
            for &t in &LINSPACE_0_32 {
                for t in [t as f64, -(t as f64)] {
                    let m = tv_inverse_affine([n * 0.5, n * 0.5], 0.0, [t.trunc(), 0.0], 1.0, [0.0, 0.0]);
                    assert!(m == [1.0, 0.0, -t.trunc(), 0.0, 1.0, 0.0], "{m:?}");
                    let m = tv_inverse_affine([n * 0.5, n * 0.5], 0.0, [0.0, t.trunc()], 1.0, [0.0, 0.0]);
                    assert!(m == [1.0, 0.0, 0.0, 0.0, 1.0, -t.trunc()], "{m:?}");
                }
            }
        }
        assert_eq!(TaOp::TranslateX.op(15.999999046325684), Op::TranslateX(-15.0));
        assert_eq!(TaOp::Posterize.magnitudes().unwrap()[..4], [8.0, 8.0, 8.0, 7.0]);
        assert_eq!(TaOp::Posterize.magnitudes().unwrap()[30], 2.0);
    }

    #[test]
    fn sampling_follows_the_policies() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // rand-m9-mstd0.5: 2 draws, each kept with p = 0.5 → 1 op per image on average.
        let r = rand_str("rand-m9-mstd0.5");
        let mut counts = std::collections::HashMap::new();
        let (mut total, mut angles) = (0usize, Vec::new());
        let trials = 20_000;
        for _ in 0..trials {
            let ops = r.sample(&mut rng);
            total += ops.len();
            for op in ops {
                *counts.entry(std::mem::discriminant(&op)).or_insert(0usize) += 1;
                if let Op::Rotate(a) = op {
                    angles.push(a);
                }
            }
        }
        let mean_ops = total as f64 / trials as f64;
        assert!((mean_ops - 1.0).abs() < 0.03, "{mean_ops}");
        // 15 ops, uniform: each ≈ 1/15 of the applied ones.
        assert_eq!(counts.len(), 15);
        for c in counts.values() {
            let share = *c as f64 / total as f64;
            assert!((share - 1.0 / 15.0).abs() < 0.012, "{share}");
        }
        // Rotation: ±(m·3)° with m ~ N(9, 0.5) clamped to ≤ 10 → |angle| ≈ 27 ± 1.5, both signs.
        let pos = angles.iter().filter(|a| **a > 0.0).count() as f64 / angles.len() as f64;
        assert!((pos - 0.5).abs() < 0.06, "{pos}");
        let abs: Vec<f64> = angles.iter().map(|a| a.abs()).collect();
        let mean = abs.iter().sum::<f64>() / abs.len() as f64;
        assert!((mean - 26.8).abs() < 0.4 && abs.iter().all(|a| *a <= 30.0) && abs.iter().any(|a| *a < 25.0), "{mean}");
        // Uniform magnitudes (mstd > 100): |angle| uniform in [0, 27].
        let u = rand_str("rand-m9-mstd101-p1-n1");
        let abs: Vec<f64> = (0..20_000).filter_map(|_| match u.sample(&mut rng)[..] { [Op::Rotate(a)] => Some(a.abs()), _ => None }).collect();
        let mean = abs.iter().sum::<f64>() / abs.len() as f64;
        assert!((mean - 13.5).abs() < 0.8 && abs.iter().all(|a| *a <= 27.0), "{mean}");
        // No noise, p = 1: exactly n ops with the fixed level.
        let fixed = rand_str("rand-m5-n3-p1");
        for _ in 0..200 {
            let ops = fixed.sample(&mut rng);
            assert_eq!(ops.len(), 3);
            for op in ops {
                if let Op::ShearX(f) | Op::ShearY(f) = op {
                    assert_eq!(f.abs(), 0.5 * 0.3);
                }
            }
        }
        assert!(rand_str("rand-m9-p0").sample(&mut rng).is_empty());
        // TrivialAugmentWide: one op, uniform over 14, magnitudes from the 31 bins.
        let mut seen = std::collections::HashMap::new();
        for _ in 0..14_000 {
            let ops = AutoAugment::TrivialWide.sample(&mut rng);
            assert_eq!(ops.len(), 1);
            *seen.entry(std::mem::discriminant(&ops[0])).or_insert(0usize) += 1;
            if let Op::Rotate(a) = ops[0] {
                assert!(a.abs() <= 135.0 && (a / 4.5).fract() == 0.0, "{a}");
            }
        }
        assert_eq!(seen.len(), 14);
        assert!(seen.values().all(|c| (*c as f64 / 1000.0 - 1.0).abs() < 0.15), "{seen:?}");
    }

    #[test]
    fn sampling_is_reproducible_per_seed() {
        for policy in ["rand-m9-mstd0.5", "rand-m9-n3-mstd101-inc1", "ta-wide"] {
            let a: AutoAugment = policy.parse().unwrap();
            let draws = |seed| (0..50).map(|_| a.sample(&mut ChaCha8Rng::seed_from_u64(seed))).collect::<Vec<_>>();
            assert_eq!(draws(7), draws(7));
            let many = |seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                (0..50).map(|_| a.sample(&mut rng)).collect::<Vec<_>>()
            };
            assert_eq!(many(7), many(7));
            assert_ne!(many(7), many(8));
        }
    }

    #[test]
    fn fill_is_timms_img_mean() {
        let a = AutoAugment::Rand(RandAugment::default());
        assert_eq!(a.fill(crate::transforms::IMAGENET_MEAN), [124, 116, 104]);
        assert_eq!(a.fill([0.5, 1.2, 127.0 / 255.0]), [128, 255, 127]);
        assert_eq!(AutoAugment::TrivialWide.fill(crate::transforms::IMAGENET_MEAN), [0, 0, 0]);
    }

    fn ramp(n: usize) -> Vec<u8> {
        (0..n * n).flat_map(|i| [(i % n * 255 / n.max(2)) as u8, (i / n * 255 / n.max(2)) as u8, ((i * 7) % 256) as u8]).collect()
    }

    #[test]
    fn geometry_moves_pixels_the_documented_way() {
        let n = 16;
        let src = ramp(n);
        let px = |img: &[u8], x: usize, y: usize| [img[(y * n + x) * 3], img[(y * n + x) * 3 + 1], img[(y * n + x) * 3 + 2]];
        let run = |op: Op, resample: Resample| {
            let (mut img, mut tmp) = (src.clone(), Vec::new());
            apply_op(&mut img, n, op, resample, [1, 2, 3], &mut tmp).unwrap();
            img
        };
        for resample in [Resample::Nearest, Resample::Bilinear] {
            // Translation by whole pixels: output (x, y) = input (x + 3, y); the uncovered
            // columns are the fill colour.
            let t = run(Op::TranslateX(3.0), resample);
            for y in 0..n {
                for x in 0..n {
                    let want = if x + 3 < n { px(&src, x + 3, y) } else { [1, 2, 3] };
                    assert_eq!(px(&t, x, y), want, "{resample:?} ({x}, {y})");
                }
            }
            assert_eq!(run(Op::TranslateYRel(-0.25), resample), {
                let mut want = vec![0; n * n * 3];
                for y in 0..n {
                    for x in 0..n {
                        let p = if y >= 4 { px(&src, x, y - 4) } else { [1, 2, 3] };
                        want[(y * n + x) * 3..][..3].copy_from_slice(&p);
                    }
                }
                want
            });
            // Quarter turns are exact transposes (counter-clockwise), whatever the filter.
            let r = run(Op::Rotate(90.0), resample);
            let r2 = run(Op::Rotate(-270.0), resample);
            assert_eq!(r, r2);
            for y in 0..n {
                for x in 0..n {
                    assert_eq!(px(&r, x, y), px(&src, n - 1 - y, x));
                }
            }
            assert_eq!(run(Op::Rotate(-360.0), resample), src);
            assert_eq!(run(Op::ShearX(0.0), resample), src);
        }
        // A small rotation keeps the centre pixel and fills the corners.
        let r = run(Op::Rotate(30.0), Resample::Bilinear);
        assert_eq!(px(&r, 0, 0), [1, 2, 3]);
        assert_ne!(r, src);
        // Shear about the top-left corner: row 0 stays, lower rows shift right to left.
        let s = run(Op::ShearX(0.25), Resample::Nearest);
        assert_eq!(px(&s, 5, 0), px(&src, 5, 0));
        assert_eq!(px(&s, 5, 8), px(&src, 7, 8));
    }

    #[test]
    fn point_ops_on_known_values() {
        let n = 4;
        let mut img: Vec<u8> = (0..n * n * 3).map(|i| (i * 5 + 40) as u8).collect();
        let orig = img.clone();
        let mut tmp = Vec::new();
        let mut run = |op| {
            let mut x = orig.clone();
            apply_op(&mut x, n, op, Resample::Nearest, [0; 3], &mut tmp).unwrap();
            x
        };
        assert!(run(Op::Invert).iter().zip(&orig).all(|(a, b)| *a == 255 - b));
        assert!(run(Op::Posterize(2)).iter().zip(&orig).all(|(a, b)| *a == b & 0xc0));
        assert!(run(Op::Posterize(0)).iter().all(|a| *a == 0));
        assert_eq!(run(Op::Posterize(8)), orig);
        assert!(run(Op::Solarize(100.0)).iter().zip(&orig).all(|(a, b)| *a == if *b < 100 { *b } else { 255 - b }));
        assert!(run(Op::SolarizeAdd(200)).iter().zip(&orig).all(|(a, b)| *a == if *b < 128 { b.saturating_add(200) } else { *b }));
        assert!(run(Op::Brightness(0.5)).iter().zip(&orig).all(|(a, b)| *a == b / 2));
        for op in [Op::Brightness(1.0), Op::Color(1.0), Op::Contrast(1.0), Op::Sharpness(1.0), Op::Identity] {
            assert_eq!(run(op), orig, "{op:?}");
        }
        // Autocontrast stretches each channel to 0–255.
        let ac = run(Op::AutoContrast);
        for c in 0..3 {
            let ch: Vec<u8> = ac.iter().skip(c).step_by(3).copied().collect();
            assert_eq!((ch.iter().min(), ch.iter().max()), (Some(&0), Some(&255)));
        }
        // Colour 0 is the grey image.
        let g = run(Op::Color(0.0));
        assert!(g.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        img.iter_mut().for_each(|v| *v = 77);
        assert!(apply_op(&mut img, n + 1, Op::Invert, Resample::Nearest, [0; 3], &mut tmp).is_err());
    }
}
