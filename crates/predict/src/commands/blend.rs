//! `predictor blend A.safetensors B.safetensors … --out submission.csv`: combines the saved
//! outputs of earlier runs (`predict --save-logits`, or `merge --save-logits`) without running
//! any model — the Kaggle practice of blending the out-of-fold or test outputs of many models.
//!
//! Each file counts as one member: its `mean` (its own weighted ensemble) is averaged with the
//! other files' by [`weighted_mean`], the function ensembles use, with `--weights` one per
//! file (equal by default), so blending single-model files gives what `predict` gives for the
//! same models as an ensemble with the same weights. The refusals are an ensemble's: files
//! whose class lists differ (the difference shown), files that do not predict the same images
//! (rows are matched by image name, so a different row order is fine, a different set is
//! not). `--average probs` averages softmax probabilities: a file saved as probabilities is
//! used as is, a file of logits without TTA is turned into its members' probabilities (as
//! `predict --average probs` would have averaged them); a TTA run saved as logits cannot be
//! (the mean of the flipped views' probabilities is not in the file), nor can probabilities
//! be turned back into logits — both are refused with what to do instead.
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use ndarray::Array2;

use crate::engine::ensemble::{check_same_classes, check_weights, list, softmax_rows, weighted_mean, Average, Outputs};
use crate::engine::tta::Tta;
use crate::output::fingerprint::file_sha256;
use crate::output::logits::{self, Provenance, SavedLogits};
use crate::output::submission;

/// What `predictor blend` does.
#[derive(Clone, Debug)]
pub struct BlendOptions {
    /// Saved logits of earlier runs.
    pub inputs: Vec<PathBuf>,
    /// One weight per input [None: equal].
    pub weights: Option<Vec<f64>>,
    pub average: Average,
    /// The blended submission.
    pub out: PathBuf,
    /// Also write the K best classes and their probabilities.
    pub top_k: Option<usize>,
    /// Also save the blend's outputs (in the same format, so blends can be blended).
    pub save_logits: Option<PathBuf>,
}

/// What [`blend`] wrote.
#[derive(Clone, Debug)]
pub struct Blended {
    pub rows: usize,
    pub classes: usize,
    pub inputs: usize,
    /// Rows written with an empty class (an input has no outputs for them).
    pub skipped: usize,
}

/// `file`'s outputs (one row per image, in its own row order) in `average` space.
fn in_space(file: &SavedLogits, path: &std::path::Path, average: Average) -> Result<Array2<f32>> {
    let values = match (average, file.average) {
        (Average::Logits, Average::Logits) | (Average::Probs, Average::Probs) => file.mean.clone(),
        (Average::Probs, Average::Logits) if file.tta == Some(Tta::None) => {
            let probs: Vec<Array2<f32>> = file.members.iter().map(|m| softmax_rows(m.view())).collect();
            weighted_mean(&probs, &file.weights)
        }
        (Average::Probs, Average::Logits) => bail!(
            "{} holds logits averaged over --tta {} views; averaging probabilities needs each view's probabilities. \
             Blend with --average logits, or re-run that model with --average probs --save-logits",
            path.display(),
            logits::tta_name(file.tta)
        ),
        (Average::Logits, Average::Probs) => bail!(
            "{} holds probabilities (--average probs), which cannot be turned back into logits; blend with --average probs",
            path.display()
        ),
    };
    Ok(values)
}

/// Blends the inputs into one submission (see the module header).
pub fn blend(o: &BlendOptions) -> Result<Blended> {
    submission::check_out_dir(&o.out)?;
    if let Some(p) = &o.save_logits {
        submission::check_out_dir(p)?;
    }
    if o.inputs.is_empty() {
        bail!("no saved logits given");
    }
    let weights = o.weights.clone().unwrap_or_else(|| vec![1.0; o.inputs.len()]);
    check_weights(&weights, o.inputs.len(), "files")?;
    let files = o.inputs.iter().map(|p| logits::load(p)).collect::<Result<Vec<_>>>()?;
    for (path, f) in o.inputs.iter().zip(&files) {
        if let Some(s) = &f.shard {
            bail!("{} is shard {}/{} of a split run: join the shards first (`predictor merge … --save-logits`)", path.display(), s.index, s.count);
        }
    }
    check_same_classes(&o.inputs.iter().cloned().zip(files.iter().map(|f| f.classes.clone())).collect::<Vec<_>>())?;
    let names = files[0].names.clone();
    let mut members = Vec::with_capacity(files.len());
    for (path, f) in o.inputs.iter().zip(&files) {
        let values = in_space(f, path, o.average)?;
        if f.names == names {
            members.push(values);
            continue;
        }
        let row: HashMap<&str, usize> = f.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let missing: Vec<&String> = names.iter().filter(|n| !row.contains_key(n.as_str())).collect();
        let first: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let extra: Vec<&String> = f.names.iter().filter(|n| !first.contains(n.as_str())).collect();
        if !missing.is_empty() || !extra.is_empty() || f.names.len() != names.len() {
            let mut msg = format!(
                "{} and {} do not predict the same images ({} and {} rows)",
                o.inputs[0].display(),
                path.display(),
                names.len(),
                f.names.len()
            );
            if !missing.is_empty() {
                msg += &format!("; missing from {}: {}", path.display(), list(&missing));
            }
            if !extra.is_empty() {
                msg += &format!("; only in {}: {}", path.display(), list(&extra));
            }
            bail!(msg);
        }
        // Same images in another order: take the rows by name.
        let mut aligned = Array2::<f32>::zeros((names.len(), values.ncols()));
        for (i, n) in names.iter().enumerate() {
            aligned.row_mut(i).assign(&values.row(row[n.as_str()]));
        }
        members.push(aligned);
    }
    let mean = weighted_mean(&members, &weights);
    let classes = files[0].classes.clone();
    if let Some(k) = o.top_k {
        submission::check_top_k(k, classes.len())?;
    }
    // A row any input has no outputs for (an image it could not read) has no blend.
    let reasons: HashMap<&str, &str> = files.iter().flat_map(|f| f.skipped.iter().map(|(n, r)| (n.as_str(), r.as_str()))).collect();
    let skipped: Vec<(usize, String)> = mean
        .rows()
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.iter().any(|v| v.is_nan()))
        .map(|(i, _)| (i, reasons.get(names[i].as_str()).map_or_else(|| "no outputs in an input".to_string(), |r| r.to_string())))
        .collect();
    let out = Outputs { classes, mean, members, failed: Vec::new(), average: o.average, images_per_s: 0.0 };
    submission::write_outputs(&o.out, &names, &out, o.top_k, &skipped)?;
    if let Some(p) = &o.save_logits {
        let prov = Provenance {
            models: o.inputs.iter().map(|p| p.display().to_string()).collect(),
            weights: weights.clone(),
            tta: if files.iter().all(|f| f.tta == files[0].tta) { files[0].tta } else { None },
            model_sha256: o.inputs.iter().map(|p| file_sha256(p)).collect::<Result<_>>()?,
            skipped: skipped.iter().map(|(i, r)| (names[*i].clone(), r.clone())).collect(),
            shard: None,
        };
        logits::write(p, &names, &out, &prov)?;
    }
    Ok(Blended { rows: names.len(), classes: out.c(), inputs: files.len(), skipped: skipped.len() })
}
