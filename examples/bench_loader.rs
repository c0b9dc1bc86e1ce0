//! Loader benchmark: images/s of the train pipeline (decode + RandomResizedCrop 224 + flips +
//! normalise), the same with timm's RandAugment `rand-m9-mstd0.5` after the flips (`autoaug`),
//! and the eval pipeline (decode + Resize 256 + CenterCrop 224 + normalise) through
//! [`sorbier::data::Loader`], over an ImageFolder tree, for several worker counts.
//!
//! Prints one line per measurement, `sorbier <pipeline> <workers> <images/s>`, the format
//! `tools/bench_loader.py` prints for torchvision; `tools/bench-loader.sh` runs both.
//!
//!     cargo run --release --example bench_loader -- [DATA_DIR] [--workers 1,2] [--batch 32]
//!     (--help lists the options)
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sorbier::data::{Loader, LoaderConfig, Mode};
use sorbier::transforms::{Augment, AutoAugment, Preprocess};

/// Loader throughput, train and eval pipelines, for several worker counts.
#[derive(Parser)]
struct Opts {
    /// An ImageFolder tree.
    #[arg(default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/flowers/train"))]
    data: PathBuf,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    workers: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Pipelines to measure, comma-separated: train, autoaug, eval.
    #[arg(long, value_delimiter = ',', default_values_t = ["train".to_string(), "autoaug".to_string(), "eval".to_string()])]
    pipelines: Vec<String>,
    /// The auto-augment policy of the autoaug pipeline.
    #[arg(long, default_value = "rand-m9-mstd0.5")]
    auto_augment: AutoAugment,
}

const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// `root/<class>/<image>` in sorted order, with class indices.
fn image_folder(root: &Path) -> Result<(Vec<PathBuf>, Vec<i64>)> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (ci, dir) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())))
            .collect();
        files.sort();
        labels.extend(std::iter::repeat_n(ci as i64, files.len()));
        paths.extend(files);
    }
    if paths.is_empty() {
        bail!("no images under {}", root.display());
    }
    Ok((paths, labels))
}

fn run(paths: &Arc<[PathBuf]>, labels: &Arc<[i64]>, order: Vec<usize>, mode: Mode, workers: usize, batch: usize) -> Result<(usize, f64)> {
    let cfg = LoaderConfig { batch_size: batch, workers, prefetch: 2 * workers, drop_last: false };
    let t = Instant::now();
    let mut n = 0;
    for b in Loader::new(paths.clone(), labels.clone(), order, mode, cfg) {
        let b = b?;
        if let Some((idx, err)) = b.failed.first() {
            bail!("item {idx} failed: {err}");
        }
        n += b.len();
    }
    Ok((n, t.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let Opts { data, workers, batch, pipelines, auto_augment } = Opts::parse();
    let (paths, labels) = image_folder(&data)?;
    let n = paths.len();
    let (paths, labels): (Arc<[PathBuf]>, Arc<[i64]>) = (paths.into(), labels.into());
    let p = Preprocess::default();
    // RandomResizedCrop(224) + RandomHorizontalFlip + RandomVerticalFlip.
    let train = Mode::Train { preprocess: p.clone(), augment: Augment::default(), seed: 0 };
    // The same + RandAugment on the 8-bit crop after the flips (timm's order).
    let autoaug = Mode::Train { preprocess: p.clone(), augment: Augment { auto_augment: Some(auto_augment), ..Augment::default() }, seed: 0 };
    let eval = Mode::Eval(p);
    eprintln!("{n} images in {}", data.display());
    for name in &pipelines {
        let mode = match name.as_str() {
            "train" => train.clone(),
            "autoaug" => autoaug.clone(),
            "eval" => eval.clone(),
            other => bail!("unknown pipeline {other:?} (train, autoaug, eval)"),
        };
        for &w in &workers {
            // Warm-up: page cache, thread start-up, allocator.
            run(&paths, &labels, (0..n.min(2 * batch)).collect(), mode.clone(), w, batch)?;
            let (count, secs) = run(&paths, &labels, (0..n).collect(), mode.clone(), w, batch)?;
            println!("sorbier {name} {w} {:.1}", count as f64 / secs);
        }
    }
    Ok(())
}
