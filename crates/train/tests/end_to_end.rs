//! The whole toolkit on real photos, through the two binaries as a user runs them: train a tiny
//! model on `flowers/train`, export it, predict `flowers/test` in `sample_submission.csv`'s
//! order, and score the submission against `solution.csv`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flowers() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/data/flowers")
}

/// The workspace's `predictor`, beside the trainer. It lives in another crate
/// (`CARGO_BIN_EXE_*` names only this crate's binaries); `cargo test` at the root (what CI
/// runs) builds every member's binaries before any test starts, so it is there and current.
/// Run alone (`cargo test -p sorbier-train`), this test builds it when it is missing.
fn predictor_bin() -> PathBuf {
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let bin = trainer.with_file_name("predictor");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "sorbier-predict", "--bin", "predictor"]);
        if trainer.parent().and_then(Path::file_name).is_some_and(|d| d == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo to build the predictor");
        assert!(status.success(), "building the predictor failed");
    }
    assert!(bin.is_file(), "no predictor at {}", bin.display());
    bin
}

fn run(bin: &str, args: &[&str]) -> Output {
    let out = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_csv(p: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_path(p).unwrap();
    r.records().map(|rec| rec.unwrap().iter().map(str::to_string).collect()).collect()
}

#[test]
fn train_export_predict_score_on_the_flowers_photos() {
    let data = flowers();
    assert!(data.join("train").is_dir(), "the flowers photos are missing at {}", data.display());
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (run_dir, model, sub) = (tmp.path().join("run"), tmp.path().join("m.onnx"), tmp.path().join("submission.csv"));

    let trainer = env!("CARGO_BIN_EXE_trainer");
    run(
        trainer,
        &[
            "train", &s(&data.join("train")), "--out", &s(&run_dir), "--arch", "resnet18", "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--max-steps-per-epoch", "3", "--workers", "2", "--threads", "2",
            "--device", "cpu", "--seed", "3", "--quiet", "--no-report",
        ],
    );
    run(trainer, &["export", &s(&run_dir), "-o", &s(&model)]);

    let predictor = predictor_bin();
    let predictor = predictor.to_str().unwrap();
    run(
        predictor,
        &[
            "predict", "--model", &s(&model), "--images", &s(&data.join("test")), "--sample-submission",
            &s(&data.join("sample_submission.csv")), "--out", &s(&sub), "--device", "cpu", "--quiet",
        ],
    );

    // Every row of the sample submission, in its order, with a class folder name (not an index).
    let sample = read_csv(&data.join("sample_submission.csv"));
    let got = read_csv(&sub);
    assert_eq!(got[0], ["image_name", "class"]);
    assert_eq!(got.len(), sample.len());
    let classes: Vec<String> = ["daisy", "dandelion", "roses", "sunflowers", "tulips"].map(String::from).to_vec();
    for (g, want) in got[1..].iter().zip(&sample[1..]) {
        assert_eq!(g[0], want[0], "row order differs from sample_submission.csv");
        assert!(classes.contains(&g[1]), "class {:?} is not a train folder name", g[1]);
    }

    let out = run(predictor, &["score", "--submission", &s(&sub), "--solution", &s(&data.join("solution.csv"))]);
    let text = String::from_utf8_lossy(&out.stdout);
    let acc: f64 = text
        .split_whitespace()
        .skip_while(|w| *w != "accuracy")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {text}"));
    // The score is computed from the submission: check it against the solution here.
    let solution: std::collections::HashMap<String, String> =
        read_csv(&data.join("solution.csv")).into_iter().skip(1).map(|r| (r[0].clone(), r[1].clone())).collect();
    let correct = got[1..].iter().filter(|g| solution[&g[0]] == g[1]).count();
    assert!((acc - correct as f64 / 250.0).abs() < 1e-4, "score says {acc}, rows say {correct}/250");
}

/// A pretrained EfficientNet-Lite0 and a ResNet-18, each with its own preprocessing (bicubic,
/// (x − 127)/128 at 64 px; bilinear, ImageNet mean/std at 32 px), predicted as one ensemble:
/// the predictor takes everything from the model cards, and the ensemble's saved mean is the
/// average of what each model predicts alone.
#[test]
fn an_efficientnet_and_a_resnet_predict_as_one_ensemble() {
    let data = flowers();
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let trainer = env!("CARGO_BIN_EXE_trainer");
    let common = ["--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "2", "--workers", "2", "--threads", "2", "--device", "cpu", "--seed", "4", "--quiet", "--no-report"];
    let mut models = Vec::new();
    for (name, arch_args) in [
        ("lite0", vec!["--arch", "efficientnet-lite0", "--pretrained", "imagenet", "--image-size", "64"]),
        ("r18", vec!["--arch", "resnet18", "--image-size", "32"]),
    ] {
        let run_dir = tmp.path().join(name);
        let mut args = vec!["train".to_string(), s(&data.join("train")), "--out".into(), s(&run_dir)];
        args.extend(arch_args.iter().chain(&common).map(|a| a.to_string()));
        run(trainer, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let model = tmp.path().join(format!("{name}.onnx"));
        run(trainer, &["export", &s(&run_dir), "-o", &s(&model)]);
        models.push(model);
    }

    let predictor = predictor_bin();
    let predictor = predictor.to_str().unwrap();
    let info = run(predictor, &["info", &s(&models[0])]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("efficientnet-lite0") && info.contains("Bicubic") && info.contains("0.49803922"), "{info}");

    let predict = |models: &[&Path], out: &str| {
        let (sub, logits) = (tmp.path().join(format!("{out}.csv")), tmp.path().join(format!("{out}.safetensors")));
        let mut args = vec!["predict".to_string()];
        for m in models {
            args.extend(["--model".to_string(), s(m)]);
        }
        let rest = ["--images", &s(&data.join("test")), "--sample-submission", &s(&data.join("sample_submission.csv")), "--out", &s(&sub), "--save-logits", &s(&logits), "--quiet"];
        args.extend(rest.iter().map(|a| a.to_string()));
        run(predictor, &args.iter().map(String::as_str).collect::<Vec<_>>());
        (read_csv(&sub), sorbier_predict::output::logits::load(&logits).unwrap())
    };
    let (_, alone_a) = predict(&[&models[0]], "lite0");
    let (_, alone_b) = predict(&[&models[1]], "r18");
    let (rows, both) = predict(&[&models[0], &models[1]], "both");
    assert_eq!(rows.len(), 251);
    assert_eq!(both.members.len(), 2);
    for (i, (m, (a, b))) in both.mean.iter().zip(alone_a.mean.iter().zip(alone_b.mean.iter())).enumerate() {
        assert!((m - (a + b) / 2.0).abs() <= 1e-5, "element {i}: ensemble {m}, alone {a} and {b}");
    }
    assert!(both.members[0].iter().zip(alone_a.mean.iter()).all(|(x, y)| x == y), "member 0 is the EfficientNet as predicted alone");
}
