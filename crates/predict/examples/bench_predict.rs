//! Predictor throughput, in one run, for ResNet-18 and ResNet-50 (random weights: throughput
//! does not depend on them) on a folder of JPEGs:
//! - end-to-end: the predictor's pipeline (decode + eval transform on workers, overlapped
//!   with ONNX Runtime inference), as `predictor predict` runs it;
//! - model only: the same session fed pre-decoded tensors (the ceiling);
//! - preprocessing only: decode + transform on the workers, no inference;
//! - the Python peer (tools/bench_predict.py): PIL + torchvision + onnxruntime, same threads,
//!   same batch, end-to-end and preprocessing only.
//!
//! `cargo run --release -p sorbier-predict --example bench_predict -- [--images DIR] [--archs resnet18,resnet50]
//!  [--size 224] [--batch 32] [--threads 2] [--workers 2] [--device cpu] [--limit N]`
//! (tools/bench-predict.sh runs exactly this).
fn main() -> anyhow::Result<()> {
    bench::main()
}

#[path = "common/mod.rs"]
mod common;

mod bench {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::{bail, Context, Result};
    use sorbier::arch::Arch;
    use sorbier_predict::engine::pipeline::{Pipeline, PipelineConfig};
    use sorbier_predict::engine::runtime::{Device, Runtime};
    use sorbier_predict::engine::tta::Variant;
    use sorbier::transforms::Preprocess;

    use super::common;

    struct Opts {
        images: PathBuf,
        archs: Vec<Arch>,
        size: u32,
        batch: usize,
        threads: usize,
        workers: usize,
        device: Device,
        limit: usize,
        python: PathBuf,
        models: PathBuf,
    }

    fn parse() -> Result<Opts> {
        let root = common::root();
        let mut o = Opts {
            images: root.join("../shared/data/flowers/test"),
            archs: vec![Arch::Resnet18, Arch::Resnet50],
            size: 224,
            batch: 32,
            threads: 2,
            workers: 2,
            device: Device::Cpu,
            limit: 0,
            python: common::python(None),
            models: root.join("target/bench-predict"),
        };
        for (k, v) in common::options()? {
            match k.as_str() {
                "--images" => o.images = v.into(),
                "--archs" => o.archs = common::archs(&v)?,
                "--size" => o.size = v.parse()?,
                "--batch" => o.batch = v.parse()?,
                "--threads" => o.threads = v.parse()?,
                "--workers" => o.workers = v.parse()?,
                "--device" => o.device = v.parse().map_err(anyhow::Error::msg)?,
                "--limit" => o.limit = v.parse()?,
                "--python" => o.python = common::python(Some(&v)),
                "--models" => o.models = v.into(),
                _ => bail!("unknown option {k}"),
            }
        }
        Ok(o)
    }

    pub fn main() -> Result<()> {
        let o = parse()?;
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

            let py = Command::new(&o.python)
                .arg(common::root().join("tools/bench_predict.py"))
                .args(["--model", &path.display().to_string(), "--images", &o.images.display().to_string()])
                .args(["--resize", &pre.resize.to_string(), "--crop", &pre.crop.to_string(), "--batch", &o.batch.to_string()])
                .args(["--threads", &o.threads.to_string(), "--workers", &o.workers.to_string(), "--limit", &o.limit.to_string()])
                .output()
                .with_context(|| format!("cannot run {}", o.python.display()))?;
            if !py.status.success() {
                bail!("python peer failed: {}", String::from_utf8_lossy(&py.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(py.stdout.trim_ascii())?;
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
