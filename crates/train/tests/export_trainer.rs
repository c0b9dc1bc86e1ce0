//! ONNX export against the trainer's own model: a `model::ResNet` (libtorch) with seeded random
//! weights, calibrated BatchNorm statistics and random BatchNorm affine parameters is saved as a
//! run directory exactly as training writes it (`config.json`, `best.safetensors` through
//! `save_safetensors`, `best.json`), exported by `sorbier::export`, and run with ONNX Runtime on
//! the CPU; its logits must match the model's eval-mode `forward_t(x, false)`.
//!
//! tests/export.rs checks the exporter against torchvision; this file closes the loop from the
//! trainer's weights (names, BatchNorm statistics, dropout) to the predictor's graph.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use sorbier::arch::Arch;
use sorbier::data::split::SplitSpec;
use sorbier::export;
use sorbier_train::model::{save_safetensors, Net};
use sorbier::run::{Checkpoint, CheckpointInfo, RunConfig};
use sorbier::transforms::{Augment, Preprocess};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// fp32: `max|ORT − libtorch| ≤ FP32_TOL · max|logit|`. Both compute in float32 with different
/// summation orders, and export folds BatchNorm into the convolutions. Measured (CPU, 64 px,
/// batch 2, 7 classes, logit scale 0.4–0.9): ResNet-18 4.7e-7, -34 7.0e-7, -50 6.7e-7,
/// -101 7.0e-7, -152 4.6e-7 of the logit scale (`cargo test --test export_trainer --
/// --nocapture` prints each depth); 10× the largest.
const FP32_TOL: f32 = 7e-6;
/// fp16: weights rounded to float16 (relative step 2^-11 ≈ 4.9e-4), errors compounding over up
/// to 50 blocks. Measured with the CPU provider: ResNet-18 4.6e-4, -34 6.0e-4, -50 1.5e-3,
/// -101 6.1e-4, -152 5.1e-4 of the logit scale; 2e-2 leaves an order of magnitude of headroom
/// while a wrong fold or a mis-cast tensor moves logits by far more.
const FP16_TOL: f32 = 2e-2;
const CLASSES: usize = 7;
const SIZE: i64 = 64;
const BATCH: i64 = 2;
/// Images in the BatchNorm calibration batch.
const CALIBRATION_BATCH: i64 = 8;

/// Logits of the ONNX model at `path` for `input` (`BATCH`×3×`SIZE`×`SIZE`).
fn ort_logits(path: &Path, input: &[f32]) -> (Vec<usize>, Vec<f32>) {
    common::ort_logits(path, &[BATCH as usize, 3, SIZE as usize, SIZE as usize], input)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).contiguous().view(-1);
    let mut v = vec![0f32; t.numel()];
    let n = v.len();
    t.copy_data(&mut v, n);
    v
}

/// Gives every BatchNorm the statistics of one train-mode pass over random images, and random
/// affine parameters, so that the exported graph folds non-trivial values (γ=1, β=0, mean 0,
/// var 1 would hide a folding mistake) and every BatchNorm sees inputs on the scale its
/// statistics describe.
///
/// tch's BatchNorm has momentum 0.1 fixed, so after one train-mode step from mean 0 / var 1 the
/// running values are `0.1·batch + 0.9·initial`; the batch statistics are recovered from them
/// exactly (PyTorch's `momentum=None` over one batch, as tools/export_reference.py does).
fn calibrate(vs: &nn::VarStore, model: &Net) {
    let branch_ends: Vec<&str> =
        model.spec().blocks.iter().filter_map(|b| b.convs.last()).map(|cb| cb.bn.as_str()).collect();
    // Sorted, so that the random draws go to the same tensors on every run.
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tch::no_grad(|| {
        let x = Tensor::randn([CALIBRATION_BATCH, 3, SIZE, SIZE], (Kind::Float, Device::Cpu));
        let _ = model.forward_t(&x, true);
        for (name, var) in &vars {
            let mut v = var.shallow_clone();
            if name.ends_with(".running_mean") {
                let _ = v.g_mul_scalar_(10.0);
            } else if name.ends_with(".running_var") {
                let _ = v.g_sub_scalar_(0.9).g_mul_scalar_(10.0).clamp_min_(1e-3);
            }
        }
        for (name, var) in &vars {
            let Some(bn) = name.strip_suffix(".running_mean") else { continue };
            let mut gamma = vars[&format!("{bn}.weight")].shallow_clone();
            let mut beta = vars[&format!("{bn}.bias")].shallow_clone();
            // γ in [0.5, 1.5), but [0.2, 0.5) at the end of a residual branch, as in trained
            // ResNets: otherwise the residual stream grows with every block (logits of several
            // thousand for ResNet-152), close to what float16 can hold.
            let (lo, width) = if branch_ends.contains(&bn) { (0.2, 0.3) } else { (0.5, 1.0) };
            gamma.copy_(&(Tensor::rand_like(&gamma) * width + lo));
            beta.copy_(&(Tensor::randn_like(&beta) * 0.2));
            // The statistics really moved away from their initial values.
            assert!(var.abs().max().double_value(&[]) > 1e-3, "{name} still zero");
        }
    });
}

/// libtorch's random generator is global and the tests run in parallel: drawing weights and
/// inputs under this lock keeps every test's numbers the same from run to run.
static RNG: Mutex<()> = Mutex::new(());

/// A run directory as the trainer writes it, for a fresh seeded `arch` model, and a seeded
/// input batch (`BATCH`×3×`SIZE`×`SIZE`).
fn make_run(dir: &Path, arch: Arch, dropout: f64, seed: i64) -> (nn::VarStore, Net, Tensor) {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = arch.spec(CLASSES);
    let model = Net::new(&vs.root(), &spec, dropout);
    calibrate(&vs, &model);
    let x = Tensor::randn([BATCH, 3, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let config = RunConfig {
        sorbier_version: sorbier::VERSION.to_string(),
        arch,
        classes: (0..CLASSES).map(|i| format!("species_{i}")).collect(),
        dropout,
        preprocess: Preprocess::for_crop(SIZE as u32),
        augment: Augment::default(),
        seed: seed as u64,
        split: SplitSpec::Holdout { val_fraction: 0.2, seed: seed as u64 },
        data_root: dir.join("data"),
        data_fingerprint: "0".repeat(64),
        train: serde_json::json!({}),
    };
    config.save(dir).unwrap();
    save_safetensors(&vs, &Checkpoint::Best.weights(dir)).unwrap();
    let info = CheckpointInfo { epoch: 1, metrics: BTreeMap::from([("val_acc".to_string(), 0.5)]), ema: false };
    std::fs::write(Checkpoint::Best.info(dir), serde_json::to_string(&info).unwrap()).unwrap();
    (vs, model, x)
}

/// Exports the run in `run` and returns `max|ORT − reference| / max|reference|`.
fn export_error(run: &Path, fp16: bool, input: &[f32], reference: &[f32]) -> f32 {
    let model = export::export_run(run, Checkpoint::Best, fp16).unwrap();
    let path = run.join(if fp16 { "model-fp16.onnx" } else { "model.onnx" });
    export::write_model(&model, &path).unwrap();
    let (shape, got) = ort_logits(&path, input);
    assert_eq!(shape, vec![BATCH as usize, CLASSES]);
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale.is_finite() && scale > 1e-3, "degenerate reference logits: {reference:?}");
    let diff = got.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// fp32 and fp16 export of a trainer-built `arch` against its eval-mode forward pass.
fn parity(arch: Arch, seed: i64) {
    let dir = tempfile::tempdir().unwrap();
    let (_vs, model, x) = make_run(dir.path(), arch, 0.0, seed);
    let reference = to_vec(&tch::no_grad(|| model.forward_t(&x, false)));
    let input = to_vec(&x);
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));

    let rel = export_error(dir.path(), false, &input, &reference);
    eprintln!("{arch} fp32: max|diff| = {rel:.2e} × max|logit| ({scale:.4})");
    assert!(rel <= FP32_TOL, "{arch} fp32: relative error {rel:e} > {FP32_TOL:e}");
    let rel16 = export_error(dir.path(), true, &input, &reference);
    eprintln!("{arch} fp16: max|diff| = {rel16:.2e} × max|logit|");
    assert!(rel16 <= FP16_TOL, "{arch} fp16: relative error {rel16:e} > {FP16_TOL:e}");
    // fp16 really changed the numbers: the weights were rounded.
    assert!(rel16 > rel, "{arch}: fp16 error {rel16:e} not above fp32 error {rel:e}");
}

#[test]
fn parity_resnet18() {
    parity(Arch::Resnet18, 18);
}
#[test]
fn parity_resnet34() {
    parity(Arch::Resnet34, 34);
}
#[test]
fn parity_resnet50() {
    parity(Arch::Resnet50, 50);
}
#[test]
fn parity_resnet101() {
    parity(Arch::Resnet101, 101);
}
#[test]
fn parity_resnet152() {
    parity(Arch::Resnet152, 152);
}

/// Dropout is part of training only: a run trained with dropout exports the same graph, whose
/// logits equal the eval-mode forward pass, while a train-mode head really drops features.
#[test]
fn dropout_run_exports_its_eval_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (_vs, mut model, x) = make_run(dir.path(), Arch::Resnet18, 0.5, 7);
    assert_eq!(RunConfig::load(dir.path()).unwrap().dropout, 0.5);
    let (eval_a, eval_b) = tch::no_grad(|| (model.forward_t(&x, false), model.forward_t(&x, false)));
    assert!(eval_a.equal(&eval_b), "eval-mode forward is not deterministic");
    let reference = to_vec(&eval_a);

    let rel = export_error(dir.path(), false, &to_vec(&x), &reference);
    eprintln!("resnet18 dropout 0.5 fp32: max|diff| = {rel:.2e} × max|logit|");
    assert!(rel <= FP32_TOL, "dropout run: relative error {rel:e} > {FP32_TOL:e}");

    // Dropout really is active in training: with the backbone frozen (BatchNorm in eval mode
    // whatever `train` says) only the dropout distinguishes a train-mode pass from eval.
    model.set_frozen_backbone(true);
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::no_grad(|| {
        let frozen_eval = model.forward_t(&x, false);
        assert!(frozen_eval.allclose(&eval_a, 1e-6, 1e-6, false), "frozen backbone changed eval logits");
        let dropped = model.forward_t(&x, true);
        assert!(!dropped.allclose(&eval_a, 1e-3, 1e-3, false), "train-mode dropout changed nothing");
    });
}
