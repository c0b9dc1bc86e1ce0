//! One model or an ensemble of them behind ONNX Runtime sessions: each member's class list and
//! preprocessing come from its own metadata (the model card, [`sorbier::meta`]); members must
//! agree on the classes (names and order); their outputs are averaged, as logits (weighted) or
//! as softmax probabilities — the two ways ensembles and test-time augmentation are combined
//! in timm's `validate.py` / Kaggle practice.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array2, ArrayView2, ArrayView4, Axis, Ix2};
use ort::session::Session;
use ort::value::TensorRef;

use sorbier::meta::ModelMeta;
use crate::engine::pipeline::{Pipeline, PipelineConfig};
use crate::engine::runtime::{Device, Runtime};
use crate::engine::tta::Tta;
use sorbier::transforms::Preprocess;

/// How member (and TTA) outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Average {
    /// Weighted mean of the raw logits.
    Logits,
    /// Weighted mean of the softmax probabilities.
    Probs,
}

sorbier::spelled!(Average, "averaging", [Logits, Probs]);

/// One model of the ensemble.
pub struct Member {
    pub path: PathBuf,
    pub meta: ModelMeta,
    pub weight: f64,
    /// Index into [`Ensemble::preprocesses`].
    pub preprocess: usize,
    input: String,
    session: Session,
}

pub struct Ensemble {
    pub members: Vec<Member>,
    /// Class names shared by all members, in output-index order.
    pub classes: Vec<String>,
    /// The distinct eval transforms the members need (each image is decoded once for all).
    pub preprocesses: Vec<Preprocess>,
    pub average: Average,
    /// Where the sessions run.
    pub device: Device,
    /// The device that was asked for (`auto` may have fallen back).
    pub requested: Device,
    /// The ONNX Runtime library the sessions come from.
    pub library: PathBuf,
    /// What happened on the way that the user should hear about (a CUDA fallback).
    pub notes: Vec<String>,
}

/// Everything an ensemble produced for a list of images.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub classes: Vec<String>,
    /// `n × c`: the weighted member average, in the averaging space (logits or
    /// probabilities); rows of images that failed are NaN.
    pub mean: Array2<f32>,
    /// One `n × c` matrix per member, TTA-averaged, same space.
    pub members: Vec<Array2<f32>>,
    /// Images that could not be read: index and reason.
    pub failed: Vec<(usize, String)>,
    pub average: Average,
    /// Images per second over the whole run (decode + inference).
    pub images_per_s: f64,
}

impl Outputs {
    /// Number of classes.
    pub fn c(&self) -> usize {
        self.classes.len()
    }

    /// Class probabilities of row `i` (softmax of the mean logits, or the mean probabilities).
    pub fn probs(&self, i: usize) -> Vec<f32> {
        probabilities(&self.mean.row(i).to_vec(), self.average)
    }
}

/// Class probabilities of one output row in `average` space: the softmax of logits, or the
/// probabilities as they are.
pub fn probabilities(row: &[f32], average: Average) -> Vec<f32> {
    match average {
        Average::Logits => softmax(row),
        Average::Probs => row.to_vec(),
    }
}

/// Row-wise softmax of an `n × c` matrix (each row as [`softmax`]).
pub fn softmax_rows(m: ArrayView2<f32>) -> Array2<f32> {
    let mut out = m.to_owned();
    for mut row in out.rows_mut() {
        let p = softmax(&row.to_vec());
        row.iter_mut().zip(p).for_each(|(o, v)| *o = v);
    }
    out
}

/// Numerically stable softmax of one row, in f64.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&x| (x / s) as f32).collect()
}

/// Refuses models whose class lists differ, showing how: the first index where they differ,
/// and the names one has and the other lacks.
pub fn check_same_classes(models: &[(PathBuf, Vec<String>)]) -> Result<()> {
    let Some((first_path, first)) = models.first() else { return Ok(()) };
    for (path, classes) in &models[1..] {
        if classes == first {
            continue;
        }
        let mut msg = format!(
            "the models disagree on their classes, so their outputs cannot be averaged: {} has {} classes, {} has {}",
            first_path.display(),
            first.len(),
            path.display(),
            classes.len()
        );
        if let Some(i) = (0..first.len().min(classes.len())).find(|&i| first[i] != classes[i]) {
            msg += &format!("; first difference at index {i}: {:?} vs {:?}", first[i], classes[i]);
        }
        let missing: Vec<&String> = first.iter().filter(|c| !classes.contains(c)).collect();
        let extra: Vec<&String> = classes.iter().filter(|c| !first.contains(c)).collect();
        if !missing.is_empty() {
            msg += &format!("; missing from {}: {}", path.display(), list(&missing));
        }
        if !extra.is_empty() {
            msg += &format!("; only in {}: {}", path.display(), list(&extra));
        }
        if missing.is_empty() && extra.is_empty() {
            msg += " (same names, different order)";
        }
        bail!(msg);
    }
    Ok(())
}

/// Refuses weights that are not one positive finite number per `what` (models, files…), or
/// whose sum overflows (the weighted mean would be 0 everywhere).
pub fn check_weights(weights: &[f64], n: usize, what: &str) -> Result<()> {
    if weights.len() != n {
        bail!("{} weights given for {n} {what}", weights.len());
    }
    if let Some(x) = weights.iter().find(|&&x| !(x.is_finite() && x > 0.0)) {
        bail!("weights must be positive numbers, got {x}");
    }
    // Their sum divides each weight: past f64's range every share would be 0 (uniform scores).
    let total: f64 = weights.iter().sum();
    if !total.is_finite() {
        bail!("the weights add up to more than a float can hold ({}): scale them down", list(weights));
    }
    Ok(())
}

/// The weighted mean `Σ wᵢ·Xᵢ / Σ wᵢ` of `n × c` member outputs (in whatever space they are),
/// accumulated in float32 in member order — the one way ensembles and blends average.
pub fn weighted_mean(members: &[Array2<f32>], weights: &[f64]) -> Array2<f32> {
    let dim = members.first().map_or((0, 0), |m| m.dim());
    let total: f64 = weights.iter().sum();
    let mut mean = Array2::<f32>::zeros(dim);
    for (m, &w) in members.iter().zip(weights) {
        mean.scaled_add((w / total) as f32, m);
    }
    mean
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// At most 10 names and the total, e.g. `"a", "b" … (12 in all)`.
pub fn list<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(10).map(|x| format!("{x:?}")).collect();
    if items.len() > 10 {
        format!("{} … ({} in all)", shown.join(", "), items.len())
    } else {
        shown.join(", ")
    }
}

/// Reads the sorbier model card through ONNX Runtime's metadata API.
fn session_meta(session: &Session, path: &Path) -> Result<ModelMeta> {
    let md = session.metadata().map_err(|e| anyhow!("{e}")).with_context(|| format!("cannot read the metadata of {}", path.display()))?;
    let keys = md.custom_keys().map_err(|e| anyhow!("{e}"))?;
    let props: Vec<(String, String)> = keys.into_iter().filter_map(|k| md.custom(&k).map(|v| (k, v))).collect();
    ModelMeta::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).with_context(|| format!("model {}", path.display()))
}

impl Ensemble {
    /// Opens every model; `weights` (one per model, > 0) default to equal.
    pub fn open(rt: &Runtime, models: &[PathBuf], weights: Option<&[f64]>, average: Average, device: Device, threads: usize) -> Result<Ensemble> {
        if models.is_empty() {
            bail!("no model given (--model FILE.onnx)");
        }
        if let Some(w) = weights {
            check_weights(w, models.len(), "models")?;
        }
        let mut members = Vec::new();
        let mut preprocesses: Vec<Preprocess> = Vec::new();
        let mut notes = Vec::new();
        let mut used = None;
        for (i, path) in models.iter().enumerate() {
            if !path.is_file() {
                bail!("model {} does not exist", path.display());
            }
            // Members after the first follow the first one's device, so an `auto` ensemble never mixes.
            let want = used.unwrap_or(device);
            let (session, got, fallback) = rt.session(path, want, threads)?;
            if let Some(why) = fallback {
                notes.push(format!("device: cpu (CUDA did not start: {})", why.lines().next().unwrap_or("")));
            }
            used = Some(got);
            let meta = session_meta(&session, path)?;
            let input = match session.inputs() {
                [one] => one.name().to_string(),
                other => bail!("{} has {} inputs, expected one image input", path.display(), other.len()),
            };
            let preprocess = match preprocesses.iter().position(|p| *p == meta.preprocess) {
                Some(k) => k,
                None => {
                    preprocesses.push(meta.preprocess.clone());
                    preprocesses.len() - 1
                }
            };
            let weight = weights.map_or(1.0, |w| w[i]);
            members.push(Member { path: path.clone(), meta, weight, preprocess, input, session });
        }
        check_same_classes(&members.iter().map(|m| (m.path.clone(), m.meta.classes.clone())).collect::<Vec<_>>())?;
        let classes = members[0].meta.classes.clone();
        Ok(Ensemble { members, classes, preprocesses, average, device: used.unwrap_or(device), requested: device, library: rt.library.clone(), notes })
    }

    /// One line: the members (with their precision unless float32), classes, device and
    /// runtime, e.g. `2 models (resnet18 224px int8, resnet50 224px), 5 classes, device cpu
    /// (auto), ONNX Runtime /x/libonnxruntime.so.1.31.1`.
    pub fn summary(&self) -> String {
        format!(
            "{} model{} ({}), {} classes, device {}{}, ONNX Runtime {}",
            self.members.len(),
            if self.members.len() == 1 { "" } else { "s" },
            self.members
                .iter()
                .map(|m| match m.meta.precision.as_str() {
                    "float32" => format!("{} {}px", m.meta.arch, m.meta.preprocess.crop),
                    p => format!("{} {}px {p}", m.meta.arch, m.meta.preprocess.crop),
                })
                .collect::<Vec<_>>()
                .join(", "),
            self.classes.len(),
            self.device,
            if self.requested == Device::Auto { " (auto)" } else { "" },
            self.library.display()
        )
    }

    /// Runs every member (and every TTA variant) on `paths`. Decoding runs on `cfg.workers`
    /// threads; `progress` shows a bar with images/s.
    pub fn run(&mut self, paths: Arc<[PathBuf]>, tta: Tta, cfg: &PipelineConfig, progress: bool) -> Result<Outputs> {
        let n = paths.len();
        let c = self.classes.len();
        let variants = tta.variants();
        let mut members: Vec<Array2<f32>> = vec![Array2::from_elem((n, c), f32::NAN); self.members.len()];
        let mut failed = Vec::new();
        let bar = if progress { indicatif::ProgressBar::new(n as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let start = Instant::now();
        let pipe = Pipeline::new(paths.clone(), self.preprocesses.clone(), variants.to_vec(), cfg);
        for batch in pipe {
            let batch = batch?;
            failed.extend(batch.failed.iter().cloned());
            let k = batch.items.len();
            if k > 0 {
                for (m, acc) in self.forward_prepared(&batch.tensors)?.iter().enumerate() {
                    for (row, &i) in acc.rows().into_iter().zip(&batch.items) {
                        members[m].row_mut(i).assign(&row);
                    }
                }
            }
            bar.inc((k + batch.failed.len()) as u64);
        }
        bar.finish_and_clear();
        let elapsed = start.elapsed().as_secs_f64();
        let weights: Vec<f64> = self.members.iter().map(|m| m.weight).collect();
        let mean = weighted_mean(&members, &weights);
        failed.sort_by_key(|f| f.0);
        Ok(Outputs {
            classes: self.classes.clone(),
            mean,
            members,
            failed,
            average: self.average,
            images_per_s: if elapsed > 0.0 { n as f64 / elapsed } else { 0.0 },
        })
    }

    /// Every member's output for one prepared batch (`tensors[p][v]`: preprocess `p`, TTA
    /// variant `v`, `k × 3 × s × s` each, as [`Pipeline`] makes them), TTA-averaged in the
    /// averaging space: one `k × c` matrix per member. [`Ensemble::run`] and the server both
    /// run batches through here; [`weighted_mean`] of the result is the ensemble's output.
    pub fn forward_prepared(&mut self, tensors: &[Vec<ndarray::Array4<f32>>]) -> Result<Vec<Array2<f32>>> {
        let c = self.classes.len();
        let average = self.average;
        self.members.iter_mut().map(|m| m.forward_variants(&tensors[m.preprocess], c, average)).collect()
    }

    /// The members' weights, in member order.
    pub fn weights(&self) -> Vec<f64> {
        self.members.iter().map(|m| m.weight).collect()
    }
}

impl Member {
    /// Name of the model's image input (`input` for models `trainer export` writes).
    pub fn input_name(&self) -> &str {
        &self.input
    }

    /// Logits of a `k × 3 × size × size` batch: `k × c`.
    pub fn forward(&mut self, input: ArrayView4<f32>, c: usize) -> Result<Array2<f32>> {
        let path = self.path.display().to_string();
        let k = input.len_of(Axis(0));
        let input = input.as_standard_layout();
        let tensor = TensorRef::from_array_view(input.view()).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("inference failed on {path}"))?;
        let logits = outputs[0].try_extract_array::<f32>().map_err(|e| anyhow!("{e}")).with_context(|| format!("{path}: output is not float32"))?;
        let shape = logits.shape().to_vec();
        if shape != [k, c] {
            bail!("{path}: output has shape {shape:?}, expected [{k}, {c}] (the metadata lists {c} classes)");
        }
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            bail!("{path}: the model's output holds a value that is not finite (NaN or ±inf) in row {} of {k}: its weights or its input are broken", i / c.max(1));
        }
        Ok(logits.into_dimensionality::<Ix2>()?.to_owned())
    }

    /// The member's output for one batch under every TTA variant (`variants[v]` is `k × 3 × s ×
    /// s`), averaged in `average` space: `k × c`.
    pub fn forward_variants(&mut self, variants: &[ndarray::Array4<f32>], c: usize, average: Average) -> Result<Array2<f32>> {
        let k = variants.first().map_or(0, |v| v.len_of(Axis(0)));
        let mut acc = Array2::<f32>::zeros((k, c));
        for tensor in variants {
            let logits = self.forward(tensor.view(), c)?;
            match average {
                Average::Logits => acc += &logits,
                Average::Probs => acc += &softmax_rows(logits.view()),
            }
        }
        acc /= variants.len().max(1) as f32;
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[1.0], 1), vec![0]);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        let q = softmax(&[0.1, 2.0, -0.3]);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(q[1] > q[0] && q[0] > q[2]);
    }

    #[test]
    fn weights_that_cannot_average_are_refused() {
        check_weights(&[1.0, 3.0], 2, "models").unwrap();
        check_weights(&[1e300, 1e-300], 2, "models").unwrap();
        for bad in [[1e308, 1e308], [f64::NAN, 1.0], [f64::INFINITY, 1.0], [0.0, 1.0], [-1.0, 2.0]] {
            assert!(check_weights(&bad, 2, "models").is_err(), "{bad:?} accepted");
        }
        let e = check_weights(&[1e308, 1e308], 2, "photos").unwrap_err().to_string();
        assert!(e.contains("add up to more than a float can hold"), "{e}");
    }

    #[test]
    fn softmax_rows_is_softmax_of_each_row() {
        let m = ndarray::array![[0.1f32, 2.0, -0.3], [5.0, 5.0, 5.0]];
        let p = softmax_rows(m.view());
        assert_eq!(p.dim(), (2, 3));
        assert_eq!(p.row(0).to_vec(), softmax(&[0.1, 2.0, -0.3]));
        assert!(p.row(1).iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7), "{p:?}");
    }

    #[test]
    fn weighted_mean_weighs_each_member_by_its_share_of_the_total() {
        let a = ndarray::array![[1.0f32, -2.0], [4.0, 0.5]];
        let b = ndarray::array![[3.0f32, 2.0], [0.0, 0.5]];
        // Shares 1/4 and 3/4: exact in float32.
        let want = ndarray::array![[2.5f32, 1.0], [1.0, 0.5]];
        assert_eq!(weighted_mean(&[a.clone(), b.clone()], &[1.0, 3.0]), want);
        assert_eq!(weighted_mean(&[a.clone(), b.clone()], &[2.0, 6.0]), want, "only the ratio counts");
        assert_eq!(weighted_mean(&[a.clone()], &[0.5]), a, "one member is its own mean");
    }

    #[test]
    fn weights_are_one_positive_finite_number_per_model() {
        check_weights(&[1.0, 0.5], 2, "models").unwrap();
        let err = check_weights(&[1.0], 2, "models").unwrap_err().to_string();
        assert_eq!(err, "1 weights given for 2 models");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = check_weights(&[1.0, bad], 2, "models").unwrap_err().to_string();
            assert!(err.starts_with("weights must be positive numbers"), "{bad}: {err}");
        }
    }

    #[test]
    fn class_mismatch_shows_the_difference() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = (PathBuf::from("a.onnx"), s(&["daisy", "rose", "tulip"]));
        check_same_classes(&[a.clone(), a.clone()]).unwrap();
        let b = (PathBuf::from("b.onnx"), s(&["daisy", "lily", "tulip", "iris"]));
        let err = check_same_classes(&[a.clone(), b]).unwrap_err().to_string();
        assert!(err.contains("index 1") && err.contains("\"rose\" vs \"lily\""), "{err}");
        assert!(err.contains("missing from b.onnx: \"rose\"") && err.contains("only in b.onnx: \"lily\", \"iris\""), "{err}");
        let c = (PathBuf::from("c.onnx"), s(&["rose", "daisy", "tulip"]));
        let err = check_same_classes(&[a, c]).unwrap_err().to_string();
        assert!(err.contains("different order") && err.contains("index 0"), "{err}");
    }
}
