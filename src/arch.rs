//! The ResNet family as plain data: one description, walked by both the libtorch model
//! (`model::ResNet`) and the ONNX exporter (`export`), so the two can never drift apart.
//!
//! Follows torchvision's `resnet.py` (He et al. 2016, "v1.5": the stride of a bottleneck
//! block sits on its 3×3 convolution) and uses exactly its parameter names
//! (`layer1.0.downsample.0.weight`, `bn1.running_mean`, `fc.bias`, …).
use serde::{Deserialize, Serialize};

/// A supported architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
}

/// The residual block kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 (strided) → 1×1 with ×4 expansion (ResNet-50/101/152).
    Bottleneck,
}

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50, Arch::Resnet101, Arch::Resnet152];

    /// Lower-case name as used by torchvision (`resnet152`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
        }
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn block(self) -> BlockKind {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => BlockKind::Basic,
            _ => BlockKind::Bottleneck,
        }
    }

    /// Blocks per stage.
    pub fn layers(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
            Arch::Resnet101 => [3, 4, 23, 3],
            Arch::Resnet152 => [3, 8, 36, 3],
        }
    }

    pub fn expansion(self) -> usize {
        match self.block() {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Width of the pooled features that feed `fc`.
    pub fn feature_dim(self) -> usize {
        512 * self.expansion()
    }

    /// The full layer description with `num_classes` outputs.
    pub fn spec(self, num_classes: usize) -> ResNetSpec {
        ResNetSpec::new(self, num_classes)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A convolution (no bias) followed by BatchNorm, named as in torchvision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvBn {
    /// e.g. `layer1.0.conv1` (weight `layer1.0.conv1.weight`, shape `[out, in, k, k]`).
    pub conv: String,
    /// e.g. `layer1.0.bn1` (`.weight`, `.bias`, `.running_mean`, `.running_var`, shape `[out]`).
    pub bn: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvBn {
    fn new(conv: String, bn: String, in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        ConvBn { conv, bn, in_channels, out_channels, kernel, stride, padding: kernel / 2 }
    }
}

/// One residual block: `relu(convs(x) + shortcut(x))`, with ReLU after every conv but the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// e.g. `layer3.17`.
    pub prefix: String,
    pub convs: Vec<ConvBn>,
    /// `layerX.0.downsample.{0,1}` when the shape changes; identity otherwise.
    pub downsample: Option<ConvBn>,
}

/// A whole ResNet:
/// `stem (conv1/bn1/relu) → maxpool 3×3 s2 p1 → blocks → global average pool → [dropout] → fc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetSpec {
    pub arch: Arch,
    pub stem: ConvBn,
    pub blocks: Vec<BlockSpec>,
    pub feature_dim: usize,
    pub num_classes: usize,
}

impl ResNetSpec {
    pub fn new(arch: Arch, num_classes: usize) -> Self {
        let stem = ConvBn::new("conv1".into(), "bn1".into(), 3, 64, 7, 2);
        let expansion = arch.expansion();
        let mut in_c = 64;
        let mut blocks = Vec::new();
        for (stage, &n) in arch.layers().iter().enumerate() {
            let width = 64 << stage;
            let stage_stride = if stage == 0 { 1 } else { 2 };
            for b in 0..n {
                let prefix = format!("layer{}.{}", stage + 1, b);
                let stride = if b == 0 { stage_stride } else { 1 };
                let out_c = width * expansion;
                let cb = |i: usize, cin: usize, cout: usize, k: usize, s: usize| {
                    ConvBn::new(format!("{prefix}.conv{i}"), format!("{prefix}.bn{i}"), cin, cout, k, s)
                };
                let convs = match arch.block() {
                    BlockKind::Basic => vec![cb(1, in_c, width, 3, stride), cb(2, width, width, 3, 1)],
                    BlockKind::Bottleneck => vec![
                        cb(1, in_c, width, 1, 1),
                        cb(2, width, width, 3, stride),
                        cb(3, width, out_c, 1, 1),
                    ],
                };
                let downsample = (stride != 1 || in_c != out_c).then(|| ConvBn {
                    conv: format!("{prefix}.downsample.0"),
                    bn: format!("{prefix}.downsample.1"),
                    in_channels: in_c,
                    out_channels: out_c,
                    kernel: 1,
                    stride,
                    padding: 0,
                });
                blocks.push(BlockSpec { prefix, convs, downsample });
                in_c = out_c;
            }
        }
        ResNetSpec { arch, stem, blocks, feature_dim: arch.feature_dim(), num_classes }
    }

    /// Every ConvBn in forward order (stem, then each block's convs, then its downsample).
    pub fn conv_bns(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem)
            .chain(self.blocks.iter().flat_map(|b| b.convs.iter().chain(b.downsample.iter())))
    }

    /// Every learnable or buffer tensor, with its PyTorch name and shape
    /// (BatchNorm's `num_batches_tracked` excluded).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for cb in self.conv_bns() {
            out.push((format!("{}.weight", cb.conv), vec![cb.out_channels, cb.in_channels, cb.kernel, cb.kernel]));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{}.{p}", cb.bn), vec![cb.out_channels]));
            }
        }
        out.push(("fc.weight".into(), vec![self.num_classes, self.feature_dim]));
        out.push(("fc.bias".into(), vec![self.num_classes]));
        out
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
            let count: usize = arch
                .spec(1000)
                .tensors()
                .iter()
                .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(count, n, "{arch}");
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
    }
}
