//! Predictor throughput, in one run, for ResNet-18 and ResNet-50 (random weights: throughput
//! does not depend on them) on a folder of JPEGs:
//! - end-to-end: the predictor's pipeline (decode + eval transform on workers, overlapped
//!   with ONNX Runtime inference), as `predictor predict` runs it;
//! - model only: the same session fed pre-decoded tensors (the ceiling);
//! - preprocessing only: decode + transform on the workers, no inference;
//! - the Python peer (tools/bench_predict.py): PIL + torchvision + onnxruntime, same threads,
//!   same batch, end-to-end and preprocessing only.
//!
//! `cargo run --release -p sorbier-predict --example bench_predict -- --help` lists the options
//! and their defaults (tools/bench-predict.sh runs it).
fn main() -> anyhow::Result<()> {
    bench::main()
}

#[path = "common/mod.rs"]
mod common;

mod bench {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::Result;
    use clap::Parser;
    use sorbier::arch::Arch;
    use sorbier::cli::spelled;
    use sorbier_predict::engine::pipeline::{Pipeline, PipelineConfig};
    use sorbier_predict::engine::runtime::{Device, Runtime};
    use sorbier_predict::engine::tta::Variant;
    use sorbier::transforms::Preprocess;

    use super::common;

    /// Predictor throughput beside the Python peer (PIL + torchvision + onnxruntime).
    #[derive(Parser)]
    struct Opts {
        /// The photos (a flat folder).
        #[arg(long, default_value_os_t = common::root().join("../shared/data/flowers/test"))]
        images: PathBuf,
        /// The networks (seeded random weights), comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = spelled::<Arch>(), default_values_t = [Arch::Resnet18, Arch::Resnet50])]
        archs: Vec<Arch>,
        #[arg(long, default_value_t = 224)]
        size: u32,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// ONNX Runtime threads (the peer's too).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Decoding workers (the peer's DataLoader workers too).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// At most this many photos (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// The peer's Python (default: $SORBIER_PYTHON, else .venv/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Where the random-weight models are cached.
        #[arg(long, default_value_os_t = common::root().join("target/bench-predict"))]
        models: PathBuf,
    }

    pub fn main() -> Result<()> {
        let o = Opts::parse();
        let python = common::python(o.python.as_deref());
        let names = common::images(&o.images, o.limit)?;
        let n = names.len();
        let paths: Arc<[PathBuf]> = names.into();
        let rt = Runtime::load(None)?;
        let cfg = PipelineConfig { batch_size: o.batch, workers: o.workers, prefetch: 2 };
        let cpus = sorbier::data::pool::default_threads();
        println!(
            "{n} images from {}, {}px, batch {}, {} ORT threads, {} workers, device {}, {cpus} cores",
            o.images.display(),
            o.size,
            o.batch,
            o.threads,
            o.workers,
            o.device
        );
        let pre = Preprocess::for_crop(o.size);

        // Preprocessing alone (also keeps the tensors for the model-only figure).
        let _ = Pipeline::new(paths.clone(), vec![pre.clone()], vec![Variant::Identity], &cfg).count(); // warm the page cache
        let t = Instant::now();
        let batches = common::decode(&paths, &pre, &cfg)?;
        let pre_rate = n as f64 / t.elapsed().as_secs_f64();

        println!(
            "{:<10} {:>12} {:>12} {:>8} {:>12} {:>12} | {:>12} {:>12} {:>10} {:>10}",
            "model", "e2e img/s", "model img/s", "e2e/mdl", "prep img/s", "prep/thread", "py e2e", "py prep", "e2e/py", "prep/py"
        );
        for &arch in &o.archs {
            let path = common::random_model(&o.models, arch, o.size)?;
            let (model_rate, out) = common::throughput(&rt, &path, o.device, o.threads, &batches, &paths, &cfg)?;
            let e2e = out.images_per_s;

            let args = [
                ["--model".to_string(), path.display().to_string(), "--images".into(), o.images.display().to_string()],
                ["--resize".into(), pre.resize.to_string(), "--crop".into(), pre.crop.to_string()],
                ["--batch".into(), o.batch.to_string(), "--threads".into(), o.threads.to_string()],
                ["--workers".into(), o.workers.to_string(), "--limit".into(), o.limit.to_string()],
            ]
            .concat();
            let v = common::peer(&python, "bench_predict.py", &args)?;
            let (py_e2e, py_pre) = (v["e2e"].as_f64().unwrap_or(f64::NAN), v["preprocess"].as_f64().unwrap_or(f64::NAN));
            println!(
                "{:<10} {:>12.1} {:>12.1} {:>8.2} {:>12.1} {:>12.1} | {:>12.1} {:>12.1} {:>10.2} {:>10.2}",
                arch.name(),
                e2e,
                model_rate,
                e2e / model_rate,
                pre_rate,
                pre_rate / o.workers as f64,
                py_e2e,
                py_pre,
                e2e / py_e2e,
                pre_rate / py_pre
            );
        }
        Ok(())
    }
}
