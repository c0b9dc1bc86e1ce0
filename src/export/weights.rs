//! A checkpoint's tensors as the exporter sees them: read from safetensors (PyTorch state-dict
//! names), converted to f32, and checked against the architecture the way PyTorch's
//! `load_state_dict(strict=True)` does — every missing, unexpected and wrongly shaped tensor
//! is listed, not just the first.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::arch::NetSpec;

/// One dense tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("tensor of shape {shape:?} needs {n} values, got {}", data.len());
        }
        Ok(Tensor { shape, data })
    }
}

/// Tensors by PyTorch name (`layer1.0.conv1.weight`, `fc.bias`, …).
pub type StateDict = BTreeMap<String, Tensor>;

/// BatchNorm's step counter: saved by PyTorch, meaningless for inference.
fn is_ignored(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// Reads a safetensors file into a [`StateDict`]. Floating-point tensors (f32, f16, bf16, f64)
/// become f32; `*.num_batches_tracked` entries are skipped; any other non-float tensor is an
/// error naming it.
pub fn load_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut out = StateDict::new();
    for (name, view) in st.iter() {
        if is_ignored(name) {
            continue;
        }
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            other => bail!("{}: tensor {name} has dtype {other:?}, expected a floating-point type", path.display()),
        };
        let tensor = Tensor::new(view.shape().to_vec(), data).with_context(|| format!("{}: tensor {name}", path.display()))?;
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

/// How many names of a long list an error message shows.
const LIST_LIMIT: usize = 12;

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(LIST_LIMIT).map(String::as_str).collect();
    let more = names.len().saturating_sub(LIST_LIMIT);
    if more > 0 {
        format!("{}, … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Checks that `weights` holds exactly the tensors of `spec` with the right shapes.
/// The error lists missing keys, unexpected keys and size mismatches, like PyTorch's strict
/// `load_state_dict`, and says which architecture and class count were expected.
pub fn check_state_dict(spec: &NetSpec, weights: &StateDict) -> Result<()> {
    let expected = spec.tensors();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, shape) in &expected {
        match weights.get(name) {
            None => missing.push(name.clone()),
            Some(t) if &t.shape != shape => {
                mismatched.push(format!("{name}: checkpoint has {:?}, model expects {:?}", t.shape, shape))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unexpected: Vec<String> =
        weights.keys().filter(|k| !known.contains(k.as_str()) && !is_ignored(k)).cloned().collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "checkpoint does not match {} with {} classes:",
        spec.arch, spec.num_classes
    );
    if !mismatched.is_empty() {
        msg += &format!("\n  size mismatch ({}): {}", mismatched.len(), list(&mismatched));
    }
    if !missing.is_empty() {
        msg += &format!("\n  missing ({}): {}", missing.len(), list(&missing));
    }
    if !unexpected.is_empty() {
        msg += &format!("\n  unexpected ({}): {}", unexpected.len(), list(&unexpected));
    }
    bail!(msg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::Arch;

    /// Every tensor of `spec`, each filled with `value`.
    pub(crate) fn filled(spec: &NetSpec, value: f32) -> StateDict {
        spec.tensors()
            .into_iter()
            .map(|(n, s)| {
                let len = s.iter().product();
                (n, Tensor { shape: s, data: vec![value; len] })
            })
            .collect()
    }

    #[test]
    fn complete_state_dict_passes_and_ignores_step_counter() {
        let spec = Arch::Resnet18.spec(3);
        let mut w = filled(&spec, 0.0);
        w.insert("bn1.num_batches_tracked".into(), Tensor { shape: vec![], data: vec![0.0] });
        check_state_dict(&spec, &w).unwrap();
    }

    #[test]
    fn mismatches_are_all_listed() {
        let spec = Arch::Resnet18.spec(3);
        let mut w = filled(&spec, 0.0);
        w.remove("layer2.0.downsample.1.running_var");
        w.insert("fc.weight".into(), Tensor { shape: vec![5, 512], data: vec![0.0; 5 * 512] });
        w.insert("head.weight".into(), Tensor { shape: vec![1], data: vec![0.0] });
        let err = format!("{:#}", check_state_dict(&spec, &w).unwrap_err());
        assert!(err.contains("resnet18 with 3 classes"), "{err}");
        assert!(err.contains("fc.weight: checkpoint has [5, 512], model expects [3, 512]"), "{err}");
        assert!(err.contains("missing (1): layer2.0.downsample.1.running_var"), "{err}");
        assert!(err.contains("unexpected (1): head.weight"), "{err}");
    }

    #[test]
    fn long_lists_are_truncated() {
        let spec = Arch::Resnet50.spec(3);
        let err = format!("{:#}", check_state_dict(&spec, &StateDict::new()).unwrap_err());
        let n = spec.tensors().len();
        assert!(err.contains(&format!("missing ({n})")), "{err}");
        assert!(err.contains(&format!("and {} more", n - LIST_LIMIT)), "{err}");
    }

    #[test]
    fn loads_safetensors_of_several_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = [half::f16::from_f32(0.25)].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i64s: Vec<u8> = 7i64.to_le_bytes().to_vec();
        let views = vec![
            ("a.weight", safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &f32s).unwrap()),
            ("b.bias", safetensors::tensor::TensorView::new(Dtype::F16, vec![1], &f16s).unwrap()),
            ("bn.num_batches_tracked", safetensors::tensor::TensorView::new(Dtype::I64, vec![], &i64s).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let sd = load_state_dict(&path).unwrap();
        assert_eq!(sd.len(), 2);
        assert_eq!(sd["a.weight"], Tensor { shape: vec![2], data: vec![1.5, -2.0] });
        assert_eq!(sd["b.bias"].data, vec![0.25]);

        let bad = vec![("c", safetensors::tensor::TensorView::new(Dtype::I64, vec![], &i64s).unwrap())];
        safetensors::serialize_to_file(bad, None, &path).unwrap();
        let err = format!("{:#}", load_state_dict(&path).unwrap_err());
        assert!(err.contains("tensor c has dtype I64"), "{err}");
    }
}
