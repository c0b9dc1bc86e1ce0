//! The arithmetic of linear quantisation, as ONNX `QuantizeLinear` / `DequantizeLinear` define
//! it (`q = saturate(round(x / scale) + zero_point)`, `x ≈ (q − zero_point) · scale`, rounding
//! half to even) and as ONNX Runtime's int8 kernels expect it:
//!
//! - activations: asymmetric per tensor over a calibrated range that always contains 0, so that
//!   0 is exactly representable (zero padding, ReLU) — a range `[0, max]` puts the zero point at
//!   the bottom of the code range, which is what lets a ReLU or a `Clip(0, 6)` be dropped: the
//!   quantiser's saturation does the clipping (Jacob et al. 2018, "Quantization and Training of
//!   Neural Networks for Efficient Integer-Arithmetic-Only Inference", §2.1 and §3);
//! - weights: int8 symmetric per output channel, codes in [−127, 127], zero point 0 (Krishnamoorthi
//!   2018, "Quantizing deep convolutional networks for efficient inference", §3.1);
//! - bias: int32 with scale `x_scale · w_scale[c]` and zero point 0, so the integer accumulator
//!   of a convolution adds it directly.
use anyhow::{bail, Result};

/// Integer type of the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    /// uint8, codes 0–255 (ONNX Runtime's default on x86).
    Uint8,
    /// int8, codes −128–127.
    Int8,
}

sorbier::spelled!(ActivationType, "activation type", [Uint8, Int8]);

impl ActivationType {
    pub fn range(self) -> (i32, i32) {
        match self {
            ActivationType::Uint8 => (0, 255),
            ActivationType::Int8 => (-128, 127),
        }
    }

    pub fn name(self) -> &'static str {
        sorbier::spelling::Spelling::name(&self)
    }
}

/// Scale and zero point of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub scale: f32,
    pub zero_point: i32,
}

/// Parameters for activations observed in `[min, max]` (the range is widened to contain 0).
/// An empty range (a tensor that was always 0) gets scale 1, as in ONNX Runtime's quantiser.
pub fn activation(min: f32, max: f32, ty: ActivationType) -> Result<Affine> {
    if !(min.is_finite() && max.is_finite()) || min > max {
        bail!("invalid activation range [{min}, {max}]");
    }
    let (lo, hi) = (min.min(0.0) as f64, max.max(0.0) as f64);
    let (qmin, qmax) = ty.range();
    let scale = (hi - lo) / (qmax - qmin) as f64;
    if scale < f32::MIN_POSITIVE as f64 {
        return Ok(Affine { scale: 1.0, zero_point: if lo < 0.0 { qmax } else { qmin } });
    }
    let zero_point = (qmin as f64 - lo / scale).round_ties_even().clamp(qmin as f64, qmax as f64) as i32;
    Ok(Affine { scale: scale as f32, zero_point })
}

/// `round(x / scale) + zero_point`, saturated to the type's range (what `QuantizeLinear` does).
pub fn quantize(x: f32, a: Affine, ty: ActivationType) -> i32 {
    let (qmin, qmax) = ty.range();
    ((x as f64 / a.scale as f64).round_ties_even() as i64 + a.zero_point as i64).clamp(qmin as i64, qmax as i64) as i32
}

/// Largest int8 weight code: symmetric weights use [−127, 127] (−128 would make the range
/// lopsided, and VNNI's u8×s8 products stay clear of int16 saturation).
pub const WEIGHT_QMAX: f32 = 127.0;

/// A weight tensor quantised per channel along `axis`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelWeights {
    /// int8 codes, same layout as the float tensor.
    pub codes: Vec<i8>,
    /// One scale per channel (zero points are all 0).
    pub scales: Vec<f32>,
}

/// Index of the channel along `axis` that each element of a row-major tensor of shape `dims`
/// belongs to.
fn channel_of(dims: &[usize], axis: usize) -> impl Fn(usize) -> usize {
    let inner: usize = dims[axis + 1..].iter().product();
    let n = dims[axis];
    move |i| (i / inner.max(1)) % n
}

/// Symmetric per-channel int8 weights: `scale[c] = max|w[c]| / 127`, raised where needed so
/// that `bias[c] / (x_scale · scale[c])` fits int32 (`min_scales`, from [`bias_floor`]). An
/// all-zero channel gets scale 1.
pub fn weights_per_channel(w: &[f32], dims: &[usize], axis: usize, min_scales: Option<&[f32]>) -> Result<ChannelWeights> {
    if axis >= dims.len() || dims.iter().product::<usize>() != w.len() {
        bail!("weight of {} values does not have shape {dims:?} with a channel axis {axis}", w.len());
    }
    if let Some(x) = w.iter().find(|x| !x.is_finite()) {
        bail!("weight holds {x}");
    }
    let n = dims[axis];
    let ch = channel_of(dims, axis);
    let mut amax = vec![0f32; n];
    for (i, &x) in w.iter().enumerate() {
        let c = ch(i);
        amax[c] = amax[c].max(x.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .enumerate()
        .map(|(c, &a)| {
            let s = if a > 0.0 { a / WEIGHT_QMAX } else { 1.0 };
            min_scales.map_or(s, |m| s.max(m[c]))
        })
        .collect();
    let codes = w
        .iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 / scales[ch(i)] as f64).round_ties_even().clamp(-WEIGHT_QMAX as f64, WEIGHT_QMAX as f64) as i8)
        .collect();
    Ok(ChannelWeights { codes, scales })
}

/// The smallest weight scale per channel that keeps `bias[c] / (x_scale · w_scale)` inside
/// int32 (a channel whose weights are all tiny but whose bias is not — a dead channel after
/// BatchNorm folding — would otherwise overflow).
pub fn bias_floor(bias: &[f32], x_scale: f32) -> Vec<f32> {
    let limit = (i32::MAX - 1) as f64;
    bias.iter().map(|&b| ((b.abs() as f64) / (x_scale as f64 * limit)) as f32 * (1.0 + 1e-6)).collect()
}

/// int32 bias codes and their scales `x_scale · w_scale[c]` (computed in float32, the type the
/// scale initializer has).
pub fn bias(bias: &[f32], x_scale: f32, w_scales: &[f32]) -> Result<(Vec<i32>, Vec<f32>)> {
    if bias.len() != w_scales.len() {
        bail!("bias of {} values for {} weight channels", bias.len(), w_scales.len());
    }
    let scales: Vec<f32> = w_scales.iter().map(|&w| x_scale * w).collect();
    let mut codes = Vec::with_capacity(bias.len());
    for (c, (&b, &s)) in bias.iter().zip(&scales).enumerate() {
        if !b.is_finite() || !s.is_finite() || s <= 0.0 {
            bail!("bias channel {c}: {b} at scale {s}");
        }
        let q = (b as f64 / s as f64).round_ties_even();
        if q.abs() > i32::MAX as f64 {
            bail!("bias channel {c}: {b} / {s} does not fit int32");
        }
        codes.push(q as i32);
    }
    Ok((codes, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_ranges_contain_zero_and_relu_ranges_start_at_the_bottom() {
        let a = activation(0.0, 2.55, ActivationType::Uint8).unwrap();
        assert!((a.scale - 0.01).abs() < 1e-7 && a.zero_point == 0, "{a:?}");
        // int8: the bottom code is −128, so a ReLU range starts there too.
        let a = activation(0.0, 2.55, ActivationType::Int8).unwrap();
        assert_eq!(a.zero_point, -128);
        // A positive-only range still includes 0.
        let a = activation(1.0, 2.0, ActivationType::Uint8).unwrap();
        assert_eq!(a.zero_point, 0);
        assert!((a.scale - 2.0 / 255.0).abs() < 1e-7);
        // Asymmetric: [-1, 3] puts 0 at code 64 (255/4 = 63.75).
        let a = activation(-1.0, 3.0, ActivationType::Uint8).unwrap();
        assert_eq!(a.zero_point, 64);
        assert_eq!(quantize(0.0, a, ActivationType::Uint8), 64);
        assert_eq!(quantize(-5.0, a, ActivationType::Uint8), 0);
        assert_eq!(quantize(50.0, a, ActivationType::Uint8), 255);
        // Constant-zero tensors and bad ranges.
        assert_eq!(activation(0.0, 0.0, ActivationType::Uint8).unwrap(), Affine { scale: 1.0, zero_point: 0 });
        assert!(activation(f32::NAN, 1.0, ActivationType::Uint8).is_err());
        assert!(activation(2.0, 1.0, ActivationType::Uint8).is_err());
    }

    #[test]
    fn relu_is_what_saturation_does() {
        let a = activation(0.0, 6.0, ActivationType::Uint8).unwrap();
        for x in [-3.0f32, -0.01, 0.0, 0.5, 5.99, 6.0, 9.0] {
            let back = (quantize(x, a, ActivationType::Uint8) - a.zero_point) as f32 * a.scale;
            let relu6 = x.clamp(0.0, 6.0);
            assert!((back - relu6).abs() <= a.scale / 2.0 + 1e-6, "{x}: {back} vs {relu6}");
        }
    }

    #[test]
    fn weights_are_symmetric_per_channel_along_the_axis() {
        // Two output channels (axis 0) of 3 values.
        let w = [0.5, -1.27, 0.0, 0.11, 0.2, -0.05];
        let q = weights_per_channel(&w, &[2, 3], 0, None).unwrap();
        assert!((q.scales[0] - 0.01).abs() < 1e-7 && (q.scales[1] - 0.2 / 127.0).abs() < 1e-9, "{:?}", q.scales);
        assert_eq!(q.codes, vec![50, -127, 0, 70, 127, -32]);
        // The same matrix with channels on axis 1 ([in=3, out=2] as Gemm with transB=0 has it).
        let wt = [0.5, 0.11, -1.27, 0.2, 0.0, -0.05];
        let qt = weights_per_channel(&wt, &[3, 2], 1, None).unwrap();
        assert_eq!(qt.scales, q.scales);
        assert_eq!(qt.codes, vec![50, 70, -127, 127, 0, -32]);
        // An all-zero channel gets scale 1; a floor raises a scale.
        let z = weights_per_channel(&[0.0, 0.0, 1.27, 0.0], &[2, 2], 0, Some(&[0.0, 0.1])).unwrap();
        assert_eq!(z.scales, vec![1.0, 0.1]);
        assert_eq!(z.codes, vec![0, 0, 13, 0]);
        assert!(weights_per_channel(&w, &[4, 3], 0, None).is_err());
        assert!(weights_per_channel(&[f32::INFINITY], &[1], 0, None).is_err());
    }

    #[test]
    fn bias_scale_is_the_product_and_overflow_is_avoided() {
        let (codes, scales) = bias(&[0.3, -0.02], 0.1, &[0.01, 0.02]).unwrap();
        assert_eq!(scales, vec![0.1f32 * 0.01, 0.1f32 * 0.02]);
        assert_eq!(codes, vec![300, -10]);
        // A dead channel: tiny weights, large bias. Without the floor it overflows.
        let b = [1000.0f32];
        let w = [1e-9f32, -1e-9];
        let plain = weights_per_channel(&w, &[1, 2], 0, None).unwrap();
        assert!(bias(&b, 0.01, &plain.scales).is_err());
        let floor = bias_floor(&b, 0.01);
        let fixed = weights_per_channel(&w, &[1, 2], 0, Some(&floor)).unwrap();
        let (codes, _) = bias(&b, 0.01, &fixed.scales).unwrap();
        assert!(codes[0] > 2_000_000_000, "{codes:?}");
    }
}
