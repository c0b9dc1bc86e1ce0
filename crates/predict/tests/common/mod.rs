//! Helpers shared by the predictor's integration tests (each test file includes this module
//! with `mod common;`): paths, the binary, seeded random ResNet fixtures, CSV reading and a
//! small copy of the flowers test set.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sorbier::arch::Arch;
use sorbier::export::{build_model, write_model, StateDict, Tensor};
use sorbier::meta::ModelMeta;
use sorbier::transforms::Preprocess;

pub fn manifest() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn flowers() -> PathBuf {
    manifest().join("../shared/data/flowers")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_predictor")
}

/// The venv's libonnxruntime (set by .cargo/config.toml for cargo-run processes).
pub fn ort_lib() -> PathBuf {
    let p = PathBuf::from(std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is set by .cargo/config.toml"));
    let p = if p.is_relative() { manifest().join(p) } else { p };
    // The wheel's real file is the versioned one; the plain name may be a symlink made by setup.
    p.canonicalize().unwrap()
}

pub fn train_classes() -> Vec<String> {
    let mut c: Vec<String> = std::fs::read_dir(flowers().join("train"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    c.sort();
    c
}

/// SplitMix64-driven uniform values in [-a, a).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A ResNet-18 with seeded random weights (He-style scale so activations stay O(1)).
pub fn make_model(path: &Path, classes: &[String], crop: u32, seed: u64) {
    make_model_in(path, classes, crop, seed, false)
}

/// [`make_model`], in float16 when `fp16`.
pub fn make_model_in(path: &Path, classes: &[String], crop: u32, seed: u64, fp16: bool) {
    make_arch_model(path, Arch::Resnet18, classes, crop, seed, fp16)
}

/// [`make_model_in`] for any ResNet depth.
pub fn make_arch_model(path: &Path, arch: Arch, classes: &[String], crop: u32, seed: u64, fp16: bool) {
    let spec = arch.spec(classes.len());
    let mut rng = Rng(seed);
    let mut weights = StateDict::new();
    for (name, shape) in spec.tensors() {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let data: Vec<f32> = if name.ends_with("running_var") {
            (0..n).map(|_| 1.0 + 0.1 * rng.next().abs()).collect()
        } else if name.ends_with("running_mean") || (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("bias") {
            (0..n).map(|_| 0.05 * rng.next()).collect()
        } else if (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("weight") {
            (0..n).map(|_| 1.0 + 0.1 * rng.next()).collect()
        } else {
            let a = (6.0 / fan_in as f32).sqrt();
            (0..n).map(|_| a * rng.next()).collect()
        };
        weights.insert(name, Tensor::new(shape, data).unwrap());
    }
    let meta = ModelMeta {
        classes: classes.to_vec(),
        arch: arch.name().into(),
        preprocess: Preprocess::for_crop(crop),
        metrics: [("top1".to_string(), 0.5)].into_iter().collect(),
        data_fingerprint: "0123456789abcdef".into(),
        sorbier_version: sorbier::VERSION.into(),
        precision: "float32".into(),
        source: format!("random-{seed}:best"),
    };
    let model = build_model(&spec, &weights, &meta, fp16).unwrap();
    write_model(&model, path).unwrap();
}

/// Models shared by the tests, built once per test binary.
pub struct Fixtures {
    /// 64 px crop.
    pub a: PathBuf,
    /// 48 px crop, other weights.
    pub b: PathBuf,
    /// Like `a` but one class name differs.
    pub other: PathBuf,
}

/// The first 16 hex digits of the SHA-256 of `parts` (each length-prefixed, so that no two
/// different lists hash alike): the key under which a cached fixture is kept in target/tmp.
pub fn key(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir`, as (path relative to the repository root, bytes), sorted by path.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if e.is_dir() {
                stack.push(e);
            } else {
                let rel = e.strip_prefix(manifest()).unwrap_or(&e).to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&e).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The key of the random-weight fixtures: what makes them is `make_model` (this file) and the
/// core library that builds and writes the graphs (`src/`, `proto/`), so any change to either
/// makes new fixtures instead of reusing stale ones.
fn fixtures_key() -> String {
    let mut files = files_under(&manifest().join("src"));
    files.extend(files_under(&manifest().join("proto")));
    files.push(("common/mod.rs".into(), include_bytes!("mod.rs").to_vec()));
    let parts: Vec<&[u8]> = files.iter().flat_map(|(p, b)| [p.as_bytes(), b.as_slice()]).collect();
    key(&parts)
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("predictor-fixtures-{}", fixtures_key()));
        let f = |d: &Path| Fixtures { a: d.join("a64.onnx"), b: d.join("b48.onnx"), other: d.join("other.onnx") };
        if !dir.join("done").exists() {
            // Built aside and renamed into place, so an interrupted run leaves nothing half-made.
            let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            let t = f(&tmp);
            let classes = train_classes();
            make_model(&t.a, &classes, 64, 1);
            make_model(&t.b, &classes, 48, 2);
            let mut other = classes.clone();
            other[2] = "lilies".into();
            make_model(&t.other, &other, 64, 3);
            std::fs::write(tmp.join("done"), b"").unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        f(&dir)
    })
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().unwrap();
    eprintln!("$ predictor {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn read_csv(p: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_path(p).unwrap();
    r.records().map(|x| x.unwrap().iter().map(str::to_string).collect()).collect()
}

/// A small test folder: the first `n` flowers test images plus a sample submission for them.
pub fn small_test_set(dir: &Path, n: usize) -> (PathBuf, PathBuf, Vec<String>) {
    let images = dir.join("test");
    std::fs::create_dir_all(&images).unwrap();
    let sample = read_csv(&flowers().join("sample_submission.csv"));
    let names: Vec<String> = sample[1..=n].iter().map(|r| r[0].clone()).collect();
    for name in &names {
        std::fs::copy(flowers().join("test").join(name), images.join(name)).unwrap();
    }
    let csv = dir.join("sample_submission.csv");
    let mut text = "image_name,class\n".to_string();
    for name in &names {
        text += &format!("{name},daisy\n");
    }
    std::fs::write(&csv, text).unwrap();
    (images, csv, names)
}

pub const FAST: [&str; 6] = ["--device", "cpu", "--threads", "2", "--workers", "2"];

/// The venv's Python (`SORBIER_PYTHON`, set by .cargo/config.toml), for onnx.checker and the
/// ONNX Runtime peer.
pub fn python() -> PathBuf {
    let p = PathBuf::from(std::env::var("SORBIER_PYTHON").unwrap_or_else(|_| env!("SORBIER_PYTHON").to_string()));
    if p.is_relative() { manifest().join(p) } else { p }
}

/// `onnx.checker.check_model(full_check=True)` and sorbier's file contract on each model
/// (tools/onnx_check.py); one JSON value per file, and the test fails if any file fails.
pub fn onnx_check(paths: &[&Path]) -> Vec<serde_json::Value> {
    let out = Command::new(python()).arg(manifest().join("tools/onnx_check.py")).args(paths).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "onnx_check.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The venv's ONNX Runtime, loaded once per test binary.
pub fn runtime() -> &'static sorbier_predict::Runtime {
    static RT: OnceLock<sorbier_predict::Runtime> = OnceLock::new();
    RT.get_or_init(|| sorbier_predict::Runtime::load(Some(&ort_lib())).unwrap())
}

/// Runs `predictor predict` on `images` with `models` (an ensemble when several), `FAST`
/// settings and `extra` arguments; returns the process output.
pub fn predict_with(models: &[&Path], images: &Path, sample: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["predict"];
    for m in models {
        args.extend(["--model", s(m)]);
    }
    args.extend(["--images", s(images), "--sample-submission", s(sample), "--out", s(out), "--quiet"]);
    args.extend(FAST);
    args.extend(extra);
    run(&args)
}

/// Asserts that a submission's top-1 classes are varied enough for a comparison of top-1
/// classes (int8 against float32, the server against `predict`) to fail when one side answers
/// the same class for every photo: at least two classes, none on more than 70 % of the rows,
/// so a constant answer disagrees on at least 30 % (the int8 bar is 90 % agreement). A seeded
/// random ResNet-18 names few classes (its pooled features share one large common component):
/// fixture `a` gives roses 163 and sunflowers 87 of the 250 flowers test photos.
pub fn assert_varied_top1(sub: &[Vec<String>]) {
    let mut counts = std::collections::BTreeMap::new();
    for r in &sub[1..] {
        *counts.entry(r[1].as_str()).or_insert(0usize) += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    eprintln!("top-1 classes over {} rows: {counts:?}", sub.len() - 1);
    assert!(counts.len() >= 2 && most * 10 <= 7 * (sub.len() - 1), "top-1 classes not varied: {counts:?}");
}

/// The bit patterns of a matrix (NaN rows compare equal to NaN rows).
pub fn bits(m: &ndarray::Array2<f32>) -> Vec<u32> {
    m.iter().map(|v| v.to_bits()).collect()
}

/// The flowers test photo `name`.
pub fn photo(name: &str) -> Vec<u8> {
    std::fs::read(flowers().join("test").join(name)).unwrap()
}
