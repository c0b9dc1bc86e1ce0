//! Writes the QDQ graph that a [`Plan`] and the calibrated ranges describe: every quantised
//! activation `t` becomes `QuantizeLinear(t) → DequantizeLinear` (read by all of `t`'s
//! consumers), every weight an int8 initializer behind a per-channel `DequantizeLinear` (axis
//! set explicitly), every bias an int32 initializer with scale `x_scale · w_scale[c]`; scales
//! and zero points are initializers, which is what ONNX Runtime needs to fuse each group into
//! an int8 kernel. Folded activations disappear, their output name now produced by the node
//! they were folded into. Names, node order and everything not quantised are kept.
use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use sorbier::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};

use super::params::{self, ActivationType, Affine};
use super::plan::{check_float32, Index, Params, Plan, QNode, Role};
use sorbier::onnx::helpers::{dims, f32_tensor, floats, i32_tensor, i8_tensor, int_attribute, u8_tensor};

/// Observed `[min, max]` of each calibrated tensor, by name.
pub type Ranges = HashMap<String, (f32, f32)>;

/// Tensor names in use, so that new ones never collide.
struct Names(HashSet<String>);

impl Names {
    fn of(g: &GraphProto) -> Names {
        let mut used: HashSet<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
        used.extend(g.input.iter().chain(&g.output).chain(&g.value_info).filter_map(|v| v.name.clone()));
        for n in &g.node {
            used.extend(n.input.iter().chain(&n.output).cloned());
            used.extend(n.name.clone());
        }
        Names(used)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// A quantised activation's parameters and the initializers holding them.
#[derive(Clone, Debug)]
struct Activation {
    affine: Affine,
    scale: String,
    zero_point: String,
}

/// The nodes and initializers of the graph being written, and the names in use.
struct Writer {
    names: Names,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Writer {
    /// `QuantizeLinear(source) → DequantizeLinear → out` with `t`'s parameters.
    fn qdq(&mut self, t: &str, a: &Activation, source: &str, out: &str) {
        let q = self.names.fresh(&format!("{t}_quantized"));
        let (qn, dqn) = (self.names.fresh(&format!("{t}_QuantizeLinear")), self.names.fresh(&format!("{t}_DequantizeLinear")));
        self.nodes.push(node("QuantizeLinear", qn, [source, &a.scale, &a.zero_point], &q, None));
        self.nodes.push(node("DequantizeLinear", dqn, [&q, &a.scale, &a.zero_point], out, None));
    }

    /// An integer constant replacing the float one named `base`, behind a `DequantizeLinear`
    /// along `axis` with one scale per channel and zero points 0; `codes` and `zeros` make the
    /// integer tensors under the names given. Returns the dequantised tensor's name.
    fn constant(&mut self, base: &str, axis: usize, scales: &[f32], codes: impl FnOnce(&str) -> TensorProto, zeros: impl FnOnce(&str, usize) -> TensorProto) -> String {
        let [q, s, z, d, n] = ["quantized", "scale", "zero_point", "dequantized", "DequantizeLinear"].map(|suffix| self.names.fresh(&format!("{base}_{suffix}")));
        self.inits.push(codes(&q));
        self.inits.push(f32_tensor(&s, &[scales.len()], scales));
        self.inits.push(zeros(&z, scales.len()));
        self.nodes.push(node("DequantizeLinear", n, [&q, &s, &z], &d, Some(axis as i64)));
        d
    }
}

fn node(op: &str, name: String, inputs: [&str; 3], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        name: Some(name),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: axis.map(|a| int_attribute("axis", a)).into_iter().collect(),
        ..Default::default()
    }
}

/// The QDQ graph of `model` (see the module header); `ranges` must hold every tensor of
/// [`Plan::calibrated`].
pub fn rewrite(model: &ModelProto, plan: &Plan, ranges: &Ranges, ty: ActivationType) -> Result<ModelProto> {
    let g = check_float32(model)?;
    let ix = Index::new(g);
    let mut w = Writer { names: Names::of(g), nodes: Vec::new(), inits: Vec::new() };

    let act = activations(&mut w, plan, ranges, ty)?;

    // Float tensor → the DequantizeLinear output its consumers read instead.
    let mut dequantized: HashMap<String, String> = HashMap::new();
    for input in g.input.iter().filter_map(|v| v.name.as_deref()) {
        if let Some(a) = act.get(input) {
            let d = w.names.fresh(&format!("{input}_dequantized"));
            w.qdq(input, a, input, &d);
            dequantized.insert(input.to_string(), d);
        }
    }
    let planned: HashMap<usize, &QNode> = plan.nodes.iter().map(|n| (n.index, n)).collect();
    for (i, original) in g.node.iter().enumerate() {
        if plan.removed.contains(&i) {
            continue;
        }
        let mut n = original.clone();
        let planned = planned.get(&i);
        if let Some(p) = planned {
            n.output[0] = p.output.clone();
        }
        for x in n.input.iter_mut() {
            if let Some(d) = dequantized.get(x) {
                *x = d.clone();
            }
        }
        if let Some(QNode { role: Role::Weighted { axis }, .. }) = planned {
            let what = || format!("{} node {}", original.op_type.as_deref().unwrap_or("?"), original.name.as_deref().unwrap_or("?"));
            let x = &original.input[0];
            let x_scale = act.get(x).with_context(|| format!("{}: input {x} is not quantised", what()))?.affine.scale;
            let w_name = &original.input[1];
            let weight = ix.constant(w_name).with_context(|| format!("{}: weight {w_name} is not a constant", what()))?;
            let w_dims = dims(weight)?;
            let bias = match original.input.get(2).filter(|b| !b.is_empty()) {
                Some(b) => Some((b, floats(ix.constant(b).with_context(|| format!("{}: bias {b} is not a constant", what()))?)?)),
                None => None,
            };
            let floor = bias.as_ref().map(|(_, b)| params::bias_floor(b, x_scale));
            let cw = params::weights_per_channel(&floats(weight)?, &w_dims, *axis, floor.as_deref()).with_context(what)?;
            n.input[1] = w.constant(w_name, *axis, &cw.scales, |q| i8_tensor(q, &w_dims, &cw.codes), |z, c| i8_tensor(z, &[c], &vec![0; c]));
            if let Some((b_name, b)) = bias {
                let (codes, scales) = params::bias(&b, x_scale, &cw.scales).with_context(what)?;
                n.input[2] = w.constant(b_name, 0, &scales, |q| i32_tensor(q, &[codes.len()], &codes), |z, c| i32_tensor(z, &[c], &vec![0; c]));
            }
        }
        // Outputs to quantise: a planned node's, or a float node's that a quantised node reads.
        let mut after = Vec::new();
        for out in n.output.iter_mut().filter(|o| act.contains_key(o.as_str())) {
            let t = out.clone();
            if ix.outputs.contains(t.as_str()) {
                // A graph output keeps its name: the node writes a float tensor beside it, and
                // the DequantizeLinear writes the output.
                let pre = w.names.fresh(&format!("{t}_float"));
                *out = pre.clone();
                after.push((t.clone(), pre, t));
            } else {
                let d = w.names.fresh(&format!("{t}_dequantized"));
                dequantized.insert(t.clone(), d.clone());
                after.push((t.clone(), t, d));
            }
        }
        w.nodes.push(n);
        for (t, source, out) in after {
            w.qdq(&t, &act[&t], &source, &out);
        }
    }

    Ok(ModelProto { graph: Some(pruned(g, &ix, w)), ..model.clone() })
}

/// The scale and zero point of every planned activation: new initializers for the calibrated
/// ones, shared for those that must match another tensor's.
fn activations(w: &mut Writer, plan: &Plan, ranges: &Ranges, ty: ActivationType) -> Result<HashMap<String, Activation>> {
    let mut act: HashMap<String, Activation> = HashMap::new();
    for (t, how) in &plan.tensors {
        let a = match how {
            Params::Calibrated => {
                let &(lo, hi) = ranges.get(t).with_context(|| format!("no calibrated range for tensor {t}"))?;
                let affine = params::activation(lo, hi, ty).with_context(|| format!("tensor {t}"))?;
                let (scale, zero_point) = (w.names.fresh(&format!("{t}_scale")), w.names.fresh(&format!("{t}_zero_point")));
                w.inits.push(f32_tensor(&scale, &[], &[affine.scale]));
                w.inits.push(match ty {
                    ActivationType::Uint8 => u8_tensor(&zero_point, &[], &[affine.zero_point as u8]),
                    ActivationType::Int8 => i8_tensor(&zero_point, &[], &[affine.zero_point as i8]),
                });
                Activation { affine, scale, zero_point }
            }
            Params::SameAs(s) => act.get(s).with_context(|| format!("tensor {t} follows {s}, which is not quantised"))?.clone(),
        };
        act.insert(t.clone(), a);
    }
    Ok(act)
}

/// `g` with the rewritten nodes, less what nothing reads any more: quantised float weights,
/// the bounds of folded Clips, Constant nodes that held either (ONNX Runtime would warn about
/// each).
fn pruned(g: &GraphProto, ix: &Index, mut w: Writer) -> GraphProto {
    let reads = |nodes: &[NodeProto]| -> HashSet<String> {
        nodes.iter().flat_map(|n| n.input.iter().cloned()).chain(ix.outputs.iter().map(|s| s.to_string())).collect()
    };
    let read = reads(&w.nodes);
    w.nodes.retain(|n| !(n.op_type.as_deref() == Some("Constant") && n.output.iter().all(|o| !read.contains(o))));
    let read = reads(&w.nodes);
    let unread = |name: &str| !read.contains(name);
    let mut graph = g.clone();
    graph.initializer = g.initializer.iter().chain(&w.inits).filter(|t| !unread(t.name.as_deref().unwrap_or(""))).cloned().collect();
    let initializers: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    graph.input.retain(|v| v.name.as_deref().is_none_or(|n| !initializers.contains(n) || !unread(n)));
    let produced: HashSet<&str> = w.nodes.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    graph.value_info.retain(|v| produced.contains(v.name.as_deref().unwrap_or("")));
    graph.node = w.nodes;
    graph
}
