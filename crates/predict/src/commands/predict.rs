//! `predictor predict`: a folder of test images → `submission.csv` (`image_name,class`, the
//! class as its training folder name), in the sample submission's row order when one is given.
//!
//! Nothing is dropped silently. A listed image that is missing, or an image that cannot be
//! decoded, is an error naming each one; with `--skip-unreadable` their rows are still written,
//! with an empty class, and listed with the reason in `<out>.skipped.csv`. Images in the folder
//! that the sample submission does not list get no row (they are counted and named).
//!
//! With `--shard K/N` only the K-th contiguous part of the ordered rows is predicted (see
//! [`crate::output::shard`]); its saved logits record which part, for `predictor merge`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use ndarray::Array2;

use sorbier::data::TestSet;
use crate::engine::ensemble::{list, Outputs};
use crate::engine::ModelOptions;
use crate::output::fingerprint::file_sha256;
use crate::output::logits::Provenance;
use crate::output::shard::Shard;
use crate::output::submission::{check_out_dir, check_top_k, skipped_path, write_outputs};

/// What `predictor predict` does.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub model: ModelOptions,
    /// Folder of test images (flat).
    pub images: PathBuf,
    /// CSV whose first column gives the rows and their order.
    pub sample_submission: Option<PathBuf>,
    /// Without `sample_submission`: ignore a `sample_submission.csv` next to the images folder
    /// and use sorted file names.
    pub no_sample_submission: bool,
    /// Output CSV.
    pub out: PathBuf,
    /// Also write the K best classes and their probabilities (class_1..K, score_1..K).
    pub top_k: Option<usize>,
    /// Save averaged and per-model outputs (safetensors) to combine later.
    pub save_logits: Option<PathBuf>,
    /// Write rows of missing or undecodable images with an empty class and list them in
    /// `<out>.skipped.csv`, instead of failing.
    pub skip_unreadable: bool,
    /// Predict only this part of the rows (needs `save_logits`).
    pub shard: Option<Shard>,
}

/// What `predict` wrote.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub rows: usize,
    pub classes: usize,
    pub images_per_s: f64,
    /// Rows written with an empty class (missing or unreadable images).
    pub skipped: usize,
    /// Where they are listed (only when `skipped > 0`).
    pub skipped_file: PathBuf,
}

/// Predicts the test folder and writes the submission (and the saved outputs when asked).
/// `log` receives what the user should hear about on the way (row order source, images
/// without a row, the models opened, …).
pub fn predict(args: &PredictOptions, log: &dyn Fn(&str)) -> Result<Prediction> {
    // Cheap checks first, before loading models.
    check_out_dir(&args.out)?;
    if let Some(p) = &args.save_logits {
        check_out_dir(p)?;
    }
    if let Some(k) = args.top_k {
        check_top_k(k, usize::MAX)?;
    }
    require_logits(args.shard, args.save_logits.as_deref())?;
    let sample = match (&args.sample_submission, args.no_sample_submission) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => args.images.parent().map(|d| d.join("sample_submission.csv")).filter(|p| p.is_file()),
    };
    if let Some(p) = &sample {
        if args.sample_submission.is_none() {
            log(&format!("row order from {} (pass --no-sample-submission to ignore it)", p.display()));
        }
    }
    let mut test = TestSet::scan(&args.images, sample.as_deref())?;
    let shard = args.shard.map(|s| {
        let info = s.info(&test.names);
        let rows = s.range(test.names.len());
        log(&format!("shard {s}: rows {}–{} of {}", rows.start + 1, rows.end, test.names.len()));
        test.names = test.names[rows].to_vec();
        let kept: std::collections::HashSet<&String> = test.names.iter().collect();
        test.missing.retain(|n| kept.contains(n));
        info
    });
    let mut skipped: Vec<(usize, String)> = Vec::new();
    if !test.missing.is_empty() {
        if !args.skip_unreadable {
            bail!(
                "{} image(s) listed in {} are not in {}: {} (pass --skip-unreadable to write their rows with an empty class)",
                test.missing.len(),
                sample.as_deref().unwrap_or(Path::new("?")).display(),
                args.images.display(),
                list(&test.missing)
            );
        }
        for (i, n) in test.names.iter().enumerate() {
            if test.missing.contains(n) {
                skipped.push((i, format!("missing: {} does not exist", args.images.join(n).display())));
            }
        }
    }
    if !test.unlisted.is_empty() {
        log(&format!("note: {} image(s) in {} are not in the sample submission and get no row: {}", test.unlisted.len(), args.images.display(), list(&test.unlisted)));
    }
    if !test.report.is_clean() {
        log(&format!("note: {} in {}", test.report.summary_line(), args.images.display()));
    }

    let mut ens = args.model.open()?;
    for n in &ens.notes {
        log(n);
    }
    log(&ens.summary());
    if let Some(k) = args.top_k {
        check_top_k(k, ens.classes.len())?;
    }
    // Run only the images that exist; map back to rows afterwards.
    let missing: std::collections::HashSet<&String> = test.missing.iter().collect();
    let rows: Vec<usize> = (0..test.names.len()).filter(|&i| !missing.contains(&test.names[i])).collect();
    let paths: Arc<[PathBuf]> = rows.iter().map(|&i| test.root.join(&test.names[i])).collect();
    let out = ens.run(paths, args.model.tta, &args.model.pipeline(), args.model.progress)?;
    if !out.failed.is_empty() && !args.skip_unreadable {
        let detail: Vec<String> = out.failed.iter().map(|(_, e)| e.clone()).collect();
        bail!(
            "{} image(s) could not be read (pass --skip-unreadable to write their rows with an empty class):\n  {}",
            detail.len(),
            detail.join("\n  ")
        );
    }
    skipped.extend(out.failed.iter().map(|(k, e)| (rows[*k], format!("unreadable: {e}"))));
    skipped.sort();

    let full = expand(&out, &rows, test.names.len());
    write_outputs(&args.out, &test.names, &full, args.top_k, &skipped)?;
    if let Some(p) = &args.save_logits {
        let prov = Provenance {
            models: ens.members.iter().map(|m| m.path.display().to_string()).collect(),
            weights: ens.members.iter().map(|m| m.weight).collect(),
            tta: Some(args.model.tta),
            model_sha256: ens.members.iter().map(|m| file_sha256(&m.path)).collect::<Result<_>>()?,
            skipped: skipped.iter().map(|(i, why)| (test.names[*i].clone(), why.clone())).collect(),
            shard,
        };
        crate::output::logits::write(p, &test.names, &full, &prov)?;
        log(&format!("saved outputs to {}", p.display()));
    }
    let skipped_file = skipped_path(&args.out);
    Ok(Prediction { rows: test.names.len(), classes: ens.classes.len(), images_per_s: out.images_per_s, skipped: skipped.len(), skipped_file })
}

/// Check used by `predict --shard`: the saved logits are what `merge` reads.
pub fn require_logits(shard: Option<Shard>, save_logits: Option<&Path>) -> Result<()> {
    if let (Some(s), None) = (shard, save_logits) {
        bail!("--shard {s} needs --save-logits FILE: `predictor merge` joins the shards from their saved logits");
    }
    Ok(())
}

/// Outputs over the images that ran → outputs over all rows (NaN rows for the missing ones).
fn expand(out: &Outputs, rows: &[usize], n: usize) -> Outputs {
    let c = out.c();
    let spread = |m: &Array2<f32>| {
        let mut v = Array2::from_elem((n, c), f32::NAN);
        for (row, &i) in m.rows().into_iter().zip(rows) {
            v.row_mut(i).assign(&row);
        }
        v
    };
    Outputs {
        classes: out.classes.clone(),
        mean: spread(&out.mean),
        members: out.members.iter().map(|m| spread(m)).collect(),
        failed: out.failed.iter().map(|(k, e)| (rows[*k], e.clone())).collect(),
        average: out.average,
        images_per_s: out.images_per_s,
    }
}
