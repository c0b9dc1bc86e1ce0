//! torchvision's ResNets as a [`NetSpec`] (He et al. 2016, "v1.5": the stride of a bottleneck
//! block sits on its 3×3 convolution), under exactly torchvision's parameter names
//! (`layer1.0.downsample.0.weight`, `bn1.running_mean`, `fc.bias`, …).
use super::{Act, Arch, BlockSpec, ConvBn, NetSpec, Padding, Pool, Shortcut};

/// BatchNorm epsilon and momentum of torchvision's ResNets (`nn.BatchNorm2d` defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// The residual block kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 (strided) → 1×1 with ×4 expansion (ResNet-50/101/152).
    Bottleneck,
}

pub fn expansion(block: BlockKind) -> usize {
    match block {
        BlockKind::Basic => 1,
        BlockKind::Bottleneck => 4,
    }
}

/// Width of the pooled features that feed `fc`.
pub fn feature_dim(block: BlockKind) -> usize {
    512 * expansion(block)
}

fn conv_bn(conv: String, bn: String, in_channels: usize, out_channels: usize, kernel: usize, stride: usize, act: Act) -> ConvBn {
    ConvBn {
        conv,
        bn,
        in_channels,
        out_channels,
        kernel,
        stride,
        groups: 1,
        padding: Padding::Symmetric(kernel / 2),
        bn_eps: BN_EPS,
        bn_momentum: BN_MOMENTUM,
        act,
    }
}

/// `stem (conv1/bn1/relu) → maxpool 3×3 s2 p1 → blocks → global average pool → [dropout] → fc`,
/// each block `relu(convs(x) + shortcut(x))` with ReLU after every conv but the last.
pub fn spec(arch: Arch, block: BlockKind, layers: [usize; 4], num_classes: usize) -> NetSpec {
    let stem = conv_bn("conv1".into(), "bn1".into(), 3, 64, 7, 2, Act::Relu);
    let expansion = expansion(block);
    let total: usize = layers.iter().sum();
    let mut in_c = 64;
    let mut blocks = Vec::new();
    for (stage, &n) in layers.iter().enumerate() {
        let width = 64 << stage;
        let stage_stride = if stage == 0 { 1 } else { 2 };
        for b in 0..n {
            let prefix = format!("layer{}.{}", stage + 1, b);
            let stride = if b == 0 { stage_stride } else { 1 };
            let out_c = width * expansion;
            let cb = |i: usize, cin: usize, cout: usize, k: usize, s: usize, act: Act| {
                conv_bn(format!("{prefix}.conv{i}"), format!("{prefix}.bn{i}"), cin, cout, k, s, act)
            };
            let convs = match block {
                BlockKind::Basic => vec![cb(1, in_c, width, 3, stride, Act::Relu), cb(2, width, width, 3, 1, Act::Identity)],
                BlockKind::Bottleneck => vec![
                    cb(1, in_c, width, 1, 1, Act::Relu),
                    cb(2, width, width, 3, stride, Act::Relu),
                    cb(3, width, out_c, 1, 1, Act::Identity),
                ],
            };
            let shortcut = if stride != 1 || in_c != out_c {
                let mut ds = conv_bn(format!("{prefix}.downsample.0"), format!("{prefix}.downsample.1"), in_c, out_c, 1, stride, Act::Identity);
                ds.padding = Padding::Symmetric(0);
                Shortcut::Conv(ds)
            } else {
                Shortcut::Identity
            };
            let depth = blocks.len() as f64 / total as f64;
            blocks.push(BlockSpec { prefix, convs, shortcut, act: Act::Relu, depth });
            in_c = out_c;
        }
    }
    NetSpec {
        arch,
        stem,
        stem_pool: Some(Pool { kernel: 3, stride: 2, padding: 1 }),
        blocks,
        head: None,
        classifier: "fc".into(),
        feature_dim: feature_dim(block),
        num_classes,
        aliases: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_torchvision() {
        // torchvision's published parameter counts with the 1000-class head.
        let expected = [
            (Arch::Resnet18, 11_689_512),
            (Arch::Resnet34, 21_797_672),
            (Arch::Resnet50, 25_557_032),
            (Arch::Resnet101, 44_549_160),
            (Arch::Resnet152, 60_192_808),
        ];
        for (arch, n) in expected {
            assert_eq!(arch.spec(1000).parameter_count(), n, "{arch}");
        }
    }

    #[test]
    fn names_follow_torchvision() {
        let spec = Arch::Resnet50.spec(10);
        let names: Vec<String> = spec.tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"layer1.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer4.2.bn3.running_var".to_string()));
        assert!(!names.contains(&"layer1.1.downsample.0.weight".to_string()));
        // v1.5: stride on the 3×3 conv of the first block of a stage.
        let b = &spec.blocks[3];
        assert_eq!(b.prefix, "layer2.0");
        assert_eq!((b.convs[0].stride, b.convs[1].stride), (1, 2));
        assert_eq!(spec.feature_size(224), 7);
        assert!(spec.is_classifier("fc.weight") && !spec.is_classifier("fcx.weight"));
    }
}
