//! The numbers behind the pictures: row-normalised confusion, class order by size, per-class
//! accuracy, most-confused pairs (fastai's `most_confused`), and the CSV files a run directory
//! holds (`history.csv`, `best_confusion.csv`, `best_per_class.csv`), read and written here so
//! that every picture has a table beside it with the same numbers.
//!
//! Conventions follow scikit-learn's `confusion_matrix`: rows are the true class, columns the
//! prediction; per-class accuracy is the recall of the row.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::run::HistoryRow;

/// Each row divided by its sum (a row with no images stays all zero).
pub fn row_normalise(cm: &[Vec<usize>]) -> Vec<Vec<f64>> {
    cm.iter()
        .map(|row| {
            let total: usize = row.iter().sum();
            row.iter().map(|&v| if total == 0 { 0.0 } else { v as f64 / total as f64 }).collect()
        })
        .collect()
}

/// Class indices from the largest class to the smallest; ties by name so the order is stable.
pub fn order_by_size(sizes: &[usize], names: &[String]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..sizes.len()).collect();
    idx.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then_with(|| names.get(a).cmp(&names.get(b))));
    idx
}

/// The matrix with rows and columns both reordered: `out[i][j] = cm[order[i]][order[j]]`.
pub fn permute(cm: &[Vec<usize>], order: &[usize]) -> Vec<Vec<usize>> {
    order.iter().map(|&i| order.iter().map(|&j| cm[i][j]).collect()).collect()
}

/// Checks that `cm` is square and matches the class list.
pub fn check_square(cm: &[Vec<usize>], classes: usize) -> Result<()> {
    if cm.len() != classes {
        bail!("confusion matrix has {} rows for {classes} classes", cm.len());
    }
    if let Some((i, row)) = cm.iter().enumerate().find(|(_, r)| r.len() != classes) {
        bail!("confusion matrix row {i} has {} columns for {classes} classes", row.len());
    }
    Ok(())
}

/// One off-diagonal cell, named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusedPair {
    pub actual: String,
    pub predicted: String,
    pub count: usize,
    /// count / images of the actual class.
    pub share_of_actual: f64,
}

/// Off-diagonal cells with a count of at least one, most frequent first, then by share of the
/// actual class, then by names; at most `limit`.
pub fn most_confused(classes: &[String], cm: &[Vec<usize>], limit: usize) -> Vec<ConfusedPair> {
    let mut out: Vec<ConfusedPair> = crate::metrics::most_confused(cm, 1)
        .into_iter()
        .map(|c| ConfusedPair {
            actual: classes[c.actual].clone(),
            predicted: classes[c.predicted].clone(),
            count: c.count,
            share_of_actual: c.count as f64 / cm[c.actual].iter().sum::<usize>() as f64,
        })
        .collect();
    out.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then(y.share_of_actual.total_cmp(&x.share_of_actual))
            .then_with(|| x.actual.cmp(&y.actual))
            .then_with(|| x.predicted.cmp(&y.predicted))
    });
    out.truncate(limit);
    out
}

/// One row of `per_class.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerClass {
    pub class: String,
    /// Training images of the class, when known.
    pub train_size: Option<usize>,
    /// Scored images of the class (the confusion row sum).
    pub support: usize,
    pub correct: usize,
    /// correct / support; empty when support is 0.
    pub accuracy: Option<f64>,
}

/// Per-class recall from a confusion matrix, in class order.
pub fn per_class(classes: &[String], cm: &[Vec<usize>], train_sizes: Option<&[usize]>) -> Vec<PerClass> {
    cm.iter()
        .enumerate()
        .map(|(i, row)| {
            let support: usize = row.iter().sum();
            let correct = row.get(i).copied().unwrap_or(0);
            PerClass {
                class: classes[i].clone(),
                train_size: train_sizes.and_then(|s| s.get(i).copied()),
                support,
                correct,
                accuracy: (support > 0).then(|| correct as f64 / support as f64),
            }
        })
        .collect()
}

/// What a confusion matrix alone says about a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMetrics {
    pub classes: usize,
    /// Images scored.
    pub n: usize,
    /// The diagonal sum.
    pub correct: usize,
    pub top1: f64,
    /// Mean recall over the classes with at least one image (scikit-learn's balanced accuracy).
    pub macro_acc: f64,
}

pub fn confusion_metrics(cm: &[Vec<usize>]) -> ConfusionMetrics {
    let n: usize = cm.iter().flatten().sum();
    let correct: usize = cm.iter().enumerate().map(|(i, r)| r.get(i).copied().unwrap_or(0)).sum();
    let recalls: Vec<f64> = cm
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let t: usize = r.iter().sum();
            (t > 0).then(|| r.get(i).copied().unwrap_or(0) as f64 / t as f64)
        })
        .collect();
    ConfusionMetrics {
        classes: cm.len(),
        n,
        correct,
        top1: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        macro_acc: if recalls.is_empty() { 0.0 } else { recalls.iter().sum::<f64>() / recalls.len() as f64 },
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("nan") {
        Some(f64::NAN)
    } else {
        s.parse().ok()
    }
}

/// Reads `history.csv` leniently for drawing: columns found by name, unknown columns ignored,
/// missing ones NaN (the trainer's strict reader is `run::read_history`).
pub fn read_history(path: &Path) -> Result<Vec<HistoryRow>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let headers = rdr.headers().with_context(|| format!("cannot read the header of {}", path.display()))?.clone();
    let col: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h.trim(), i)).collect();
    if !col.contains_key("epoch") {
        bail!("{} has no `epoch` column (header: {})", path.display(), headers.iter().collect::<Vec<_>>().join(","));
    }
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: cannot read row {}", path.display(), i + 2))?;
        let get = |name: &str| -> Result<f64> {
            match col.get(name).and_then(|&c| rec.get(c)) {
                None => Ok(f64::NAN),
                Some(s) => parse_f64(s).with_context(|| format!("{} row {}: `{name}` is not a number: {s:?}", path.display(), i + 2)),
            }
        };
        let epoch = get("epoch")?;
        if !(epoch >= 0.0 && epoch.fract() == 0.0) {
            bail!("{} row {}: `epoch` is not a whole number: {epoch}", path.display(), i + 2);
        }
        rows.push(HistoryRow {
            epoch: epoch as usize,
            lr: get("lr")?,
            train_loss: get("train_loss")?,
            train_acc: get("train_acc")?,
            val_loss: get("val_loss")?,
            val_top1: get("val_top1")?,
            val_top5: get("val_top5")?,
            val_macro_acc: get("val_macro_acc")?,
            train_images_per_s: get("train_images_per_s")?,
            seconds: get("seconds")?,
            ema_val_loss: get("ema_val_loss")?,
            ema_val_top1: get("ema_val_top1")?,
            ema_val_top5: get("ema_val_top5")?,
            ema_val_macro_acc: get("ema_val_macro_acc")?,
        });
    }
    Ok(rows)
}

/// Reads a confusion CSV: header `true\pred,<classes...>`, then one row `<class>,<counts...>`
/// per class in the same order. Returns (classes, matrix).
pub fn read_confusion(path: &Path) -> Result<(Vec<String>, Vec<Vec<usize>>)> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut records = rdr.records();
    let header = match records.next() {
        Some(r) => r.with_context(|| format!("cannot read the header of {}", path.display()))?,
        None => bail!("{} is empty", path.display()),
    };
    let classes: Vec<String> = header.iter().skip(1).map(|s| s.to_string()).collect();
    if classes.is_empty() {
        bail!("{}: the header names no classes", path.display());
    }
    let mut cm = Vec::with_capacity(classes.len());
    for (i, rec) in records.enumerate() {
        let row = i + 2;
        let rec = rec.with_context(|| format!("{}: cannot read row {row}", path.display()))?;
        if rec.len() != classes.len() + 1 {
            bail!("{} row {row}: {} fields, expected {} (a class name and {} counts)", path.display(), rec.len(), classes.len() + 1, classes.len());
        }
        let name = rec.get(0).unwrap_or("");
        if classes.get(i).map(String::as_str) != Some(name) {
            bail!("{} row {row}: class {name:?} does not match column {:?} of the header", path.display(), classes.get(i));
        }
        let counts = rec
            .iter()
            .skip(1)
            .map(|s| s.trim().parse::<usize>().with_context(|| format!("{} row {row}: {s:?} is not a count", path.display())))
            .collect::<Result<Vec<_>>>()?;
        cm.push(counts);
    }
    if cm.len() != classes.len() {
        bail!("{}: {} rows for {} classes in the header", path.display(), cm.len(), classes.len());
    }
    Ok((classes, cm))
}

/// Writes a confusion matrix in the format [`read_confusion`] reads.
pub fn write_confusion(path: &Path, classes: &[String], cm: &[Vec<usize>]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["true\\pred".to_string()];
    header.extend(classes.iter().cloned());
    w.write_record(&header).with_context(|| format!("cannot write {}", path.display()))?;
    for (name, row) in classes.iter().zip(cm) {
        let mut rec = vec![name.clone()];
        rec.extend(row.iter().map(|v| v.to_string()));
        w.write_record(&rec).with_context(|| format!("cannot write {}", path.display()))?;
    }
    finish_csv(path, w)
}

/// Writes the CSV atomically (temp file + rename), like every file of a run directory.
fn finish_csv(path: &Path, w: csv::Writer<Vec<u8>>) -> Result<()> {
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    crate::run::write_atomic(path, &bytes)
}

/// Reads `per_class.csv` / `best_per_class.csv` (class,train_size,support,correct,accuracy).
pub fn read_per_class(path: &Path) -> Result<Vec<PerClass>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, rec) in rdr.deserialize::<PerClass>().enumerate() {
        rows.push(rec.with_context(|| format!("{} row {}: expected class,train_size,support,correct,accuracy", path.display(), i + 2))?);
    }
    Ok(rows)
}

pub fn write_per_class(path: &Path, rows: &[PerClass]) -> Result<()> {
    write_rows(path, rows)
}

pub fn write_most_confused(path: &Path, rows: &[ConfusedPair]) -> Result<()> {
    if rows.is_empty() {
        // serde writes no header for no rows; keep the header so the file is self-describing.
        return crate::run::write_atomic(path, b"actual,predicted,count,share_of_actual\n");
    }
    write_rows(path, rows)
}

fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).with_context(|| format!("cannot write {}", path.display()))?;
    }
    finish_csv(path, w)
}

/// Pixel layout of a confusion heatmap for `n` classes: (cell size, label font size, label
/// stride). The matrix aims at about 1800 px, but cells never go below 6 px, so past 300
/// classes the picture grows instead; labels are at most one cell high and at least 8 px, and
/// when cells are smaller than that every `stride`-th label is shown.
pub fn heatmap_layout(n: usize) -> (u32, u32, usize) {
    let n = n.max(1) as u32;
    let cell = (1800 / n).clamp(6, 48);
    let font = cell.saturating_sub(1).clamp(8, 16);
    let stride = font.div_ceil(cell).max(1) as usize;
    (cell, font, stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalise_rows_and_empty_row() {
        let cm = vec![vec![3, 1], vec![0, 0]];
        assert_eq!(row_normalise(&cm), vec![vec![0.75, 0.25], vec![0.0, 0.0]]);
    }

    #[test]
    fn order_by_size_descending_ties_by_name() {
        let n = names(&["b", "a", "c", "10"]);
        assert_eq!(order_by_size(&[5, 5, 9, 1], &n), vec![2, 1, 0, 3]);
    }

    #[test]
    fn permute_moves_rows_and_columns_together() {
        let cm = vec![vec![1, 2], vec![3, 4]];
        assert_eq!(permute(&cm, &[1, 0]), vec![vec![4, 3], vec![2, 1]]);
    }

    #[test]
    fn most_confused_sorted_and_limited() {
        let n = names(&["a", "b", "c"]);
        let cm = vec![vec![5, 2, 0], vec![2, 1, 0], vec![1, 3, 0]];
        let m = most_confused(&n, &cm, 10);
        let got: Vec<(&str, &str, usize)> = m.iter().map(|p| (p.actual.as_str(), p.predicted.as_str(), p.count)).collect();
        // c→b 3 first; then the two 2s, b→a (2 of 3) before a→b (2 of 7); then c→a.
        assert_eq!(got, vec![("c", "b", 3), ("b", "a", 2), ("a", "b", 2), ("c", "a", 1)]);
        assert!((m[1].share_of_actual - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(most_confused(&n, &cm, 2).len(), 2);
        // The diagonal is never a confusion.
        assert!(m.iter().all(|p| p.actual != p.predicted));
    }

    #[test]
    fn per_class_and_metrics_agree() {
        let n = names(&["a", "b", "c"]);
        let cm = vec![vec![5, 2, 0], vec![2, 1, 0], vec![0, 0, 0]];
        let rows = per_class(&n, &cm, Some(&[70, 30, 1]));
        assert_eq!(rows[0].correct, 5);
        assert_eq!(rows[0].support, 7);
        assert_eq!(rows[1].train_size, Some(30));
        assert_eq!(rows[2].accuracy, None);
        let m = confusion_metrics(&cm);
        assert_eq!((m.n, m.correct), (10, 6));
        assert_eq!(m.correct, rows.iter().map(|r| r.correct).sum::<usize>());
        assert!((m.top1 - 0.6).abs() < 1e-12);
        // Class c has no images: the macro average is over a and b only.
        assert!((m.macro_acc - (5.0 / 7.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_csv_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cm.csv");
        let n = names(&["10", "b,c", "d"]);
        let cm = vec![vec![1, 0, 2], vec![0, 3, 0], vec![4, 0, 5]];
        write_confusion(&p, &n, &cm).unwrap();
        assert_eq!(read_confusion(&p).unwrap(), (n, cm));
        std::fs::write(&p, "true\\pred,a,b\na,1,x\nb,0,1\n").unwrap();
        let e = format!("{:#}", read_confusion(&p).unwrap_err());
        assert!(e.contains("cm.csv") && e.contains("row 2"), "{e}");
        std::fs::write(&p, "true\\pred,a,b\na,1,0\n").unwrap();
        assert!(format!("{:#}", read_confusion(&p).unwrap_err()).contains("1 rows for 2 classes"));
    }

    #[test]
    fn history_reads_by_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("history.csv");
        std::fs::write(&p, "epoch,val_top1,train_loss,extra\n1,0.5,2.0,x\n2,,1.5,y\n").unwrap();
        let h = read_history(&p).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].train_loss, 1.5);
        assert!(h[1].val_top1.is_nan() && h[0].lr.is_nan());
        std::fs::write(&p, "epoch,train_loss\n1,abc\n").unwrap();
        let e = format!("{:#}", read_history(&p).unwrap_err());
        assert!(e.contains("history.csv row 2") && e.contains("train_loss"), "{e}");
    }

    #[test]
    fn heatmap_layout_scales() {
        let (c5, f5, s5) = heatmap_layout(5);
        assert_eq!((c5, s5), (48, 1));
        assert!(f5 <= c5);
        // 153 classes: every label shown, one cell high.
        let (c153, f153, s153) = heatmap_layout(153);
        assert_eq!((c153, f153, s153), (11, 10, 1));
        // Many more classes: cells stay 6 px and every second label is shown.
        let (c1000, f1000, s1000) = heatmap_layout(1000);
        assert_eq!((c1000, f1000, s1000), (6, 8, 2));
    }
}
