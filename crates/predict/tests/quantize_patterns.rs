//! The quantiser on small hand-built ONNX graphs (prost types), one per pattern the exporter
//! writes or will write: a ResNet's Conv → Relu, MaxPool, residual Add → Relu and 1×1
//! downsample; EfficientNet-Lite's depthwise convolutions (`group` = channels), asymmetric
//! `pads`, `Clip(0, 6)` with its bounds as initializers, a residual Add with no activation
//! after it and a 1×1 head conv + Clip before GlobalAveragePool. Each graph ends in
//! GlobalAveragePool → Flatten → Gemm.
//!
//! Structure is checked on the written graph (folded activations gone, per-channel weights with
//! an explicit axis, int32 biases with scale `x_scale · w_scale`, conv attributes kept), then
//! ONNX Runtime runs both graphs: the int8 outputs follow the float ones, its optimised graph
//! holds an int8 kernel for every convolution and Add and no float convolution, and
//! `onnx.checker` (full check) accepts the file. Every ResNet depth the exporter writes fuses
//! the same way.
use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, Array4};
use ort::value::TensorRef;
use sorbier::meta::ModelMeta;
use sorbier::onnx::attribute_proto::AttributeType;
use sorbier::onnx::tensor_proto::DataType;
use sorbier::onnx::tensor_shape_proto::{dimension, Dimension};
use sorbier::onnx::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use sorbier::transforms::Preprocess;
use sorbier_predict::quantize::{calibrate, fusion, rewrite, ActivationType, Fusion, Method, Plan, Ranges, Source};
use sorbier_predict::engine::runtime::Device;

mod common;
use common::{make_arch_model, onnx_check, runtime, Rng};

const SIZE: usize = 16;
const CLASSES: usize = 4;
/// int8 against float32 on these graphs: `max|diff| ≤ TOL · max|logit|`. Each quantised tensor
/// adds a rounding error of half a step (range / 255); through 5–7 layers of random weights
/// that stays within a few percent of the output scale (measured 0.7 %, 1.2 % and 2.3 %, printed with
/// `--nocapture`); a broken scale or zero point gives errors of the order of the output itself.
const TOL: f32 = 0.05;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: v.to_vec(), ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(v), ..Default::default() }
}

fn value(name: &str, dims: &[dimension::Value]) -> ValueInfoProto {
    let shape = TensorShapeProto { dim: dims.iter().map(|d| Dimension { value: Some(d.clone()), denotation: None }).collect() };
    let t = type_proto::Tensor { elem_type: Some(DataType::Float as i32), shape: Some(shape) };
    ValueInfoProto { name: Some(name.into()), r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), denotation: None }), ..Default::default() }
}

/// A graph under construction; each node's output is named after the node.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    rng: Rng,
}

impl Builder {
    fn new(seed: u64) -> Builder {
        Builder { nodes: Vec::new(), inits: Vec::new(), rng: Rng(seed) }
    }

    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.into()
    }

    fn random(&mut self, name: &str, dims: &[usize], scale: f32) -> String {
        let data: Vec<f32> = (0..dims.iter().product::<usize>()).map(|_| scale * self.rng.next()).collect();
        self.init(name, dims, &data)
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute,
            ..Default::default()
        });
        name.into()
    }

    /// A conv with a bias (BatchNorm folded, as the exporter writes them).
    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, name: &str, x: &str, cin: usize, cout: usize, k: usize, stride: i64, pads: [i64; 4], group: usize) -> String {
        let fan_in = cin / group * k * k;
        let w = self.random(&format!("{name}.weight"), &[cout, cin / group, k, k], (6.0 / fan_in as f32).sqrt());
        let b = self.random(&format!("{name}.bias"), &[cout], 0.1);
        let ki = k as i64;
        let attrs = vec![ints("kernel_shape", &[ki, ki]), ints("strides", &[stride, stride]), ints("pads", &pads), ints("dilations", &[1, 1]), int("group", group as i64)];
        self.node("Conv", name, &[x, &w, &b], attrs)
    }

    /// ReLU6 as opset 17 writes it: Clip with its bounds as initializer inputs.
    fn clip6(&mut self, name: &str, x: &str) -> String {
        let lo = self.init(&format!("{name}.min"), &[], &[0.0]);
        let hi = self.init(&format!("{name}.max"), &[], &[6.0]);
        self.node("Clip", name, &[x, &lo, &hi], vec![])
    }

    fn head(&mut self, x: &str, channels: usize) {
        let p = self.node("GlobalAveragePool", "avgpool", &[x], vec![]);
        let f = self.node("Flatten", "flatten", &[&p], vec![int("axis", 1)]);
        let w = self.random("fc.weight", &[CLASSES, channels], (6.0 / channels as f32).sqrt());
        let b = self.random("fc.bias", &[CLASSES], 0.1);
        self.node("Gemm", "logits", &[&f, &w, &b], vec![int("transB", 1)]);
    }

    fn model(self, arch: &str) -> ModelProto {
        let n = dimension::Value::DimParam("N".into());
        let v = |d: usize| dimension::Value::DimValue(d as i64);
        let meta = ModelMeta {
            classes: (0..CLASSES).map(|i| format!("c{i}")).collect(),
            arch: arch.into(),
            preprocess: Preprocess::for_crop(SIZE as u32),
            metrics: Default::default(),
            data_fingerprint: "hand-built".into(),
            sorbier_version: sorbier::VERSION.into(),
            precision: "float32".into(),
            source: format!("{arch}:hand-built"),
        };
        let graph = GraphProto {
            name: Some(arch.into()),
            node: self.nodes,
            initializer: self.inits,
            input: vec![value("input", &[n.clone(), v(3), v(SIZE), v(SIZE)])],
            output: vec![value("logits", &[n, v(CLASSES)])],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
            producer_name: Some("sorbier-tests".into()),
            graph: Some(graph),
            metadata_props: meta.to_props().unwrap().into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) }).collect(),
            ..Default::default()
        }
    }
}

/// Stem conv + Relu + MaxPool, a basic block (residual Add → Relu), a stride-2 block with a
/// 1×1 downsample, then the head: what the exporter writes for a ResNet.
fn resnet_like() -> ModelProto {
    let mut b = Builder::new(11);
    let x = b.conv("conv1", "input", 3, 8, 3, 1, [1, 1, 1, 1], 1);
    let x = b.node("Relu", "relu", &[&x], vec![]);
    let x = b.node("MaxPool", "maxpool", &[&x], vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])]);
    let y = b.conv("layer1.conv1", &x, 8, 8, 3, 1, [1, 1, 1, 1], 1);
    let y = b.node("Relu", "layer1.relu1", &[&y], vec![]);
    let y = b.conv("layer1.conv2", &y, 8, 8, 3, 1, [1, 1, 1, 1], 1);
    let s = b.node("Add", "layer1.add", &[&y, &x], vec![]);
    let x = b.node("Relu", "layer1.relu", &[&s], vec![]);
    let d = b.conv("layer2.downsample", &x, 8, 16, 1, 2, [0, 0, 0, 0], 1);
    let y = b.conv("layer2.conv1", &x, 8, 16, 3, 2, [1, 1, 1, 1], 1);
    let y = b.node("Relu", "layer2.relu1", &[&y], vec![]);
    let y = b.conv("layer2.conv2", &y, 16, 16, 3, 1, [1, 1, 1, 1], 1);
    let s = b.node("Add", "layer2.add", &[&y, &d], vec![]);
    let x = b.node("Relu", "layer2.relu", &[&s], vec![]);
    b.head(&x, 16);
    b.model("resnet-like")
}

/// EfficientNet-Lite's patterns: stem with TF-SAME asymmetric pads + ReLU6, a depthwise block
/// whose projection is added to its input with no activation after the Add, an expanding
/// block with a stride-2 5×5 depthwise conv padded (1, 2), and a 1×1 head conv + ReLU6.
fn efficientnet_like() -> ModelProto {
    let mut b = Builder::new(12);
    let x = b.conv("stem", "input", 3, 8, 3, 2, [0, 0, 1, 1], 1);
    let x = b.clip6("stem.relu6", &x);
    let y = b.conv("block0.depthwise", &x, 8, 8, 3, 1, [1, 1, 1, 1], 8);
    let y = b.clip6("block0.depthwise.relu6", &y);
    let y = b.conv("block0.project", &y, 8, 8, 1, 1, [0, 0, 0, 0], 1);
    let x = b.node("Add", "block0.add", &[&y, &x], vec![]);
    let y = b.conv("block1.expand", &x, 8, 24, 1, 1, [0, 0, 0, 0], 1);
    let y = b.clip6("block1.expand.relu6", &y);
    let y = b.conv("block1.depthwise", &y, 24, 24, 5, 2, [1, 1, 2, 2], 24);
    let y = b.clip6("block1.depthwise.relu6", &y);
    let x = b.conv("block1.project", &y, 24, 16, 1, 1, [0, 0, 0, 0], 1);
    let x = b.conv("head", &x, 16, 32, 1, 1, [0, 0, 0, 0], 1);
    let x = b.clip6("head.relu6", &x);
    b.head(&x, 32);
    b.model("efficientnet-like")
}

/// A Clip that does not start at 0 (no activation the quantiser's range can do) between two
/// convs: it stays a float op, with its own QuantizeLinear after it (the second conv's ReLU
/// keeps the pooled features, hence the logits, away from 0).
fn clip_between() -> ModelProto {
    let mut b = Builder::new(13);
    let x = b.conv("c1", "input", 3, 8, 3, 1, [1, 1, 1, 1], 1);
    let lo = b.init("lo", &[], &[-1.0]);
    let hi = b.init("hi", &[], &[1.0]);
    let x = b.node("Clip", "clip", &[&x, &lo, &hi], vec![]);
    let x = b.conv("c2", &x, 8, 8, 3, 1, [1, 1, 1, 1], 1);
    let x = b.node("Relu", "relu", &[&x], vec![]);
    b.head(&x, 8);
    b.model("clip-between")
}

fn ops(m: &ModelProto) -> Vec<&str> {
    m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap()).collect()
}

fn count(m: &ModelProto, op: &str) -> usize {
    ops(m).iter().filter(|o| **o == op).count()
}

fn init<'m>(m: &'m ModelProto, name: &str) -> &'m TensorProto {
    m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn f32s(t: &TensorProto) -> Vec<f32> {
    t.raw_data.as_ref().unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn producer<'m>(m: &'m ModelProto, tensor: &str) -> &'m NodeProto {
    m.graph.as_ref().unwrap().node.iter().find(|n| n.output.iter().any(|o| o == tensor)).unwrap_or_else(|| panic!("nothing writes {tensor}"))
}

fn consumers<'m>(m: &'m ModelProto, tensor: &str) -> Vec<&'m NodeProto> {
    m.graph.as_ref().unwrap().node.iter().filter(|n| n.input.iter().any(|i| i == tensor)).collect()
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// Ranges that look like what calibration measures: `[0, 6]` after a ReLU6, `[0, 4]` after a
/// ReLU, `[-3, 5]` elsewhere.
fn synthetic_ranges(plan: &Plan) -> Ranges {
    plan.calibrated()
        .into_iter()
        .map(|t| {
            let r = if t.contains("relu6") { (0.0, 6.0) } else if t.contains("relu") { (0.0, 4.0) } else { (-3.0, 5.0) };
            (t, r)
        })
        .collect()
}

#[test]
fn plan_folds_relu_and_relu6_and_quantises_both_inputs_of_every_add() {
    let m = efficientnet_like();
    let plan = Plan::new(&m).unwrap();
    let counts = plan.counts();
    assert_eq!(counts["Conv"], 7);
    assert_eq!(counts["Clip (folded)"], 5, "{counts:?}");
    assert_eq!(counts["Add"], 1);
    assert_eq!((counts["GlobalAveragePool"], counts["Flatten"], counts["Gemm"]), (1, 1, 1));
    let tensors: HashMap<&str, _> = plan.tensors.iter().map(|(t, p)| (t.as_str(), p)).collect();
    // The residual Add without an activation: both inputs (the stem's ReLU6 output and the
    // projection) and its own output are quantised, each calibrated.
    for t in ["stem.relu6", "block0.project", "block0.add", "input", "head.relu6", "avgpool"] {
        assert!(tensors.contains_key(t), "{t} is not quantised: {:?}", plan.tensors);
    }
    // Flatten only moves data: it takes the pool's parameters.
    assert_eq!(tensors["flatten"], &sorbier_predict::quantize::plan::Params::SameAs("avgpool".into()));
    // The logits stay float32.
    assert!(!tensors.contains_key("logits"));

    let r = Plan::new(&resnet_like()).unwrap().counts();
    assert_eq!((r["Conv"], r["Relu (folded)"], r["Add"], r["MaxPool"]), (6, 5, 2, 1), "{r:?}");

    // A Clip that does not start at 0 is not folded; its output is quantised for the next conv.
    let p = Plan::new(&clip_between()).unwrap();
    assert!(!p.counts().contains_key("Clip (folded)") && p.counts()["Relu (folded)"] == 1, "{:?}", p.counts());
    assert!(p.calibrated().contains(&"clip".to_string()) && p.calibrated().contains(&"c1".to_string()));
}

#[test]
fn rewrite_writes_per_channel_weights_int32_biases_and_keeps_conv_attributes() {
    let m = efficientnet_like();
    let plan = Plan::new(&m).unwrap();
    let q = rewrite(&m, &plan, &synthetic_ranges(&plan), ActivationType::Uint8).unwrap();
    assert_eq!(count(&q, "Clip") + count(&q, "Relu"), 0, "activations folded: {:?}", ops(&q));
    assert_eq!(count(&q, "Conv"), 7);
    let dq_count = count(&q, "DequantizeLinear");
    assert_eq!(count(&q, "QuantizeLinear"), plan.tensors.len());
    assert_eq!(dq_count, plan.tensors.len() + 7 * 2 + 2, "a DQ per activation, per conv weight and bias, and the fc's two");
    let g = q.graph.as_ref().unwrap();
    for conv in g.node.iter().filter(|n| n.op_type.as_deref() == Some("Conv")) {
        let name = conv.name.as_deref().unwrap();
        let original = m.graph.as_ref().unwrap().node.iter().find(|n| n.name.as_deref() == Some(name)).unwrap();
        for a in ["group", "pads", "strides", "kernel_shape"] {
            assert_eq!(attr(conv, a), attr(original, a), "{name}: {a} kept");
        }
        let [x, w, bias] = [&conv.input[0], &conv.input[1], &conv.input[2]];
        let (xdq, wdq, bdq) = (producer(&q, x), producer(&q, w), producer(&q, bias));
        assert!([xdq, wdq, bdq].iter().all(|n| n.op_type.as_deref() == Some("DequantizeLinear")), "{name}");
        assert_eq!(attr(wdq, "axis").and_then(|a| a.i), Some(0), "{name}: weight axis set explicitly");
        assert_eq!(attr(bdq, "axis").and_then(|a| a.i), Some(0), "{name}: bias axis set explicitly");
        let wq = init(&q, &wdq.input[0]);
        assert_eq!(wq.data_type, Some(DataType::Int8 as i32));
        assert_eq!(wq.dims, init(&m, &original.input[1]).dims);
        let codes: Vec<i8> = wq.raw_data.as_ref().unwrap().iter().map(|&b| b as i8).collect();
        assert!(codes.iter().all(|&c| c >= -127), "{name}: symmetric codes");
        let channels = wq.dims[0] as usize;
        assert!((0..channels).all(|c| codes.chunks(codes.len() / channels).nth(c).unwrap().iter().any(|&v| v.abs() == 127)), "{name}: every channel uses its full range");
        assert!(init(&q, &wdq.input[2]).raw_data.as_ref().unwrap().iter().all(|&b| b == 0), "{name}: weight zero points 0");
        let bq = init(&q, &bdq.input[0]);
        assert_eq!(bq.data_type, Some(DataType::Int32 as i32));
        let x_scale = f32s(init(&q, &xdq.input[1]))[0];
        let w_scales = f32s(init(&q, &wdq.input[1]));
        let b_scales = f32s(init(&q, &bdq.input[1]));
        assert_eq!(w_scales.len(), channels);
        for c in 0..channels {
            assert_eq!(b_scales[c], x_scale * w_scales[c], "{name}: bias scale of channel {c}");
        }
    }
    // Folded ReLU6: the conv now writes the Clip's output name, quantised from code 0 (uint8
    // zero point 0) with scale 6/255.
    let stem = producer(&q, "stem.relu6");
    assert_eq!(stem.op_type.as_deref(), Some("Conv"));
    let qn = consumers(&q, "stem.relu6");
    assert_eq!(qn.len(), 1);
    assert_eq!(qn[0].op_type.as_deref(), Some("QuantizeLinear"));
    assert_eq!(init(&q, &qn[0].input[2]).raw_data.as_deref(), Some(&[0u8][..]));
    assert!((f32s(init(&q, &qn[0].input[1]))[0] - 6.0 / 255.0).abs() < 1e-9);
    // The Add reads two dequantised inputs and its output is quantised (asymmetric: [-3, 5]).
    let add = producer(&q, "block0.add");
    assert!(add.input.iter().all(|i| producer(&q, i).op_type.as_deref() == Some("DequantizeLinear")), "{:?}", add.input);
    let after = consumers(&q, "block0.add");
    assert_eq!(after.len(), 1);
    assert_eq!(init(&q, &after[0].input[2]).raw_data.as_deref(), Some(&[96u8][..]), "zero point of [-3, 5]: 3/8 of 255");
    // Logits: written by the Gemm in float, no QuantizeLinear after it.
    assert_eq!(producer(&q, "logits").op_type.as_deref(), Some("Gemm"));
    assert!(consumers(&q, "logits").is_empty());
    // No float weight is left behind, nor the folded Clips' bounds: every initializer is read.
    assert!(g.initializer.iter().filter(|t| t.data_type == Some(DataType::Float as i32)).all(|t| t.dims.len() <= 1));
    assert!(g.initializer.iter().all(|t| !consumers(&q, t.name.as_deref().unwrap()).is_empty()), "unused initializers left");

    // int8 activations: the same graph with zero points at -128 for ReLU6 outputs.
    let s8 = rewrite(&m, &plan, &synthetic_ranges(&plan), ActivationType::Int8).unwrap();
    let qn = consumers(&s8, "stem.relu6");
    let zp = init(&s8, &qn[0].input[2]);
    assert_eq!((zp.data_type, zp.raw_data.as_deref()), (Some(DataType::Int8 as i32), Some(&[0x80u8][..])));
}

/// Seeded uniform inputs in [-2, 2).
fn batches(seed: u64, n: usize, batch: usize) -> Vec<Array4<f32>> {
    let mut rng = Rng(seed);
    (0..n).map(|_| Array4::from_shape_fn((batch, 3, SIZE, SIZE), |_| 2.0 * rng.next())).collect()
}

fn run(path: &Path, x: &Array4<f32>) -> Array2<f32> {
    let (mut session, _, _) = runtime().session(path, Device::Cpu, 1).unwrap();
    let out = session.run(ort::inputs!["input" => TensorRef::from_array_view(x.view()).unwrap()]).unwrap();
    out.get("logits").unwrap().try_extract_array::<f32>().unwrap().into_dimensionality().unwrap().to_owned()
}

#[test]
fn quantised_patterns_follow_float_and_fuse_into_int8_kernels() {
    let dir = tempfile::tempdir().unwrap();
    for (name, m) in [("resnet-like", resnet_like()), ("efficientnet-like", efficientnet_like()), ("clip-between", clip_between())] {
        let plan = Plan::new(&m).unwrap();
        let calibration = batches(1, 4, 8);
        let ranges = calibrate::measure(runtime(), &m, &plan.calibrated(), &Source::Tensors(&calibration), Method::Minmax, 99.999, 1).unwrap();
        let q = rewrite(&m, &plan, &ranges, ActivationType::Uint8).unwrap();
        let (fp, int8) = (dir.path().join(format!("{name}.onnx")), dir.path().join(format!("{name}.int8.onnx")));
        sorbier::export::write_model(&m, &fp).unwrap();
        sorbier::export::write_model(&q, &int8).unwrap();

        let fused = fusion::optimized(runtime(), &std::fs::read(&int8).unwrap()).unwrap();
        eprintln!("{name}: ONNX Runtime runs {}", fused.summary());
        fused.check(&plan.counts(), &Fusion::of(&m)).unwrap();
        assert_eq!(fused.int8_convs(), count(&m, "Conv"), "{:?}", fused.ops);
        assert_eq!(fused.float_convs(), 0, "{:?}", fused.ops);
        assert_eq!(fused.count("QLinearAdd"), count(&m, "Add"), "{:?}", fused.ops);
        assert_eq!(fused.count("QLinearGlobalAveragePool"), 1, "{:?}", fused.ops);

        let x = &batches(2, 1, 16)[0];
        let (a, b) = (run(&fp, x), run(&int8, x));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("{name}: int8 vs float32 max|diff| {diff:.4} = {:.4} of max|logit| {scale:.3}", diff / scale);
        assert!(scale > 0.1, "{name}: degenerate float outputs");
        assert!(diff <= TOL * scale, "{name}: int8 is {diff} from float32 (max|logit| {scale})");

        for check in onnx_check(&[&fp, &int8]) {
            assert_eq!(check["ok"], true, "{check}");
        }
    }
}

#[test]
fn a_graph_that_would_run_in_float_is_caught() {
    let m = resnet_like();
    let plan = Plan::new(&m).unwrap();
    // The float graph itself, presented as the quantised one.
    let float = fusion::optimized(runtime(), &prost::Message::encode_to_vec(&m)).unwrap();
    let err = float.check(&plan.counts(), &Fusion::of(&m)).unwrap_err().to_string();
    assert!(err.contains("did not fuse") && err.contains("6 quantised Conv but 0 int8"), "{err}");
    // A QDQ graph in which one conv reads its float weight: that conv stays float.
    let ranges = synthetic_ranges(&plan);
    let mut q = rewrite(&m, &plan, &ranges, ActivationType::Uint8).unwrap();
    let float_w = init(&m, "layer1.conv2.weight").clone();
    let g = q.graph.as_mut().unwrap();
    g.initializer.push(float_w);
    let conv = g.node.iter_mut().find(|n| n.name.as_deref() == Some("layer1.conv2")).unwrap();
    conv.input[1] = "layer1.conv2.weight".into();
    let one_float = fusion::optimized(runtime(), &prost::Message::encode_to_vec(&q)).unwrap();
    let err = one_float.check(&plan.counts(), &Fusion::of(&m)).unwrap_err().to_string();
    assert!(err.contains("5 int8 and 1 float"), "{err}");
}

#[test]
fn float16_and_already_quantised_graphs_are_refused() {
    let m = resnet_like();
    let plan = Plan::new(&m).unwrap();
    let q = rewrite(&m, &plan, &synthetic_ranges(&plan), ActivationType::Uint8).unwrap();
    let err = Plan::new(&q).unwrap_err().to_string();
    assert!(err.contains("already quantised"), "{err}");

    let mut half = m.clone();
    let g = half.graph.as_mut().unwrap();
    let w = g.initializer.iter_mut().find(|t| t.name.as_deref() == Some("conv1.weight")).unwrap();
    // Two bytes a value, as an fp16 export stores them (the values do not matter here).
    let n = f32s(w).len();
    w.data_type = Some(DataType::Float16 as i32);
    w.raw_data = Some(vec![0; 2 * n]);
    let err = Plan::new(&half).unwrap_err().to_string();
    assert!(err.contains("float16") && err.contains("without --fp16"), "{err}");

    // A range that calibration did not measure is an error naming the tensor, not a guess.
    let mut partial = synthetic_ranges(&plan);
    // (The Add's output carries the folded Relu's name.)
    assert!(partial.remove("layer1.relu").is_some());
    let err = format!("{:#}", rewrite(&m, &plan, &partial, ActivationType::Uint8).unwrap_err());
    assert!(err.contains("layer1.relu"), "{err}");
}

/// Quantises an exported model with synthetic ranges and checks what ONNX Runtime's optimiser
/// makes of it: each conv a QLinearConv, each Add a QLinearAdd, no float conv left.
fn assert_fuses_completely(m: &ModelProto, arch: sorbier::arch::Arch) -> Plan {
    let plan = Plan::new(m).unwrap();
    let q = rewrite(m, &plan, &synthetic_ranges(&plan), ActivationType::Uint8).unwrap();
    let fused = fusion::optimized(runtime(), &prost::Message::encode_to_vec(&q)).unwrap();
    fused.check(&plan.counts(), &Fusion::of(m)).unwrap();
    assert_eq!((fused.int8_convs(), fused.float_convs()), (count(m, "Conv"), 0), "{arch}: {:?}", fused.ops);
    assert_eq!(fused.count("QLinearAdd"), count(m, "Add"), "{arch}: {:?}", fused.ops);
    plan
}

/// Every depth the exporter writes (basic and bottleneck blocks, 1×1 downsamples) fuses
/// completely: each conv a QLinearConv, each Add a QLinearAdd, no float conv left.
#[test]
fn every_exported_resnet_fuses_completely() {
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<String> = (0..CLASSES).map(|i| format!("c{i}")).collect();
    for arch in sorbier::arch::Arch::RESNETS {
        let path = dir.path().join(format!("{}.onnx", arch.name()));
        make_arch_model(&path, arch, &classes, 32, 5, false);
        let m = sorbier::export::read_model(&path).unwrap();
        let plan = assert_fuses_completely(&m, arch);
        assert_eq!(plan.counts()["Relu (folded)"], count(&m, "Relu"), "{arch}: every ReLU folded");
    }
}

/// EfficientNet-Lite (depthwise convs, ReLU6 as Clip, identity-shortcut Adds, no activation
/// after the projection conv) fuses completely too: every conv int8, every Add a QLinearAdd,
/// every Clip folded into the conv before it.
#[test]
fn exported_efficientnet_lite_fuses_completely() {
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<String> = (0..CLASSES).map(|i| format!("c{i}")).collect();
    for arch in [sorbier::arch::Arch::EfficientnetLite0, sorbier::arch::Arch::EfficientnetLite2] {
        let path = dir.path().join(format!("{}.onnx", arch.name()));
        make_arch_model(&path, arch, &classes, 32, 5, false);
        let m = sorbier::export::read_model(&path).unwrap();
        assert!(count(&m, "Clip") > 0 && count(&m, "Relu") == 0, "{arch}: ReLU6 is exported as Clip");
        let plan = assert_fuses_completely(&m, arch);
        assert_eq!(plan.counts().get("Clip (folded)").copied().unwrap_or(0), count(&m, "Clip"), "{arch}: every Clip folded: {:?}", plan.counts());
    }
}
