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
//! (`"logits"`: values are raw logits; `"probs"`: softmax probabilities), `tta`; and, in files
//! written since sharding exists (older files read without them): `model_sha256` (each model
//! file's hash, so a merge can tell different models from the same model on another path),
//! `skipped` (`[name, reason]` of each NaN row) and, for `predict --shard`, `shard`
//! ([`ShardInfo`]: which part of which image list the rows are).
//! With Python: `safetensors.numpy.load_file(f)` for the tensors and
//! `safetensors.safe_open(f, "np").metadata()` for the header.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::engine::ensemble::{Average, Outputs};
use crate::engine::tta::Tta;
use sorbier::spelling::Spelling;
use crate::output::shard::ShardInfo;

/// How the header spells the TTA of a blend whose inputs used different ones.
const MIXED: &str = "mixed";

/// The header's spelling of a [`SavedLogits::tta`].
pub fn tta_name(tta: Option<Tta>) -> String {
    tta.map_or_else(|| MIXED.to_string(), |t| t.to_string())
}

/// A saved-logits file read back.
#[derive(Clone, Debug)]
pub struct SavedLogits {
    pub names: Vec<String>,
    pub classes: Vec<String>,
    pub models: Vec<String>,
    pub weights: Vec<f64>,
    pub average: Average,
    /// The test-time augmentation the values were averaged over; `None` for a blend of runs
    /// that used different ones (`"mixed"` in the header).
    pub tta: Option<Tta>,
    /// One per model; empty in files written before the field existed.
    pub model_sha256: Vec<String>,
    /// `(image name, reason)` of the rows left NaN.
    pub skipped: Vec<(String, String)>,
    /// Set in the output of `predict --shard`.
    pub shard: Option<ShardInfo>,
    /// `N × C`.
    pub mean: Array2<f32>,
    /// One `N × C` matrix per member.
    pub members: Vec<Array2<f32>>,
}

/// What a saved-logits file says about where its values came from (besides the names and
/// classes its rows and columns carry).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    pub models: Vec<String>,
    pub weights: Vec<f64>,
    /// As [`SavedLogits::tta`].
    pub tta: Option<Tta>,
    pub model_sha256: Vec<String>,
    pub skipped: Vec<(String, String)>,
    pub shard: Option<ShardInfo>,
}

fn bytes(v: &Array2<f32>) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `out` (rows named `names`) to `path`, atomically, with the basic header only.
pub fn save(path: &Path, names: &[String], out: &Outputs, models: &[String], weights: &[f64], tta: Tta) -> Result<()> {
    let p = Provenance { models: models.to_vec(), weights: weights.to_vec(), tta: Some(tta), ..Provenance::default() };
    write(path, names, out, &p)
}

/// Writes `out` (rows named `names`) to `path`, atomically, with the full header.
pub fn write(path: &Path, names: &[String], out: &Outputs, p: &Provenance) -> Result<()> {
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
    let mut meta: HashMap<String, String> = [
        ("names", serde_json::to_string(names)?),
        ("classes", serde_json::to_string(&out.classes)?),
        ("models", serde_json::to_string(&p.models)?),
        ("weights", serde_json::to_string(&p.weights)?),
        ("average", serde_json::to_string(&out.average)?),
        ("tta", serde_json::to_string(&tta_name(p.tta))?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !p.model_sha256.is_empty() {
        meta.insert("model_sha256".into(), serde_json::to_string(&p.model_sha256)?);
    }
    if !p.skipped.is_empty() {
        meta.insert("skipped".into(), serde_json::to_string(&p.skipped)?);
    }
    if let Some(shard) = &p.shard {
        meta.insert("shard".into(), serde_json::to_string(shard)?);
    }
    let data = safetensors::serialize(views, Some(meta)).context("serialising logits")?;
    sorbier::run::write_atomic(path, &data).with_context(|| format!("cannot write logits {}", path.display()))
}

/// A header value, parsed from its JSON; `None` when the key is absent.
fn header_value<T: serde::de::DeserializeOwned>(meta: &HashMap<String, String>, path: &Path, key: &str) -> Result<Option<T>> {
    let Some(v) = meta.get(key) else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_str(v).with_context(|| format!("{}: metadata {key} is not JSON", path.display()))?;
    serde_json::from_value(value).map(Some).with_context(|| format!("{}: metadata {key} has the wrong form", path.display()))
}

/// Reads a file written by [`save`] or [`write`], checking that the header and the tensors
/// agree (one row per name, one column per class, one matrix per model).
pub fn load(path: &Path) -> Result<SavedLogits> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&data).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&data)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let required = |k: &str| header_value(&meta, path, k)?.with_context(|| format!("{}: no {k:?} in the header metadata", path.display()));
    let tensor = |name: &str| -> Result<Array2<f32>> {
        let t = st.tensor(name).with_context(|| format!("{}: no tensor {name}", path.display()))?;
        if t.dtype() != Dtype::F32 || t.shape().len() != 2 {
            bail!("{}: tensor {name} is {:?} {:?}, expected a 2-D F32 matrix", path.display(), t.dtype(), t.shape());
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Array2::from_shape_vec((t.shape()[0], t.shape()[1]), values).with_context(|| format!("{}: tensor {name}", path.display()))
    };
    let names: Vec<String> = serde_json::from_value(required("names")?)?;
    let classes: Vec<String> = serde_json::from_value(required("classes")?)?;
    let models: Vec<String> = serde_json::from_value(required("models")?)?;
    let weights: Vec<f64> = serde_json::from_value(required("weights")?)?;
    let model_sha256: Vec<String> = header_value(&meta, path, "model_sha256")?.unwrap_or_default();
    if weights.len() != models.len() || !(model_sha256.is_empty() || model_sha256.len() == models.len()) {
        bail!("{}: {} models, {} weights and {} hashes in the header", path.display(), models.len(), weights.len(), model_sha256.len());
    }
    let mean = tensor("mean")?;
    let members = (0..models.len()).map(|i| tensor(&format!("model_{i}"))).collect::<Result<Vec<_>>>()?;
    for (i, m) in std::iter::once(&mean).chain(&members).enumerate() {
        if m.dim() != (names.len(), classes.len()) {
            let name = if i == 0 { "mean".to_string() } else { format!("model_{}", i - 1) };
            bail!("{}: tensor {name} is {:?}, but the header names {} images and {} classes", path.display(), m.dim(), names.len(), classes.len());
        }
    }
    Ok(SavedLogits {
        average: header_value(&meta, path, "average")?.with_context(|| format!("{}: no \"average\" in the header", path.display()))?,
        tta: match header_value::<String>(&meta, path, "tta")? {
            None => Some(Tta::None),
            Some(t) if t == MIXED => None,
            Some(t) => Some(Tta::parse(&t).map_err(anyhow::Error::msg).with_context(|| format!("{}: header \"tta\"", path.display()))?),
        },
        skipped: header_value(&meta, path, "skipped")?.unwrap_or_default(),
        shard: header_value(&meta, path, "shard")?,
        names,
        classes,
        models,
        weights,
        model_sha256,
        mean,
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
        save(&p, &["x.jpg".into(), "y.jpg".into()], &out, &["m.onnx".into()], &[1.0], Tta::None).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.names, vec!["x.jpg", "y.jpg"]);
        assert_eq!(back.classes, vec!["a", "b"]);
        assert_eq!(back.average, Average::Probs);
        assert_eq!(back.mean.row(0).to_vec(), vec![1.0, 2.0]);
        assert!(back.mean[[1, 0]].is_nan());
        assert_eq!(back.members.len(), 1);
        assert_eq!((back.tta, back.model_sha256.len(), back.skipped.len(), back.shard), (Some(Tta::None), 0, 0, None));

        let shard = ShardInfo { index: 2, count: 3, first: 1, rows: 4, list: "abcd".into() };
        let p2 = dir.path().join("s.safetensors");
        let prov = Provenance {
            models: vec!["m.onnx".into()],
            weights: vec![1.0],
            tta: Some(Tta::Hflip),
            model_sha256: vec!["0123".into()],
            skipped: vec![("y.jpg".into(), "unreadable: bad".into())],
            shard: Some(shard.clone()),
        };
        write(&p2, &["x.jpg".into(), "y.jpg".into()], &out, &prov).unwrap();
        let back = load(&p2).unwrap();
        assert_eq!((back.tta, back.model_sha256, back.skipped, back.shard), (Some(Tta::Hflip), prov.model_sha256.clone(), prov.skipped.clone(), Some(shard)));
        // A header that does not match its tensors is refused, not half-read.
        assert!(write(&p2, &["x.jpg".into()], &out, &prov).is_err());
    }
}
