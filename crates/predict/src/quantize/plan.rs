//! What to quantise in a float32 ONNX graph, decided from the graph alone (no architecture
//! names), so that every graph the exporter writes — ResNets today, EfficientNet-Lite's
//! depthwise convolutions, asymmetric pads and ReLU6 tomorrow — is handled by the same rules:
//!
//! - **compute nodes** get int8 inputs and outputs: `Conv` (any `group`, any `pads`), `Gemm`
//!   and `MatMul` with a constant weight, `Add` of two activations, `GlobalAveragePool`,
//!   `AveragePool`; ONNX Runtime fuses each `DequantizeLinear → op → QuantizeLinear` group into
//!   its int8 kernel (QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, …);
//! - **activations** `Relu` and `Clip(min = 0, max)` right after a compute node whose output
//!   nothing else reads are folded into that node's output range (the quantiser's saturation
//!   clips, see [`super::params`]), so the int8 kernel runs without a float op between;
//! - **data-movement nodes** (`MaxPool`, `Flatten`, `Reshape`, `Transpose`, `Squeeze`,
//!   `Unsqueeze`) take their input's scale and zero point for their output, so ONNX Runtime runs
//!   them on int8 data and drops the Q/DQ pair around them;
//! - a `Gemm`/`MatMul` output that only float nodes (or the graph output) read stays float32:
//!   the logits keep full precision and ONNX Runtime's QGemm writes float directly.
//!
//! This follows the QDQ layout of ONNX Runtime's `quantize_static` (QDQ on every input and
//! output of a quantisable op, weights per channel, removable activations removed), written
//! from the graph rather than from its Python operator registry.
use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Result};
use sorbier::onnx::tensor_proto::DataType;
use sorbier::onnx::{GraphProto, ModelProto, TensorProto};

use sorbier::onnx::helpers::{get_float, get_int, constant_value, has_attr, is_float, scalar};

/// How a quantised node is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A constant weight (`input[1]`), quantised per channel along `axis`, and an optional
    /// constant bias (`input[2]`, int32).
    Weighted { axis: usize },
    /// Every input an activation (`Add`).
    Binary,
    /// One activation in, one out (`GlobalAveragePool`, `AveragePool`).
    Pool,
    /// Data movement: the output takes the input's parameters.
    PassThrough,
}

/// Where a quantised tensor's scale and zero point come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Params {
    /// From its range over the calibration images.
    Calibrated,
    /// The same as another tensor's (a data-movement node's input).
    SameAs(String),
}

/// One node the quantised graph runs in int8.
#[derive(Clone, Debug, PartialEq)]
pub struct QNode {
    /// Index in the float graph's node list.
    pub index: usize,
    pub op: String,
    pub role: Role,
    /// The name of its (first) output in the quantised graph: the folded activation's output
    /// when there is one, else its own.
    pub output: String,
    /// The activation folded into it (`Relu` or `Clip`).
    pub folded: Option<String>,
}

/// The decisions for one graph.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Quantised nodes, in graph order.
    pub nodes: Vec<QNode>,
    /// Indices of the activation nodes folded away.
    pub removed: HashSet<usize>,
    /// Float tensors that get a QuantizeLinear → DequantizeLinear pair, in the order they were
    /// reached, with where their parameters come from.
    pub tensors: Vec<(String, Params)>,
}

/// Ops that already mean a quantised graph.
const QUANTISED_OPS: [&str; 8] =
    ["QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "DynamicQuantizeLinear"];

/// Refuses graphs the quantiser cannot start from: float16 (or other non-float32) weights, and
/// graphs already quantised.
pub fn check_float32(model: &ModelProto) -> Result<&GraphProto> {
    let Some(g) = &model.graph else { bail!("the model has no graph") };
    let opset = model.opset_import.iter().find(|o| o.domain.as_deref().is_none_or(|d| d.is_empty() || d == "ai.onnx")).and_then(|o| o.version);
    if opset.is_none_or(|v| v < 13) {
        bail!("the model's opset is {opset:?}; per-channel QuantizeLinear/DequantizeLinear need opset 13 or later");
    }
    if let Some(n) = g.node.iter().find(|n| QUANTISED_OPS.contains(&n.op_type.as_deref().unwrap_or(""))) {
        bail!("the model is already quantised (it has a {} node); quantise its float32 parent", n.op_type.as_deref().unwrap_or(""));
    }
    let half = [DataType::Float16 as i32, DataType::Bfloat16 as i32];
    let casts_to_half = g.node.iter().any(|n| n.op_type.as_deref() == Some("Cast") && half.contains(&(get_int(n, "to", 0) as i32)));
    if casts_to_half || g.initializer.iter().any(|t| t.data_type.is_some_and(|d| half.contains(&d))) {
        bail!(
            "this is a float16 model: int8 quantisation starts from float32 weights (the rounding to float16 would be \
             quantised again). Quantise the float32 export instead (`trainer export` without --fp16)"
        );
    }
    Ok(g)
}

/// Producers, consumers and constants of a graph.
pub struct Index<'g> {
    pub graph: &'g GraphProto,
    pub initializers: HashMap<&'g str, &'g TensorProto>,
    /// Outputs of `Constant` nodes.
    pub constants: HashMap<&'g str, &'g TensorProto>,
    pub producer: HashMap<&'g str, usize>,
    pub consumers: HashMap<&'g str, Vec<usize>>,
    pub outputs: HashSet<&'g str>,
}

impl<'g> Index<'g> {
    pub fn new(graph: &'g GraphProto) -> Index<'g> {
        let mut ix = Index {
            graph,
            initializers: graph.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect(),
            constants: HashMap::new(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            outputs: graph.output.iter().filter_map(|o| o.name.as_deref()).collect(),
        };
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                ix.producer.insert(o.as_str(), i);
                if let Some(t) = constant_value(n) {
                    ix.constants.insert(o.as_str(), t);
                }
            }
            for x in n.input.iter().filter(|x| !x.is_empty()) {
                ix.consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        ix
    }

    /// An initializer or a `Constant` node's value.
    pub fn constant(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).or_else(|| self.constants.get(name)).copied()
    }

    fn float_constant(&self, name: &str) -> Option<&'g TensorProto> {
        self.constant(name).filter(|t| is_float(t))
    }

    fn consumers_of(&self, name: &str) -> &[usize] {
        self.consumers.get(name).map_or(&[], Vec::as_slice)
    }

    /// How node `i` is quantised, if it is (before looking at its neighbours).
    pub fn role(&self, i: usize) -> Option<Role> {
        let n = &self.graph.node[i];
        if n.domain.as_deref().is_some_and(|d| !d.is_empty() && d != "ai.onnx") || n.output.len() != 1 {
            return None;
        }
        let input = |k: usize| n.input.get(k).map(String::as_str).filter(|x| !x.is_empty());
        let activation = |k: usize| input(k).is_some_and(|x| self.constant(x).is_none());
        let weight_rank = |k: usize| input(k).and_then(|x| self.float_constant(x)).map(|t| t.dims.len());
        // A bias must be a 1-D float constant with one value per weight channel.
        let bias_ok = |k: usize, channels: Option<i64>| match input(k) {
            None => true,
            Some(b) => self.float_constant(b).is_some_and(|t| t.dims.len() == 1 && Some(t.dims[0]) == channels),
        };
        let w_dim = |k: usize, axis: usize| input(k).and_then(|x| self.float_constant(x)).and_then(|t| t.dims.get(axis).copied());
        match n.op_type.as_deref()? {
            "Conv" if activation(0) && weight_rank(1).is_some_and(|r| r >= 3) && bias_ok(2, w_dim(1, 0)) => Some(Role::Weighted { axis: 0 }),
            "Gemm" if activation(0) && weight_rank(1) == Some(2) => {
                let plain = get_int(n, "transA", 0) == 0 && get_float(n, "alpha", 1.0) == 1.0 && get_float(n, "beta", 1.0) == 1.0;
                let axis = if get_int(n, "transB", 0) == 1 { 0 } else { 1 };
                (plain && bias_ok(2, w_dim(1, axis))).then_some(Role::Weighted { axis })
            }
            "MatMul" if activation(0) && weight_rank(1) == Some(2) => Some(Role::Weighted { axis: 1 }),
            "Add" if n.input.len() == 2 && activation(0) && activation(1) => Some(Role::Binary),
            "GlobalAveragePool" | "AveragePool" if activation(0) => Some(Role::Pool),
            "MaxPool" | "Flatten" | "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" if activation(0) => Some(Role::PassThrough),
            _ => None,
        }
    }

    /// For `Relu` or `Clip(min = 0, max)` node `i`: the activation's name. A `Clip` whose lower
    /// bound is not 0 (or is unknown) is not a foldable activation.
    fn foldable_activation(&self, i: usize) -> Option<&'static str> {
        let n = &self.graph.node[i];
        match n.op_type.as_deref()? {
            "Relu" => Some("Relu"),
            "Clip" => {
                // Opset ≥ 11: bounds are inputs (constants here); before: attributes.
                let min = match n.input.get(1).filter(|x| !x.is_empty()) {
                    Some(x) => self.float_constant(x).and_then(|t| scalar(t).ok()),
                    None if has_attr(n, "min") => Some(get_float(n, "min", f32::MIN)),
                    None => None,
                };
                let max_known = match n.input.get(2).filter(|x| !x.is_empty()) {
                    Some(x) => self.float_constant(x).and_then(|t| scalar(t).ok()).is_some_and(|m| m >= 0.0),
                    None => true,
                };
                (min == Some(0.0) && max_known).then_some("Clip")
            }
            _ => None,
        }
    }
}

impl Plan {
    /// Decides what to quantise in `model` (see the module header).
    pub fn new(model: &ModelProto) -> Result<Plan> {
        let g = check_float32(model)?;
        let ix = Index::new(g);
        let roles: Vec<Option<Role>> = (0..g.node.len()).map(|i| ix.role(i)).collect();

        // Activations folded into the compute node right before them.
        let mut folded: HashMap<usize, (usize, &'static str)> = HashMap::new();
        for (a, node) in g.node.iter().enumerate() {
            let Some(act) = ix.foldable_activation(a) else { continue };
            let Some(x) = node.input.first() else { continue };
            let Some(&p) = ix.producer.get(x.as_str()) else { continue };
            let computes = matches!(roles[p], Some(Role::Weighted { .. } | Role::Binary | Role::Pool));
            if computes && ix.consumers_of(x) == [a] && !ix.outputs.contains(x.as_str()) && node.output.len() == 1 {
                folded.insert(p, (a, act));
            }
        }

        let mut plan = Plan { removed: folded.values().map(|&(a, _)| a).collect(), ..Plan::default() };
        let mut marked: HashSet<String> = HashSet::new();
        let mark = |plan: &mut Plan, marked: &mut HashSet<String>, t: &str, params: Params| {
            if marked.insert(t.to_string()) {
                plan.tensors.push((t.to_string(), params));
            }
        };
        for (i, node) in g.node.iter().enumerate() {
            let Some(role) = roles[i] else { continue };
            let (output, fold) = match folded.get(&i) {
                Some(&(a, act)) => (g.node[a].output[0].clone(), Some(act.to_string())),
                None => (node.output[0].clone(), None),
            };
            let op = node.op_type.clone().unwrap_or_default();
            match role {
                Role::PassThrough => {
                    let x = &node.input[0];
                    if !marked.contains(x) {
                        continue;
                    }
                    mark(&mut plan, &mut marked, &output, Params::SameAs(x.clone()));
                }
                Role::Weighted { .. } | Role::Binary | Role::Pool => {
                    let activations: Vec<&String> = match role {
                        Role::Binary => node.input.iter().collect(),
                        _ => node.input.iter().take(1).collect(),
                    };
                    for x in activations {
                        // A data-movement node's output that is not marked yet (its input was
                        // float) is calibrated like any other activation.
                        mark(&mut plan, &mut marked, x, Params::Calibrated);
                    }
                    // A weighted node's float output is kept when only float nodes read it.
                    let feeds_int8 = ix.consumers_of(&node.output[0]).iter().any(|&c| roles[c].is_some());
                    let keep_float = matches!(role, Role::Weighted { .. }) && op != "Conv" && fold.is_none() && !feeds_int8;
                    if !keep_float {
                        mark(&mut plan, &mut marked, &output, Params::Calibrated);
                    }
                }
            }
            plan.nodes.push(QNode { index: i, op, role, output, folded: fold });
        }
        Ok(plan)
    }

    /// The tensors whose ranges calibration must measure (names of the float graph).
    pub fn calibrated(&self) -> Vec<String> {
        self.tensors.iter().filter(|(_, p)| *p == Params::Calibrated).map(|(t, _)| t.clone()).collect()
    }

    /// Quantised nodes by operator, with folded activations counted as `Relu (folded)` etc.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for n in &self.nodes {
            *c.entry(n.op.clone()).or_insert(0) += 1;
            if let Some(a) = &n.folded {
                *c.entry(format!("{a} (folded)")).or_insert(0) += 1;
            }
        }
        c
    }

    /// The quantised node that `node` (an index into the float graph) became, if any.
    pub fn node(&self, index: usize) -> Option<&QNode> {
        self.nodes.iter().find(|n| n.index == index)
    }
}
