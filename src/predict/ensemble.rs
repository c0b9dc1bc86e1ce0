//! One model or an ensemble of them behind ONNX Runtime sessions: each member's class list and
//! preprocessing come from its own metadata (the model card, [`crate::meta`]); members must
//! agree on the classes (names and order); their outputs are averaged, as logits (weighted) or
//! as softmax probabilities — the two ways ensembles and test-time augmentation are combined
//! in timm's `validate.py` / Kaggle practice.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::Session;
use ort::value::TensorRef;

use crate::meta::ModelMeta;
use crate::predict::pipeline::{Pipeline, PipelineConfig};
use crate::predict::runtime::{Device, Runtime};
use crate::predict::tta::Tta;
use crate::transforms::Preprocess;

/// How member (and TTA) outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Average {
    /// Weighted mean of the raw logits.
    Logits,
    /// Weighted mean of the softmax probabilities.
    Probs,
}

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
}

/// Everything an ensemble produced for a list of images.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub classes: Vec<String>,
    /// `n × c`, row-major: the weighted member average, in the averaging space (logits or
    /// probabilities); rows of images that failed are NaN.
    pub mean: Vec<f32>,
    /// One `n × c` matrix per member, TTA-averaged, same space.
    pub members: Vec<Vec<f32>>,
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
        let row = &self.mean[i * self.c()..(i + 1) * self.c()];
        match self.average {
            Average::Logits => softmax(row),
            Average::Probs => row.to_vec(),
        }
    }
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
            if w.len() != models.len() {
                bail!("{} weights given for {} models", w.len(), models.len());
            }
            if let Some(x) = w.iter().find(|&&x| !(x.is_finite() && x > 0.0)) {
                bail!("model weights must be positive numbers, got {x}");
            }
        }
        let mut members = Vec::new();
        let mut preprocesses: Vec<Preprocess> = Vec::new();
        let mut used = None;
        for (i, path) in models.iter().enumerate() {
            if !path.is_file() {
                bail!("model {} does not exist", path.display());
            }
            // Members after the first follow the first one's device, so an `auto` ensemble never mixes.
            let want = used.unwrap_or(device);
            let (session, got, fallback) = rt.session(path, want, threads)?;
            if let Some(why) = fallback {
                eprintln!("device: cpu (CUDA did not start: {})", why.lines().next().unwrap_or(""));
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
        Ok(Ensemble { members, classes, preprocesses, average, device: used.unwrap_or(device) })
    }

    /// Runs every member (and every TTA variant) on `paths`. Decoding runs on `cfg.workers`
    /// threads; `progress` shows a bar with images/s.
    pub fn run(&mut self, paths: Arc<[PathBuf]>, tta: Tta, cfg: &PipelineConfig, progress: bool) -> Result<Outputs> {
        let n = paths.len();
        let c = self.classes.len();
        let variants = tta.variants();
        let mut members: Vec<Vec<f32>> = vec![vec![f32::NAN; n * c]; self.members.len()];
        let mut failed = Vec::new();
        let bar = if progress { indicatif::ProgressBar::new(n as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let start = Instant::now();
        let pipe = Pipeline::new(paths.clone(), self.preprocesses.clone(), variants.to_vec(), cfg);
        for batch in pipe {
            failed.extend(batch.failed.iter().cloned());
            let k = batch.items.len();
            if k > 0 {
                for (m, member) in self.members.iter_mut().enumerate() {
                    let size = self.preprocesses[member.preprocess].crop as usize;
                    let mut acc = vec![0.0f32; k * c];
                    for tensor in &batch.tensors[member.preprocess] {
                        let logits = member.forward(tensor, k, size, c)?;
                        for (row_acc, row) in acc.chunks_exact_mut(c).zip(logits.chunks_exact(c)) {
                            let row = match self.average {
                                Average::Logits => row.to_vec(),
                                Average::Probs => softmax(row),
                            };
                            row_acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                        }
                    }
                    let scale = 1.0 / variants.len() as f32;
                    for (row, &i) in acc.chunks_exact(c).zip(&batch.items) {
                        members[m][i * c..(i + 1) * c].iter_mut().zip(row).for_each(|(o, &v)| *o = v * scale);
                    }
                }
            }
            bar.inc((k + batch.failed.len()) as u64);
        }
        bar.finish_and_clear();
        let elapsed = start.elapsed().as_secs_f64();
        let total_w: f64 = self.members.iter().map(|m| m.weight).sum();
        let mut mean = vec![0.0f32; n * c];
        for (m, member) in self.members.iter().enumerate() {
            let w = (member.weight / total_w) as f32;
            mean.iter_mut().zip(&members[m]).for_each(|(o, &v)| *o += w * v);
        }
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
}

impl Member {
    /// Logits of a `k × 3 × size × size` batch, `k × c` row-major.
    pub fn forward(&mut self, input: &[f32], k: usize, size: usize, c: usize) -> Result<Vec<f32>> {
        let path = self.path.display().to_string();
        let tensor = TensorRef::from_array_view(([k, 3, size, size], input)).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("inference failed on {path}"))?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| anyhow!("{e}")).with_context(|| format!("{path}: output is not float32"))?;
        if shape.len() != 2 || shape[0] as usize != k || shape[1] as usize != c {
            bail!("{path}: output has shape {shape:?}, expected [{k}, {c}] (the metadata lists {c} classes)");
        }
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        let q = softmax(&[0.1, 2.0, -0.3]);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(q[1] > q[0] && q[0] > q[2]);
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
