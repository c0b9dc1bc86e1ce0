//! Helpers of the prediction benchmarks (each example includes this module with
//! `#[path = "common/mod.rs"] mod common;`).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::Array4;
use sorbier::arch::Arch;
use sorbier::export::{build_model, write_model, StateDict, Tensor};
use sorbier::meta::ModelMeta;
use sorbier::transforms::Preprocess;
use sorbier_predict::engine::ensemble::{Average, Ensemble, Outputs};
use sorbier_predict::engine::pipeline::{Pipeline, PipelineConfig};
use sorbier_predict::engine::runtime::{Device, Runtime};
use sorbier_predict::engine::tta::{Tta, Variant};

/// The workspace root.
pub fn root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or(root)
}

/// The Python of the peers: `given`, else `$SORBIER_PYTHON`, else `.venv/bin/python`; a relative
/// path is taken from the workspace root.
pub fn python(given: Option<&Path>) -> PathBuf {
    let p = given.map(Path::to_path_buf).or_else(|| std::env::var_os("SORBIER_PYTHON").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    if p.is_relative() { root().join(p) } else { p }
}

/// Runs the Python peer `tools/SCRIPT ARGS` and reads the one JSON object it prints.
pub fn peer(python: &Path, script: &str, args: &[String]) -> Result<serde_json::Value> {
    let out = std::process::Command::new(python)
        .arg(root().join("tools").join(script))
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        anyhow::bail!("the Python peer {script} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(out.stdout.trim_ascii()).with_context(|| format!("{script} printed no JSON object: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The JPEG/PNG files of a flat folder, sorted, at most `limit` (0: all).
pub fn images(dir: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg") || x.eq_ignore_ascii_case("png")))
        .collect();
    names.sort();
    if limit > 0 {
        names.truncate(limit);
    }
    Ok(names)
}

/// A model with seeded random weights, cached in `dir`.
pub fn random_model(dir: &Path, arch: Arch, size: u32) -> Result<PathBuf> {
    let path = dir.join(format!("{}-{size}.onnx", arch.name()));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let classes: Vec<String> = ["daisy", "dandelion", "roses", "sunflowers", "tulips"].iter().map(|s| s.to_string()).collect();
    let spec = arch.spec(classes.len());
    let mut state = 0x5eedu64;
    let mut weights = StateDict::new();
    for (name, shape) in spec.tensors() {
        let n: usize = shape.iter().product();
        let scale = (2.0 / shape[1..].iter().product::<usize>().max(1) as f32).sqrt();
        let data = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                if name.ends_with("running_var") { 1.0 + u } else { scale * (u - 0.5) }
            })
            .collect();
        weights.insert(name, Tensor::new(shape, data)?);
    }
    let meta = ModelMeta {
        classes,
        arch: arch.name().into(),
        preprocess: Preprocess::for_crop(size),
        metrics: Default::default(),
        data_fingerprint: "bench".into(),
        sorbier_version: sorbier::VERSION.into(),
        precision: "float32".into(),
        source: "bench:random".into(),
    };
    write_model(&build_model(&spec, &weights, &meta, false)?, &path)?;
    Ok(path)
}

/// The images decoded and transformed once, batch by batch (model-only runs feed these).
pub fn decode(paths: &Arc<[PathBuf]>, pre: &Preprocess, cfg: &PipelineConfig) -> Result<Vec<Array4<f32>>> {
    Pipeline::new(paths.clone(), vec![pre.clone()], vec![Variant::Identity], cfg).map(|b| b.map(|mut b| b.tensors[0].swap_remove(0))).collect()
}

/// One model's throughput: model only (the pre-decoded `batches`, after a warm-up batch) and
/// end to end (the predictor's pipeline over `paths`), with the end-to-end outputs.
pub fn throughput(rt: &Runtime, model: &Path, device: Device, threads: usize, batches: &[Array4<f32>], paths: &Arc<[PathBuf]>, cfg: &PipelineConfig) -> Result<(f64, Outputs)> {
    let mut ens = Ensemble::open(rt, &[model.to_path_buf()], None, Average::Logits, device, threads)?;
    let c = ens.classes.len();
    // Warm-up: first runs allocate and pick kernels.
    ens.members[0].forward(batches[0].view(), c)?;
    let n: usize = batches.iter().map(|b| b.shape()[0]).sum();
    let t = Instant::now();
    for x in batches {
        ens.members[0].forward(x.view(), c)?;
    }
    let model_rate = n as f64 / t.elapsed().as_secs_f64();
    Ok((model_rate, ens.run(paths.clone(), Tta::None, cfg, false)?))
}
