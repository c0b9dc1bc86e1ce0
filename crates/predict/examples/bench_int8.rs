//! Int8 against float32, in one run, same threads: for each model, the float32 file, sorbier's
//! int8 (`predictor quantize`, library call) and ONNX Runtime's Python `quantize_static` int8
//! of the same file (tools/quantize_peer.py: QDQ, per-channel, MinMax), both calibrated on the
//! same stratified draw of images. Each of the three runs through the predictor's own session
//! code:
//! - model only: pre-decoded tensors (the ceiling);
//! - end to end: the predictor's pipeline (decode + eval transform on workers, overlapped with
//!   inference), as `predictor predict` runs it;
//! - top-1 agreement with the float32 model on the same images, and top-1 accuracy when
//!   `--solution` gives the labels.
//!
//! Models: ResNet-18 and ResNet-50 with seeded random weights at `--size` (speed does not
//! depend on the weights), or trained models given with `--models a.onnx,b.onnx` (for the
//! accuracy table).
//!
//! `cargo run --release -p sorbier-predict --example bench_int8 -- --help` lists the options and
//! their defaults (tools/bench-int8.sh runs it).
fn main() -> anyhow::Result<()> {
    bench::main()
}

#[path = "common/mod.rs"]
mod common;

mod bench {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::{bail, Context, Result};
    use clap::Parser;
    use ndarray::Array4;
    use sorbier::arch::Arch;
    use sorbier::cli::spelled;
    use sorbier_predict::engine::pipeline::PipelineConfig;
    use sorbier_predict::quantize::{self, calibrate, QuantizeOptions};
    use sorbier_predict::engine::runtime::{Device, Runtime};

    use super::common;

    /// Int8 against float32: sorbier's quantiser beside ONNX Runtime's `quantize_static`.
    #[derive(Parser)]
    struct Opts {
        /// The photos (a flat folder).
        #[arg(long, default_value_os_t = common::root().join("../shared/data/flowers/test"))]
        images: PathBuf,
        /// The networks (seeded random weights), comma-separated; ignored with --models.
        #[arg(long, value_delimiter = ',', value_parser = spelled::<Arch>(), default_values_t = [Arch::Resnet18, Arch::Resnet50])]
        archs: Vec<Arch>,
        /// Trained float32 models instead, comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Vec<PathBuf>,
        #[arg(long, default_value_t = 224)]
        size: u32,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// ONNX Runtime threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Decoding workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The calibration images (a train/<class>/ folder).
        #[arg(long, default_value_os_t = common::root().join("../shared/data/flowers/train"))]
        calibrate: PathBuf,
        #[arg(long, default_value_t = quantize::DEFAULT_IMAGES)]
        calib_images: usize,
        /// A solution CSV (id,label) for top-1 accuracy.
        #[arg(long)]
        solution: Option<PathBuf>,
        /// At most this many photos (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// The peer's Python (default: $SORBIER_PYTHON, else .venv/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Where models, calibration lists and int8 files are written.
        #[arg(long, default_value_os_t = common::root().join("target/bench-int8"))]
        dir: PathBuf,
    }

    /// The CPU's name and the flags int8 and bf16 speed depend on.
    fn cpu() -> String {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |k: &str| info.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_once(':')).map_or(String::new(), |(_, v)| v.trim().to_string());
        let flags = field("flags");
        let have: Vec<&str> = flags.split(' ').filter(|f| ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"].contains(f)).collect();
        format!("{} | {}", field("model name"), have.join(" "))
    }

    fn labels(solution: &Path) -> Result<HashMap<String, String>> {
        let mut r = csv::Reader::from_path(solution).with_context(|| format!("cannot read {}", solution.display()))?;
        r.records().map(|rec| {
            let rec = rec?;
            Ok((rec.get(0).unwrap_or_default().to_string(), rec.get(1).unwrap_or_default().to_string()))
        }).collect()
    }

    /// One model's figures.
    struct Row {
        model_rate: f64,
        e2e_rate: f64,
        /// Predicted class index per image.
        top1: Vec<usize>,
    }

    fn measure(rt: &Runtime, path: &Path, batches: &[Array4<f32>], paths: &Arc<[PathBuf]>, o: &Opts) -> Result<Row> {
        let cfg = PipelineConfig { batch_size: o.batch, workers: o.workers, prefetch: 2 };
        let (model_rate, out) = common::throughput(rt, path, Device::Cpu, o.threads, batches, paths, &cfg)?;
        if !out.failed.is_empty() {
            bail!("{} image(s) could not be read", out.failed.len());
        }
        let top1 = (0..paths.len()).map(|i| sorbier_predict::engine::ensemble::top_k(&out.probs(i), 1)[0]).collect();
        Ok(Row { model_rate, e2e_rate: out.images_per_s, top1 })
    }

    pub fn main() -> Result<()> {
        let o = Opts::parse();
        let python = common::python(o.python.as_deref());
        std::fs::create_dir_all(&o.dir)?;
        let names = common::images(&o.images, o.limit)?;
        let n = names.len();
        let paths: Arc<[PathBuf]> = names.clone().into();
        let truth = o.solution.as_deref().map(labels).transpose()?;
        let rt = Runtime::load(None)?;
        println!("CPU: {}", cpu());
        println!(
            "{n} images from {}, batch {}, {} ORT threads, {} workers, {} calibration images from {}",
            o.images.display(),
            o.batch,
            o.threads,
            o.workers,
            o.calib_images,
            o.calibrate.display()
        );
        let models: Vec<PathBuf> = if o.models.is_empty() {
            o.archs.iter().map(|&a| common::random_model(&o.dir, a, o.size)).collect::<Result<_>>()?
        } else {
            o.models.clone()
        };
        println!(
            "{:<28} {:>10} {:>12} {:>8} {:>12} {:>8} {:>9} {:>7}",
            "model", "quantise s", "model img/s", "× fp32", "e2e img/s", "× fp32", "agree f32", "top-1"
        );
        for fp32 in &models {
            let meta = sorbier::export::model_meta(&sorbier::export::read_model(fp32)?)?;
            let stem = fp32.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
            let tag = format!("{} {}px", meta.arch, meta.preprocess.crop);

            // The same calibration images for both quantisers.
            let set = calibrate::select(&o.calibrate, o.calib_images, 0)?;
            let list = o.dir.join(format!("{stem}.calibration.txt"));
            std::fs::write(&list, set.paths.iter().map(|p| format!("{}\n", p.display())).collect::<String>())?;
            let ours = o.dir.join(format!("{stem}.int8.onnx"));
            let q = QuantizeOptions {
                images: o.calib_images,
                threads: Some(o.threads),
                workers: Some(o.workers),
                force: true,
                ..QuantizeOptions::new(fp32.clone(), o.calibrate.clone(), ours.clone())
            };
            let t = Instant::now();
            let done = quantize::quantize_with(&rt, &q, &|_| {})?;
            let ours_s = t.elapsed().as_secs_f64();
            if done.card.images != set.paths.len() {
                bail!("the quantiser drew {} images, the list has {}", done.card.images, set.paths.len());
            }
            let peer = o.dir.join(format!("{stem}.peer-int8.onnx"));
            let args = ["--model".to_string(), fp32.display().to_string(), "--list".into(), list.display().to_string(), "--out".into(), peer.display().to_string()];
            let v = common::peer(&python, "quantize_peer.py", &args)?;
            let peer_s = v["seconds"].as_f64().unwrap_or(f64::NAN);

            let cfg = PipelineConfig { batch_size: o.batch, workers: o.workers, prefetch: 2 };
            let batches = common::decode(&paths, &meta.preprocess, &cfg)?;
            let rows = [
                (format!("{tag} fp32"), None, measure(&rt, fp32, &batches, &paths, &o)?),
                (format!("{tag} sorbier int8"), Some(ours_s), measure(&rt, &ours, &batches, &paths, &o)?),
                (format!("{tag} ORT peer int8"), Some(peer_s), measure(&rt, &peer, &batches, &paths, &o)?),
            ];
            let base = &rows[0].2;
            for (label, secs, r) in &rows {
                let agree = r.top1.iter().zip(&base.top1).filter(|(a, b)| a == b).count() as f64 / n as f64;
                let top1 = match &truth {
                    Some(t) => {
                        let hit = names.iter().zip(&r.top1).filter(|(p, &k)| {
                            let name = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                            t.get(&name).is_some_and(|c| *c == meta.classes[k])
                        });
                        format!("{:.3}", hit.count() as f64 / n as f64)
                    }
                    None => "-".into(),
                };
                println!(
                    "{label:<28} {:>10} {:>12.1} {:>8.2} {:>12.1} {:>8.2} {:>8.1}% {top1:>7}",
                    secs.map_or("-".into(), |s| format!("{s:.1}")),
                    r.model_rate,
                    r.model_rate / base.model_rate,
                    r.e2e_rate,
                    r.e2e_rate / base.e2e_rate,
                    100.0 * agree
                );
            }
        }
        Ok(())
    }
}
