//! Pictures of a training run, drawn from the CSV files the trainer writes into its run
//! directory, so that they can be redrawn at any time (after each epoch, or later by hand):
//!
//! ```text
//! history.csv          epoch,lr,train_loss,train_acc,val_loss,val_top1,val_top5,val_macro_acc,…
//! best_confusion.csv   true\pred,<classes…> / <class>,<counts…>   (optional)
//! best_per_class.csv   class,train_size,support,correct,accuracy  (optional)
//!   ↓
//! curves.png           loss | accuracy | learning rate, per epoch, train and validation
//! confusion.png        row-normalised heatmap of the best epoch, classes by training size
//! per_class.png        per-class accuracy against training size (log x)
//! most_confused.csv    the off-diagonal cells, largest first
//! report.html          the pictures and the top of each table on one page
//! ```
//! The curves follow what timm and the reference notebook plot (loss and accuracy, train vs
//! validation); the LR gets its own log-scale panel rather than a second axis, which stays
//! readable when step schedules drop it by 10×.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::draw::{self, Panel, Series, PALETTE};
use super::evaluation;
use super::tables::{self, PerClass};
use crate::run::HistoryRow;

pub const HISTORY: &str = "history.csv";
pub const BEST_CONFUSION: &str = "best_confusion.csv";
pub const BEST_PER_CLASS: &str = "best_per_class.csv";

/// Draws every picture the files in `run_dir` allow and returns the paths written.
///
/// `history.csv` must exist; without the confusion and per-class files (no validation yet)
/// those pictures are skipped. A malformed CSV is an error naming the file; so is a per-class
/// file whose correct counts disagree with the confusion matrix's diagonal.
pub fn render_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let hist_path = run_dir.join(HISTORY);
    if !hist_path.is_file() {
        bail!("no {} in run directory {} (nothing to draw before the first epoch)", HISTORY, run_dir.display());
    }
    let history = tables::read_history(&hist_path)?;
    let mut written = Vec::new();
    let p = run_dir.join("curves.png");
    curves(&p, &history, &run_name(run_dir)).with_context(|| format!("cannot draw {}", p.display()))?;
    written.push(p);

    let cm_path = run_dir.join(BEST_CONFUSION);
    let pc_path = run_dir.join(BEST_PER_CLASS);
    let per_class = if pc_path.is_file() { Some(tables::read_per_class(&pc_path)?) } else { None };
    let mut top_confused = Vec::new();
    if cm_path.is_file() {
        let (classes, cm) = tables::read_confusion(&cm_path)?;
        let rows = match &per_class {
            Some(pc) => {
                check_agree(&classes, &cm, pc, &cm_path, &pc_path)?;
                pc.clone()
            }
            None => tables::per_class(&classes, &cm, None),
        };
        written.extend(evaluation::confusion_pictures(run_dir, &classes, &cm, &rows, " (best epoch, validation)")?);
        top_confused = tables::most_confused(&classes, &cm, 15);
    } else if let Some(pc) = &per_class {
        // Per-class numbers without a matrix: the scatter alone.
        let p = run_dir.join("per_class.png");
        per_class_only(&p, pc)?;
        written.push(p);
    }

    let p = run_dir.join("report.html");
    crate::run::write_atomic(&p, html(run_dir, &history, &written, &top_confused).as_bytes())?;
    written.push(p);
    Ok(written)
}

fn run_name(run_dir: &Path) -> String {
    run_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| run_dir.display().to_string())
}

fn check_agree(classes: &[String], cm: &[Vec<usize>], pc: &[PerClass], cm_path: &Path, pc_path: &Path) -> Result<()> {
    for (i, name) in classes.iter().enumerate() {
        let Some(row) = pc.iter().find(|r| &r.class == name) else {
            bail!("{} has no row for class {name:?} of {}", pc_path.display(), cm_path.display());
        };
        let support: usize = cm[i].iter().sum();
        if row.correct != cm[i][i] || row.support != support {
            bail!(
                "{} says class {name:?} has {} of {} correct but {} says {} of {support}",
                pc_path.display(),
                row.correct,
                row.support,
                cm_path.display(),
                cm[i][i]
            );
        }
    }
    Ok(())
}

fn series(name: &str, color: usize, h: &[HistoryRow], f: impl Fn(&HistoryRow) -> f64) -> Series {
    Series { name: name.into(), points: h.iter().map(|r| (r.epoch as f64, f(r))).collect(), color: PALETTE[color] }
}

/// Loss, accuracy and LR panels.
pub fn curves(path: &Path, h: &[HistoryRow], run: &str) -> Result<()> {
    let mut panels = vec![
        Panel {
            title: "Loss".into(),
            y_desc: "cross-entropy".into(),
            series: vec![series("train", 0, h, |r| r.train_loss), series("validation", 1, h, |r| r.val_loss)],
            y_range: None,
            log_y: false,
        },
        Panel {
            title: "Accuracy".into(),
            y_desc: "accuracy".into(),
            series: vec![
                series("train", 0, h, |r| r.train_acc),
                series("val top-1", 1, h, |r| r.val_top1),
                series("val top-5", 2, h, |r| r.val_top5),
                series("val macro", 3, h, |r| r.val_macro_acc),
            ],
            y_range: Some((0.0, 1.02)),
            log_y: false,
        },
    ];
    if h.iter().any(|r| r.lr.is_finite() && r.lr > 0.0) {
        panels.push(Panel {
            title: "Learning rate".into(),
            y_desc: "lr (log scale)".into(),
            series: vec![series("lr", 4, h, |r| r.lr)],
            y_range: None,
            log_y: true,
        });
    }
    let last = h.last();
    let title = match last {
        Some(r) if r.val_top1.is_finite() => {
            format!("{run}: {} epochs, last val top-1 {:.3}, macro {:.3}", h.len(), r.val_top1, r.val_macro_acc)
        }
        _ => format!("{run}: {} epochs", h.len()),
    };
    draw::line_panels(path, &title, "epoch", &panels)
}

fn per_class_only(path: &Path, pc: &[PerClass]) -> Result<()> {
    let label = pc.len() <= 30;
    let points: Vec<draw::Point> = pc
        .iter()
        .filter_map(|r| {
            let x = r.train_size.unwrap_or(r.support) as f64;
            r.accuracy.map(|a| draw::Point { x, y: a, label: label.then(|| r.class.clone()) })
        })
        .collect();
    draw::scatter(
        path,
        &draw::ScatterSpec {
            title: "Per-class accuracy against class size",
            x_desc: "training images (log scale)",
            y_desc: "accuracy (recall) of the class",
            log_x: true,
            y_range: Some((-0.03, 1.05)),
            x_range: None,
            hline: None,
            diagonal: false,
            point_alpha: 0.75,
        },
        &points,
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt(v: f64) -> String {
    if v.is_finite() {
        if v != 0.0 && v.abs() < 1e-3 {
            format!("{v:.2e}")
        } else {
            format!("{v:.4}")
        }
    } else {
        String::new()
    }
}

/// One page: pictures (relative links, so the folder can be moved), the history table and the
/// most-confused pairs.
fn html(run_dir: &Path, h: &[HistoryRow], written: &[PathBuf], confused: &[tables::ConfusedPair]) -> String {
    let mut s = String::new();
    let name = esc(&run_name(run_dir));
    s.push_str(&format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{name}</title>\n<style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}img{{max-width:100%}}</style>\n\
         </head><body>\n<h1>Run {name}</h1>\n"
    ));
    for p in written {
        if p.extension().is_some_and(|e| e == "png") {
            let f = esc(&p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
            s.push_str(&format!("<h2>{f}</h2>\n<a href=\"{f}\"><img src=\"{f}\" alt=\"{f}\"></a>\n"));
        }
    }
    s.push_str("<h2>history.csv</h2>\n<table><tr><th>epoch</th><th>lr</th><th>train loss</th><th>train acc</th><th>val loss</th><th>val top-1</th><th>val top-5</th><th>val macro</th></tr>\n");
    for r in h {
        s.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.epoch,
            fmt(r.lr),
            fmt(r.train_loss),
            fmt(r.train_acc),
            fmt(r.val_loss),
            fmt(r.val_top1),
            fmt(r.val_top5),
            fmt(r.val_macro_acc)
        ));
    }
    s.push_str("</table>\n");
    if !confused.is_empty() {
        s.push_str("<h2>Most confused (<a href=\"most_confused.csv\">most_confused.csv</a>)</h2>\n<table><tr><th>actual</th><th>predicted</th><th>images</th><th>share of actual</th></tr>\n");
        for c in confused {
            s.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>\n",
                esc(&c.actual),
                esc(&c.predicted),
                c.count,
                c.share_of_actual
            ));
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}
