//! `predictor evaluate`: a model or an ensemble on a labelled ImageFolder — top-1, top-5,
//! macro-average accuracy, per-class accuracy and the most-confused pairs (fastai's
//! `ClassificationInterpretation`), for each member and for the ensemble.
//!
//! The folder's classes are matched to the model's by name (a folder may hold a subset of the
//! model's classes); a folder class the model does not know is an error.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::data::Dataset;
use crate::metrics::{most_confused, per_class_accuracy, Metrics, MetricsAccumulator};
use crate::predict::ensemble::{list, Average};
use crate::predict::ModelArgs;

#[derive(Clone, Debug, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled ImageFolder (<data>/<class>/<images>); a competition root with train/ is not assumed.
    #[arg(long)]
    pub data: PathBuf,
    /// Write confusion.csv/png, per_class.csv/png, most_confused.csv and metrics.json here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What `evaluate` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub classes: Vec<String>,
    pub ensemble: Metrics,
    /// (model path, its metrics) for each member.
    pub members: Vec<(String, Metrics)>,
    /// `cm[true][predicted]` of the ensemble, in model class order.
    pub confusion: Vec<Vec<usize>>,
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
fn score(values: &[f32], c: usize, labels: &[usize], average: Average) -> Result<MetricsAccumulator> {
    let mut acc = MetricsAccumulator::new(c);
    match average {
        Average::Logits => acc.push(values, labels)?,
        Average::Probs => acc.push(&values.iter().map(|p| p.max(1e-30).ln()).collect::<Vec<_>>(), labels)?,
    }
    Ok(acc)
}

pub fn run(args: &EvaluateArgs) -> Result<Evaluation> {
    let data = Dataset::scan(&args.data)?;
    if let Some(r) = &args.report {
        std::fs::create_dir_all(r).with_context(|| format!("cannot create report folder {}", r.display()))?;
    }
    let mut ens = args.model.open()?;
    let to_model = map_classes(&data.classes, &ens.classes, &args.data)?;
    let labels: Vec<usize> = data.samples.iter().map(|s| to_model[s.label]).collect();
    let paths: Arc<[PathBuf]> = data.paths().into();
    let out = ens.run(paths, args.model.tta, &args.model.pipeline(), !args.model.quiet)?;
    if !out.failed.is_empty() {
        let detail: Vec<String> = out.failed.iter().map(|(_, e)| e.clone()).collect();
        bail!("{} image(s) could not be read:\n  {}", detail.len(), detail.join("\n  "));
    }
    let c = out.c();
    let acc = score(&out.mean, c, &labels, out.average)?;
    let members = ens
        .members
        .iter()
        .zip(&out.members)
        .map(|(m, v)| Ok((m.path.display().to_string(), score(v, c, &labels, out.average)?.finish())))
        .collect::<Result<Vec<_>>>()?;
    let eval = Evaluation { classes: out.classes.clone(), ensemble: acc.finish(), members, confusion: acc.confusion().to_vec() };

    let line = |name: &str, m: &Metrics| {
        println!("{name:<40} top-1 {:.4}  top-5 {:.4}  macro {:.4}  loss {:.4}  (n={})", m.top1, m.top5, m.macro_acc, m.loss.unwrap_or(f64::NAN), m.n)
    };
    if eval.members.len() > 1 {
        for (p, m) in &eval.members {
            line(p, m);
        }
        line(&format!("ensemble ({:?} average)", out.average).to_lowercase(), &eval.ensemble);
    } else {
        line(&eval.members[0].0, &eval.ensemble);
    }
    println!("per class (accuracy, images):");
    let per = per_class_accuracy(&eval.confusion);
    for (i, name) in eval.classes.iter().enumerate() {
        let total: usize = eval.confusion[i].iter().sum();
        if total > 0 {
            println!("  {name:<24} {:.3}  {total}", per[i].unwrap_or(0.0));
        }
    }
    let confused = most_confused(&eval.confusion, 1);
    if !confused.is_empty() {
        println!("most confused (actual → predicted, images):");
        for x in confused.iter().take(10) {
            println!("  {} → {}  {}", eval.classes[x.actual], eval.classes[x.predicted], x.count);
        }
    }
    if let Some(dir) = &args.report {
        for p in write_report(dir, &eval)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(eval)
}

/// The evaluation report: confusion.csv/png, per_class.csv/png, most_confused.csv and
/// metrics.json (the confusion-matrix metrics, with every member's and the ensemble's top-1,
/// top-5, macro accuracy and loss under `"extra"`), drawn by the shared report module.
pub fn write_report(dir: &Path, eval: &Evaluation) -> Result<Vec<std::path::PathBuf>> {
    let extra = serde_json::to_value(eval)?;
    crate::report::evaluation::render_with_metrics(dir, &eval.classes, &eval.confusion, None, Some(&extra))
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
