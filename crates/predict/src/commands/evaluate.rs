//! `predictor evaluate`: a model or an ensemble on a labelled ImageFolder — top-1, top-5,
//! macro-average accuracy, per-class accuracy and the most-confused pairs (fastai's
//! `ClassificationInterpretation`), for each member and for the ensemble.
//!
//! The folder's classes are matched to the model's by name (a folder may hold a subset of the
//! model's classes); a folder class the model does not know is an error.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use serde::Serialize;

use sorbier::data::Dataset;
use sorbier::metrics::{Metrics, MetricsAccumulator};
use crate::engine::ensemble::{list, Average};
use crate::engine::pipeline::PipelineConfig;
use crate::engine::tta::Tta;
use crate::engine::Ensemble;


/// What `evaluate` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub classes: Vec<String>,
    pub ensemble: Metrics,
    /// (model path, its metrics) for each member.
    pub members: Vec<(String, Metrics)>,
    /// `cm[true][predicted]` of the ensemble, in model class order.
    pub confusion: Vec<Vec<usize>>,
    /// How the members' outputs were combined.
    pub average: Average,
}

/// Model class index of each dataset class, by name.
pub fn map_classes(data_classes: &[String], model_classes: &[String], data_root: &Path) -> Result<Vec<usize>> {
    let unknown: Vec<&String> = data_classes.iter().filter(|c| !model_classes.contains(c)).collect();
    if !unknown.is_empty() {
        bail!(
            "{} has class folder(s) the model does not know: {} (the model's classes: {})",
            data_root.display(),
            list(&unknown),
            list(model_classes)
        );
    }
    Ok(data_classes.iter().filter_map(|c| model_classes.iter().position(|m| m == c)).collect())
}

/// Metrics of `n × c` outputs in `average` space (probabilities are scored through their log,
/// so the loss is still the cross-entropy).
fn score(values: &Array2<f32>, labels: &[usize], average: Average) -> Result<MetricsAccumulator> {
    let mut acc = MetricsAccumulator::new(values.ncols());
    let values = match average {
        Average::Logits => values.clone(),
        Average::Probs => values.mapv(|p| p.max(1e-30).ln()),
    };
    acc.push(&values.iter().copied().collect::<Vec<_>>(), labels)?;
    Ok(acc)
}

/// Runs the opened models on the labelled ImageFolder `data` and scores them.
pub fn evaluate(ens: &mut Ensemble, data: &Path, tta: Tta, pipeline: &PipelineConfig, progress: bool) -> Result<Evaluation> {
    let ds = Dataset::scan(data)?;
    let to_model = map_classes(&ds.classes, &ens.classes, data)?;
    let labels: Vec<usize> = ds.samples.iter().map(|s| to_model[s.label]).collect();
    let paths: Arc<[PathBuf]> = ds.paths().into();
    let out = ens.run(paths, tta, pipeline, progress)?;
    if !out.failed.is_empty() {
        let detail: Vec<String> = out.failed.iter().map(|(_, e)| e.clone()).collect();
        bail!("{} image(s) could not be read:\n  {}", detail.len(), detail.join("\n  "));
    }
    let acc = score(&out.mean, &labels, out.average)?;
    let members = ens
        .members
        .iter()
        .zip(&out.members)
        .map(|(m, v)| Ok((m.path.display().to_string(), score(v, &labels, out.average)?.finish())))
        .collect::<Result<Vec<_>>>()?;
    Ok(Evaluation { classes: out.classes.clone(), ensemble: acc.finish(), members, confusion: acc.confusion().to_vec(), average: out.average })
}

/// The evaluation report: confusion.csv/png, per_class.csv/png, most_confused.csv and
/// metrics.json (the confusion-matrix metrics, with every member's and the ensemble's top-1,
/// top-5, macro accuracy and loss under `"extra"`), drawn by the shared report module.
pub fn write_report(dir: &Path, eval: &Evaluation) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let extra = serde_json::to_value(eval)?;
    sorbier::report::evaluation::render_with_metrics(dir, &eval.classes, &eval.confusion, None, Some(&extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_by_name_and_unknown_is_an_error() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let model = s(&["a", "b", "c"]);
        assert_eq!(map_classes(&s(&["a", "c"]), &model, Path::new("d")).unwrap(), vec![0, 2]);
        let err = map_classes(&s(&["a", "z"]), &model, Path::new("d")).unwrap_err().to_string();
        assert!(err.contains("\"z\""), "{err}");
    }
}
