//! The submission CSV (`image_name,class`, the class as its training folder name, optionally
//! the `K` best classes and their probabilities) and its `<out>.skipped.csv` report, as
//! `predict`, `merge` and `blend` write them.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::engine::ensemble::{top_k, Outputs};

/// `<out>.skipped.csv` next to the submission.
pub fn skipped_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".skipped.csv");
    PathBuf::from(s)
}

pub fn check_out_dir(p: &Path) -> Result<()> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("cannot write {}: folder {} does not exist", p.display(), parent.display());
    }
    Ok(())
}

/// Refuses a `--top-k` of 0 or of more than the `classes` the model has.
pub fn check_top_k(k: usize, classes: usize) -> Result<()> {
    if k == 0 {
        bail!("--top-k must be at least 1");
    }
    if k > classes {
        bail!("--top-k {k} is more than the model's {classes} classes");
    }
    Ok(())
}

/// Writes the submission (rows `names`, classes from `out`) and, when rows were `skipped`,
/// `<path>.skipped.csv` listing them (a stale list from an earlier run is removed).
pub fn write_outputs(path: &Path, names: &[String], out: &Outputs, top_k: Option<usize>, skipped: &[(usize, String)]) -> Result<()> {
    write_submission(path, names, out, top_k, skipped)?;
    let skipped_file = skipped_path(path);
    if skipped.is_empty() {
        // A report from an earlier run would describe a submission that no longer exists.
        if skipped_file.exists() {
            std::fs::remove_file(&skipped_file).with_context(|| format!("cannot remove stale {}", skipped_file.display()))?;
        }
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["image_name", "reason"])?;
    for (i, why) in skipped {
        w.write_record([names[*i].as_str(), why.as_str()])?;
    }
    sorbier::run::write_atomic(&skipped_file, &w.into_inner().context("csv buffer")?)
}

fn write_submission(path: &Path, names: &[String], out: &Outputs, k: Option<usize>, skipped: &[(usize, String)]) -> Result<()> {
    let skip: HashSet<usize> = skipped.iter().map(|s| s.0).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["image_name".to_string(), "class".to_string()];
    if let Some(k) = k {
        header.extend((1..=k).map(|j| format!("class_{j}")));
        header.extend((1..=k).map(|j| format!("score_{j}")));
    }
    w.write_record(&header)?;
    for (i, name) in names.iter().enumerate() {
        let mut rec = vec![name.clone()];
        if skip.contains(&i) {
            rec.resize(header.len(), String::new());
        } else {
            let probs = out.probs(i);
            let best = top_k(&probs, k.unwrap_or(1));
            rec.push(out.classes[best[0]].clone());
            if k.is_some() {
                rec.extend(best.iter().map(|&j| out.classes[j].clone()));
                rec.extend(best.iter().map(|&j| format!("{:.6}", probs[j])));
            }
        }
        w.write_record(&rec)?;
    }
    let bytes = w.into_inner().context("csv buffer")?;
    sorbier::run::write_atomic(path, &bytes).with_context(|| format!("cannot write submission {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_report_sits_beside_the_submission() {
        assert_eq!(skipped_path(Path::new("out/sub.csv")), PathBuf::from("out/sub.csv.skipped.csv"));
    }
}
