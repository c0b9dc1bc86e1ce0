//! `predictor score`: a submission against a solution, both `image_name,class` CSVs (header
//! row first). Accuracy and macro-average accuracy (mean per-class recall over the classes of
//! the solution, scikit-learn's `balanced_accuracy_score`). Rows must match one to one: missing
//! rows, extra rows and duplicate names are errors that list them, never silently scored.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::engine::ensemble::list;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Score {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub macro_accuracy: f64,
    /// Per solution class: (class, images, correct).
    pub per_class: Vec<(String, usize, usize)>,
}

/// Rows of an `image_name,class` CSV, in file order; duplicate names are an error listing them.
pub fn read_rows(path: &Path) -> Result<Vec<(String, String)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("cannot read {}", path.display()))?;
        let name = rec.get(0).unwrap_or("").trim().to_string();
        if name.is_empty() {
            bail!("{} row {}: empty image name", path.display(), i + 2);
        }
        let class = rec.get(1).unwrap_or("").trim().to_string();
        if !seen.insert(name.clone()) {
            dups.push(name.clone());
        }
        rows.push((name, class));
    }
    if !dups.is_empty() {
        bail!("{}: {} image name(s) listed more than once: {}", path.display(), dups.len(), list(&dups));
    }
    Ok(rows)
}

/// Scores `submission` rows against `solution` rows.
pub fn score_rows(submission: &[(String, String)], solution: &[(String, String)]) -> Result<Score> {
    let sub: HashMap<&str, &str> = submission.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
    let sol: HashSet<&str> = solution.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&str> = solution.iter().map(|(n, _)| n.as_str()).filter(|n| !sub.contains_key(n)).collect();
    let extra: Vec<&str> = submission.iter().map(|(n, _)| n.as_str()).filter(|n| !sol.contains(n)).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("{} row(s) of the solution are missing from the submission: {}", missing.len(), list(&missing)));
    }
    if !extra.is_empty() {
        problems.push(format!("{} row(s) of the submission are not in the solution: {}", extra.len(), list(&extra)));
    }
    if !problems.is_empty() {
        bail!(problems.join("; "));
    }
    if solution.is_empty() {
        bail!("the solution has no rows");
    }
    let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut correct = 0;
    for (name, truth) in solution {
        let hit = sub.get(name.as_str()) == Some(&truth.as_str());
        let e = per.entry(truth.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(hit);
        correct += usize::from(hit);
    }
    let n = solution.len();
    let macro_accuracy = per.values().map(|&(t, c)| c as f64 / t as f64).sum::<f64>() / per.len() as f64;
    Ok(Score {
        n,
        correct,
        accuracy: correct as f64 / n as f64,
        macro_accuracy,
        per_class: per.into_iter().map(|(k, (t, c))| (k.to_string(), t, c)).collect(),
    })
}

/// Scores the submission file against the solution file.
pub fn score_files(submission: &Path, solution: &Path) -> Result<Score> {
    let sub = read_rows(submission)?;
    let sol = read_rows(solution)?;
    score_rows(&sub, &sol).with_context(|| format!("cannot score {} against {}", submission.display(), solution.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn scores_and_macro_average() {
        let sol = rows(&[("a", "x"), ("b", "x"), ("c", "x"), ("d", "y")]);
        let sub = rows(&[("d", "y"), ("c", "y"), ("b", "x"), ("a", "x")]);
        let s = score_rows(&sub, &sol).unwrap();
        assert_eq!((s.n, s.correct), (4, 3));
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        // x: 2/3, y: 1/1 → (2/3 + 1)/2
        assert!((s.macro_accuracy - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn missing_and_extra_rows_are_listed() {
        let sol = rows(&[("a", "x"), ("b", "x")]);
        let err = score_rows(&rows(&[("a", "x"), ("z", "x")]), &sol).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("\"b\"") && err.contains("not in the solution") && err.contains("\"z\""), "{err}");
    }
}
