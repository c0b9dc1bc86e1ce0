//! Compatibility with torchvision, through `tools/torchvision_compat.py` (seeded): torchvision
//! state dicts (`.pth` and `.safetensors`) load into `model::ResNet` and give the same eval-mode
//! logits; what `save_safetensors` writes loads back into torchvision with `strict=True` and
//! gives the same logits there. Also the loader's errors on files that do not fit.

use sorbier::arch::{Arch, NetSpec};
use sorbier_train::model::{load_weights, save_safetensors, Net};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

const CLASSES: usize = 5;
/// Max |diff| allowed between our logits and torchvision's, relative to max(|logit|, 1).
/// Both sides run the same libtorch kernels in fp32; measured differences are at the level of
/// float rounding (see the test's printout), so 1e-5 leaves headroom without hiding a real
/// mismatch (a wrong BatchNorm eps or a misplaced stride moves logits by 1e-3 or more).
const TOL: f64 = 1e-5;

/// ResNet-18 and -50 cover both block kinds; ResNet-152 (≈ 230 MB of fixtures per format, about
/// a minute on 2 busy cores) joins with `SORBIER_TEST_RESNET152=1`.
fn archs() -> Vec<Arch> {
    let mut archs = vec![Arch::Resnet18, Arch::Resnet50];
    if std::env::var_os("SORBIER_TEST_RESNET152").is_some_and(|v| v == "1") {
        archs.push(Arch::Resnet152);
    }
    archs
}

fn python() -> PathBuf {
    let p = std::env::var("SORBIER_PYTHON")
        .ok()
        .or_else(|| option_env!("SORBIER_PYTHON").map(String::from))
        .unwrap_or_else(|| ".venv/bin/python".into());
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(p)
}

fn script() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("tools/torchvision_compat.py")
}

fn run_script(args: &[&str]) -> (bool, String) {
    let out = Command::new(python()).arg(script()).args(args).output().expect("cannot start the venv's python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The fixtures, made once per test process under target/tmp (deterministic, overwritten).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("model_compat");
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["make", "--classes", "5", "--size", "64", "--batch", "2", "--out"];
        args.push(dir.to_str().unwrap());
        args.push("--arch");
        let archs = archs();
        args.extend(archs.iter().map(|a| a.name()));
        let (ok, text) = run_script(&args);
        assert!(ok, "fixture script failed:\n{text}");
        dir
    })
}

fn model(spec: &NetSpec) -> (nn::VarStore, Net) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), spec, 0.0);
    (vs, net)
}

fn io(arch: Arch) -> (Tensor, Tensor) {
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join(format!("{arch}_io.safetensors"))).unwrap().into_iter().collect();
    (io["input"].shallow_clone(), io["logits"].shallow_clone())
}

fn max_abs(t: &Tensor) -> f64 {
    f64::try_from(t.abs().max()).unwrap()
}

#[test]
fn torchvision_weights_load_match_and_round_trip() {
    let dir = fixtures();
    let out = tempfile::tempdir().unwrap();
    for arch in archs() {
        let spec = arch.spec(CLASSES);
        let (x, want) = io(arch);
        let scale = max_abs(&want).max(1.0);
        let bn_count = spec.conv_bns().count();
        for ext in ["pth", "safetensors"] {
            tch::manual_seed(0);
            let (mut vs, net) = model(&spec);
            let report = load_weights(&mut vs, &dir.join(format!("{arch}.{ext}")), &spec, false).unwrap();
            assert_eq!(report.loaded.len(), spec.tensors().len(), "{arch} {ext}");
            assert!(report.missing.is_empty() && report.dropped_head.is_empty());
            // torch.save keeps num_batches_tracked; the safetensors fixture has none.
            assert_eq!(report.ignored.len(), if ext == "pth" { bn_count } else { 0 }, "{arch} {ext}");

            let got = tch::no_grad(|| net.forward_t(&x, false));
            let diff = max_abs(&(&got - &want));
            println!("{arch} {ext}: max |logit| {:.4}, max |diff| {diff:.3e}", max_abs(&want));
            assert!(diff <= TOL * scale, "{arch} {ext}: max |diff| {diff} > {TOL} × {scale}");

            if ext == "safetensors" {
                // Our checkpoint → torchvision strict=True, with our logits to reproduce there.
                let weights = out.path().join(format!("{arch}.safetensors"));
                save_safetensors(&vs, &weights).unwrap();
                let ours = out.path().join(format!("{arch}_ours_io.safetensors"));
                Tensor::write_safetensors(&[("input", &x), ("logits", &got)], &ours).unwrap();
                let tol = TOL.to_string();
                let (ok, text) = run_script(&[
                    "check",
                    "--arch",
                    arch.name(),
                    "--classes",
                    "5",
                    "--weights",
                    weights.to_str().unwrap(),
                    "--io",
                    ours.to_str().unwrap(),
                    "--tol",
                    &tol,
                ]);
                println!("{arch} torchvision check: {}", text.trim());
                assert!(ok, "{arch}: torchvision rejected our checkpoint:\n{text}");
                assert!(text.contains("\"strict_load\": \"ok\""), "{text}");
            }
        }
    }
}

/// The resnet18 safetensors fixture as an editable list.
fn resnet18_tensors() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(fixtures().join("resnet18.safetensors")).unwrap()
}

fn load_edited(edit: impl FnOnce(&mut Vec<(String, Tensor)>), drop_head: bool) -> (anyhow::Result<sorbier_train::model::LoadReport>, nn::VarStore, Tensor) {
    let mut tensors = resnet18_tensors();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let spec = Arch::Resnet18.spec(CLASSES);
    let (mut vs, _net) = model(&spec);
    let before = vs.variables()["conv1.weight"].copy();
    let result = load_weights(&mut vs, &path, &spec, drop_head);
    (result, vs, before)
}

#[test]
fn missing_backbone_tensor_is_an_error_naming_it() {
    let (result, vs, before) = load_edited(|t| t.retain(|(n, _)| n != "layer3.1.bn2.running_var"), false);
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("1 missing: layer3.1.bn2.running_var"), "{err}");
    assert!(err.contains("edited.safetensors"), "{err}");
    // Nothing was copied.
    assert!(vs.variables()["conv1.weight"].equal(&before));
}

#[test]
fn wrong_shape_is_an_error_with_expected_and_got() {
    let (result, _, _) = load_edited(
        |t| {
            for (n, v) in t.iter_mut() {
                if n == "layer1.0.conv1.weight" {
                    *v = Tensor::zeros([64, 64, 1, 1], (tch::Kind::Float, Device::Cpu));
                }
            }
        },
        false,
    );
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("layer1.0.conv1.weight expected [64, 64, 3, 3], got [64, 64, 1, 1]"), "{err}");
}

#[test]
fn unexpected_tensor_is_an_error_naming_it() {
    let (result, _, _) = load_edited(
        |t| t.push(("layer5.0.conv1.weight".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)))),
        false,
    );
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("1 unexpected: layer5.0.conv1.weight"), "{err}");
}

#[test]
fn imagenet_head_is_dropped_on_request() {
    let imagenet_head = |t: &mut Vec<(String, Tensor)>| {
        for (n, v) in t.iter_mut() {
            match n.as_str() {
                "fc.weight" => *v = Tensor::ones([1000, 512], (tch::Kind::Float, Device::Cpu)),
                "fc.bias" => *v = Tensor::ones([1000], (tch::Kind::Float, Device::Cpu)),
                _ => {}
            }
        }
    };
    let (result, _, _) = load_edited(imagenet_head, false);
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("fc.weight expected [5, 512], got [1000, 512]"), "{err}");
    assert!(err.contains("only the classifier head differs"), "{err}");

    let (result, vs, before) = load_edited(imagenet_head, true);
    let report = result.unwrap();
    assert_eq!(report.dropped_head, ["fc.bias", "fc.weight"]);
    assert_eq!(report.loaded.len(), Arch::Resnet18.spec(CLASSES).tensors().len() - 2);
    let vars = vs.variables();
    assert!(!vars["conv1.weight"].equal(&before), "backbone was not loaded");
    // The new head keeps its initialisation (U(±1/√512)), not the file's ones.
    assert!(max_abs(&vars["fc.weight"]) < 0.05);
    assert_eq!(vars["fc.weight"].size(), [5, 512]);
}

#[test]
fn nested_prefixed_checkpoint_loads() {
    let spec = Arch::Resnet18.spec(CLASSES);
    let (mut vs, net) = model(&spec);
    let report = load_weights(&mut vs, &fixtures().join("resnet18_wrapped.pth"), &spec, false).unwrap();
    assert_eq!(report.stripped_prefixes, ["module."]);
    assert_eq!(report.loaded.len(), spec.tensors().len());
    let (x, want) = io(Arch::Resnet18);
    let got = tch::no_grad(|| net.forward_t(&x, false));
    assert!(max_abs(&(&got - &want)) <= TOL * max_abs(&want).max(1.0));
}
