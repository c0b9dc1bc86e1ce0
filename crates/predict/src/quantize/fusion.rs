//! Does ONNX Runtime run a QDQ model in int8? A QDQ graph is a float graph with quantise /
//! dequantise pairs: it only gets faster when the runtime's optimiser fuses each group into an
//! int8 kernel, which it silently skips when a pattern is off (a scale that is not an
//! initializer, a missing axis, a bias of the wrong type). So the model is opened the way the
//! predictor opens it (all optimisations), the optimised graph is saved
//! (`optimized_model_filepath`) and its operators are counted: every quantised `Conv` must have
//! become a `QLinearConv` (or `ConvInteger`), and no float convolution may remain for them.
use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::engine::runtime::Runtime;

/// Operators of the graph ONNX Runtime actually runs, by type (domain dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fusion {
    pub ops: BTreeMap<String, usize>,
}

/// Float convolution kernels ONNX Runtime may leave behind (its fused and NCHWc forms too).
const FLOAT_CONVS: [&str; 3] = ["Conv", "FusedConv", "NchwcConv"];
/// Int8 convolution kernels.
const INT8_CONVS: [&str; 2] = ["QLinearConv", "ConvInteger"];

impl Fusion {
    /// Counts the operators of an ONNX graph.
    pub fn of(model: &sorbier::onnx::ModelProto) -> Fusion {
        let mut ops = BTreeMap::new();
        for n in model.graph.iter().flat_map(|g| &g.node) {
            *ops.entry(n.op_type.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        Fusion { ops }
    }

    pub fn count(&self, op: &str) -> usize {
        self.ops.get(op).copied().unwrap_or(0)
    }

    fn sum(&self, ops: &[&str]) -> usize {
        ops.iter().map(|o| self.count(o)).sum()
    }

    pub fn int8_convs(&self) -> usize {
        self.sum(&INT8_CONVS)
    }

    pub fn float_convs(&self) -> usize {
        self.sum(&FLOAT_CONVS)
    }

    /// E.g. `20 QLinearConv, 8 QLinearAdd, 1 QGemm, 0 float Conv`.
    pub fn summary(&self) -> String {
        let shown: Vec<String> = self.ops.iter().filter(|(op, _)| op.starts_with('Q') && op.as_str() != "QuantizeLinear").map(|(op, n)| format!("{n} {op}")).collect();
        format!("{}, {} float Conv", if shown.is_empty() { "no int8 kernels".to_string() } else { shown.join(", ") }, self.float_convs())
    }

    /// Refuses a fusion that left quantised nodes in float: `planned` counts the quantised
    /// nodes by operator ([`super::plan::Plan::counts`]) and `float_model` the operators of
    /// the float graph (convolutions the plan did not quantise may stay float).
    pub fn check(&self, planned: &BTreeMap<String, usize>, float_model: &Fusion) -> Result<()> {
        let want = |op: &str| planned.get(op).copied().unwrap_or(0);
        let convs = want("Conv");
        let left_float = float_model.count("Conv") - convs.min(float_model.count("Conv"));
        let mut missing = Vec::new();
        if self.int8_convs() < convs || self.float_convs() > left_float {
            missing.push(format!("{convs} quantised Conv but {} int8 and {} float convolutions ran", self.int8_convs(), self.float_convs()));
        }
        for (op, kernels) in [("Add", &["QLinearAdd"][..]), ("Gemm", &["QGemm", "QLinearMatMul", "MatMulInteger"][..]), ("MatMul", &["QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QGemm"][..])] {
            if want(op) > 0 && self.sum(kernels) < want(op) {
                missing.push(format!("{} quantised {op} but {} {}", want(op), self.sum(kernels), kernels.join("/")));
            }
        }
        if want("GlobalAveragePool") > self.count("QLinearGlobalAveragePool") {
            missing.push(format!("{} quantised GlobalAveragePool but {} QLinearGlobalAveragePool", want("GlobalAveragePool"), self.count("QLinearGlobalAveragePool")));
        }
        if !missing.is_empty() {
            bail!("ONNX Runtime did not fuse the QDQ graph into int8 kernels ({}); it runs {}", missing.join("; "), self.summary());
        }
        Ok(())
    }
}

/// The operators ONNX Runtime runs for the model in `bytes`, on the CPU with every graph
/// optimisation (as the predictor opens models).
pub fn optimized(rt: &Runtime, bytes: &[u8]) -> Result<Fusion> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("sorbier-optimized-{}-{stamp}.onnx", std::process::id()));
    let result = super::cpu_session(rt, bytes, 1, Some(&path)).and_then(|session| {
        drop(session);
        sorbier::export::read_model(&path)
    });
    let _ = std::fs::remove_file(&path);
    Ok(Fusion::of(&result?))
}
