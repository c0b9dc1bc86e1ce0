//! `predictor quantize`: the command line of [`sorbier_predict::quantize`] (arguments and what
//! it prints).
use sorbier::cli::spelled;
use std::path::PathBuf;

use anyhow::Result;
use sorbier_predict::quantize::{self, ActivationType, Method, QuantizeOptions};

#[derive(Clone, Debug, clap::Args)]
pub struct QuantizeArgs {
    /// The float32 model to quantise (.onnx written by `trainer export`).
    pub model: PathBuf,
    /// Calibration images: an ImageFolder (<dir>/<class>/…, sampled per class), a competition root holding train/, or a flat folder.
    #[arg(long)]
    pub calibrate: PathBuf,
    /// The int8 model to write.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// About how many calibration images (stratified over the classes of an ImageFolder).
    #[arg(long, default_value_t = quantize::DEFAULT_IMAGES)]
    pub images: usize,
    /// How activation ranges are measured: minmax (one pass; the default, see the README) or percentile (two passes, clips outliers).
    #[arg(long, value_parser = spelled::<Method>(), default_value_t = Method::Minmax)]
    pub method: Method,
    /// With --method percentile: the share of values kept at each end, in percent.
    #[arg(long, default_value_t = quantize::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// Integer type of the activations (weights are always int8).
    #[arg(long, value_parser = spelled::<ActivationType>(), default_value_t = ActivationType::Uint8)]
    pub activations: ActivationType,
    /// Seed of the stratified draw of calibration images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per calibration batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: crate::cli::RuntimeArgs,
    /// Overwrite the output file.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let o = QuantizeOptions {
        images: a.images,
        method: a.method,
        percentile: a.percentile,
        activations: a.activations,
        seed: a.seed,
        batch_size: a.batch_size,
        threads: a.runtime.threads,
        workers: a.runtime.workers,
        ort_lib: a.runtime.ort_lib.clone(),
        force: a.force,
        progress: !a.quiet,
        ..QuantizeOptions::new(a.model.clone(), a.calibrate.clone(), a.out.clone())
    };
    let q = quantize::quantize(&o, &|m| eprintln!("{m}"))?;
    let nodes: Vec<String> = q.card.nodes.iter().map(|(op, n)| format!("{n} {op}")).collect();
    println!(
        "wrote {} ({:.1} MB, from {:.1} MB): int8, {} calibration on {} images; quantised {}",
        q.path.display(),
        q.bytes as f64 / 1e6,
        q.parent_bytes as f64 / 1e6,
        q.card.method,
        q.card.images,
        nodes.join(", ")
    );
    println!("ONNX Runtime runs it as {}", q.fusion.summary());
    Ok(())
}
