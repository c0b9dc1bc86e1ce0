//! The networks of [`sorbier::arch`] in libtorch, built by walking a [`NetSpec`] so that
//! their variables carry exactly the reference implementations' state-dict names
//! (torchvision's `conv1.weight`, `layer1.0.downsample.1.running_var`, `fc.bias`;
//! efficientnet-lite-pytorch's `_blocks.3._depthwise_conv.weight`, `_fc.bias`, …).
//!
//! ResNets follow torchvision `models/resnet.py` (He et al. 2016, v1.5); EfficientNet-Lite
//! follows `efficientnet-lite-pytorch` (TensorFlow's `efficientnet_lite_builder.py`): ReLU6,
//! depthwise convolutions, TensorFlow "SAME" padding (asymmetric on stride-2 layers, computed
//! from the input size as `Conv2dDynamicSamePadding` does), BatchNorm eps 1e-3 and momentum
//! 0.01, and stochastic depth ("drop connect") on the residual branches while training.
//!
//! Initialisation as torchvision's ResNet: `kaiming_normal_(mode="fan_out",
//! nonlinearity="relu")` for convolutions, BatchNorm γ=1 β=0, `nn.Linear`'s default
//! U(±1/√fan_in) for the head; torchvision's default `zero_init_residual=False`.
use sorbier::arch::{Act, BlockSpec, ConvBn, NetSpec, Padding, Pool, Shortcut};
use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init, ModuleT};
use tch::Tensor;

/// Optimizer group of the variables that take weight decay (convolution and classifier weights).
pub const DECAY_GROUP: usize = 0;
/// Optimizer group of BatchNorm γ/β and the classifier bias, which by common practice (timm's
/// `param_groups_weight_decay`) take no weight decay.
pub const NO_DECAY_GROUP: usize = 1;

const CONV_INIT: Init =
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU };

/// Descends a dotted PyTorch name (`layer1.0.conv1`) one component at a time, since a
/// `tch` path component may not contain a dot.
fn sub_path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    dotted.split('.').fold(root.clone(), |p, part| p.sub(part))
}

fn activate(x: Tensor, act: Act) -> Tensor {
    let mut x = x;
    match act {
        Act::Identity => x,
        // In place on a BatchNorm output or a sum, as torchvision's `inplace=True`.
        Act::Relu => x.relu_(),
        Act::Relu6 => x.relu6_(),
    }
}

/// A convolution without bias, BatchNorm and the activation.
#[derive(Debug)]
struct ConvBnLayer {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    padding: Padding,
    kernel: i64,
    stride: i64,
    groups: i64,
    act: Act,
}

impl ConvBnLayer {
    fn new(root: &nn::Path, cb: &ConvBn) -> Self {
        let conv_cfg = nn::ConvConfig {
            stride: cb.stride as i64,
            padding: match cb.padding {
                Padding::Symmetric(p) => p as i64,
                Padding::TfSame => 0, // applied in forward_t, from the input size
            },
            groups: cb.groups as i64,
            bias: false,
            ws_init: CONV_INIT,
            ..Default::default()
        };
        let conv = nn::conv2d(
            sub_path(&root.set_group(DECAY_GROUP), &cb.conv),
            cb.in_channels as i64,
            cb.out_channels as i64,
            cb.kernel as i64,
            conv_cfg,
        );
        let bn_cfg = nn::BatchNormConfig {
            eps: cb.bn_eps,
            momentum: cb.bn_momentum,
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        let bn = nn::batch_norm2d(sub_path(&root.set_group(NO_DECAY_GROUP), &cb.bn), cb.out_channels as i64, bn_cfg);
        ConvBnLayer { conv, bn, padding: cb.padding, kernel: cb.kernel as i64, stride: cb.stride as i64, groups: cb.groups as i64, act: cb.act }
    }

    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H', W']`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = match self.padding {
            Padding::Symmetric(_) => xs.apply(&self.conv),
            Padding::TfSame => {
                let size = xs.size();
                let pads = |input: i64| {
                    let out = (input + self.stride - 1) / self.stride;
                    let total = ((out - 1) * self.stride + self.kernel - input).max(0);
                    (total / 2, total - total / 2)
                };
                let ((top, bottom), (left, right)) = (pads(size[2]), pads(size[3]));
                if top == bottom && left == right {
                    xs.conv2d(&self.conv.ws, None::<Tensor>, [self.stride], [top, left], [1], self.groups)
                } else {
                    xs.constant_pad_nd([left, right, top, bottom]).conv2d(&self.conv.ws, None::<Tensor>, [self.stride], [0], [1], self.groups)
                }
            }
        };
        activate(y.apply_t(&self.bn, train), self.act)
    }
}

#[derive(Debug)]
struct Block {
    convs: Vec<ConvBnLayer>,
    /// None: no sum (a block that changes shape without a projection).
    shortcut: Option<Option<ConvBnLayer>>,
    act: Act,
    depth: f64,
}

impl Block {
    fn new(vs: &nn::Path, b: &BlockSpec) -> Self {
        Block {
            convs: b.convs.iter().map(|cb| ConvBnLayer::new(vs, cb)).collect(),
            shortcut: match &b.shortcut {
                Shortcut::None => None,
                Shortcut::Identity => Some(None),
                Shortcut::Conv(cb) => Some(Some(ConvBnLayer::new(vs, cb))),
            },
            act: b.act,
            depth: b.depth,
        }
    }

    /// `act(convs(x) + shortcut(x))`, the residual branch dropped per sample with probability
    /// `drop_path · depth` while training (stochastic depth, Huang et al. 2016, as
    /// efficientnet_pytorch's `drop_connect`: kept samples are scaled by 1/keep).
    fn forward_t(&self, xs: &Tensor, train: bool, drop_path: f64) -> Tensor {
        let mut ys = xs.shallow_clone();
        for layer in &self.convs {
            ys = layer.forward_t(&ys, train);
        }
        let Some(shortcut) = &self.shortcut else {
            return ys;
        };
        let p = drop_path * self.depth;
        if train && p > 0.0 {
            let keep = 1.0 - p;
            let mask = (Tensor::rand([ys.size()[0], 1, 1, 1], (ys.kind(), ys.device())) + keep).floor_();
            ys = ys / keep * mask;
        }
        let shortcut = match shortcut {
            Some(ds) => ds.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        let _ = ys.g_add_(&shortcut);
        activate(ys, self.act)
    }
}

/// A network of [`sorbier::arch`] with its classifier, on libtorch.
#[derive(Debug)]
pub struct Net {
    spec: NetSpec,
    stem: ConvBnLayer,
    stem_pool: Option<Pool>,
    blocks: Vec<Block>,
    head: Option<ConvBnLayer>,
    fc: nn::Linear,
    dropout: f64,
    drop_path: f64,
    frozen_backbone: bool,
}

impl Net {
    /// Creates every variable of `spec` under `vs` (names as [`NetSpec::tensors`]), with
    /// `dropout` before the classifier and no stochastic depth ([`Net::with_drop_path`]).
    pub fn new(vs: &nn::Path, spec: &NetSpec, dropout: f64) -> Net {
        let stem = ConvBnLayer::new(vs, &spec.stem);
        let blocks = spec.blocks.iter().map(|b| Block::new(vs, b)).collect();
        let head = spec.head.as_ref().map(|cb| ConvBnLayer::new(vs, cb));
        let fc_path = vs.sub(&spec.classifier);
        let (fan_in, classes) = (spec.feature_dim as i64, spec.num_classes as i64);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let ws = fc_path.set_group(DECAY_GROUP).var("weight", &[classes, fan_in], init);
        let bs = fc_path.set_group(NO_DECAY_GROUP).var("bias", &[classes], init);
        Net {
            spec: spec.clone(),
            stem,
            stem_pool: spec.stem_pool,
            blocks,
            head,
            fc: nn::Linear { ws, bs: Some(bs) },
            dropout,
            drop_path: 0.0,
            frozen_backbone: false,
        }
    }

    /// Stochastic depth: the last block's residual branch is dropped with probability `rate`
    /// while training, earlier blocks' in proportion to their depth.
    pub fn with_drop_path(mut self, rate: f64) -> Net {
        self.drop_path = rate;
        self
    }

    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// Feature extraction: the backbone runs in eval mode (BatchNorm uses and keeps its
    /// running statistics) and without autograd; only the classifier trains.
    pub fn set_frozen_backbone(&mut self, frozen: bool) {
        self.frozen_backbone = frozen;
    }

    pub fn frozen_backbone(&self) -> bool {
        self.frozen_backbone
    }

    /// # Shapes
    /// `[N, 3, H, W]` → pooled features `[N, feature_dim]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.stem.forward_t(xs, train);
        if let Some(p) = &self.stem_pool {
            let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
            ys = ys.max_pool2d([k, k], [s, s], [pad, pad], [1, 1], false);
        }
        for block in &self.blocks {
            ys = block.forward_t(&ys, train, self.drop_path);
        }
        if let Some(head) = &self.head {
            ys = head.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl ModuleT for Net {
    /// # Shapes
    /// `[N, 3, H, W]` → logits `[N, num_classes]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let features = if self.frozen_backbone {
            tch::no_grad(|| self.features_t(xs, false))
        } else {
            self.features_t(xs, train)
        };
        let features = if train && self.dropout > 0.0 { features.dropout(self.dropout, true) } else { features };
        features.apply(&self.fc)
    }
}

/// Freezes every variable but the classifier's (for `--mode feature-extract`); returns how
/// many were frozen.
pub fn freeze_backbone(vs: &nn::VarStore, spec: &NetSpec) -> usize {
    let mut frozen = 0;
    for (name, var) in vs.variables() {
        if !spec.is_classifier(&name) && var.requires_grad() {
            let _ = var.set_requires_grad(false);
            frozen += 1;
        }
    }
    frozen
}

/// Names of the trainable variables, split into weight-decay groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamGroups {
    pub decay: Vec<String>,
    pub no_decay: Vec<String>,
}

/// The trainable variables of `vs`: matrices and kernels take weight decay, 1-D tensors
/// (BatchNorm γ/β, biases) do not.
pub fn trainable_params(vs: &nn::VarStore) -> ParamGroups {
    let mut groups = ParamGroups::default();
    for (name, var) in vs.variables() {
        if !var.requires_grad() {
            continue;
        }
        if var.dim() <= 1 {
            groups.no_decay.push(name);
        } else {
            groups.decay.push(name);
        }
    }
    groups.decay.sort();
    groups.no_decay.sort();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use sorbier::arch::Arch;
    use std::collections::BTreeMap;
    use tch::{Device, Kind};

    fn build(arch: Arch, classes: usize) -> (nn::VarStore, Net) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Net::new(&vs.root(), &arch.spec(classes), 0.0);
        (vs, model)
    }

    #[test]
    fn variables_match_spec_names_shapes_and_counts() {
        tch::manual_seed(0);
        for arch in Arch::ALL {
            let spec = arch.spec(7);
            let (vs, _) = build(arch, 7);
            let got: BTreeMap<String, Vec<usize>> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            let want: BTreeMap<String, Vec<usize>> = spec.tensors().into_iter().collect();
            assert_eq!(got, want, "{arch}");
            let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            let expected: usize = spec
                .tensors()
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(trainable as usize, expected, "{arch}");
        }
    }

    #[test]
    fn forward_shape_every_arch() {
        tch::manual_seed(1);
        for arch in Arch::ALL {
            let (_vs, model) = build(arch, 5);
            let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
            let y = tch::no_grad(|| model.forward_t(&x, false));
            assert_eq!(y.size(), [1, 5], "{arch}");
            let f = tch::no_grad(|| model.features_t(&x, false));
            assert_eq!(f.size(), [1, arch.feature_dim() as i64], "{arch}");
            assert!(bool::try_from(y.isfinite().all()).unwrap(), "{arch}");
        }
    }

    #[test]
    fn initialisation_follows_torchvision() {
        tch::manual_seed(2);
        let (vs, _) = build(Arch::Resnet50, 10);
        let vars = vs.variables();
        // kaiming_normal fan_out: std = sqrt(2 / (out·k·k)); layer4.0.conv2 is 512×512×3×3.
        let w = &vars["layer4.0.conv2.weight"];
        let std = f64::try_from(w.std(true)).unwrap();
        let want = (2.0f64 / (512.0 * 9.0)).sqrt();
        assert!((std / want - 1.0).abs() < 0.02, "std {std} want {want}");
        assert_eq!(f64::try_from(vars["layer2.1.bn2.weight"].mean(Kind::Float)).unwrap(), 1.0);
        assert_eq!(f64::try_from(vars["layer2.1.bn2.bias"].abs().max()).unwrap(), 0.0);
        assert_eq!(f64::try_from(vars["bn1.running_var"].mean(Kind::Float)).unwrap(), 1.0);
        let bound = 1.0 / 2048f64.sqrt();
        for n in ["fc.weight", "fc.bias"] {
            let m = f64::try_from(vars[n].abs().max()).unwrap();
            assert!(m <= bound && m > 0.5 * bound, "{n}: {m} vs {bound}");
        }
    }

    #[test]
    fn frozen_backbone_keeps_running_stats_and_trains_only_the_head() {
        tch::manual_seed(3);
        let (vs, mut model) = build(Arch::Resnet18, 3);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let stats = |vs: &nn::VarStore| {
            let v = vs.variables();
            (v["bn1.running_mean"].copy(), v["layer4.1.bn2.running_var"].copy())
        };
        let before = stats(&vs);

        // Control: an ordinary train-mode forward does move the statistics.
        let _ = tch::no_grad(|| model.forward_t(&x, true));
        let moved = stats(&vs);
        assert!(!moved.0.allclose(&before.0, 0.0, 0.0, false));

        assert_eq!(freeze_backbone(&vs, model.spec()), 60);
        model.set_frozen_backbone(true);
        let loss = model.forward_t(&x, true).pow_tensor_scalar(2).mean(Kind::Float);
        loss.backward();
        let after = stats(&vs);
        assert!(after.0.equal(&moved.0) && after.1.equal(&moved.1));

        let vars = vs.variables();
        assert!(vars["fc.weight"].grad().defined());
        assert!(!vars["conv1.weight"].grad().defined());
        assert!(!vars["layer3.0.downsample.0.weight"].requires_grad());
        let groups = trainable_params(&vs);
        assert_eq!(groups.decay, vec!["fc.weight"]);
        assert_eq!(groups.no_decay, vec!["fc.bias"]);
    }

    #[test]
    fn parameter_groups_split_norms_and_biases() {
        let (vs, _) = build(Arch::Resnet18, 3);
        let g = trainable_params(&vs);
        // ResNet-18: 20 convs + fc.weight decay; 20 BN × (γ, β) + fc.bias without.
        assert_eq!(g.decay.len(), 21);
        assert_eq!(g.no_decay.len(), 41);
        assert!(g.no_decay.contains(&"layer1.0.bn1.weight".to_string()));
        assert!(g.decay.contains(&"layer1.0.conv1.weight".to_string()));
        assert!(!g.no_decay.iter().chain(&g.decay).any(|n| n.contains("running")));
    }
}
