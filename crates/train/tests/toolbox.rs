//! timm's fine-tuning toolbox in the trainer, checked against timm itself and end to end:
//!
//! - the EMA update against `timm.utils.ModelEmaV3.update` on every state-dict entry of a
//!   ResNet-18 (torchvision's names, BatchNorm statistics included), with and without warmup;
//! - mixup and CutMix images and soft targets against `timm.data.Mixup` for a fixed λ and box;
//! - `trainer train --model-ema --mixup --cutmix --auto-augment --reprob` on the real flowers
//!   photos: the EMA is
//!   validated beside the raw weights, the better is `best.*` and says so, `--checkpoint ema`
//!   exports it, and `--resume` (after an epoch, and after SIGINT inside one) gives the
//!   uninterrupted run's weights *and* average, bit for bit.
//!
//! The timm side is `tools/toolbox_reference.py`, run with the project's Python.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sorbier::arch::Arch;
use sorbier::run::CheckpointInfo;
use sorbier_train::ema::{EmaConfig, ModelEma};
use sorbier_train::files::read_history;
use sorbier_train::mixup::{self, Mix};
use sorbier_train::model::Net;
use tch::{nn, Device, Kind, Tensor};

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn python() -> PathBuf {
    let p = std::env::var("SORBIER_PYTHON").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(".venv/bin/python"));
    if p.is_absolute() {
        p
    } else {
        root().join(p)
    }
}

/// Runs `tools/toolbox_reference.py` with `args`; its stdout.
fn timm(args: &[&str]) -> String {
    let out = Command::new(python()).arg(root().join("tools/toolbox_reference.py")).args(args).output().expect("run python");
    assert!(out.status.success(), "toolbox_reference.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

#[test]
fn ema_update_matches_timm_model_ema_v3() {
    let dir = tempfile::tempdir().unwrap();
    let classes = 3;
    let spec = Arch::Resnet18.spec(classes);
    for (decay, warmup, step) in [(0.999, true, 1u64), (0.999, true, 40), (0.9, true, 1_000_000), (0.99, false, 7)] {
        tch::manual_seed(step as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = Net::new(&vs.root(), &spec, 0.0);
        let ema = ModelEma::new(EmaConfig { decay, warmup }, &vs, &spec, Device::Cpu, false).unwrap();
        // The model moves away from the average (BatchNorm statistics too, staying positive).
        tch::no_grad(|| {
            for (name, v) in sorted(&vs) {
                let noise = v.randn_like() * 0.1;
                let step = if name.ends_with("running_var") { noise.abs() } else { noise };
                let _ = v.shallow_clone().g_add_(&step);
            }
        });
        let mut inputs: Vec<(String, Tensor)> = sorted(&ema.vs).into_iter().map(|(n, t)| (format!("ema.{n}"), t.copy())).collect();
        inputs.extend(sorted(&vs).into_iter().map(|(n, t)| (format!("model.{n}"), t.copy())));
        let (inp, out) = (dir.path().join("in.npz"), dir.path().join("out.npz"));
        Tensor::write_npz(&inputs, &inp).unwrap();
        let mut args = vec!["ema", inp.to_str().unwrap(), out.to_str().unwrap(), "--classes", "3"];
        let (d, k) = (decay.to_string(), step.to_string());
        args.extend(["--decay", &d, "--step", &k]);
        if !warmup {
            args.push("--no-warmup");
        }
        let said = timm(&args);
        let timm_decay: f64 = said.trim().strip_prefix("decay ").unwrap().parse().unwrap();
        assert_eq!(timm_decay, EmaConfig { decay, warmup }.decay_at(step), "decay at step {step}");

        ema.update(step).unwrap();
        let want: std::collections::HashMap<String, Tensor> = Tensor::read_npz(&out).unwrap().into_iter().collect();
        let ours = sorted(&ema.vs);
        assert_eq!(ours.len(), want.len(), "timm's state dict has {} float entries, ours {}", want.len(), ours.len());
        let mut worst = 0f64;
        for (name, t) in &ours {
            let w = want.get(name).unwrap_or_else(|| panic!("timm has no {name}"));
            worst = worst.max(max_diff(t, w));
        }
        assert!(worst <= 1e-6, "decay {decay} warmup {warmup} step {step}: max |ours − timm| = {worst}");
        // Not vacuous: the update moved the average (except at step 1, where it is a copy).
        let before: std::collections::HashMap<String, Tensor> = inputs.into_iter().collect();
        let moved = ours.iter().map(|(n, t)| max_diff(t, &before[&format!("ema.{n}")])).fold(0f64, f64::max);
        assert!(moved > 1e-3, "the average did not move at step {step}");
    }
}

#[test]
fn mixup_and_cutmix_match_timm_for_a_fixed_lambda_and_box() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(11);
    let x = Tensor::randn([6, 3, 10, 14], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 4, 2, 2, 1, 3]);
    let inp = dir.path().join("in.npz");
    Tensor::write_npz(&[("x", &x), ("y", &y)], &inp).unwrap();
    let b = mixup::Box { top: 2, bottom: 9, left: 3, right: 12 };
    let cases = [
        (Mix::Mixup { lam: 0.3 }, None, 0.1),
        (Mix::Mixup { lam: 0.85 }, None, 0.0),
        (Mix::Cutmix { area: b, lam: mixup::corrected(b, 10, 14) }, Some("2,9,3,12"), 0.1),
        (Mix::None, None, 0.2),
    ];
    for (mix, cutmix_box, smoothing) in cases {
        let out = dir.path().join("out.npz");
        let (lam, eps) = (mix.lam().to_string(), smoothing.to_string());
        let mut args = vec!["mixup", inp.to_str().unwrap(), out.to_str().unwrap(), "--classes", "5", "--smoothing", &eps];
        // timm is given the drawn λ; for CutMix it corrects it to the box itself.
        let drawn = if cutmix_box.is_some() { "0.5".to_string() } else { lam.clone() };
        args.extend(["--lam", &drawn]);
        if let Some(bx) = cutmix_box {
            args.extend(["--cutmix", bx]);
        }
        timm(&args);
        let want: std::collections::HashMap<String, Tensor> = Tensor::read_npz(&out).unwrap().into_iter().collect();
        let images = mixup::mix_images(&x, &mix);
        let targets = mixup::mix_targets(&y, 5, mix.lam(), smoothing);
        assert_eq!(want["x"].size(), images.size());
        let (dx, dt) = (max_diff(&images, &want["x"]), max_diff(&targets, &want["target"]));
        assert!(dx <= 1e-6 && dt <= 1e-6, "{mix:?}: images differ by {dx}, targets by {dt}");
        if !matches!(mix, Mix::None) {
            assert!(max_diff(&images, &x) > 0.1, "{mix:?} left the batch as it was");
        }
    }
}

fn flowers() -> PathBuf {
    root().join("../shared/data/flowers/train")
}

/// ResNet-18 at 32 px, 4 steps of 12 images per epoch, with EMA, mixup, CutMix, RandAugment
/// and random erasing.
fn args(out: &Path, epochs: usize, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", flowers().to_str().unwrap(), "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let rest = [
        "--arch", "resnet18", "--image-size", "32", "--batch-size", "12", "--workers", "2", "--threads", "1", "--seed", "4", "--quiet", "--no-report",
        "--model-ema", "0.99", "--mixup", "0.4", "--cutmix", "1.0", "--label-smoothing", "0.1", "--auto-augment", "rand-m9-mstd0.5",
        "--reprob", "0.25",
    ];
    a.extend(rest.iter().map(|s| s.to_string()));
    a.extend(["--epochs".into(), epochs.to_string(), "--max-steps-per-epoch".into(), steps.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn ok(args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("run trainer");
    assert!(out.status.success(), "trainer {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn assert_identical(a: &Path, b: &Path) {
    let (mut ta, mut tb) = (Tensor::read_safetensors(a).unwrap(), Tensor::read_safetensors(b).unwrap());
    ta.sort_by(|x, y| x.0.cmp(&y.0));
    tb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(xa.equal(xb), "{na} differs between {} and {}", a.display(), b.display());
    }
}

#[test]
fn ema_is_validated_beside_the_weights_picked_when_better_exported_and_resumed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let out = ok(&args(&reference, 3, 4, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| ema loss"), "{stdout}");
    let cfg = sorbier::run::RunConfig::load(&reference).unwrap();
    assert_eq!(cfg.augment.auto_augment.map(|a| a.to_string()).as_deref(), Some("rand-m9-mstd0.5"));
    assert_eq!(cfg.augment.reprob, 0.25);
    let history = read_history(&reference.join("history.csv")).unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|r| r.ema_val_top1.is_finite() && r.val_top1.is_finite()));
    // The average is not the trained weights.
    assert!(history.iter().any(|r| r.ema_val_loss != r.val_loss));
    // best.json names the weights it holds, and holds the better of the two at its epoch.
    let best = CheckpointInfo::load(&reference.join("best.json")).unwrap();
    let row = &history[best.epoch - 1];
    let (raw, ema) = (row.val_top1, row.ema_val_top1);
    assert_eq!(best.ema, ema >= raw, "best.json {best:?} at raw {raw} ema {ema}");
    assert_eq!(best.metrics["top1"], if best.ema { ema } else { raw });
    let best_top1 = history.iter().map(|r| r.val_top1.max(r.ema_val_top1)).fold(0f64, f64::max);
    assert_eq!(best.metrics["top1"], best_top1, "the best epoch is the best of both columns");
    if best.ema && best.epoch == 3 {
        assert_eq!(std::fs::read(reference.join("best.safetensors")).unwrap(), std::fs::read(reference.join("ema.safetensors")).unwrap());
    }
    let ema_info = CheckpointInfo::load(&reference.join("ema.json")).unwrap();
    assert!(ema_info.ema && ema_info.epoch == 3 && ema_info.metrics["top1"] == history[2].ema_val_top1);

    // --checkpoint ema exports the average.
    let onnx = dir.path().join("ema.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["export", reference.to_str().unwrap(), "--checkpoint", "ema", "-o", onnx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1_000_000);

    // Resume after epoch 1: the same weights and the same average as the uninterrupted run.
    let resumed = dir.path().join("resumed");
    ok(&args(&resumed, 1, 4, &[]));
    ok(&["train".into(), "--resume".into(), resumed.to_str().unwrap().into(), "--epochs".into(), "3".into(), "--quiet".into()]);
    assert_identical(&resumed.join("last.safetensors"), &reference.join("last.safetensors"));
    assert_identical(&resumed.join("ema.safetensors"), &reference.join("ema.safetensors"));
    let again = read_history(&resumed.join("history.csv")).unwrap();
    let cols = |r: &sorbier_train::files::HistoryRow| [r.train_loss, r.val_loss, r.ema_val_loss, r.ema_val_top1];
    assert_eq!(again.iter().map(cols).collect::<Vec<_>>(), history.iter().map(cols).collect::<Vec<_>>());
}

#[test]
fn sigint_inside_an_epoch_keeps_the_average_and_resume_matches_an_uninterrupted_run() {
    const STEPS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    ok(&args(&reference, 2, STEPS, &["--val-fraction", "0"]));
    // Without validation the average is what best.* holds.
    assert!(CheckpointInfo::load(&reference.join("best.json")).unwrap().ema);
    assert_eq!(std::fs::read(reference.join("best.safetensors")).unwrap(), std::fs::read(reference.join("ema.safetensors")).unwrap());

    let mut delay = None;
    for attempt in 0..4 {
        let run = dir.path().join(format!("run{attempt}"));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(args(&run, 2, STEPS, &["--val-fraction", "0"]))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while !run.join("last.json").exists() {
            assert!(started.elapsed() < Duration::from_secs(300), "epoch 1 never committed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let wait = *delay.get_or_insert(started.elapsed() / 3);
        std::thread::sleep(wait);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        if status.success() {
            delay = Some(wait / 3); // finished first: stop sooner
            continue;
        }
        assert_eq!(status.code(), Some(75));
        assert!(run.join("stopped.ema.safetensors").exists(), "the stop record keeps the average");
        ok(&["train".into(), "--resume".into(), run.to_str().unwrap().into(), "--quiet".into()]);
        assert_identical(&run.join("last.safetensors"), &reference.join("last.safetensors"));
        assert_identical(&run.join("ema.safetensors"), &reference.join("ema.safetensors"));
        assert!(!run.join("stopped.ema.safetensors").exists(), "the stop record is removed once its epoch is committed");
        return;
    }
    panic!("SIGINT never landed inside epoch 2");
}

#[test]
fn bad_toolbox_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, says) in [
        (&["--model-ema", "1.5"][..], "--model-ema 1.5"),
        (&["--mixup", "nan"][..], "--mixup NaN"),
        (&["--cutmix", "1", "--mixup-prob", "2"][..], "--mixup-prob 2"),
        (&["--reprob", "1.5"][..], "--reprob 1.5"),
        (&["--auto-augment", "rand-m9-q3"][..], "rand-m9-q3"),
    ] {
        let mut a = args(&dir.path().join("x"), 1, 1, &[]);
        // Replace the recipe's own values by the bad ones.
        for pair in extra.chunks(2) {
            if let Some(i) = a.iter().position(|v| v == pair[0]) {
                a[i + 1] = pair[1].to_string();
            } else {
                a.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_trainer")).args(&a).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{extra:?}: {err}");
        assert!(!dir.path().join("x").join("config.json").exists());
    }
    // An old run directory without the average cannot be exported as one.
    let run = dir.path().join("plain");
    let mut a = args(&run, 1, 1, &[]);
    let i = a.iter().position(|v| v == "--model-ema").unwrap();
    a.drain(i..i + 2);
    ok(&a);
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["export", run.to_str().unwrap(), "--checkpoint", "ema", "-o", dir.path().join("m.onnx").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("trained without --model-ema"), "{}", String::from_utf8_lossy(&out.stderr));
}
