//! `predictor merge`: joining the shards of a prediction split across machines
//! (`predictor predict … --shard K/N`, see [`crate::output::shard`]).
//!
//! **The split.** The image list is ordered exactly as an unsharded run orders it (the sample
//! submission's rows, else the sorted file names), and shard `K` of `N` (1-based) takes the
//! contiguous rows `⌊(K−1)·n/N⌋ … ⌊K·n/N⌋ − 1`; shard sizes differ by at most one and their
//! concatenation in `K` order is the whole list. Every row of a shard is computed exactly as in
//! the unsharded run (an image's outputs do not depend on the other images of its batch), so
//! merged shards reproduce the unsharded submission and saved logits bit for bit.
//!
//! **The record.** Each shard's saved logits carry a [`ShardInfo`](crate::output::shard::ShardInfo) — `K`, `N`, the offset of its
//! first row, the length and fingerprint of the whole ordered list — next to the models' file
//! hashes, weights, averaging, TTA and classes. [`merge`] refuses shards that are missing,
//! given twice, cut from another list or another `N`, or made by other models, classes,
//! weights, averaging or TTA, naming the file and what differs.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ndarray::{concatenate, Array2, ArrayView2, Axis};

use crate::engine::ensemble::{check_same_classes, Outputs};
use crate::output::fingerprint::list_fingerprint;
use crate::output::logits::{self, Provenance, SavedLogits};
use crate::output::shard::{Shard, ShardInfo};
use crate::output::submission;

/// What `predictor merge` does.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Saved logits of every shard (`predict --shard K/N --save-logits F`), in any order.
    pub shards: Vec<PathBuf>,
    /// The merged submission.
    pub out: PathBuf,
    /// Also write the K best classes and their probabilities.
    pub top_k: Option<usize>,
    /// Also write the merged saved logits (as an unsharded run's).
    pub save_logits: Option<PathBuf>,
}

/// What [`merge`] wrote.
#[derive(Clone, Debug)]
pub struct Merged {
    pub rows: usize,
    pub classes: usize,
    pub shards: usize,
    /// Rows written with an empty class (images the shards could not read).
    pub skipped: usize,
}

/// The first difference between two shards' records of how their values were made, if any.
fn provenance_difference(a: &SavedLogits, b: &SavedLogits) -> Option<String> {
    if a.model_sha256 != b.model_sha256 || a.models.len() != b.models.len() {
        return Some(format!("different models (files {:?} with sha256 {:?} vs {:?} with {:?})", a.models, a.model_sha256, b.models, b.model_sha256));
    }
    if a.weights != b.weights {
        return Some(format!("different model weights ({:?} vs {:?})", a.weights, b.weights));
    }
    if a.average != b.average {
        return Some(format!("different averaging ({} vs {})", a.average, b.average));
    }
    if a.tta != b.tta {
        return Some(format!("different test-time augmentation (--tta {} vs {})", logits::tta_name(a.tta), logits::tta_name(b.tta)));
    }
    None
}

/// Joins the shards into one submission (and saved logits) in the order of the whole list,
/// after checking that they are the `N` parts of one run (see the module header).
pub fn merge(o: &MergeOptions) -> Result<Merged> {
    submission::check_out_dir(&o.out)?;
    if let Some(p) = &o.save_logits {
        submission::check_out_dir(p)?;
    }
    if o.shards.is_empty() {
        bail!("no shard given");
    }
    let mut by_index: BTreeMap<usize, (PathBuf, SavedLogits, ShardInfo)> = BTreeMap::new();
    let mut first: Option<(PathBuf, ShardInfo, SavedLogits)> = None;
    for path in &o.shards {
        let saved = logits::load(path)?;
        let Some(info) = saved.shard.clone() else {
            bail!("{} is not a shard (no shard record: it was not written by `predict --shard K/N --save-logits`)", path.display());
        };
        let n = info.rows;
        let expect = Shard { index: info.index, count: info.count };
        if info.index == 0 || info.index > info.count || expect.range(n).start != info.first || expect.range(n).len() != saved.names.len() {
            bail!("{}: shard record {}/{} does not match its {} rows (a file edited by hand?)", path.display(), info.index, info.count, saved.names.len());
        }
        if saved.model_sha256.is_empty() {
            bail!("{}: the shard names no model hashes, so it cannot be checked against the others", path.display());
        }
        match &first {
            None => first = Some((path.clone(), info.clone(), saved.clone())),
            Some((p0, i0, s0)) => {
                let theirs = |what: &str| format!("{} and {} are not shards of one run: {what}", p0.display(), path.display());
                if info.count != i0.count {
                    bail!(theirs(&format!("one is split in {} parts, the other in {}", i0.count, info.count)));
                }
                if info.list != i0.list || info.rows != i0.rows {
                    bail!(theirs(&format!("they were cut from different image lists ({} rows, list {} vs {} rows, list {})", i0.rows, i0.list, info.rows, info.list)));
                }
                check_same_classes(&[(p0.clone(), s0.classes.clone()), (path.clone(), saved.classes.clone())]).with_context(|| theirs("different classes"))?;
                if let Some(d) = provenance_difference(s0, &saved) {
                    bail!(theirs(&d));
                }
            }
        }
        if let Some((other, _, _)) = by_index.get(&info.index) {
            bail!("shard {}/{} is given twice: {} and {}", info.index, info.count, other.display(), path.display());
        }
        by_index.insert(info.index, (path.clone(), saved, info));
    }
    let Some((_, info, head)) = first else { bail!("no shard given") };
    let missing: Vec<String> = (1..=info.count).filter(|k| !by_index.contains_key(k)).map(|k| format!("{k}/{}", info.count)).collect();
    if !missing.is_empty() {
        let got: Vec<String> = by_index.keys().map(|k| format!("{k}/{}", info.count)).collect();
        bail!("shard(s) {} missing (given: {})", missing.join(", "), got.join(", "));
    }

    let parts: Vec<&SavedLogits> = by_index.values().map(|(_, s, _)| s).collect();
    let names: Vec<String> = parts.iter().flat_map(|s| s.names.iter().cloned()).collect();
    if list_fingerprint(&names) != info.list {
        bail!("the shards' rows do not make up the list they were cut from (fingerprint {} vs {})", list_fingerprint(&names), info.list);
    }
    let stack = |f: &dyn Fn(&SavedLogits) -> &Array2<f32>| -> Result<Array2<f32>> {
        let views: Vec<ArrayView2<f32>> = parts.iter().map(|s| f(s).view()).collect();
        concatenate(Axis(0), &views).context("joining shard outputs")
    };
    let mean = stack(&|s| &s.mean)?;
    let members = (0..head.models.len()).map(|m| stack(&|s| &s.members[m])).collect::<Result<Vec<_>>>()?;
    let average = head.average;
    let out = Outputs { classes: head.classes.clone(), mean, members, failed: Vec::new(), average, images_per_s: 0.0 };
    let skipped_names: Vec<(String, String)> = parts.iter().flat_map(|s| s.skipped.iter().cloned()).collect();
    let row: std::collections::HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    for (name, why) in &skipped_names {
        let i = row.get(name.as_str()).with_context(|| format!("a shard lists {name:?} as skipped but has no row for it"))?;
        skipped.push((*i, why.clone()));
    }
    skipped.sort();
    if let Some(k) = o.top_k {
        submission::check_top_k(k, out.c())?;
    }
    submission::write_outputs(&o.out, &names, &out, o.top_k, &skipped)?;
    if let Some(p) = &o.save_logits {
        let prov = Provenance {
            models: head.models.clone(),
            weights: head.weights.clone(),
            tta: head.tta,
            model_sha256: head.model_sha256.clone(),
            skipped: skipped_names,
            shard: None,
        };
        logits::write(p, &names, &out, &prov)?;
    }
    Ok(Merged { rows: names.len(), classes: out.c(), shards: info.count, skipped: skipped.len() })
}
