//! The run directory: the contract between training and export.
//!
//! ```text
//! runs/NAME/
//!   config.json        RunConfig: architecture, classes, preprocessing, split, seed, hyper-parameters
//!   history.csv        one row per completed epoch
//!   best.safetensors   weights (PyTorch state-dict names) of the best epoch by the chosen metric
//!   best.json          CheckpointInfo of that epoch
//!   last.safetensors   weights after the last completed epoch
//!   last.json          CheckpointInfo of the last epoch
//!   last.state.safetensors + last.state.json  optimizer / scheduler / RNG state for --resume
//! ```
//! Every file is written atomically (temp file + rename), see [`write_atomic`].
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::data::split::SplitSpec;
use crate::transforms::{Augment, Preprocess};

pub const CONFIG: &str = "config.json";
pub const HISTORY: &str = "history.csv";

/// Everything needed to rebuild the model and its preprocessing, plus every training setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub sorbier_version: String,
    pub arch: Arch,
    /// Class folder names in output-index order.
    pub classes: Vec<String>,
    /// Dropout before `fc` (0 = none).
    pub dropout: f64,
    pub preprocess: Preprocess,
    pub augment: Augment,
    pub seed: u64,
    pub split: SplitSpec,
    pub data_root: PathBuf,
    pub data_fingerprint: String,
    /// All other hyper-parameters, as the trainer's typed settings serialised.
    pub train: serde_json::Value,
}

impl RunConfig {
    pub fn load(run_dir: &Path) -> Result<RunConfig> {
        let path = run_dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid sorbier run config", path.display()))
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        write_atomic(&run_dir.join(CONFIG), serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Which saved weights of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    Best,
    Last,
    /// The exponential moving average of the weights after the last epoch (`--model-ema`).
    Ema,
}

crate::spelled!(Checkpoint, "checkpoint", [Best, Last, Ema]);

impl Checkpoint {
    pub fn name(self) -> &'static str {
        crate::spelling::Spelling::name(&self)
    }
    pub fn weights(self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.safetensors", self.name()))
    }
    pub fn info(self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.json", self.name()))
    }
}

/// What is known of a saved checkpoint: its epoch (1-based) and validation metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub epoch: usize,
    pub metrics: BTreeMap<String, f64>,
    /// The weights are the exponential moving average (`--model-ema`), not the trained ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ema: bool,
}

impl CheckpointInfo {
    pub fn load(path: &Path) -> Result<CheckpointInfo> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid checkpoint info", path.display()))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and then
/// renamed over the target: a reader (or a process killed mid-write) sees the old file or the
/// new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One row of `history.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub val_macro_acc: f64,
    pub train_images_per_s: f64,
    pub seconds: f64,
    /// The same validation metrics of the EMA weights (`--model-ema`; NaN without it).
    /// Absent from histories written before EMA existed: NaN.
    #[serde(default = "nan")]
    pub ema_val_loss: f64,
    #[serde(default = "nan")]
    pub ema_val_top1: f64,
    #[serde(default = "nan")]
    pub ema_val_top5: f64,
    #[serde(default = "nan")]
    pub ema_val_macro_acc: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// `history.csv` as bytes (header included even with no rows).
pub fn history_csv(rows: &[HistoryRow]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record(HISTORY_COLUMNS)?;
    }
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().context("cannot format history.csv")
}

/// The columns of `history.csv`, in order.
pub const HISTORY_COLUMNS: [&str; 14] = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_macro_acc",
    "train_images_per_s",
    "seconds",
    "ema_val_loss",
    "ema_val_top1",
    "ema_val_top5",
    "ema_val_macro_acc",
];

/// Reads a `history.csv` written by the trainer (every column required but the EMA ones,
/// which older runs lack; `NaN` allowed).
pub fn read_history(path: &Path) -> Result<Vec<HistoryRow>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize().collect::<std::result::Result<Vec<HistoryRow>, _>>().with_context(|| format!("{} is not a sorbier history", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("missing/a.json"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("missing"));
    }
}
