//! Helpers of the prediction benchmarks (each example includes this module with
//! `#[path = "common/mod.rs"] mod common;`).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sorbier::arch::{Arch, ResNetSpec};
use sorbier::export::{build_model, write_model, StateDict, Tensor};
use sorbier::meta::ModelMeta;
use sorbier::transforms::Preprocess;

/// The workspace root.
pub fn root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or(root)
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
    let spec = ResNetSpec::new(arch, classes.len());
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
