//! `predict --shard K/N` and `predictor merge`: three shards merged give the unsharded
//! submission, skipped-image report and saved logits exactly (an ensemble with weights, TTA,
//! top-k, an unreadable and a missing image, batches that straddle the shard boundaries), and
//! every kind of bad merge is refused with a message saying what differs.
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::*;

/// A small test folder and the three shards of model `a` on it (no TTA), made once.
struct Split {
    _dir: tempfile::TempDir,
    images: PathBuf,
    sample: PathBuf,
    shards: Vec<PathBuf>,
}

fn split() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (images, sample, _) = small_test_set(dir.path(), 7);
        let shards = (1..=3).map(|k| shard(&fixtures().a, &images, &sample, dir.path(), k, 3, &[])).collect();
        Split { _dir: dir, images, sample, shards }
    })
}

/// Runs shard `k`/`n` of `model` and returns its saved logits.
fn shard(model: &Path, images: &Path, sample: &Path, dir: &Path, k: usize, n: usize, extra: &[&str]) -> PathBuf {
    let tag = format!("{}-{k}of{n}-{}", model.file_stem().unwrap().to_string_lossy(), extra.join(""));
    let (csv, logits) = (dir.join(format!("{tag}.csv")), dir.join(format!("{tag}.safetensors")));
    let spec = format!("{k}/{n}");
    let mut args = vec!["--shard", spec.as_str(), "--save-logits", s(&logits)];
    args.extend(extra);
    let o = predict_with(&[model], images, sample, &csv, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    logits
}

fn merge(shards: &[&Path], out: &Path) -> Output {
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|p| s(p)));
    args.extend(["--out", s(out)]);
    run(&args)
}

/// Asserts that merging `shards` fails with every one of `want` in the message and writes
/// nothing.
fn refused(shards: &[&Path], want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged.csv");
    let o = merge(shards, &out);
    assert!(!o.status.success(), "merge should have been refused");
    let err = String::from_utf8_lossy(&o.stderr);
    for w in want {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing is written after a refusal");
}

/// Shard 2/3 made with `model` and `extra` instead of `a`: merging it with the others fails
/// with each of `want`.
fn refused_with_second(model: &Path, extra: &[&str], want: &[&str]) {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let two = shard(model, &sp.images, &sp.sample, tmp.path(), 2, 3, extra);
    refused(&[&sp.shards[0], &two, &sp.shards[2]], want);
}

#[test]
fn three_shards_merge_into_the_unsharded_submission_and_logits_exactly() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, names) = small_test_set(tmp.path(), 30);
    // One unreadable image (in shard 2) and one listed image that does not exist (last row).
    let bytes = std::fs::read(images.join(&names[12])).unwrap();
    std::fs::write(images.join(&names[12]), &bytes[..bytes.len() / 3]).unwrap();
    let mut text = std::fs::read_to_string(&sample).unwrap();
    text += "ghost.jpg,daisy\n";
    std::fs::write(&sample, text).unwrap();
    // Batches of 4 over shards of 10, 10 and 11 rows: no shard boundary falls on a batch boundary
    // of the unsharded run.
    let common_args = ["--weights", "1,3", "--tta", "hflip", "--top-k", "3", "--skip-unreadable", "--batch-size", "4"];
    let (full_csv, full_logits) = (tmp.path().join("full.csv"), tmp.path().join("full.safetensors"));
    let mut args: Vec<&str> = common_args.to_vec();
    args.extend(["--save-logits", s(&full_logits)]);
    assert!(predict_with(&[&f.a, &f.b], &images, &sample, &full_csv, &args).status.success());

    let mut shard_files = Vec::new();
    for k in 1..=3 {
        let (csv, logits) = (tmp.path().join(format!("s{k}.csv")), tmp.path().join(format!("s{k}.safetensors")));
        let spec = format!("{k}/3");
        let mut args: Vec<&str> = common_args.to_vec();
        args.extend(["--shard", &spec, "--save-logits", s(&logits)]);
        let o = predict_with(&[&f.a, &f.b], &images, &sample, &csv, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = [(1, 10), (11, 20), (21, 31)][k - 1];
        assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("shard {k}/3: rows {}–{} of 31", want.0, want.1)));
        assert_eq!(read_csv(&csv).len() - 1, want.1 - want.0 + 1, "shard {k} writes its own rows");
        shard_files.push(logits);
    }
    let (merged_csv, merged_logits) = (tmp.path().join("merged.csv"), tmp.path().join("merged.safetensors"));
    // Given in any order.
    let mut args = vec!["merge", s(&shard_files[2]), s(&shard_files[0]), s(&shard_files[1])];
    args.extend(["--out", s(&merged_csv), "--top-k", "3", "--save-logits", s(&merged_logits)]);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("31 rows, 5 classes) from 3 shards; 2 row(s) with an empty class"));

    assert_eq!(std::fs::read(&merged_csv).unwrap(), std::fs::read(&full_csv).unwrap(), "merged submission = unsharded, byte for byte");
    let skipped = |p: &Path| std::fs::read(sorbier_predict::output::submission::skipped_path(p)).unwrap();
    assert_eq!(skipped(&merged_csv), skipped(&full_csv));
    let (a, b) = (sorbier_predict::output::logits::load(&full_logits).unwrap(), sorbier_predict::output::logits::load(&merged_logits).unwrap());
    assert_eq!((&a.names, &a.classes, &a.models, &a.weights), (&b.names, &b.classes, &b.models, &b.weights));
    assert_eq!((&a.average, &a.tta, &a.model_sha256, &a.skipped, &a.shard), (&b.average, &b.tta, &b.model_sha256, &b.skipped, &b.shard));
    assert_eq!(bits(&a.mean), bits(&b.mean), "mean logits bit for bit");
    assert_eq!(a.members.len(), 2);
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(bits(x), bits(y), "member logits bit for bit");
    }
    assert_eq!(a.skipped.len(), 2);
    assert!(a.mean.iter().filter(|v| v.is_nan()).count() == 2 * 5, "two NaN rows");
}

#[test]
fn the_same_model_under_another_path_is_the_same_model() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy-of-a.onnx");
    std::fs::copy(&fixtures().a, &copy).unwrap();
    let two = shard(&copy, &sp.images, &sp.sample, tmp.path(), 2, 3, &[]);
    let o = merge(&[&sp.shards[0], &two, &sp.shards[2]], &tmp.path().join("m.csv"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn merge_refuses_a_missing_shard() {
    let sp = split();
    refused(&[&sp.shards[0], &sp.shards[2]], &["shard(s) 2/3 missing", "given: 1/3, 3/3"]);
}

#[test]
fn merge_refuses_a_duplicated_shard() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let again = tmp.path().join("again.safetensors");
    std::fs::copy(&sp.shards[1], &again).unwrap();
    refused(&[&sp.shards[0], &sp.shards[1], &again, &sp.shards[2]], &["shard 2/3 is given twice", s(&again)]);
}

#[test]
fn merge_refuses_shards_of_another_model() {
    refused_with_second(&fixtures().b, &[], &["not shards of one run", "different models", "b48.onnx"]);
}

#[test]
fn merge_refuses_shards_with_other_classes() {
    refused_with_second(&fixtures().other, &[], &["different classes", "lilies"]);
}

#[test]
fn merge_refuses_shards_with_other_tta() {
    refused_with_second(&fixtures().a, &["--tta", "hflip"], &["test-time augmentation", "--tta none vs hflip"]);
}

#[test]
fn merge_refuses_shards_with_other_weights_or_averaging() {
    refused_with_second(&fixtures().a, &["--average", "probs"], &["different averaging (logits vs probs)"]);
}

#[test]
fn merge_refuses_shards_with_other_model_weights() {
    // Shards of the ensemble (a, b): 1/3 and 3/3 weighted 1:3, 2/3 weighted 3:1.
    let (sp, f) = (split(), fixtures());
    let tmp = tempfile::tempdir().unwrap();
    let part = |k: usize, weights: &str| {
        let (csv, logits) = (tmp.path().join(format!("{k}-{weights}.csv")), tmp.path().join(format!("{k}-{weights}.safetensors")));
        let spec = format!("{k}/3");
        let o = predict_with(&[&f.a, &f.b], &sp.images, &sp.sample, &csv, &["--shard", &spec, "--weights", weights, "--save-logits", s(&logits)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        logits
    };
    let (one, two, three, other_two) = (part(1, "1,3"), part(2, "1,3"), part(3, "1,3"), part(2, "3,1"));
    // The same weights merge: the refusal below is about the weights alone.
    let o = merge(&[&one, &two, &three], &tmp.path().join("merged.csv"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    refused(&[&one, &other_two, &three], &["not shards of one run", "different model weights ([1.0, 3.0] vs [3.0, 1.0])"]);
}

#[test]
fn merge_refuses_shards_of_another_image_list() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, _) = small_test_set(tmp.path(), 8);
    let two = shard(&fixtures().a, &images, &sample, tmp.path(), 2, 3, &[]);
    refused(&[&sp.shards[0], &two, &sp.shards[2]], &["different image lists", "7 rows", "8 rows"]);
}

#[test]
fn merge_refuses_shards_of_another_split() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let half = shard(&fixtures().a, &sp.images, &sp.sample, tmp.path(), 2, 2, &[]);
    refused(&[&sp.shards[0], &half], &["split in 3 parts, the other in 2"]);
}

#[test]
fn merge_refuses_files_that_are_not_shards() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let (csv, full) = (tmp.path().join("full.csv"), tmp.path().join("full.safetensors"));
    assert!(predict_with(&[&fixtures().a], &sp.images, &sp.sample, &csv, &["--save-logits", s(&full)]).status.success());
    refused(&[&sp.shards[0], &full], &["is not a shard", s(&full)]);
    refused(&[&sp.shards[0], &csv], &["not a safetensors file"]);
    refused(&[&tmp.path().join("none.safetensors")], &["cannot read", "none.safetensors"]);
}

#[test]
fn predict_shard_needs_saved_logits_and_a_valid_part() {
    let sp = split();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.csv");
    let o = predict_with(&[&fixtures().a], &sp.images, &sp.sample, &out, &["--shard", "1/3"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("needs --save-logits"));
    for bad in ["0/3", "4/3", "2"] {
        let o = predict_with(&[&fixtures().a], &sp.images, &sp.sample, &out, &["--shard", bad, "--save-logits", "x.st"]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("expected K/N"), "{bad}");
    }
    assert!(!out.exists());
}

/// `torchrun --no-python --nproc-per-node 2 predictor predict … --shard auto`: each rank takes
/// its part from RANK/WORLD_SIZE and writes its own `.shard-K-of-2` files; merged, they are the
/// unsharded submission byte for byte.
#[test]
fn shard_auto_under_torchrun_writes_one_file_per_rank_that_merge_to_the_unsharded_submission() {
    let sp = split();
    let dir = tempfile::tempdir().unwrap();
    let (out, logits) = (dir.path().join("sub.csv"), dir.path().join("logits.safetensors"));
    let torchrun = python().parent().unwrap().join("torchrun");
    let mut args = vec!["--standalone", "--nproc-per-node", "2", "--no-python", bin(), "predict", "--model", s(&fixtures().a)];
    args.extend(["--images", s(&sp.images), "--sample-submission", s(&sp.sample), "--out", s(&out), "--save-logits", s(&logits), "--shard", "auto", "--quiet"]);
    args.extend(FAST);
    let o = std::process::Command::new(&torchrun).args(&args).output().unwrap();
    assert!(o.status.success(), "torchrun failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists() && !logits.exists(), "--shard auto writes only the ranks' own files");
    let parts: Vec<PathBuf> = (1..=2).map(|k| dir.path().join(format!("logits.shard-{k}-of-2.safetensors"))).collect();
    for k in 1..=2 {
        assert!(dir.path().join(format!("sub.shard-{k}-of-2.csv")).is_file(), "rank {} wrote no submission part", k - 1);
    }
    let merged = dir.path().join("merged.csv");
    let o = merge(&parts.iter().map(|p| p.as_path()).collect::<Vec<_>>(), &merged);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = dir.path().join("whole.csv");
    let o = predict_with(&[&fixtures().a], &sp.images, &sp.sample, &whole, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&whole).unwrap(), "merged shards differ from the unsharded submission");
}

#[test]
fn shard_auto_without_a_launcher_is_an_error_naming_the_variables() {
    let sp = split();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub.csv");
    let o = std::process::Command::new(bin())
        .args(["predict", "--model", s(&fixtures().a), "--images", s(&sp.images), "--out", s(&out), "--shard", "auto", "--save-logits", s(&dir.path().join("l.safetensors"))])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("RANK/WORLD_SIZE") && err.contains("SLURM_PROCID/SLURM_NTASKS"), "{err}");
}
