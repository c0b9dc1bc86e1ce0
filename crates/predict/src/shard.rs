//! Splitting a prediction across machines: `predictor predict … --shard K/N` and
//! `predictor merge`.
//!
//! **The split.** The image list is ordered exactly as an unsharded run orders it (the sample
//! submission's rows, else the sorted file names), and shard `K` of `N` (1-based) takes the
//! contiguous rows `⌊(K−1)·n/N⌋ … ⌊K·n/N⌋ − 1`; shard sizes differ by at most one and their
//! concatenation in `K` order is the whole list. Every row of a shard is computed exactly as in
//! the unsharded run (an image's outputs do not depend on the other images of its batch), so
//! merged shards reproduce the unsharded submission and saved logits bit for bit.
//!
//! **The record.** Each shard's saved logits carry a [`ShardInfo`] — `K`, `N`, the offset of its
//! first row, the length and fingerprint of the whole ordered list — next to the models' file
//! hashes, weights, averaging, TTA and classes. [`merge`] refuses shards that are missing,
//! given twice, cut from another list or another `N`, or made by other models, classes,
//! weights, averaging or TTA, naming the file and what differs.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{concatenate, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::ensemble::{check_same_classes, Average, Outputs};
use crate::fingerprint::list_fingerprint;
use crate::logits::{self, Provenance, SavedLogits};
use crate::submit;

/// Part `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let parse = |x: &str| x.trim().parse::<usize>().ok();
        match s.split_once('/').map(|(k, n)| (parse(k), parse(n))) {
            Some((Some(index), Some(count))) if index >= 1 && index <= count => Ok(Shard { index, count }),
            _ => Err(format!("--shard {s:?}: expected K/N with 1 ≤ K ≤ N, e.g. 2/3")),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The rows of a list of `n` that this shard predicts.
    pub fn range(&self, n: usize) -> Range<usize> {
        (self.index - 1) * n / self.count..self.index * n / self.count
    }

    /// The record of this shard of `names` (the whole ordered list).
    pub fn info(&self, names: &[String]) -> ShardInfo {
        ShardInfo { index: self.index, count: self.count, first: self.range(names.len()).start, rows: names.len(), list: list_fingerprint(names) }
    }
}

/// Which part of which list a shard's saved logits hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// `K` (1-based).
    pub index: usize,
    /// `N`.
    pub count: usize,
    /// Index of the shard's first row in the whole list.
    pub first: usize,
    /// Rows of the whole list.
    pub rows: usize,
    /// [`list_fingerprint`] of the whole ordered list.
    pub list: String,
}

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
        return Some(format!("different test-time augmentation (--tta {} vs {})", a.tta, b.tta));
    }
    None
}

/// Joins the shards into one submission (and saved logits) in the order of the whole list,
/// after checking that they are the `N` parts of one run (see the module header).
pub fn merge(o: &MergeOptions) -> Result<Merged> {
    submit::check_out_dir(&o.out)?;
    if let Some(p) = &o.save_logits {
        submit::check_out_dir(p)?;
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
    let average = if head.average == "probs" { Average::Probs } else { Average::Logits };
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
        submit::check_top_k(k, out.c())?;
    }
    submit::write_outputs(&o.out, &names, &out, o.top_k, &skipped)?;
    if let Some(p) = &o.save_logits {
        let prov = Provenance {
            models: head.models.clone(),
            weights: head.weights.clone(),
            tta: head.tta.clone(),
            model_sha256: head.model_sha256.clone(),
            skipped: skipped_names,
            shard: None,
        };
        logits::write(p, &names, &out, &prov)?;
    }
    Ok(Merged { rows: names.len(), classes: out.c(), shards: info.count, skipped: skipped.len() })
}

/// Check used by `predict --shard`: the saved logits are what `merge` reads.
pub fn require_logits(shard: Option<Shard>, save_logits: Option<&Path>) -> Result<()> {
    if let (Some(s), None) = (shard, save_logits) {
        bail!("--shard {s} needs --save-logits FILE: `predictor merge` joins the shards from their saved logits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_list_contiguously_and_evenly() {
        for n in [0usize, 1, 2, 7, 250, 251] {
            for count in 1..=5 {
                let ranges: Vec<Range<usize>> = (1..=count).map(|index| Shard { index, count }.range(n)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (lo, hi) = (ranges.iter().map(|r| r.len()).min().unwrap(), ranges.iter().map(|r| r.len()).max().unwrap());
                assert!(hi - lo <= 1, "n {n} count {count}: {ranges:?}");
            }
        }
        assert_eq!(Shard { index: 2, count: 3 }.range(10), 3..6);
        assert_eq!(Shard { index: 3, count: 3 }.range(10), 6..10);
        let names: Vec<String> = (0..10).map(|i| format!("{i}.jpg")).collect();
        let info = Shard { index: 3, count: 3 }.info(&names);
        assert_eq!((info.index, info.count, info.first, info.rows), (3, 3, 6, 10));
        assert_eq!(info.list, list_fingerprint(&names));
    }

    #[test]
    fn shard_parses_k_of_n() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { index: 2, count: 3 });
        assert_eq!("1/1".parse::<Shard>().unwrap().to_string(), "1/1");
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
