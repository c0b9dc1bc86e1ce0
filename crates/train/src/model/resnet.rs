//! ResNet-18…152 in libtorch, built by walking [`ResNetSpec`] so that its variables carry
//! exactly torchvision's state-dict names (`conv1.weight`, `layer1.0.downsample.1.running_var`,
//! `fc.bias`, …).
//!
//! Follows torchvision `models/resnet.py` (He et al. 2016, v1.5: a bottleneck's stride sits on
//! its 3×3 convolution): the forward pass, BatchNorm's eps 1e-5 and momentum 0.1, and the
//! initialisation (`kaiming_normal_(mode="fan_out", nonlinearity="relu")` for convolutions,
//! BatchNorm γ=1 β=0, `nn.Linear`'s default U(±1/√fan_in) for the head; torchvision's default
//! `zero_init_residual=False`, so the last BatchNorm of a block is not zeroed).
use sorbier::arch::{ConvBn, ResNetSpec};
use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init, ModuleT};
use tch::Tensor;

/// Optimizer group of the variables that take weight decay (convolution and `fc` weights).
pub const DECAY_GROUP: usize = 0;
/// Optimizer group of BatchNorm γ/β and the `fc` bias, which by common practice (timm's
/// `param_groups_weight_decay`) take no weight decay. Use with
/// `tch::nn::Optimizer::set_weight_decay_group(NO_DECAY_GROUP, 0.0)`.
pub const NO_DECAY_GROUP: usize = 1;

const CONV_INIT: Init =
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU };

/// Descends a dotted torchvision name (`layer1.0.conv1`) one component at a time, since a
/// `tch` path component may not contain a dot.
fn sub_path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    dotted.split('.').fold(root.clone(), |p, part| p.sub(part))
}

/// A convolution without bias followed by BatchNorm (ReLU is applied by the caller).
#[derive(Debug)]
struct ConvBnLayer {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBnLayer {
    fn new(root: &nn::Path, cb: &ConvBn) -> Self {
        let conv_cfg = nn::ConvConfig {
            stride: cb.stride as i64,
            padding: cb.padding as i64,
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
            eps: 1e-5,
            momentum: 0.1,
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        let bn = nn::batch_norm2d(sub_path(&root.set_group(NO_DECAY_GROUP), &cb.bn), cb.out_channels as i64, bn_cfg);
        ConvBnLayer { conv, bn }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

#[derive(Debug)]
struct Block {
    convs: Vec<ConvBnLayer>,
    downsample: Option<ConvBnLayer>,
}

impl Block {
    /// `relu(convs(x) + shortcut(x))`, ReLU after every conv but the last.
    ///
    /// The ReLUs and the residual add work in place on the BatchNorm outputs, as torchvision's
    /// `inplace=True` ReLU and `out += identity` do (BatchNorm's backward does not need its
    /// output): fewer allocations and one memory pass less per op, about 5% of a CPU training
    /// step. Autograd checks every in-place use, so a mistake here is an error, not a wrong
    /// gradient.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len().saturating_sub(1);
        let mut ys = xs.shallow_clone();
        for (i, layer) in self.convs.iter().enumerate() {
            ys = layer.forward_t(&ys, train);
            if i < last {
                ys = ys.relu_();
            }
        }
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        let _ = ys.g_add_(&shortcut);
        ys.relu_()
    }
}

/// A torchvision-compatible ResNet whose variables live in a `tch` `VarStore`.
#[derive(Debug)]
pub struct ResNet {
    spec: ResNetSpec,
    stem: ConvBnLayer,
    blocks: Vec<Block>,
    fc: nn::Linear,
    dropout: f64,
    frozen_backbone: bool,
}

impl ResNet {
    /// Creates the variables under `vs` (normally the `VarStore`'s root, so that names are
    /// torchvision's) with torchvision's random initialisation. `dropout` is the probability
    /// applied to the pooled features before `fc` in training (0 = torchvision's model).
    ///
    /// Conv and `fc` weights go to optimizer group [`DECAY_GROUP`], BatchNorm γ/β and `fc.bias`
    /// to [`NO_DECAY_GROUP`].
    pub fn new(vs: &nn::Path, spec: &ResNetSpec, dropout: f64) -> ResNet {
        let stem = ConvBnLayer::new(vs, &spec.stem);
        let blocks = spec
            .blocks
            .iter()
            .map(|b| Block {
                convs: b.convs.iter().map(|cb| ConvBnLayer::new(vs, cb)).collect(),
                downsample: b.downsample.as_ref().map(|cb| ConvBnLayer::new(vs, cb)),
            })
            .collect();
        let fc_path = vs.sub("fc");
        let (fan_in, classes) = (spec.feature_dim as i64, spec.num_classes as i64);
        // nn.Linear.reset_parameters: kaiming_uniform(a=√5) on the weight is U(±1/√fan_in),
        // and the bias uses the same bound.
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let ws = fc_path.set_group(DECAY_GROUP).var("weight", &[classes, fan_in], init);
        let bs = fc_path.set_group(NO_DECAY_GROUP).var("bias", &[classes], init);
        ResNet {
            spec: spec.clone(),
            stem,
            blocks,
            fc: nn::Linear { ws, bs: Some(bs) },
            dropout,
            frozen_backbone: false,
        }
    }

    pub fn spec(&self) -> &ResNetSpec {
        &self.spec
    }

    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// Feature-extraction mode: the backbone always runs as in eval (BatchNorm uses and keeps
    /// its running statistics) and without autograd; only dropout and `fc` see `train`.
    /// Pair with [`freeze_backbone`] so the optimizer leaves the backbone's weights alone.
    pub fn set_frozen_backbone(&mut self, frozen: bool) {
        self.frozen_backbone = frozen;
    }

    pub fn frozen_backbone(&self) -> bool {
        self.frozen_backbone
    }

    /// The pooled backbone features, before dropout and `fc`.
    ///
    /// # Shapes
    /// `xs`: N×3×H×W float (normalised) → N×`feature_dim` (512 for ResNet-18/34, 2048 above).
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // H/2 (strided 7×7 conv), then H/4 (3×3 max-pool, stride 2, padding 1).
        let mut ys = self.stem.forward_t(xs, train).relu_().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        // N×C×h×w → N×C×1×1 → N×C
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl ModuleT for ResNet {
    /// # Shapes
    /// `xs`: N×3×H×W float (normalised) → logits N×`num_classes`.
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

/// Stops gradients for every variable outside the head (`fc.*`), for feature extraction.
/// Returns how many tensors were frozen. The optimizer skips variables without a gradient.
pub fn freeze_backbone(vs: &nn::VarStore) -> usize {
    let mut frozen = 0;
    for (name, var) in vs.variables() {
        if !name.starts_with("fc.") && var.requires_grad() {
            let _ = var.set_requires_grad(false);
            frozen += 1;
        }
    }
    frozen
}

/// The trainable variables' names split as the optimizer groups are: weights that take decay,
/// and norm/bias vectors that do not. Both sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamGroups {
    pub decay: Vec<String>,
    pub no_decay: Vec<String>,
}

/// Names of the variables that currently require gradients (frozen ones and BatchNorm
/// running statistics excluded), split by timm's rule: 1-D tensors (norm γ/β, biases) take no
/// weight decay. This matches [`DECAY_GROUP`]/[`NO_DECAY_GROUP`] for a [`ResNet`].
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

    fn build(arch: Arch, classes: usize) -> (nn::VarStore, ResNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ResNet::new(&vs.root(), &arch.spec(classes), 0.0);
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

        assert_eq!(freeze_backbone(&vs), 60);
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
