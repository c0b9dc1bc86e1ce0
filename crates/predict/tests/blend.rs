//! `predictor blend`: saved logits of separate runs, blended, equal `predict` run with the same
//! models as an ensemble (same weights; logits, and probabilities), with rows matched by image
//! name; and the ensemble refusals (class lists, image lists), plus the averaging spaces a file
//! cannot be converted to.
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::*;

/// The ensemble's mean is the weighted sum in float32 in member order; the blend computes the
/// same sum from the saved members, so they agree to rounding (measured: bit for bit); 1e-6 is
/// the bar.
const TOL: f32 = 1e-6;

struct Runs {
    tmp: tempfile::TempDir,
    images: PathBuf,
    sample: PathBuf,
}

fn runs(n: usize) -> Runs {
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, _) = small_test_set(tmp.path(), n);
    Runs { tmp, images, sample }
}

impl Runs {
    /// Predicts with `models` and `extra`, saving logits as `<tag>.safetensors`.
    fn save(&self, tag: &str, models: &[&Path], extra: &[&str]) -> PathBuf {
        let (csv, logits) = (self.tmp.path().join(format!("{tag}.csv")), self.tmp.path().join(format!("{tag}.safetensors")));
        let mut args = vec!["--save-logits", s(&logits)];
        args.extend(extra);
        let o = predict_with(models, &self.images, &self.sample, &csv, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        logits
    }

    fn blend(&self, inputs: &[&Path], tag: &str, extra: &[&str]) -> (Output, PathBuf, PathBuf) {
        let (csv, logits) = (self.tmp.path().join(format!("{tag}.csv")), self.tmp.path().join(format!("{tag}.safetensors")));
        let mut args = vec!["blend"];
        args.extend(inputs.iter().map(|p| s(p)));
        args.extend(["--out", s(&csv), "--save-logits", s(&logits)]);
        args.extend(extra);
        (run(&args), csv, logits)
    }
}

fn close(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) {
    assert_eq!(a.dim(), b.dim());
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d <= TOL, "blend differs from the ensemble by {d}");
}

#[test]
fn blending_saved_logits_equals_the_ensemble() {
    let f = fixtures();
    let r = runs(12);
    let a = r.save("a", &[&f.a], &["--tta", "hflip"]);
    let b = r.save("b", &[&f.b], &["--tta", "hflip"]);
    let ens = r.save("ens", &[&f.a, &f.b], &["--tta", "hflip", "--weights", "1,3", "--top-k", "3"]);
    let (o, csv, logits) = r.blend(&[&a, &b], "blend", &["--weights", "1,3", "--top-k", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("blending 2 files by logits"));
    let (want, got) = (sorbier_predict::output::logits::load(&ens).unwrap(), sorbier_predict::output::logits::load(&logits).unwrap());
    close(&want.mean, &got.mean);
    assert_eq!(got.names, want.names);
    assert_eq!(std::fs::read(&csv).unwrap(), std::fs::read(r.tmp.path().join("ens.csv")).unwrap(), "same submission");
    // The weights mattered (equal weights give another mean).
    let (_, _, equal) = r.blend(&[&a, &b], "equal", &[]);
    let equal = sorbier_predict::output::logits::load(&equal).unwrap();
    assert!(equal.mean.iter().zip(&want.mean).any(|(x, y)| (x - y).abs() > 1e-3));
}

#[test]
fn blending_probabilities_equals_the_probability_ensemble() {
    let f = fixtures();
    let r = runs(10);
    // Saved as logits (no TTA): turned into probabilities; saved as probabilities: used as is.
    let a = r.save("a", &[&f.a], &[]);
    let b = r.save("b", &[&f.b], &["--average", "probs"]);
    let ens = r.save("ens", &[&f.a, &f.b], &["--average", "probs", "--weights", "2,1"]);
    let (o, csv, logits) = r.blend(&[&a, &b], "blend", &["--average", "probs", "--weights", "2,1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (want, got) = (sorbier_predict::output::logits::load(&ens).unwrap(), sorbier_predict::output::logits::load(&logits).unwrap());
    assert_eq!(got.average.to_string(), "probs");
    close(&want.mean, &got.mean);
    assert_eq!(std::fs::read(&csv).unwrap(), std::fs::read(r.tmp.path().join("ens.csv")).unwrap());
}

#[test]
fn rows_are_matched_by_image_name() {
    let f = fixtures();
    let r = runs(9);
    let a = r.save("a", &[&f.a], &[]);
    // The same images in the reverse order of the sample submission.
    let mut rows = read_csv(&r.sample);
    rows[1..].reverse();
    let reversed_csv = r.tmp.path().join("reversed.csv");
    std::fs::write(&reversed_csv, rows.iter().map(|r| r.join(",") + "\n").collect::<String>()).unwrap();
    let reversed = r.tmp.path().join("reversed.safetensors");
    let o = predict_with(&[&f.b], &r.images, &reversed_csv, &r.tmp.path().join("reversed-sub.csv"), &["--save-logits", s(&reversed)]);
    assert!(o.status.success());
    let (x, y) = (sorbier_predict::output::logits::load(&reversed).unwrap().names, sorbier_predict::output::logits::load(&a).unwrap().names);
    assert!(x != y && x.iter().rev().eq(y.iter()), "the orders differ");
    let ens = r.save("ens", &[&f.a, &f.b], &[]);
    let (o, _, logits) = r.blend(&[&a, &reversed], "blend", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    close(&sorbier_predict::output::logits::load(&ens).unwrap().mean, &sorbier_predict::output::logits::load(&logits).unwrap().mean);
}

fn refused(o: Output, want: &[&str]) {
    assert!(!o.status.success(), "blend should have been refused");
    let err = String::from_utf8_lossy(&o.stderr);
    for w in want {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn blend_refuses_other_class_lists() {
    let f = fixtures();
    let r = runs(4);
    let (a, other) = (r.save("a", &[&f.a], &[]), r.save("other", &[&f.other], &[]));
    let (o, csv, _) = r.blend(&[&a, &other], "x", &[]);
    refused(o, &["disagree on their classes", "lilies"]);
    assert!(!csv.exists());
}

#[test]
fn blend_refuses_other_image_lists() {
    let f = fixtures();
    let (r, r2) = (runs(5), runs(6));
    let a = r.save("a", &[&f.a], &[]);
    let b = r2.save("b", &[&f.b], &[]);
    let (o, csv, _) = r.blend(&[&a, &b], "x", &[]);
    refused(o, &["do not predict the same images", "5 and 6 rows", "only in"]);
    assert!(!csv.exists());
}

#[test]
fn blend_refuses_averaging_a_file_cannot_give() {
    let f = fixtures();
    let r = runs(4);
    let probs = r.save("probs", &[&f.a], &["--average", "probs"]);
    let tta = r.save("tta", &[&f.b], &["--tta", "hflip"]);
    refused(r.blend(&[&probs, &tta], "x", &[]).0, &["holds probabilities", "--average probs"]);
    refused(r.blend(&[&probs, &tta], "y", &["--average", "probs"]).0, &["--tta hflip", "re-run"]);
    refused(r.blend(&[&probs, &tta], "z", &["--weights", "1"]).0, &["1 weights given for 2 files"]);
    refused(r.blend(&[&probs, &tta], "w", &["--weights", "1,-2"]).0, &["positive"]);
}

#[test]
fn blend_refuses_a_lone_shard() {
    let f = fixtures();
    let r = runs(4);
    let a = r.save("a", &[&f.a], &[]);
    let part = r.save("part", &[&f.a], &["--shard", "1/2"]);
    refused(r.blend(&[&a, &part], "x", &[]).0, &["is shard 1/2", "predictor merge"]);
}
