//! `predictor evaluate --report DIR`: the confusion matrix, per-class accuracy against class
//! size, and the most-confused pairs of a model or an ensemble on labelled images — fastai's
//! `ClassificationInterpretation` (`plot_confusion_matrix`, `most_confused`) as files.
//!
//! The same pieces serve the trainer's run directory ([`super::training`]), so a confusion
//! picture looks the same whichever stage drew it.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::draw;
use super::tables::{self, ConfusionMetrics, PerClass};

/// Rows kept in `most_confused.csv`.
pub const MOST_CONFUSED_ROWS: usize = 100;

/// Writes `confusion.csv`, `confusion.png`, `per_class.csv`, `per_class.png`,
/// `most_confused.csv` and `metrics.json` into `out_dir` (created if needed) and returns their
/// paths.
///
/// `confusion[true][predicted]` counts, in the order of `classes`. `class_sizes` (e.g. the
/// training images per class, from the model's metadata when known) orders the heatmap and is
/// the x axis of the per-class picture; without it, the evaluated images per class are used.
pub fn render(out_dir: &Path, classes: &[String], confusion: &[Vec<usize>], class_sizes: Option<&[usize]>) -> Result<Vec<PathBuf>> {
    render_with_metrics(out_dir, classes, confusion, class_sizes, None)
}

/// [`render`], with more metrics (e.g. top-5 and loss, which a confusion matrix cannot give)
/// merged into `metrics.json` under `"extra"`.
pub fn render_with_metrics(
    out_dir: &Path,
    classes: &[String],
    confusion: &[Vec<usize>],
    class_sizes: Option<&[usize]>,
    extra: Option<&serde_json::Value>,
) -> Result<Vec<PathBuf>> {
    tables::check_square(confusion, classes.len())?;
    if let Some(s) = class_sizes {
        if s.len() != classes.len() {
            anyhow::bail!("{} class sizes for {} classes", s.len(), classes.len());
        }
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create report folder {}", out_dir.display()))?;
    let mut written = Vec::new();

    let p = out_dir.join("confusion.csv");
    tables::write_confusion(&p, classes, confusion)?;
    written.push(p);

    let rows = tables::per_class(classes, confusion, class_sizes);
    let p = out_dir.join("per_class.csv");
    tables::write_per_class(&p, &rows)?;
    written.push(p);

    written.extend(confusion_pictures(out_dir, classes, confusion, &rows, "")?);

    #[derive(Serialize)]
    struct MetricsFile<'a> {
        #[serde(flatten)]
        metrics: ConfusionMetrics,
        #[serde(skip_serializing_if = "Option::is_none")]
        extra: Option<&'a serde_json::Value>,
    }
    let p = out_dir.join("metrics.json");
    let json = serde_json::to_string_pretty(&MetricsFile { metrics: tables::confusion_metrics(confusion), extra })?;
    crate::run::write_atomic(&p, json.as_bytes())?;
    written.push(p);
    Ok(written)
}

/// `confusion.png`, `per_class.png` and `most_confused.csv` from a confusion matrix and its
/// per-class rows (whose `train_size`, when present, orders and places the classes).
pub(crate) fn confusion_pictures(out_dir: &Path, classes: &[String], cm: &[Vec<usize>], rows: &[PerClass], title_note: &str) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let sizes: Vec<usize> = rows.iter().map(|r| r.train_size.unwrap_or(r.support)).collect();
    let size_name = if rows.iter().all(|r| r.train_size.is_some()) { "training images" } else { "images evaluated" };
    let order = tables::order_by_size(&sizes, classes);
    let names: Vec<String> = order.iter().map(|&i| classes[i].clone()).collect();
    let sorted_sizes: Vec<usize> = order.iter().map(|&i| sizes[i]).collect();
    let sorted = tables::permute(cm, &order);
    let norm = tables::row_normalise(&sorted);
    let m = tables::confusion_metrics(cm);
    let p = out_dir.join("confusion.png");
    draw::heatmap(
        &p,
        &format!("Confusion matrix{title_note}: top-1 {:.3}, macro {:.3}, {} images", m.top1, m.macro_acc, m.n),
        &format!("rows: true class ({size_name} in brackets, largest first); columns: predicted; colour: share of the row"),
        &names,
        &sorted_sizes,
        &sorted,
        &norm,
    )?;
    written.push(p);

    let label_points = classes.len() <= 30;
    let points: Vec<draw::Point> = rows
        .iter()
        .zip(&sizes)
        .filter_map(|(r, &s)| r.accuracy.map(|a| draw::Point { x: s as f64, y: a, label: label_points.then(|| r.class.clone()) }))
        .collect();
    let p = out_dir.join("per_class.png");
    draw::scatter(
        &p,
        &draw::ScatterSpec {
            title: &format!("Per-class accuracy against class size{title_note}"),
            x_desc: &format!("{size_name} (log scale)"),
            y_desc: "accuracy (recall) of the class",
            log_x: true,
            y_range: Some((-0.03, 1.05)),
            x_range: None,
            hline: Some((m.macro_acc, format!("macro average {:.3}", m.macro_acc))),
            diagonal: false,
            point_alpha: 0.75,
        },
        &points,
    )?;
    written.push(p);

    let p = out_dir.join("most_confused.csv");
    tables::write_most_confused(&p, &tables::most_confused(classes, cm, MOST_CONFUSED_ROWS))?;
    written.push(p);
    Ok(written)
}
