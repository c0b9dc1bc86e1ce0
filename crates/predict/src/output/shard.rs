//! Which part of an ordered image list a run predicts (`predict --shard K/N`), and the record
//! of it that a shard's saved logits carry ([`ShardInfo`]).
//!
//! Shard `K` of `N` (1-based) takes the contiguous rows `⌊(K−1)·n/N⌋ … ⌊K·n/N⌋ − 1` of the
//! list as an unsharded run orders it; shard sizes differ by at most one and their
//! concatenation in `K` order is the whole list (see [`crate::commands::merge`]).
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use serde::{Deserialize, Serialize};

use crate::output::fingerprint::list_fingerprint;

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

    /// The part a launcher gave this process (`--shard auto`): `RANK`/`WORLD_SIZE` (torchrun,
    /// Kubeflow's PyTorchJob), else `SLURM_PROCID`/`SLURM_NTASKS` (srun); 0-based rank `r` of
    /// `n` is part `r + 1` of `n`. `get` reads a variable (the process environment).
    pub fn from_launcher(get: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let pair = [("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")].into_iter().find_map(|(r, n)| Some((r, get(r)?, n, get(n)?)));
        let Some((rank_name, rank, count_name, count)) = pair else {
            bail!("--shard auto: neither RANK/WORLD_SIZE (torchrun) nor SLURM_PROCID/SLURM_NTASKS (srun) is set; give --shard K/N");
        };
        let number = |name: &str, v: &str| v.trim().parse::<usize>().with_context(|| format!("--shard auto: {name}={v:?} is not a number"));
        let (rank, count) = (number(rank_name, &rank)?, number(count_name, &count)?);
        if rank >= count {
            bail!("--shard auto: {rank_name}={rank} is not below {count_name}={count}");
        }
        Ok(Shard { index: rank + 1, count })
    }

    /// `dir/name.ext` → `dir/name.shard-K-of-N.ext` (`name.shard-K-of-N` without an
    /// extension): the file names of `--shard auto`, so that ranks started with one command
    /// line never write the same file (`predictor merge dir/name.shard-*` joins them).
    pub fn tagged(&self, path: &Path) -> PathBuf {
        let tag = format!("shard-{}-of-{}", self.index, self.count);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match path.extension() {
            Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{tag}"),
        };
        path.with_file_name(name)
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
    fn the_launchers_rank_gives_the_part_and_tags_the_file_names() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(Shard::from_launcher(env(&[("RANK", "1"), ("WORLD_SIZE", "4")])).unwrap(), Shard { index: 2, count: 4 });
        assert_eq!(Shard::from_launcher(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "3")])).unwrap(), Shard { index: 1, count: 3 });
        // torchrun's variables win over Slurm's (torchrun inside an allocation).
        let both = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8")]);
        assert_eq!(Shard::from_launcher(both).unwrap(), Shard { index: 1, count: 2 });
        assert!(Shard::from_launcher(env(&[])).unwrap_err().to_string().contains("RANK/WORLD_SIZE"));
        assert!(Shard::from_launcher(env(&[("RANK", "4"), ("WORLD_SIZE", "4")])).unwrap_err().to_string().contains("not below"));
        assert!(Shard::from_launcher(env(&[("RANK", "x"), ("WORLD_SIZE", "4")])).is_err());
        let s = Shard { index: 2, count: 4 };
        assert_eq!(s.tagged(Path::new("out/sub.csv")), Path::new("out/sub.shard-2-of-4.csv"));
        assert_eq!(s.tagged(Path::new("logits")), Path::new("logits.shard-2-of-4"));
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
