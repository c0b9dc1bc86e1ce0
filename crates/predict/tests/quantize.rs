//! `predictor quantize` end to end on the flowers photos: the int8 file passes `onnx.checker`
//! (full check) and sorbier's file contract, ONNX Runtime runs it with int8 kernels, its card
//! records the calibration (`predictor info` shows it), `predict` and ensembles mixing int8 and
//! float32 members need nothing else, bad inputs are refused without writing anything, and on
//! a model that has learned something (a tiny ResNet-18 trained by `trainer` for a few epochs)
//! the int8 predictions agree with float32 on the test photos.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::*;

use sorbier::meta::{Quantization, PRECISION_INT8};

/// Top-1 agreement of int8 with float32 on the 250 test photos, tiny trained model. Its
/// logits are less separated than a well-trained model's (more images sit near a decision
/// boundary, where int8 rounding can flip them), so the bar is below the 97 % for the
/// README's models (measured: 98.8 %, top-1 0.580 float32 vs 0.576 int8; `--nocapture` prints it).
const MIN_AGREEMENT: f64 = 0.95;
/// Largest top-1 loss (points of accuracy) of int8 against float32 for the tiny model.
const MAX_DROP: f64 = 0.02;

fn quantize(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let calibrate = flowers().join("train");
    let mut args = vec!["quantize", s(model), "--calibrate", s(&calibrate), "-o", s(out), "--quiet", "--threads", "2", "--workers", "2"];
    args.extend(extra);
    run(&args)
}

fn predict(models: &[&Path], out: &Path, extra: &[&str]) -> Vec<Vec<String>> {
    let data = flowers();
    let (images, sample) = (data.join("test"), data.join("sample_submission.csv"));
    let mut args = vec!["predict"];
    for m in models {
        args.extend(["--model", s(m)]);
    }
    args.extend(["--images", s(&images), "--sample-submission", s(&sample), "--out", s(out), "--quiet"]);
    args.extend(FAST);
    args.extend(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_csv(out)
}

/// Share of rows where two submissions name the same class.
fn agreement(a: &[Vec<String>], b: &[Vec<String>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a[1..].iter().zip(&b[1..]).filter(|(x, y)| x[1] == y[1]).count() as f64 / (a.len() - 1) as f64
}

fn accuracy(sub: &[Vec<String>]) -> f64 {
    let solution = read_csv(&flowers().join("solution.csv"));
    let truth: std::collections::HashMap<&str, &str> = solution[1..].iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    sub[1..].iter().filter(|r| truth[r[0].as_str()] == r[1]).count() as f64 / (sub.len() - 1) as f64
}

#[test]
fn quantize_writes_a_checked_int8_model_that_info_predict_and_ensembles_use() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let int8 = tmp.path().join("a.int8.onnx");
    let o = quantize(&f.a, &int8, &["--images", "40"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(stderr.contains("calibration: 40 images") && stderr.contains("stratified over 5 classes"), "{stderr}");
    assert!(stdout.contains("20 Conv") && stdout.contains("17 Relu (folded)") && stdout.contains("20 QLinearConv") && stdout.contains("0 float Conv"), "{stdout}");
    assert!(!stderr.contains("Warning"), "ONNX Runtime warnings reach the user:\n{stderr}");

    for check in onnx_check(&[&int8]) {
        assert_eq!(check["ok"], true, "{check}");
        assert_eq!(check["ops"]["Conv"], 20);
        assert!(check["initializer_types"].as_array().unwrap().iter().any(|t| t == "INT8"), "{check}");
    }

    let model = sorbier::export::read_model(&int8).unwrap();
    let meta = sorbier::export::model_meta(&model).unwrap();
    assert_eq!(meta.precision, PRECISION_INT8);
    let card = Quantization::from_props(model.metadata_props.iter().map(|p| (p.key.as_deref().unwrap(), p.value.as_deref().unwrap()))).unwrap().unwrap();
    assert_eq!((card.method.as_str(), card.images, card.nodes["Conv"]), ("minmax", 40, 20));
    assert_eq!(card.parent_sha256, sorbier_predict::output::fingerprint::file_sha256(&f.a).unwrap());
    // The same draw of the same folder gives the same fingerprint and the same file; another
    // seed another fingerprint.
    let card_of = |p: &Path| Quantization::from_props(sorbier::export::read_model(p).unwrap().metadata_props.iter().map(|p| (p.key.as_deref().unwrap(), p.value.as_deref().unwrap()))).unwrap().unwrap();
    let (same, again) = (tmp.path().join("same.int8.onnx"), tmp.path().join("again.int8.onnx"));
    assert!(quantize(&f.a, &same, &["--images", "40", "--seed", "0"]).status.success());
    assert_eq!(card_of(&same).data_fingerprint, card.data_fingerprint, "--seed 0 is the default draw");
    assert!(std::fs::read(&same).unwrap() == std::fs::read(&int8).unwrap(), "the same draw gives the same int8 file");
    assert!(quantize(&f.a, &again, &["--images", "40", "--seed", "1"]).status.success());
    assert_ne!(card_of(&again).data_fingerprint, card.data_fingerprint);

    let o = run(&["info", s(&int8)]);
    let text = String::from_utf8_lossy(&o.stdout);
    for want in ["precision        int8", "weights int8 symmetric per output channel", "activations uint8", "minmax on 40 images", &card.data_fingerprint, "20 Conv", &card.parent_sha256] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("sorbier.quantization ="), "the record is shown, not dumped raw:\n{text}");

    // predict needs nothing else; an ensemble may mix the int8 model with float32 ones.
    let fp32 = predict(&[&f.a], &tmp.path().join("fp32.csv"), &[]);
    let q = predict(&[&int8], &tmp.path().join("int8.csv"), &[]);
    assert_eq!(q.len(), 251);
    assert_varied_top1(&fp32);
    let agree = agreement(&fp32, &q);
    eprintln!("random-weight fixture: int8 agrees with float32 on {:.1} % of the test photos", 100.0 * agree);
    assert!(agree >= 0.9, "int8 and float32 disagree on {:.1} % of the photos", 100.0 * (1.0 - agree));
    let data = flowers();
    let (images, sample, out) = (data.join("test"), data.join("sample_submission.csv"), tmp.path().join("mixed.csv"));
    let mut args = vec!["predict", "--model", s(&int8), "--model", s(&f.b), "--tta", "hflip", "--images", s(&images)];
    args.extend(["--sample-submission", s(&sample), "--out", s(&out), "--quiet"]);
    args.extend(FAST);
    let o = run(&args);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 models (resnet18 64px int8, resnet18 48px)"));
    assert_eq!(read_csv(&out).len(), 251);
}

#[test]
fn quantize_refuses_bad_inputs_and_writes_nothing() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let refused = |o: std::process::Output, want: &[&str]| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        for w in want {
            assert!(err.contains(w), "missing {w:?} in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };

    let fp16 = tmp.path().join("fp16.onnx");
    make_model_in(&fp16, &train_classes(), 32, 4, true);
    refused(quantize(&fp16, &out, &[]), &["float16", "without --fp16"]);
    refused(quantize(&tmp.path().join("none.onnx"), &out, &[]), &["none.onnx"]);
    let o = run(&["quantize", s(&f.a), "--calibrate", s(&tmp.path().join("no-such-dir")), "-o", s(&out)]);
    refused(o, &["no-such-dir"]);
    refused(quantize(&f.a, &out, &["--images", "0"]), &["--images must be at least 1"]);
    refused(quantize(&f.a, &tmp.path().join("no/such/folder/q.onnx"), &[]), &["does not exist"]);
    assert!(!out.exists(), "nothing written after a refusal");

    // An undecodable calibration image is named.
    let bad = tmp.path().join("calib");
    std::fs::create_dir_all(bad.join("daisy")).unwrap();
    std::fs::write(bad.join("daisy/broken.jpg"), b"not a jpeg").unwrap();
    let o = run(&["quantize", s(&f.a), "--calibrate", s(&bad), "-o", s(&out), "--quiet"]);
    refused(o, &["broken.jpg", "could not be read"]);
    assert!(!out.exists());

    // An existing output needs --force; an int8 model is not quantised again.
    assert!(quantize(&f.a, &out, &["--images", "10"]).status.success());
    let before = std::fs::read(&out).unwrap();
    refused(quantize(&f.a, &out, &["--images", "10"]), &["already exists", "--force"]);
    refused(quantize(&out, &tmp.path().join("twice.onnx"), &["--images", "10"]), &["already int8"]);
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert!(quantize(&f.a, &out, &["--images", "10", "--force", "--method", "percentile"]).status.success());
}

/// A tiny ResNet-18 trained on flowers/train by the workspace's `trainer` (64 px, 4 epochs),
/// exported; built once and kept in the target folder under a hash of what makes it: the
/// trainer binary (which also exports), its arguments and the training data's fingerprint.
fn trained_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let trainer = Path::new(bin()).with_file_name("trainer");
        if !trainer.is_file() {
            // `cargo test` at the root builds it; run alone, this crate's tests build it here.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "sorbier-train", "--bin", "trainer"]);
            if trainer.parent().and_then(Path::file_name).is_some_and(|d| d == "release") {
                build.arg("--release");
            }
            assert!(build.status().unwrap().success(), "building the trainer failed");
        }
        let train = flowers().join("train");
        let recipe = [
            "--arch", "resnet18", "--image-size", "64", "--epochs", "4", "--batch-size", "32", "--optimizer", "adam", "--lr", "1e-3",
            "--val-fraction", "0", "--workers", "2", "--threads", "2", "--device", "cpu", "--seed", "0", "--quiet", "--no-report",
        ];
        let data = sorbier::data::Dataset::scan(&train).unwrap().fingerprint().unwrap();
        let key = key(&[&std::fs::read(&trainer).unwrap(), recipe.join(" ").as_bytes(), data.as_bytes()]);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("quantize-trained-{key}"));
        let model = dir.join("model.onnx");
        if model.exists() {
            return model;
        }
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let run_dir = tmp.join("run");
        let mut args = vec!["train", s(&train), "--out", s(&run_dir)];
        args.extend(recipe);
        let o = Command::new(&trainer).args(args).output().unwrap();
        assert!(o.status.success(), "trainer failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new(&trainer).args(["export", s(&run_dir), "-o", s(&tmp.join("model.onnx"))]).output().unwrap();
        assert!(o.status.success(), "export failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        model
    })
}

#[test]
fn int8_of_a_trained_model_agrees_with_float32_on_the_flowers_test_photos() {
    let model = trained_model();
    let tmp = tempfile::tempdir().unwrap();
    let int8 = tmp.path().join("trained.int8.onnx");
    let o = quantize(model, &int8, &["--images", "200"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fp32 = predict(&[model], &tmp.path().join("fp32.csv"), &[]);
    let q = predict(&[&int8], &tmp.path().join("int8.csv"), &[]);
    let (a32, a8, agree) = (accuracy(&fp32), accuracy(&q), agreement(&fp32, &q));
    eprintln!("tiny trained ResNet-18: top-1 float32 {a32:.3}, int8 {a8:.3}, agreement {:.1} %", 100.0 * agree);
    assert!(a32 > 0.35, "the model learned too little to test anything ({a32:.3})");
    assert!(agree >= MIN_AGREEMENT, "int8 agrees with float32 on only {:.1} % of the photos", 100.0 * agree);
    assert!(a32 - a8 <= MAX_DROP, "int8 loses {:.1} points of top-1", 100.0 * (a32 - a8));
}
