//! `--save-logits FILE`: an ensemble's outputs kept as a safetensors file, so that models run
//! separately can be combined later without re-running them.
//!
//! Format (all tensors float32, row-major, `N` images × `C` classes):
//! - `mean` `[N, C]`: the weighted member average;
//! - `model_0`, `model_1`, … `[N, C]`: each member, averaged over its TTA variants;
//! - rows of images that could not be read are NaN.
//!
//! Header metadata (`__metadata__`, string → string, values JSON): `names` (image names, row
//! order), `classes` (class names, column order), `models` (paths), `weights`, `average`
//! (`"logits"`: values are raw logits; `"probs"`: softmax probabilities), `tta`.
//! With Python: `safetensors.numpy.load_file(f)` for the tensors and
//! `safetensors.safe_open(f, "np").metadata()` for the header.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::ensemble::{Average, Outputs};

/// A saved-logits file read back.
#[derive(Clone, Debug)]
pub struct SavedLogits {
    pub names: Vec<String>,
    pub classes: Vec<String>,
    pub models: Vec<String>,
    pub weights: Vec<f64>,
    pub average: String,
    /// `N × C`.
    pub mean: Array2<f32>,
    /// One `N × C` matrix per member.
    pub members: Vec<Array2<f32>>,
}

fn bytes(v: &Array2<f32>) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `out` (rows named `names`) to `path`, atomically.
pub fn save(path: &Path, names: &[String], out: &Outputs, models: &[String], weights: &[f64], tta: &str) -> Result<()> {
    let (n, c) = (names.len(), out.c());
    if out.mean.nrows() != n {
        bail!("{} rows of logits for {n} names", out.mean.nrows());
    }
    let mut buffers = vec![("mean".to_string(), bytes(&out.mean))];
    for (i, m) in out.members.iter().enumerate() {
        buffers.push((format!("model_{i}"), bytes(m)));
    }
    let mut views = Vec::new();
    for (name, buf) in &buffers {
        views.push((name.clone(), TensorView::new(Dtype::F32, vec![n, c], buf).context("building logits tensor")?));
    }
    let average = match out.average {
        Average::Logits => "logits",
        Average::Probs => "probs",
    };
    let meta: HashMap<String, String> = [
        ("names", serde_json::to_string(names)?),
        ("classes", serde_json::to_string(&out.classes)?),
        ("models", serde_json::to_string(models)?),
        ("weights", serde_json::to_string(weights)?),
        ("average", serde_json::to_string(average)?),
        ("tta", serde_json::to_string(tta)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let data = safetensors::serialize(views, Some(meta)).context("serialising logits")?;
    sorbier::run::write_atomic(path, &data).with_context(|| format!("cannot write logits {}", path.display()))
}

/// Reads a file written by [`save`].
pub fn load(path: &Path) -> Result<SavedLogits> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&data).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&data)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| -> Result<serde_json::Value> {
        let v = meta.get(k).with_context(|| format!("{}: no {k:?} in the header metadata", path.display()))?;
        serde_json::from_str(v).with_context(|| format!("{}: metadata {k} is not JSON", path.display()))
    };
    let tensor = |name: &str| -> Result<Array2<f32>> {
        let t = st.tensor(name).with_context(|| format!("{}: no tensor {name}", path.display()))?;
        if t.dtype() != Dtype::F32 || t.shape().len() != 2 {
            bail!("{}: tensor {name} is {:?} {:?}, expected a 2-D F32 matrix", path.display(), t.dtype(), t.shape());
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Array2::from_shape_vec((t.shape()[0], t.shape()[1]), values).with_context(|| format!("{}: tensor {name}", path.display()))
    };
    let models: Vec<String> = serde_json::from_value(field("models")?)?;
    let members = (0..models.len()).map(|i| tensor(&format!("model_{i}"))).collect::<Result<Vec<_>>>()?;
    Ok(SavedLogits {
        names: serde_json::from_value(field("names")?)?,
        classes: serde_json::from_value(field("classes")?)?,
        weights: serde_json::from_value(field("weights")?)?,
        average: serde_json::from_value(field("average")?)?,
        models,
        mean: tensor("mean")?,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.safetensors");
        let out = Outputs {
            classes: vec!["a".into(), "b".into()],
            mean: ndarray::array![[1.0, 2.0], [f32::NAN, f32::NAN]],
            members: vec![ndarray::array![[1.0, 2.0], [f32::NAN, f32::NAN]]],
            failed: vec![(1, "bad".into())],
            average: Average::Probs,
            images_per_s: 1.0,
        };
        save(&p, &["x.jpg".into(), "y.jpg".into()], &out, &["m.onnx".into()], &[1.0], "none").unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.names, vec!["x.jpg", "y.jpg"]);
        assert_eq!(back.classes, vec!["a", "b"]);
        assert_eq!(back.average, "probs");
        assert_eq!(back.mean.row(0).to_vec(), vec![1.0, 2.0]);
        assert!(back.mean[[1, 0]].is_nan());
        assert_eq!(back.members.len(), 1);
    }
}
