//! Builds the ONNX graph of a network by walking [`NetSpec`], the same description the
//! libtorch model walks, over a state dict of PyTorch-named tensors.
//!
//! The graph is what `torch.onnx.export` of the model in eval mode gives after onnxruntime's
//! BatchNorm fusion: for a ResNet `Conv (BN folded) → Relu → MaxPool → blocks (Conv, Relu, Add)
//! → GlobalAveragePool → Flatten → Gemm`; for EfficientNet-Lite `Conv → Clip(0, 6)` (ReLU6)
//! chains with depthwise convolutions (`group` = channels) and residual `Add`s, a 1×1 head,
//! then the same pooling and Gemm. TensorFlow "SAME" padding becomes static, possibly
//! asymmetric `pads` on each Conv, computed from the fixed input size (so no Pad node). No
//! BatchNormalization or Dropout node is emitted (dropout and stochastic depth are the
//! identity at inference). Folding follows the inference form of BatchNorm
//! (Ioffe & Szegedy 2015): `y = γ·(x − μ)/√(σ² + ε) + β`, so a conv with weight `w` and no bias
//! becomes one with `w' = w·s`, `b' = β − μ·s`, `s = γ/√(σ² + ε)` per output channel,
//! computed in f64 and rounded once.
//!
//! Input `input` is `[N, 3, crop, crop]` float32 (`N` symbolic, height and width fixed to the
//! recorded crop, so ONNX Runtime rejects an image prepared with the wrong preprocessing);
//! output `logits` is `[N, classes]` float32. With `fp16`, weights are stored and computed in
//! float16 between a Cast after the input and a Cast before the output, so callers always
//! exchange float32.
use anyhow::{bail, Context, Result};

use crate::arch::{Act, ConvBn, NetSpec, Shortcut};
use crate::meta::ModelMeta;
use crate::onnx::helpers::{self, float_attribute, float_value_info, int_attribute, ints_attribute};
use crate::onnx::{tensor_proto::DataType, tensor_shape_proto::dimension, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto};

use super::weights::{check_state_dict, StateDict};

/// ONNX operator set the graph is written against (every op used exists unchanged since 13).
pub const OPSET: i64 = 17;
/// IR version 8 is the one that goes with opset 17 (onnx 1.12); onnxruntime 1.31 reads 3–11.
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT: &str = "input";
/// Name of the graph output.
pub const OUTPUT: &str = "logits";
/// The symbolic batch dimension.
pub const BATCH_DIM: &str = "N";

/// `"float16"` or `"float32"`, as recorded in [`ModelMeta::precision`].
pub fn precision_name(fp16: bool) -> &'static str {
    if fp16 {
        "float16"
    } else {
        "float32"
    }
}

/// Nodes and initializers in topological order, each node's output named after the node.
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    fp16: bool,
}

impl Graph {
    /// Adds a weight in the graph's precision; returns its name. A value beyond float16's range
    /// (folding can scale a channel with a tiny running variance far up) is an error, not an
    /// infinity that would silently poison every prediction.
    fn initializer(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<String> {
        let (data_type, raw_data) = if self.fp16 {
            let mut raw = Vec::with_capacity(data.len() * 2);
            for &v in data {
                let h = half::f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    bail!("{name} holds {v}, beyond float16's range (±{}); export in float32", half::f16::MAX);
                }
                raw.extend(h.to_le_bytes());
            }
            (DataType::Float16, raw)
        } else {
            (DataType::Float, data.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        self.initializers.push(helpers::tensor(name, shape, data_type, raw_data));
        Ok(name.to_string())
    }

    /// Adds a node whose single output is named `name`; returns that name.
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<AttributeProto>, doc: Option<String>) -> String {
        self.nodes.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            attribute,
            doc_string: doc,
            ..Default::default()
        });
        name.to_string()
    }

    /// A convolution with its BatchNorm folded in, on a `size`×`size` input; returns the
    /// output name (the conv's name).
    fn conv_bn(&mut self, cb: &ConvBn, w: &StateDict, x: &str, size: usize) -> Result<String> {
        let get = |suffix: &str, of: &str| {
            let key = format!("{of}.{suffix}");
            w.get(&key).map(|t| t.data.as_slice()).with_context(|| format!("tensor {key} missing"))
        };
        let weight = get("weight", &cb.conv)?;
        let (gamma, beta) = (get("weight", &cb.bn)?, get("bias", &cb.bn)?);
        let (mean, var) = (get("running_mean", &cb.bn)?, get("running_var", &cb.bn)?);
        let (w_folded, b_folded) = fold_bn(weight, gamma, beta, mean, var, cb.bn_eps)?;
        let wname = self.initializer(&format!("{}.weight", cb.conv), &cb.weight_shape(), &w_folded)?;
        let bname = self.initializer(&format!("{}.bias", cb.conv), &[cb.out_channels], &b_folded)?;
        let (k, s) = (cb.kernel as i64, cb.stride as i64);
        let (before, after) = cb.pads(size);
        let (a, b) = (before as i64, after as i64);
        let attrs = vec![
            ints_attribute("kernel_shape", &[k, k]),
            ints_attribute("strides", &[s, s]),
            // [top, left, bottom, right]: TensorFlow's SAME puts an odd extra pixel last.
            ints_attribute("pads", &[a, a, b, b]),
            ints_attribute("dilations", &[1, 1]),
            int_attribute("group", cb.groups as i64),
        ];
        Ok(self.node("Conv", &cb.conv, &[x, &wname, &bname], attrs, Some(format!("{} with {} folded in", cb.conv, cb.bn))))
    }

    /// `act(x)` as a node named `name` (`x` itself for the identity). ReLU6 is `Clip` with
    /// its bounds as (shared) initializers, as opset 11 and later take them.
    fn act(&mut self, act: Act, name: &str, x: &str) -> Result<String> {
        Ok(match act {
            Act::Identity => x.to_string(),
            Act::Relu => self.node("Relu", name, &[x], vec![], None),
            Act::Relu6 => {
                if !self.initializers.iter().any(|t| t.name.as_deref() == Some(RELU6_MIN)) {
                    self.initializer(RELU6_MIN, &[], &[0.0])?;
                    self.initializer(RELU6_MAX, &[], &[6.0])?;
                }
                self.node("Clip", name, &[x, RELU6_MIN, RELU6_MAX], vec![], Some("ReLU6".into()))
            }
        })
    }

    /// Conv-BN and its activation, on a `size`×`size` input; returns the output and its size.
    fn layer(&mut self, cb: &ConvBn, w: &StateDict, x: &str, size: usize, act_name: &str) -> Result<(String, usize)> {
        let y = self.conv_bn(cb, w, x, size)?;
        Ok((self.act(cb.act, act_name, &y)?, cb.out_size(size)))
    }
}

/// Names of the shared bounds of every ReLU6 `Clip`.
const RELU6_MIN: &str = "relu6.min";
const RELU6_MAX: &str = "relu6.max";

/// The activation node's name after conv `i` (0-based) of a block: ResNet's `layer1.0.relu1`
/// style, or `<conv>.relu6`.
fn act_name(block_prefix: &str, cb: &ConvBn, i: usize) -> String {
    match cb.act {
        Act::Relu6 => format!("{}.relu6", cb.conv),
        _ => format!("{block_prefix}.relu{}", i + 1),
    }
}

/// Folds BatchNorm (per output channel) into a bias-free convolution weight `[out, …]`.
/// Returns `(w', b')`, computed in f64.
pub fn fold_bn(
    weight: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let out = gamma.len();
    if out == 0 || [beta.len(), mean.len(), var.len()].iter().any(|&n| n != out) || !weight.len().is_multiple_of(out) {
        bail!(
            "BatchNorm of {out} channels does not fit a conv weight of {} values (beta {}, mean {}, var {})",
            weight.len(),
            beta.len(),
            mean.len(),
            var.len()
        );
    }
    let per = weight.len() / out;
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(out);
    for c in 0..out {
        let scale = gamma[c] as f64 / (var[c] as f64 + eps).sqrt();
        w.extend(weight[c * per..(c + 1) * per].iter().map(|&v| (v as f64 * scale) as f32));
        b.push((beta[c] as f64 - mean[c] as f64 * scale) as f32);
    }
    Ok((w, b))
}

/// Builds the ONNX model of `spec` with the weights of `weights` (checked first, like a strict
/// state-dict load) and `meta` as its metadata. `meta.arch` and `meta.classes` must agree with
/// `spec`; `meta.precision` is set from `fp16`.
pub fn build_model(spec: &NetSpec, weights: &StateDict, meta: &ModelMeta, fp16: bool) -> Result<ModelProto> {
    check_state_dict(spec, weights)?;
    if meta.arch != spec.arch.name() {
        bail!("metadata says {} but the model is {}", meta.arch, spec.arch);
    }
    if meta.classes.len() != spec.num_classes {
        bail!("metadata lists {} classes but the model has {} outputs", meta.classes.len(), spec.num_classes);
    }
    let crop = meta.preprocess.crop as i64;
    if crop < 1 {
        bail!("crop size must be positive, got {crop}");
    }
    let mut meta = meta.clone();
    meta.precision = precision_name(fp16).to_string();

    let mut g = Graph { nodes: Vec::new(), initializers: Vec::new(), fp16 };
    let mut x = INPUT.to_string();
    if fp16 {
        x = g.node("Cast", "input_fp16", &[&x], vec![int_attribute("to", DataType::Float16 as i64)], None);
    }
    let features = g.trunk(spec, weights, &x, crop as usize)?;
    g.classifier(spec, weights, &features)?;

    let n = || dimension::Value::DimParam(BATCH_DIM.into());
    let v = dimension::Value::DimValue;
    let input_doc = format!(
        "RGB image batch, resized to {} (shorter side) and center-cropped to {crop}×{crop}, scaled to 0–1 and \
         normalised with mean {:?} and std {:?}",
        meta.preprocess.resize, meta.preprocess.mean, meta.preprocess.std
    );
    let graph = GraphProto {
        name: Some(format!("sorbier_{}", spec.arch)),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![float_value_info(INPUT, &[n(), v(3), v(crop), v(crop)], &input_doc)],
        output: vec![float_value_info(
            OUTPUT,
            &[n(), v(spec.num_classes as i64)],
            "unnormalised class scores, in the order of the sorbier.classes metadata",
        )],
        ..Default::default()
    };
    model_proto(spec, &meta, graph)
}

impl Graph {
    /// Stem, blocks and head up to the feature map before pooling; returns its name.
    fn trunk(&mut self, spec: &NetSpec, weights: &StateDict, input: &str, crop: usize) -> Result<String> {
        let stem_act = if spec.stem.act == Act::Relu6 { format!("{}.relu6", spec.stem.conv) } else { "relu".to_string() };
        let (mut x, mut size) = self.layer(&spec.stem, weights, input, crop, &stem_act)?;
        if let Some(p) = &spec.stem_pool {
            let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
            let attrs = vec![ints_attribute("kernel_shape", &[k, k]), ints_attribute("strides", &[s, s]), ints_attribute("pads", &[pad, pad, pad, pad])];
            x = self.node("MaxPool", "maxpool", &[&x], attrs, None);
            size = p.out_size(size);
        }
        for block in &spec.blocks {
            let input = (x.clone(), size);
            let mut y = x.clone();
            for (i, cb) in block.convs.iter().enumerate() {
                (y, size) = self.layer(cb, weights, &y, size, &act_name(&block.prefix, cb, i))?;
            }
            let shortcut = match &block.shortcut {
                Shortcut::None => None,
                Shortcut::Identity => Some(input.0),
                Shortcut::Conv(ds) => Some(self.conv_bn(ds, weights, &input.0, input.1)?),
            };
            x = match shortcut {
                None => y,
                Some(sc) => {
                    let sum = self.node("Add", &format!("{}.add", block.prefix), &[&y, &sc], vec![], None);
                    self.act(block.act, &format!("{}.relu", block.prefix), &sum)?
                }
            };
        }
        if let Some(head) = &spec.head {
            (x, _) = self.layer(head, weights, &x, size, &format!("{}.relu6", head.conv))?;
        }
        Ok(x)
    }

    /// Global average pooling, flatten and the linear classifier writing the float32 output
    /// (cast back from float16 in a half-precision graph).
    fn classifier(&mut self, spec: &NetSpec, weights: &StateDict, features: &str) -> Result<()> {
        let mut x = self.node("GlobalAveragePool", "avgpool", &[features], vec![], None);
        x = self.node("Flatten", "flatten", &[&x], vec![int_attribute("axis", 1)], None);
        let [fc_wn, fc_bn] = spec.classifier_tensors();
        let (fc_w, fc_b) = (&weights[&fc_wn], &weights[&fc_bn]);
        let wname = self.initializer(&fc_wn, &fc_w.shape, &fc_w.data)?;
        let bname = self.initializer(&fc_bn, &fc_b.shape, &fc_b.data)?;
        let gemm = vec![float_attribute("alpha", 1.0), float_attribute("beta", 1.0), int_attribute("transB", 1)];
        let output = |name: String, op: &str, input: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
            name: Some(name),
            op_type: Some(op.into()),
            input,
            output: vec![OUTPUT.into()],
            attribute,
            ..Default::default()
        };
        if self.fp16 {
            let y = self.node("Gemm", &spec.classifier, &[&x, &wname, &bname], gemm, None);
            self.nodes.push(output("logits_fp32".into(), "Cast", vec![y], vec![int_attribute("to", DataType::Float as i64)]));
        } else {
            self.nodes.push(output(spec.classifier.clone(), "Gemm", vec![x, wname, bname], gemm));
        }
        Ok(())
    }
}

/// The model around `graph`: IR version, opset, producer, and the model card as metadata.
fn model_proto(spec: &NetSpec, meta: &ModelMeta, graph: GraphProto) -> Result<ModelProto> {
    let metadata_props = meta
        .to_props()?
        .into_iter()
        .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
        .collect();
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("sorbier".into()),
        producer_version: Some(crate::VERSION.into()),
        doc_string: Some(format!(
            "{} with {} classes ({}), exported by sorbier {} from {}. Class names, preprocessing and metrics are \
             in the sorbier.* metadata.",
            spec.arch,
            spec.num_classes,
            meta.precision,
            crate::VERSION,
            meta.source
        )),
        graph: Some(graph),
        metadata_props,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::export::weights::tests::filled;
    use crate::transforms::Preprocess;

    #[test]
    fn fold_bn_matches_formula() {
        // Two output channels, two weights each.
        let w = [1.0, 2.0, -1.0, 0.5];
        let (wf, bf) = fold_bn(&w, &[2.0, 0.5], &[0.1, -0.2], &[1.0, -3.0], &[3.0, 0.0], 1.0).unwrap();
        // channel 0: s = 2/√4 = 1; channel 1: s = 0.5/√1 = 0.5
        assert_eq!(wf, vec![1.0, 2.0, -0.5, 0.25]);
        assert!((bf[0] - (0.1 - 1.0)).abs() < 1e-7 && (bf[1] - (-0.2 + 1.5)).abs() < 1e-7, "{bf:?}");
        assert!(fold_bn(&w, &[1.0; 3], &[0.0; 3], &[0.0; 3], &[1.0; 3], 1e-5).is_err());
    }

    fn meta(classes: usize) -> ModelMeta {
        ModelMeta {
            classes: (0..classes).map(|i| format!("c{i}")).collect(),
            arch: "resnet18".into(),
            preprocess: Preprocess::for_crop(64),
            metrics: Default::default(),
            data_fingerprint: "x".into(),
            sorbier_version: crate::VERSION.into(),
            precision: "float32".into(),
            source: "r:best".into(),
        }
    }

    #[test]
    fn graph_has_expected_nodes_and_no_batchnorm() {
        let spec = Arch::Resnet18.spec(4);
        let m = build_model(&spec, &filled(&spec, 1.0), &meta(4), false).unwrap();
        let g = m.graph.as_ref().unwrap();
        let count = |op: &str| g.node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count();
        // stem + 16 block convs + 3 downsamples
        assert_eq!(count("Conv"), 20);
        assert_eq!(count("Add"), 8);
        assert_eq!(count("Relu"), 1 + 8 * 2);
        assert_eq!(count("BatchNormalization") + count("Dropout") + count("Cast"), 0);
        // every Conv has a weight and a bias initializer; plus fc weight and bias
        assert_eq!(g.initializer.len(), 20 * 2 + 2);
        assert_eq!(g.node.last().unwrap().output, vec![OUTPUT.to_string()]);
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        let keys: Vec<&str> = m.metadata_props.iter().map(|p| p.key.as_deref().unwrap()).collect();
        assert!(keys.contains(&"sorbier.classes"));
        // every node input is a graph input, an initializer or an earlier node's output
        let mut known: std::collections::HashSet<String> = g.initializer.iter().map(|t| t.name.clone().unwrap()).collect();
        known.insert(INPUT.into());
        for node in &g.node {
            for i in &node.input {
                assert!(known.contains(i), "{:?} reads unknown {i}", node.name);
            }
            known.extend(node.output.iter().cloned());
        }
    }

    #[test]
    fn fp16_casts_io_and_halves_weights() {
        let spec = Arch::Resnet18.spec(4);
        let m = build_model(&spec, &filled(&spec, 1.0), &meta(4), true).unwrap();
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node.first().unwrap().op_type.as_deref(), Some("Cast"));
        assert_eq!(g.node.last().unwrap().op_type.as_deref(), Some("Cast"));
        assert!(g.initializer.iter().all(|t| t.data_type == Some(DataType::Float16 as i32)));
        let fc = g.initializer.iter().find(|t| t.name.as_deref() == Some("fc.weight")).unwrap();
        assert_eq!(fc.raw_data.as_ref().unwrap().len(), 4 * 512 * 2);
        let precision = m.metadata_props.iter().find(|p| p.key.as_deref() == Some("sorbier.precision")).unwrap();
        assert_eq!(precision.value.as_deref(), Some("\"float16\""));
    }

    #[test]
    fn fp16_overflow_is_an_error() {
        let spec = Arch::Resnet18.spec(4);
        let mut w = filled(&spec, 1.0);
        // A dead channel (variance 0) scales its weights by 1/√ε ≈ 316: 1000 → 316 228.
        w.get_mut("layer3.1.conv2.weight").unwrap().data[0] = 1000.0;
        w.get_mut("layer3.1.bn2.running_var").unwrap().data[0] = 0.0;
        let err = build_model(&spec, &w, &meta(4), true).unwrap_err();
        assert!(format!("{err:#}").contains("layer3.1.conv2.weight holds"), "{err:#}");
        build_model(&spec, &w, &meta(4), false).unwrap();
    }

    #[test]
    fn metadata_must_agree_with_spec() {
        let spec = Arch::Resnet18.spec(4);
        let err = build_model(&spec, &filled(&spec, 1.0), &meta(5), false).unwrap_err();
        assert!(format!("{err:#}").contains("5 classes"), "{err:#}");
    }
}
