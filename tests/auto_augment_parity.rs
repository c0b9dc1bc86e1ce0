//! Parity of the auto-augment ops, timm's RandAugment level functions, torchvision's
//! TrivialAugmentWide magnitude table and timm's random-erasing box search with the real
//! libraries.
//!
//! `tools/auto_augment_reference.py` center-crops the first photos of
//! `../shared/data/flowers/test` to 64×64, writes those 8-bit squares, and applies to them each
//! op of both policies by name with a fixed argument — timm's functions in
//! `timm.data.auto_augment` (bilinear, fill = timm's ImageNet `img_mean`) and torchvision's
//! `_apply_op` (nearest, fill 0, as TrivialAugmentWide calls it). This test applies our op with
//! the same argument to the same squares and compares.
//!
//! Tolerances, per op:
//! - exact: the point ops whose Pillow arithmetic is integer or a table built in Python doubles
//!   (autocontrast, equalize, invert, posterize, solarize, solarize_add), and nearest geometry
//!   (Pillow's 16.16 fixed point, exact whole-pixel shifts, exact transposes);
//! - at most 1 level, on at most 0.1 % of the values: the ops whose Pillow arithmetic is
//!   floating point — the `ImageEnhance` blends and the sharpness filter (f32), bilinear
//!   geometry (f64 interpolation, truncated; `rotate` also goes through libm's sin/cos). We
//!   reproduce those operations in the same order and precision, and on x86-64 the results are
//!   identical (the figures are printed), but a C compiler that fuses multiply-adds (as GCC does
//!   by default on aarch64) can move a value across a truncation boundary. The share bound is
//!   what catches a systematic rounding mistake (rounding instead of truncating would change
//!   about half the values by one).
//!
//! The test shows it can fail: every case is also run with a wrong argument (the sign flipped,
//! the angle, factor, bits or threshold moved, or a different op for the argument-less ones) and
//! each of those must break the tolerance.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use sorbier::transforms::augment::{erasing_box, CropBox, EraseDraws};
use sorbier::transforms::auto_augment::{apply_op, Op, RandOp, Resample, TaOp, RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, TA_WIDE_OPS};

mod common;
use common::python;

const N_IMAGES: usize = 4;
const SIZE: usize = 64;
/// timm's `img_mean` for the ImageNet mean: `min(255, round(255·m))`.
const TIMM_FILL: [u8; 3] = [124, 116, 104];
/// Share of values allowed to differ (by one level) for the floating-point ops.
const FLOAT_SHARE: f64 = 0.001;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the reference script once for all the tests of this file; returns its output folder.
fn reference() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let data = manifest().join("../shared/data/flowers/test");
        assert!(data.is_dir(), "parity data missing: {} (the shared flowers set must sit beside the repo)", data.display());
        let py = python();
        assert!(py.exists(), "python {} not found: run tools/setup.sh (or set SORBIER_PYTHON)", py.display());
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&py)
            .arg(manifest().join("tools/auto_augment_reference.py"))
            .arg(&data)
            .arg(dir.path())
            .args(["--images", &N_IMAGES.to_string(), "--size", &SIZE.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "reference script failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
}

/// Reads a C-order uint8 `.npy` file: (shape, data).
fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let (shape, data) = common::read_npy_bytes(path, "|u1");
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(reference().join(name)).unwrap()).unwrap()
}

/// A float the script wrote as Python's repr (a string: JSON readers may round a number text).
fn exact(v: &Value) -> f64 {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a float string")).parse().unwrap()
}

fn exact_list(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(exact).collect()
}

/// Our op for a reference case: timm's function name or torchvision's op name, and its argument.
fn our_op(policy: &str, name: &str, arg: Option<f64>) -> (Op, Resample, [u8; 3]) {
    if policy == "torchvision" {
        let op = TA_WIDE_OPS.iter().find(|o| format!("{o:?}") == name).unwrap_or_else(|| panic!("no TrivialAugmentWide op {name}"));
        return (op.op(arg.unwrap()), Resample::Nearest, [0; 3]);
    }
    let a = || arg.unwrap();
    let op = match name {
        "auto_contrast" => Op::AutoContrast,
        "equalize" => Op::Equalize,
        "invert" => Op::Invert,
        "rotate" => Op::Rotate(a()),
        "posterize" => Op::Posterize(a() as u8),
        "solarize" => Op::Solarize(a()),
        "solarize_add" => Op::SolarizeAdd(a() as u32),
        "color" => Op::Color(a()),
        "contrast" => Op::Contrast(a()),
        "brightness" => Op::Brightness(a()),
        "sharpness" => Op::Sharpness(a()),
        "shear_x" => Op::ShearX(a()),
        "shear_y" => Op::ShearY(a()),
        "translate_x_rel" => Op::TranslateXRel(a()),
        "translate_y_rel" => Op::TranslateYRel(a()),
        _ => panic!("no op for timm's {name}"),
    };
    (op, Resample::Bilinear, TIMM_FILL)
}

/// Whether Pillow computes the op in floating point (see the module comment).
fn floating_point(op: Op, resample: Resample) -> bool {
    match op {
        Op::Color(_) | Op::Contrast(_) | Op::Brightness(_) | Op::Sharpness(_) => true,
        Op::Rotate(_) | Op::ShearX(_) | Op::ShearY(_) | Op::TranslateX(_) | Op::TranslateY(_) | Op::TranslateXRel(_) | Op::TranslateYRel(_) => {
            resample == Resample::Bilinear
        }
        _ => false,
    }
}

/// A wrong version of the op, which the comparison must reject.
fn mutant(op: Op) -> Op {
    let moved = |f: f64| if f > 1.0 { f - 0.15 } else { f + 0.15 };
    match op {
        Op::Identity => Op::Invert,
        Op::AutoContrast | Op::Equalize => Op::Identity,
        Op::Invert => Op::Solarize(128.0),
        Op::Rotate(a) => Op::Rotate(a + 7.0),
        Op::Posterize(b) => Op::Posterize(if b >= 7 { 5 } else { b + 1 }),
        Op::Solarize(t) => Op::Solarize(if t > 128.0 { t - 40.0 } else { t + 40.0 }),
        Op::SolarizeAdd(a) => Op::SolarizeAdd(a + 20),
        Op::Color(f) => Op::Color(moved(f)),
        Op::Contrast(f) => Op::Contrast(moved(f)),
        Op::Brightness(f) => Op::Brightness(moved(f)),
        Op::Sharpness(f) => Op::Sharpness(moved(f)),
        Op::ShearX(f) => Op::ShearX(-f),
        Op::ShearY(f) => Op::ShearY(-f),
        Op::TranslateX(t) => Op::TranslateX(-t),
        Op::TranslateY(t) => Op::TranslateY(-t),
        Op::TranslateXRel(t) => Op::TranslateXRel(-t),
        Op::TranslateYRel(t) => Op::TranslateYRel(-t),
    }
}

/// (max |diff|, number of differing values) of `op` on every input square against `want`.
fn compare(inputs: &[u8], want: &[u8], op: Op, resample: Resample, fill: [u8; 3]) -> (u8, usize) {
    let len = SIZE * SIZE * 3;
    let (mut max, mut count) = (0u8, 0usize);
    let mut tmp = Vec::new();
    for i in 0..N_IMAGES {
        let mut img = inputs[i * len..(i + 1) * len].to_vec();
        apply_op(&mut img, SIZE, op, resample, fill, &mut tmp).unwrap();
        for (a, b) in img.iter().zip(&want[i * len..(i + 1) * len]) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            count += (d > 0) as usize;
        }
    }
    (max, count)
}

#[test]
fn ops_match_timm_and_torchvision_on_photos() {
    let (shape, inputs) = read_npy_u8(&reference().join("input.npy"));
    assert_eq!(shape, vec![N_IMAGES, SIZE, SIZE, 3]);
    let cases = read_json("cases.json");
    let cases = cases.as_array().unwrap();
    let (shape, results) = read_npy_u8(&reference().join("cases.npy"));
    assert_eq!(shape, vec![cases.len(), N_IMAGES, SIZE, SIZE, 3]);
    let per_case = N_IMAGES * SIZE * SIZE * 3;
    let total = per_case as f64;
    let mut failures = Vec::new();
    // Worst figures per op name, for the summary.
    let mut summary: HashMap<String, (u8, usize)> = HashMap::new();
    for (k, case) in cases.iter().enumerate() {
        let (policy, name) = (case["policy"].as_str().unwrap(), case["op"].as_str().unwrap());
        let arg = (!case["arg"].is_null()).then(|| exact(&case["arg"]));
        let (op, resample, fill) = our_op(policy, name, arg);
        let want = &results[k * per_case..(k + 1) * per_case];
        let (tol, share) = if floating_point(op, resample) { (1, FLOAT_SHARE) } else { (0, 0.0) };
        let within = |(max, count): (u8, usize)| max <= tol && count as f64 / total <= share;
        let got = compare(&inputs, want, op, resample, fill);
        eprintln!("{policy:>11} {name:<15} {:>10} {op:?}: max |diff| {}, {} of {per_case} values differ", arg.map_or("-".into(), |a| format!("{a:.4}")), got.0, got.1);
        let worst = summary.entry(format!("{policy} {name}")).or_default();
        *worst = (worst.0.max(got.0), worst.1.max(got.1));
        if !within(got) {
            failures.push(format!("{policy} {name}({arg:?}) as {op:?}: max |diff| {}, {} values differ (tolerance {tol}, share {share})", got.0, got.1));
        }
        // The same comparison must reject a wrong argument.
        let wrong = mutant(op);
        let bad = compare(&inputs, want, wrong, resample, fill);
        if within(bad) {
            failures.push(format!("{policy} {name}({arg:?}): the wrong op {wrong:?} passes too (max {}, {} values)", bad.0, bad.1));
        }
    }
    let mut names: Vec<_> = summary.into_iter().collect();
    names.sort();
    eprintln!("worst per op over {} cases:", cases.len());
    for (name, (max, count)) in names {
        eprintln!("  {name:<28} max |diff| {max}, values differing {count}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn level_functions_match_timm() {
    let rows = read_json("levels.json");
    let rows = rows.as_array().unwrap();
    let all: Vec<RandOp> = RAND_TRANSFORMS.iter().chain(&RAND_INCREASING_TRANSFORMS).copied().collect();
    let mut checked = 0;
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let op = all.iter().find(|o| format!("{o:?}") == name).unwrap_or_else(|| panic!("timm op {name} missing"));
        let (level, negate) = (exact(&row["level"]), row["negate"].as_bool().unwrap());
        let args = exact_list(&row["args"]);
        let ours = op.op(level, negate);
        // timm's function and argument(s) for our op.
        let (fun, want): (&str, Vec<f64>) = match ours {
            Op::AutoContrast => ("auto_contrast", vec![]),
            Op::Equalize => ("equalize", vec![]),
            Op::Invert => ("invert", vec![]),
            Op::Rotate(a) => ("rotate", vec![a]),
            Op::Posterize(b) => ("posterize", vec![b as f64]),
            Op::Solarize(t) => ("solarize", vec![t]),
            Op::SolarizeAdd(a) => ("solarize_add", vec![a as f64]),
            Op::Color(f) => ("color", vec![f]),
            Op::Contrast(f) => ("contrast", vec![f]),
            Op::Brightness(f) => ("brightness", vec![f]),
            Op::Sharpness(f) => ("sharpness", vec![f]),
            Op::ShearX(f) => ("shear_x", vec![f]),
            Op::ShearY(f) => ("shear_y", vec![f]),
            Op::TranslateXRel(f) => ("translate_x_rel", vec![f]),
            Op::TranslateYRel(f) => ("translate_y_rel", vec![f]),
            other => panic!("{name} gave {other:?}"),
        };
        assert_eq!(fun, row["fn"].as_str().unwrap(), "{name} level {level}");
        // timm's bits leave 0–8 past level 10 (mmax > 10): ≥ 8 keeps every bit, ≤ 0 none.
        let args: Vec<f64> = if fun == "posterize" { args.iter().map(|b| b.clamp(0.0, 8.0)).collect() } else { args };
        assert_eq!(want, args, "{name} level {level} negate {negate}: ours {ours:?}");
        checked += 1;
    }
    assert_eq!(checked, 21 * 14 * 2, "every op name, level and sign");
}

#[test]
fn trivial_augment_space_matches_torchvision() {
    let space = read_json("ta_space.json");
    let space = space.as_array().unwrap();
    assert_eq!(space.len(), TA_WIDE_OPS.len());
    for (op, row) in TA_WIDE_OPS.iter().zip(space) {
        assert_eq!(format!("{op:?}"), row["name"].as_str().unwrap());
        assert_eq!(op.signed(), row["signed"].as_bool().unwrap(), "{op:?}");
        let want: Option<Vec<f64>> = (!row["magnitudes"].is_null()).then(|| exact_list(&row["magnitudes"]));
        let ours: Option<Vec<f64>> = op.magnitudes().map(|m| m.iter().map(|v| *v as f64).collect());
        assert_eq!(ours, want, "{op:?}");
    }
    // What makes the float32 table matter: int() of the 16th translation is 15 pixels, not 16.
    assert_eq!(TaOp::TranslateX.op(TaOp::TranslateX.magnitudes().unwrap()[15] as f64), Op::TranslateX(-15.0));
}

/// The draws the reference script handed timm, replayed with the same arithmetic.
struct Scripted {
    uniforms: Vec<f64>,
    ints: Vec<f64>,
    used: (usize, usize),
}

impl EraseDraws for Scripted {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = self.uniforms[self.used.0];
        self.used.0 += 1;
        lo + (hi - lo) * u
    }
    fn int_to(&mut self, hi: u32) -> u32 {
        let v = self.ints[self.used.1];
        self.used.1 += 1;
        (v * (hi as f64 + 1.0)) as u32
    }
}

#[test]
fn erasing_box_search_matches_timm() {
    let rows = read_json("erasing.json");
    let rows = rows.as_array().unwrap();
    let (mut boxes, mut none) = (0, 0);
    for row in rows {
        let (h, w) = (row["height"].as_u64().unwrap() as u32, row["width"].as_u64().unwrap() as u32);
        let mut d = Scripted { uniforms: exact_list(&row["uniforms"]), ints: exact_list(&row["ints"]), used: (0, 0) };
        let ours = erasing_box(h, w, &mut d);
        let want = row["box"].as_array().map(|b| {
            let b: Vec<u32> = b.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            CropBox { top: b[0], left: b[1], height: b[2], width: b[3] }
        });
        assert_eq!(ours, want, "{h}×{w} with draws {row}");
        assert_eq!(d.used, (row["used_uniforms"].as_u64().unwrap() as usize, row["used_ints"].as_u64().unwrap() as usize), "{row}");
        if ours.is_some() {
            boxes += 1;
        } else {
            none += 1;
        }
    }
    // Both outcomes and retries are covered.
    assert!(boxes > 150 && none >= 2, "{boxes} boxes, {none} without");
    assert!(rows.iter().any(|r| r["used_uniforms"].as_u64() > Some(2) && !r["box"].is_null()));
}
