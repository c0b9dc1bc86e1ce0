//! Calibration: choosing the images, running the float32 model over them on ONNX Runtime with
//! the model's own preprocessing, and measuring the range of every tensor the plan quantises.
//!
//! - **Selection** ([`select`]): from an ImageFolder (`DIR/<class>/…`, or a competition root
//!   holding `train/`) a stratified sample — each class in proportion to its size, at least one
//!   image each — drawn with the seeded stratified split the trainer uses
//!   ([`sorbier::data::split`]); from a flat folder, images evenly spaced in name order. The
//!   choice is fingerprinted like a training set (relative paths and sizes).
//! - **MinMax** ([`Method::MinMax`]): the smallest and largest value each tensor takes over all
//!   calibration images. The graph gets a `ReduceMin` and a `ReduceMax` per tensor as extra
//!   outputs, so one pass returns two scalars per tensor, not the tensors.
//! - **Percentile** ([`Method::Percentile`]): a second pass histograms every tensor over its
//!   MinMax range (2048 bins, as ONNX Runtime's `HistogramCalibrater`) and clips the given
//!   percentile at each end, trading saturation of rare outliers for a finer step (Wu et al.
//!   2020, "Integer Quantization for Deep Learning Inference", §4.1: 99.99–99.999 is the
//!   useful span). The tensors themselves come back this time, so the batch is capped at
//!   [`RAW_BATCH`] images.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array4, ArrayView4};
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use sorbier::data::scan::resolve_train_dir;
use sorbier::data::split::{split, SplitSpec};
use sorbier::data::{Dataset, Sample, ScanReport, TestSet};
use sorbier::onnx::tensor_proto::DataType;
use sorbier::onnx::{type_proto, ModelProto, NodeProto, TypeProto, ValueInfoProto};
use sorbier::transforms::Preprocess;

use super::rewrite::Ranges;
use sorbier::onnx::helpers::int_attribute;
use crate::engine::pipeline::{Pipeline, PipelineConfig};
use crate::engine::runtime::Runtime;
use crate::engine::tta::Variant;

/// How activation ranges are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Smallest and largest value seen.
    Minmax,
    /// The `--percentile` quantile at each end of a histogram.
    Percentile,
}

sorbier::spelled!(Method, "calibration method", [Minmax, Percentile]);

/// Histogram bins per tensor for [`Method::Percentile`].
pub const BINS: usize = 2048;
/// Largest batch of the percentile pass, which returns whole tensors (a ResNet-50 at 224 px
/// gives ≈ 50 MB of activations per image).
pub const RAW_BATCH: usize = 8;

/// The calibration images.
#[derive(Clone, Debug)]
pub struct CalibrationSet {
    pub paths: Vec<PathBuf>,
    /// Where they came from and how they were chosen, for the model card.
    pub selection: String,
    /// As [`Dataset::fingerprint`] of the chosen images.
    pub fingerprint: String,
    /// Images the folder holds.
    pub available: usize,
}

fn has_subfolders(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read calibration folder {}", dir.display()))?;
    Ok(entries.flatten().any(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.')))
}

/// Chooses about `n` calibration images in `dir` (see the module header); all of them when the
/// folder holds fewer.
pub fn select(dir: &Path, n: usize, seed: u64) -> Result<CalibrationSet> {
    if n == 0 {
        bail!("--images must be at least 1");
    }
    let root = resolve_train_dir(dir);
    let (chosen, available, selection) = if has_subfolders(&root)? {
        let ds = Dataset::scan(&root)?;
        let total = ds.samples.len();
        let picked: Vec<usize> = if n >= total {
            (0..total).collect()
        } else {
            split(&ds.labels(), ds.classes.len(), &SplitSpec::Holdout { val_fraction: n as f64 / total as f64, seed })
                .with_context(|| format!("cannot draw {n} calibration images from {}", root.display()))?
                .val
        };
        let how = format!("{}, stratified over {} classes (seed {seed})", root.display(), ds.classes.len());
        let samples = picked.iter().map(|&i| ds.samples[i].clone()).collect();
        (Dataset { samples, ..ds }, total, how)
    } else {
        let test = TestSet::scan(&root, None)?;
        let total = test.names.len();
        let k = n.min(total);
        let samples = (0..k).map(|i| Sample { path: root.join(&test.names[i * total / k]), label: 0 }).collect();
        let how = format!("{}, {k} of {total} images evenly spaced in name order", root.display());
        (Dataset { root: root.clone(), classes: Vec::new(), samples, report: ScanReport::default() }, total, how)
    };
    Ok(CalibrationSet { fingerprint: chosen.fingerprint()?, paths: chosen.paths(), selection, available })
}

/// What calibration runs the model on.
pub enum Source<'a> {
    /// Images, decoded and preprocessed as the predictor does.
    Images { set: &'a CalibrationSet, preprocess: &'a Preprocess, pipeline: PipelineConfig, progress: bool },
    /// Ready input batches (N × C × H × W).
    Tensors(&'a [Array4<f32>]),
}

fn float_output(name: &str) -> ValueInfoProto {
    let tensor = type_proto::Tensor { elem_type: Some(DataType::Float as i32), shape: None };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), denotation: None }),
        ..Default::default()
    }
}

/// `model` with a `ReduceMin` and a `ReduceMax` of each of `tensors` as extra outputs; returns
/// it and the (min, max) output names.
pub fn with_reductions(model: &ModelProto, tensors: &[String]) -> Result<(ModelProto, Vec<(String, String)>)> {
    let mut m = model.clone();
    let g = m.graph.as_mut().context("the model has no graph")?;
    let mut names = Vec::with_capacity(tensors.len());
    for (k, t) in tensors.iter().enumerate() {
        let pair = (format!("sorbier_calibration_min_{k}"), format!("sorbier_calibration_max_{k}"));
        for (op, out) in [("ReduceMin", &pair.0), ("ReduceMax", &pair.1)] {
            g.node.push(NodeProto {
                name: Some(out.clone()),
                op_type: Some(op.into()),
                input: vec![t.clone()],
                output: vec![out.clone()],
                attribute: vec![int_attribute("keepdims", 0)],
                ..Default::default()
            });
            g.output.push(float_output(out));
        }
        names.push(pair);
    }
    Ok((m, names))
}

/// `model` with each of `tensors` (that is not already one) as an extra output.
pub fn with_outputs(model: &ModelProto, tensors: &[String]) -> Result<ModelProto> {
    let mut m = model.clone();
    let g = m.graph.as_mut().context("the model has no graph")?;
    let existing: Vec<String> = g.output.iter().chain(&g.input).filter_map(|v| v.name.clone()).collect();
    for t in tensors.iter().filter(|t| !existing.contains(t)) {
        g.output.push(float_output(t));
    }
    Ok(m)
}

/// A histogram over a fixed range.
#[derive(Clone, Debug)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    pub fn new(lo: f32, hi: f32, bins: usize) -> Histogram {
        Histogram { lo, hi, counts: vec![0; bins.max(1)] }
    }

    /// Adds values; those outside the range (there are none when the range came from a MinMax
    /// pass over the same images) count in the end bins.
    pub fn add(&mut self, values: &[f32]) {
        let bins = self.counts.len();
        let width = self.hi - self.lo;
        if width.is_nan() || width <= 0.0 {
            self.counts[0] += values.len() as u64;
            return;
        }
        let per = bins as f32 / width;
        for &v in values {
            let b = ((v - self.lo) * per) as isize;
            self.counts[b.clamp(0, bins as isize - 1) as usize] += 1;
        }
    }

    /// The range that clips `(100 − percentile) %` of the values at each end (bin edges).
    pub fn percentile_range(&self, percentile: f64) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.lo.partial_cmp(&self.hi) != Some(std::cmp::Ordering::Less) {
            return (self.lo, self.hi);
        }
        let tail = (1.0 - percentile / 100.0).max(0.0) * total as f64;
        let width = (self.hi - self.lo) as f64 / self.counts.len() as f64;
        let mut cum = 0u64;
        let mut lo_bin = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            cum += c;
            if cum as f64 > tail {
                lo_bin = b;
                break;
            }
        }
        cum = 0;
        let mut hi_bin = self.counts.len() - 1;
        for (b, &c) in self.counts.iter().enumerate().rev() {
            cum += c;
            if cum as f64 > tail {
                hi_bin = b;
                break;
            }
        }
        let lo = self.lo as f64 + lo_bin as f64 * width;
        let hi = self.lo as f64 + (hi_bin + 1) as f64 * width;
        (lo.max(self.lo as f64) as f32, hi.min(self.hi as f64) as f32)
    }
}

/// Runs `session` over the source's batches (images in batches of at most `cap`), calling
/// `each` with the input batch and the session outputs.
fn run_source(
    session: &mut Session,
    input: &str,
    source: &Source,
    cap: usize,
    mut each: impl FnMut(ArrayView4<f32>, &ort::session::SessionOutputs) -> Result<()>,
) -> Result<()> {
    let mut run = |x: ArrayView4<f32>| -> Result<()> {
        let tensor = TensorRef::from_array_view(x).map_err(|e| anyhow!("{e}"))?;
        let outputs = session.run(ort::inputs![input => tensor]).map_err(|e| anyhow!("calibration inference failed: {e}"))?;
        each(x, &outputs)
    };
    match source {
        Source::Tensors(batches) => batches.iter().try_for_each(|b| run(b.view())),
        Source::Images { set, preprocess, pipeline, progress } => {
            let paths: Arc<[PathBuf]> = set.paths.clone().into();
            let bar = if *progress { indicatif::ProgressBar::new(paths.len() as u64) } else { indicatif::ProgressBar::hidden() };
            bar.set_style(
                indicatif::ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let cfg = PipelineConfig { batch_size: pipeline.batch_size.clamp(1, cap), ..pipeline.clone() };
            for batch in Pipeline::new(paths, vec![(*preprocess).clone()], vec![Variant::Identity], &cfg) {
                let batch = batch?;
                if !batch.failed.is_empty() {
                    let detail: Vec<&str> = batch.failed.iter().map(|(_, e)| e.as_str()).collect();
                    bail!("{} calibration image(s) could not be read:\n  {}", detail.len(), detail.join("\n  "));
                }
                run(batch.tensors[0][0].view())?;
                bar.inc(batch.items.len() as u64);
            }
            bar.finish_and_clear();
            Ok(())
        }
    }
}

fn extract<'o>(outputs: &'o ort::session::SessionOutputs, name: &str) -> Result<&'o [f32]> {
    let v = outputs.get(name).with_context(|| format!("calibration output {name} is missing"))?;
    let (_, data) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("calibration output {name}: {e}"))?;
    Ok(data)
}

/// The name of the graph's one image input.
pub fn input_name(model: &ModelProto) -> Result<String> {
    let g = model.graph.as_ref().context("the model has no graph")?;
    let inits: Vec<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let inputs: Vec<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !inits.contains(n)).collect();
    match inputs.as_slice() {
        [one] => Ok(one.to_string()),
        other => bail!("the model has {} inputs ({other:?}), expected one image input", other.len()),
    }
}

/// Measures the range of each of `tensors` (names in `model`) over the source, on the CPU
/// with `threads` intra-op threads.
pub fn measure(rt: &Runtime, model: &ModelProto, tensors: &[String], source: &Source, method: Method, percentile: f64, threads: usize) -> Result<Ranges> {
    if !(percentile > 50.0 && percentile <= 100.0) {
        bail!("--percentile must be in (50, 100], got {percentile}");
    }
    let input = input_name(model)?;
    let (reduced, pairs) = with_reductions(model, tensors)?;
    let mut session = super::cpu_session(rt, &reduced.encode_to_vec(), threads, None)?;
    let mut minmax = vec![(f32::INFINITY, f32::NEG_INFINITY); tensors.len()];
    run_source(&mut session, &input, source, usize::MAX, |_, out| {
        for (r, (lo, hi)) in minmax.iter_mut().zip(&pairs) {
            let (a, b) = (extract(out, lo)?, extract(out, hi)?);
            // A NaN anywhere in a tensor makes its reduction NaN.
            if a.iter().chain(b).any(|v| v.is_nan()) || a.is_empty() || b.is_empty() {
                bail!("the model computes NaN (or nothing) on a calibration input");
            }
            r.0 = r.0.min(a[0]);
            r.1 = r.1.max(b[0]);
        }
        Ok(())
    })?;
    drop(session);
    if method == Method::Minmax {
        return Ok(tensors.iter().cloned().zip(minmax).collect());
    }

    let raw = with_outputs(model, tensors)?;
    let mut session = super::cpu_session(rt, &raw.encode_to_vec(), threads, None)?;
    let mut hist: Vec<Histogram> = minmax.iter().map(|&(lo, hi)| Histogram::new(lo, hi, BINS)).collect();
    let per = hist.len().div_ceil(threads.max(1)).max(1);
    run_source(&mut session, &input, source, RAW_BATCH, |x, out| {
        let data: Vec<&[f32]> = tensors
            .iter()
            .map(|t| if *t == input { x.to_slice().context("input batch is not contiguous") } else { extract(out, t) })
            .collect::<Result<_>>()?;
        // Tensors are independent: histogram them on the intra-op threads' cores.
        std::thread::scope(|s| {
            for (h, d) in hist.chunks_mut(per).zip(data.chunks(per)) {
                s.spawn(move || h.iter_mut().zip(d).for_each(|(h, d)| h.add(d)));
            }
        });
        Ok(())
    })?;
    Ok(tensors.iter().cloned().zip(hist.iter().map(|h| h.percentile_range(percentile))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_clips_rare_tails_only() {
        let mut h = Histogram::new(-10.0, 100.0, 1100);
        // 100 000 values in [0, 10), one outlier at 99.9 and one at -9.9.
        let values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 100.0).chain([99.9, -9.9]).collect();
        h.add(&values);
        let (lo, hi) = h.percentile_range(99.99);
        assert!((lo - 0.0).abs() < 0.11 && (hi - 10.0).abs() < 0.11, "{lo} {hi}");
        // 100 % keeps everything.
        let (lo, hi) = h.percentile_range(100.0);
        assert!((lo + 10.0).abs() < 0.11 && (hi - 100.0).abs() < 0.11, "{lo} {hi}");
        // A ReLU-like tensor keeps its lower end at 0.
        let mut r = Histogram::new(0.0, 5.0, 2048);
        r.add(&[0.0; 1000]);
        r.add(&[1.0, 2.0, 5.0]);
        assert_eq!(r.percentile_range(99.9).0, 0.0);
    }

    #[test]
    fn stratified_selection_keeps_every_class_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("a", 30), ("b", 10), ("c", 2)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..n {
                image::RgbImage::new(4, 4).save(dir.path().join(class).join(format!("{i:02}.png"))).unwrap();
            }
        }
        let s = select(dir.path(), 21, 0).unwrap();
        assert_eq!(s.available, 42);
        let per = |c: &str| s.paths.iter().filter(|p| p.parent().unwrap().ends_with(c)).count();
        assert_eq!((per("a"), per("b"), per("c")), (15, 5, 1), "{:?}", s.paths);
        assert!(s.selection.contains("stratified over 3 classes"), "{}", s.selection);
        let again = select(dir.path(), 21, 0).unwrap();
        assert_eq!((again.paths, again.fingerprint), (s.paths.clone(), s.fingerprint.clone()));
        assert_ne!(select(dir.path(), 21, 1).unwrap().fingerprint, s.fingerprint);
        // Asking for more than there is takes everything.
        assert_eq!(select(dir.path(), 500, 0).unwrap().paths.len(), 42);

        let flat = tempfile::tempdir().unwrap();
        for i in 0..10 {
            image::RgbImage::new(4, 4).save(flat.path().join(format!("{i}.png"))).unwrap();
        }
        let f = select(flat.path(), 4, 0).unwrap();
        let names: Vec<String> = f.paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["0.png", "2.png", "5.png", "7.png"]);
        assert!(select(flat.path(), 0, 0).is_err());
    }
}
