//! Run-directory writes of the training loop: the per-epoch commit, history.csv, the best
//! epoch's confusion matrix and per-class table, and the resume state.
//!
//! An epoch's outputs (weights, optimiser state, `history.csv`, the `.json` infos) span several
//! files, and a `kill -9` can land between any two writes. So each file is first written in full
//! (atomically) as `NAME.next`; then `commit.json` lists them (the commit point); then each is
//! renamed over `NAME`, and `commit.json` is removed. [`recover`] finishes an interrupted commit
//! (roll forward) or discards staged files that were never committed, so the directory always
//! holds one consistent epoch — the previous or the new one — never a mix.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use sorbier::run::write_atomic;

pub const COMMIT: &str = "commit.json";
pub const LAST_STATE_JSON: &str = "last.state.json";
pub const LAST_STATE_TENSORS: &str = "last.state.safetensors";
pub const BEST_CONFUSION: &str = "best_confusion.csv";
pub const BEST_PER_CLASS: &str = "best_per_class.csv";
/// A run stopped mid-epoch by a signal: weights, optimiser tensors and [`StoppedState`].
pub const STOPPED_WEIGHTS: &str = "stopped.safetensors";
pub const STOPPED_TENSORS: &str = "stopped.state.safetensors";
pub const STOPPED_JSON: &str = "stopped.state.json";
/// The EMA weights of a run stopped mid-epoch (`--model-ema`; the last completed epoch's are
/// `ema.safetensors`, [`sorbier::run::Checkpoint::Ema`]).
pub const STOPPED_EMA: &str = "stopped.ema.safetensors";
const STAGED: &str = ".next";

fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{STAGED}"))
}

/// Files staged for one epoch's commit.
pub struct Commit {
    dir: PathBuf,
    names: Vec<String>,
}

impl Commit {
    pub fn new(dir: &Path) -> Self {
        Commit { dir: dir.to_path_buf(), names: Vec::new() }
    }

    /// Path to write `name`'s new content to (already fully written when `add` returns).
    pub fn path(&self, name: &str) -> PathBuf {
        staged(&self.dir, name)
    }

    /// Records that `name`'s staged file is complete.
    pub fn add(&mut self, name: &str) {
        self.names.push(name.to_string());
    }

    pub fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(name), bytes)?;
        self.add(name);
        Ok(())
    }

    /// Tensors as safetensors (fsynced; the rename makes them visible).
    pub fn tensors(&mut self, name: &str, tensors: &[(String, Tensor)]) -> Result<()> {
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{name}.tmp{}", std::process::id()));
        let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
        Tensor::write_safetensors(&cpu, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        self.add(name);
        Ok(())
    }

    /// The commit point, then the renames.
    pub fn finish(self) -> Result<()> {
        write_atomic(&self.dir.join(COMMIT), serde_json::to_string(&self.names)?.as_bytes())?;
        roll_forward(&self.dir, &self.names)
    }
}

fn roll_forward(dir: &Path, names: &[String]) -> Result<()> {
    for name in names {
        let from = staged(dir, name);
        if from.exists() {
            let to = dir.join(name);
            std::fs::rename(&from, &to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let commit = dir.join(COMMIT);
    std::fs::remove_file(&commit).with_context(|| format!("cannot remove {}", commit.display()))
}

/// Brings a run directory back to one consistent epoch after an interruption: finishes a
/// commit that had reached its commit point, discards staged or temporary files that had not.
/// Returns a description of what it did, if anything.
pub fn recover(dir: &Path) -> Result<Option<String>> {
    let commit = dir.join(COMMIT);
    let mut note = None;
    if commit.exists() {
        let text = std::fs::read_to_string(&commit).with_context(|| format!("cannot read {}", commit.display()))?;
        let names: Vec<String> = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", commit.display()))?;
        roll_forward(dir, &names)?;
        note = Some(format!("finished an interrupted checkpoint write ({} files)", names.len()));
    }
    let mut discarded = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(STAGED) || (name.starts_with('.') && name.contains(".tmp")) {
            std::fs::remove_file(e.path()).with_context(|| format!("cannot remove {}", e.path().display()))?;
            discarded += 1;
        }
    }
    if discarded > 0 {
        let d = format!("discarded {discarded} partial file(s) of an interrupted epoch");
        note = Some(match note {
            Some(n) => format!("{n}; {d}"),
            None => d,
        });
    }
    Ok(note)
}

pub use sorbier::run::{history_csv, read_history, HistoryRow, HISTORY_COLUMNS};

/// `true\pred,<classes…>` then one row of counts per true class.
pub fn confusion_csv(classes: &[String], cm: &[Vec<usize>]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(std::iter::once("true\\pred".to_string()).chain(classes.iter().cloned()))?;
    for (c, row) in classes.iter().zip(cm) {
        w.write_record(std::iter::once(c.clone()).chain(row.iter().map(|n| n.to_string())))?;
    }
    w.into_inner().context("cannot format the confusion matrix")
}

/// `class,train_size,support,correct,accuracy` (accuracy empty for a class without validation images).
pub fn per_class_csv(classes: &[String], train_sizes: &[usize], cm: &[Vec<usize>]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["class", "train_size", "support", "correct", "accuracy"])?;
    for (c, name) in classes.iter().enumerate() {
        let support: usize = cm[c].iter().sum();
        let correct = cm[c][c];
        let acc = if support == 0 { String::new() } else { format!("{}", correct as f64 / support as f64) };
        w.write_record([name.clone(), train_sizes[c].to_string(), support.to_string(), correct.to_string(), acc])?;
    }
    w.into_inner().context("cannot format the per-class table")
}

/// The best epoch so far by the chosen metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub value: f64,
    /// The EMA weights were the better ones (`--model-ema`). Absent before EMA existed: false.
    #[serde(default)]
    pub ema: bool,
}

/// `last.state.json`: what, beside the weights and optimiser tensors, `--resume` needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeState {
    pub sorbier_version: String,
    /// Completed epochs (1-based number of the last one).
    pub epoch: usize,
    pub global_step: u64,
    pub optimizer_steps: std::collections::BTreeMap<String, u64>,
    pub schedule: super::schedule::LrSchedule,
    pub best: Option<Best>,
    /// Every random stream (sampling order, augmentation, dropout) is re-derived from
    /// `(seed, epoch)` at the start of each epoch, so this is all the RNG state there is.
    pub seed: u64,
    /// AMP loss scale (1 when AMP is off).
    pub loss_scale: f64,
    /// Finite fp16 steps since the loss scale last changed (absent before it was recorded).
    #[serde(default)]
    pub amp_growth_tracker: u32,
}

/// Where in its epoch a stopped run was, and the epoch's running totals, so that `--resume`
/// continues the epoch at the next step as if it had never stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Completed steps of the epoch.
    pub step: usize,
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: usize,
    pub failed: usize,
    pub seconds: f64,
    /// The learning rate of the epoch's first step.
    pub lr_first: f64,
}

/// `stopped.state.json`: the resume state of a run stopped mid-epoch (its `epoch` counts the
/// completed epochs, as in `last.state.json`) plus the epoch's progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoppedState {
    pub state: ResumeState,
    pub progress: EpochProgress,
}

impl StoppedState {
    /// The stop record of `dir`, if it continues the run's last committed epoch (`completed`);
    /// a stale one (an epoch committed after it) is ignored.
    pub fn load(dir: &Path, completed: usize) -> Result<Option<StoppedState>> {
        let path = dir.join(STOPPED_JSON);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let s: StoppedState = serde_json::from_str(&text).with_context(|| format!("{} is not a valid stop record", path.display()))?;
        Ok((s.state.epoch == completed).then_some(s))
    }

    /// Removes the stop record once the epoch it belongs to is committed.
    pub fn remove(dir: &Path) -> Result<()> {
        for name in [STOPPED_JSON, STOPPED_WEIGHTS, STOPPED_TENSORS, STOPPED_EMA] {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(())
    }
}

impl ResumeState {
    pub fn load(dir: &Path) -> Result<ResumeState> {
        let path = dir.join(LAST_STATE_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let s: ResumeState = serde_json::from_str(&text).with_context(|| format!("{} is not a valid resume state", path.display()))?;
        if s.epoch == 0 {
            bail!("{} records no completed epoch", path.display());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_rolls_forward_or_discards() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), "old a").unwrap();
        std::fs::write(d.join("b"), "old b").unwrap();
        // Interrupted before the commit point: staged files are discarded, old files stay.
        write_atomic(&staged(d, "a"), b"new a").unwrap();
        assert!(recover(d).unwrap().unwrap().contains("discarded 1"));
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "old a");
        // Interrupted after the commit point and one rename: the rest is rolled forward.
        let mut c = Commit::new(d);
        c.bytes("a", b"new a").unwrap();
        c.bytes("b", b"new b").unwrap();
        write_atomic(&d.join(COMMIT), br#"["a","b"]"#).unwrap();
        std::fs::rename(staged(d, "a"), d.join("a")).unwrap();
        assert!(recover(d).unwrap().unwrap().contains("finished"));
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "new b");
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 2);
        assert!(recover(d).unwrap().is_none());
        // The normal path.
        let mut c = Commit::new(d);
        c.bytes("b", b"newer b").unwrap();
        c.finish().unwrap();
        assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "newer b");
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 2);
    }

    #[test]
    fn tables_have_the_documented_layout() {
        let classes = vec!["10".to_string(), "rose".to_string()];
        let cm = vec![vec![3, 1], vec![0, 0]];
        let text = String::from_utf8(confusion_csv(&classes, &cm).unwrap()).unwrap();
        assert_eq!(text, "true\\pred,10,rose\n10,3,1\nrose,0,0\n");
        let text = String::from_utf8(per_class_csv(&classes, &[12, 5], &cm).unwrap()).unwrap();
        assert_eq!(text, "class,train_size,support,correct,accuracy\n10,12,4,3,0.75\nrose,5,0,0,\n");
        let row = HistoryRow {
            epoch: 1,
            lr: 0.001,
            train_loss: 1.5,
            train_acc: 0.25,
            val_loss: 1.25,
            val_top1: 0.5,
            val_top5: 1.0,
            val_macro_acc: 0.5,
            train_images_per_s: 10.0,
            seconds: 2.0,
            ema_val_loss: 1.0,
            ema_val_top1: 0.75,
            ema_val_top5: 1.0,
            ema_val_macro_acc: 0.625,
        };
        let bytes = history_csv(std::slice::from_ref(&row)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&HISTORY_COLUMNS.join(",")));
        let p = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(p.path(), &bytes).unwrap();
        assert_eq!(read_history(p.path()).unwrap(), vec![row.clone()]);
        // A history written before the EMA columns existed still reads, with NaN there.
        let old: Vec<&str> = text.lines().map(|l| l.rsplitn(5, ',').last().unwrap()).collect();
        assert_eq!(old[0], HISTORY_COLUMNS[..10].join(","));
        std::fs::write(p.path(), old.join("\n")).unwrap();
        let back = read_history(p.path()).unwrap();
        assert!(back[0].ema_val_top1.is_nan() && back[0].ema_val_loss.is_nan());
        assert_eq!(HistoryRow { ema_val_loss: 1.0, ema_val_top1: 0.75, ema_val_top5: 1.0, ema_val_macro_acc: 0.625, ..back[0].clone() }, row);
    }
}
