//! The `predictor` binary end to end: submissions on the real flowers test set, ensembles,
//! unreadable and missing images, `score`, `info`, and running as a shipped binary (library
//! next to it, empty environment), plus the absence of libtorch.
//!
//! Models are ResNet-18s with seeded random weights built with `sorbier::export::build_model`
//! (throughput and bookkeeping do not depend on training), at small crops to stay fast.
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;
#[path = "common/server.rs"]
mod server;

/// Ensemble bookkeeping: `mean` is recomputed here from the saved members in f64 and compared
/// with the saved f32 mean; both are sums of a few f32 values of magnitude ≲ 10, so the f32
/// rounding of the weighted sum is ≲ 1e-6 — 1e-5 leaves room without hiding a wrong weight.
const ENSEMBLE_TOL: f32 = 1e-5;

#[test]
fn predicts_the_flowers_test_set_in_sample_order_and_scores_it() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("submission.csv");
    let data = flowers();
    let mut args = vec!["predict", "--model", s(&f.a), "--images"];
    let images = data.join("test");
    let sample = data.join("sample_submission.csv");
    args.extend([s(&images), "--sample-submission", s(&sample), "--out", s(&out), "--top-k", "3", "--quiet"]);
    args.extend(FAST);
    let o = run(&args);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("device cpu"));

    let rows = read_csv(&out);
    let expected = read_csv(&sample);
    assert_eq!(rows[0], ["image_name", "class", "class_1", "class_2", "class_3", "score_1", "score_2", "score_3"]);
    assert_eq!(rows.len(), expected.len());
    let classes = train_classes();
    for (r, e) in rows[1..].iter().zip(&expected[1..]) {
        assert_eq!(r[0], e[0], "rows in sample-submission order");
        assert!(classes.contains(&r[1]), "class {} is a train folder name", r[1]);
        assert_eq!(r[1], r[2], "class is the top-1 of the top-k");
        let scores: Vec<f64> = r[5..8].iter().map(|x| x.parse().unwrap()).collect();
        assert!(scores[0] >= scores[1] && scores[1] >= scores[2] && scores[0] <= 1.0 && scores[2] >= 0.0, "{scores:?}");
    }
    // The random-weight fixture names varied classes, so the tests that compare top-1 classes
    // on it (int8, the server) can fail.
    assert_varied_top1(&rows);

    let o = run(&["score", "--submission", s(&out), "--solution", s(&data.join("solution.csv"))]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("accuracy") && text.contains("macro-average accuracy") && text.contains("/250"), "{text}");
}

#[test]
fn ensemble_mean_is_the_weighted_mean_of_members_and_members_match_single_runs() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, names) = small_test_set(tmp.path(), 10);
    let logits = tmp.path().join("ens.safetensors");
    let sub = tmp.path().join("ens.csv");
    let (a, b) = (&f.a, &f.b);
    let mut args = vec!["predict", "--model", s(a), "--model", s(b), "--weights", "1,3", "--images", s(&images)];
    args.extend(["--sample-submission", s(&sample), "--out", s(&sub), "--save-logits", s(&logits), "--tta", "hflip", "--batch-size", "4"]);
    args.extend(FAST);
    assert!(run(&args).status.success());
    let saved = sorbier_predict::output::logits::load(&logits).unwrap();
    assert_eq!(saved.names, names);
    assert_eq!(saved.classes, train_classes());
    assert_eq!(saved.members.len(), 2);
    assert_eq!(saved.weights, vec![1.0, 3.0]);
    let c = saved.classes.len();
    assert_eq!(saved.mean.dim(), (names.len(), c));
    for (i, ((&m, &a), &b)) in saved.mean.iter().zip(&saved.members[0]).zip(&saved.members[1]).enumerate() {
        let want = (a as f64 + 3.0 * b as f64) / 4.0;
        assert!((m as f64 - want).abs() <= ENSEMBLE_TOL as f64, "{i}: {m} vs {want}");
    }
    // The two models really differ (otherwise the check above proves little).
    assert!(saved.members[0].iter().zip(&saved.members[1]).any(|(x, y)| (x - y).abs() > 1e-2));

    // Each member equals the same model run alone (same input, same batch composition).
    for (k, model) in [a, b].iter().enumerate() {
        let single = tmp.path().join(format!("single{k}.safetensors"));
        let o = tmp.path().join(format!("single{k}.csv"));
        let mut args = vec!["predict", "--model", s(model), "--images", s(&images), "--sample-submission", s(&sample)];
        args.extend(["--out", s(&o), "--save-logits", s(&single), "--tta", "hflip", "--batch-size", "4"]);
        args.extend(FAST);
        assert!(run(&args).status.success());
        let one = sorbier_predict::output::logits::load(&single).unwrap();
        for (x, y) in one.mean.iter().zip(&saved.members[k]) {
            assert!((x - y).abs() <= ENSEMBLE_TOL, "member {k}: {x} vs {y}");
        }
    }
}

#[test]
fn mismatched_class_lists_are_refused() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, _, _) = small_test_set(tmp.path(), 2);
    let out = tmp.path().join("x.csv");
    let mut args = vec!["predict", "--model", s(&f.a), "--model", s(&f.other)];
    args.extend(["--images", s(&images), "--out", s(&out)]);
    args.extend(FAST);
    let o = run(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("disagree on their classes") && err.contains("index 2") && err.contains("lilies"), "{err}");
    assert!(!out.exists());
}

#[test]
fn unreadable_and_missing_images_are_errors_unless_skipped_and_no_row_is_dropped() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, names) = small_test_set(tmp.path(), 5);
    // names[1] becomes a truncated JPEG; a sixth listed image does not exist.
    let bytes = std::fs::read(images.join(&names[1])).unwrap();
    std::fs::write(images.join(&names[1]), &bytes[..bytes.len() / 3]).unwrap();
    let out = tmp.path().join("sub.csv");
    let a = &f.a;
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = ["predict", "--model", s(a), "--images", s(&images), "--sample-submission", s(&sample), "--out", s(&out)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(FAST.iter().map(|x| x.to_string()));
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run_v = |v: Vec<String>| run(&v.iter().map(String::as_str).collect::<Vec<_>>());

    let o = run_v(base(&[]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&names[1]) && err.contains("could not be read"), "{err}");
    assert!(!out.exists(), "no submission after an error");

    let mut text = std::fs::read_to_string(&sample).unwrap();
    text += "ghost.jpg,daisy\n";
    std::fs::write(&sample, text).unwrap();
    let o = run_v(base(&[]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ghost.jpg") && err.contains("not in"), "{err}");

    let o = run_v(base(&["--skip-unreadable"]));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 row(s) with an empty class"));
    let rows = read_csv(&out);
    let mut expect: Vec<String> = names.clone();
    expect.push("ghost.jpg".into());
    assert_eq!(rows[1..].iter().map(|r| r[0].clone()).collect::<Vec<_>>(), expect, "every row kept, in order");
    assert_eq!(rows[2][1], "", "unreadable image has an empty class");
    assert_eq!(rows[6][1], "", "missing image has an empty class");
    assert!(rows.iter().skip(1).filter(|r| !r[1].is_empty()).count() == 4);
    let skipped = read_csv(&sorbier_predict::output::submission::skipped_path(&out));
    assert_eq!(skipped[0], ["image_name", "reason"]);
    assert_eq!(skipped[1][0], names[1]);
    assert!(skipped[1][1].contains("unreadable"));
    assert_eq!(skipped[2][0], "ghost.jpg");
    assert!(skipped[2][1].contains("missing"));
}

#[test]
fn score_reports_accuracy_and_refuses_missing_or_extra_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let sol = tmp.path().join("solution.csv");
    std::fs::write(&sol, "image_name,class\na.jpg,x\nb.jpg,x\nc.jpg,y\nd.jpg,y\n").unwrap();
    let sub = tmp.path().join("sub.csv");
    std::fs::write(&sub, "image_name,class\nd.jpg,y\nc.jpg,x\nb.jpg,x\na.jpg,x\n").unwrap();
    let o = run(&["score", "--submission", s(&sub), "--solution", s(&sol)]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    // 3/4 right; per class x 2/2, y 1/2 → macro 0.75 too.
    assert!(text.contains("accuracy 0.7500 (3/4)") && text.contains("macro-average accuracy 0.7500"), "{text}");

    std::fs::write(&sub, "image_name,class\na.jpg,x\nb.jpg,x\nc.jpg,y\n").unwrap();
    let o = run(&["score", "--submission", s(&sub), "--solution", s(&sol)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing from the submission") && err.contains("d.jpg"), "{err}");

    std::fs::write(&sub, "image_name,class\na.jpg,x\nb.jpg,x\nc.jpg,y\nd.jpg,y\ne.jpg,y\n").unwrap();
    let o = run(&["score", "--submission", s(&sub), "--solution", s(&sol)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not in the solution") && err.contains("e.jpg"), "{err}");

    std::fs::write(&sub, "image_name,class\na.jpg,x\na.jpg,x\nc.jpg,y\nd.jpg,y\n").unwrap();
    let o = run(&["score", "--submission", s(&sub), "--solution", s(&sol)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than once"));
}

/// Output into a pipe nobody reads (`predictor info F.onnx | head -0`): the process ends on
/// SIGPIPE, quietly, as Unix tools do — no panic message from println!.
#[test]
fn a_closed_stdout_ends_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let f = fixtures();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin()).args(["info", s(&f.b)]).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.signal(), Some(13), "ended by SIGPIPE: {:?} {err}", o.status);
}

#[test]
fn info_prints_io_opset_and_metadata() {
    let f = fixtures();
    let o = run(&["info", s(&f.b)]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for want in ["input: float [N, 3, 48, 48]", "logits: float [N, 5]", "opset ai.onnx 17", "5: daisy, dandelion, roses, sunflowers, tulips", "resize 55 → center crop 48", "top1 0.5000", "random-2:best", "float32"] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn evaluate_reports_metrics_and_writes_the_tables() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // A labelled folder with 3 of the 5 classes, 3 images each.
    let data = tmp.path().join("val");
    for class in ["daisy", "roses", "tulips"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(flowers().join("train").join(class)).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for p in &files[..3] {
            std::fs::copy(p, data.join(class).join(p.file_name().unwrap())).unwrap();
        }
    }
    let report = tmp.path().join("report");
    let mut args = vec!["evaluate", "--model", s(&f.a), "--model", s(&f.b), "--data", s(&data), "--report", s(&report), "--quiet"];
    args.extend(FAST);
    let o = run(&args);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ensemble") && text.contains("top-5") && text.contains("macro"), "{text}");
    let per = read_csv(&report.join("per_class.csv"));
    assert_eq!(per[0], ["class", "train_size", "support", "correct", "accuracy"]);
    let images: usize = per[1..].iter().map(|r| r[2].parse::<usize>().unwrap()).sum();
    assert_eq!(images, 9);
    let cm = read_csv(&report.join("confusion.csv"));
    let total: usize = cm[1..].iter().flat_map(|r| r[1..].iter().map(|v| v.parse::<usize>().unwrap())).sum();
    assert_eq!(total, 9);
    let diag: usize = (1..cm.len()).map(|i| cm[i][i].parse::<usize>().unwrap()).sum();
    let correct: usize = per[1..].iter().map(|r| r[3].parse::<usize>().unwrap()).sum();
    assert_eq!(diag, correct);
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("metrics.json")).unwrap()).unwrap();
    let top1 = metrics["extra"]["ensemble"]["top1"].as_f64().unwrap();
    assert!((top1 - correct as f64 / 9.0).abs() < 1e-9);
    assert!((metrics["top1"].as_f64().unwrap() - top1).abs() < 1e-9);
    assert!(report.join("most_confused.csv").exists());
    for png in ["confusion.png", "per_class.png"] {
        let img = image::open(report.join(png)).unwrap();
        assert!(img.width() > 300 && img.height() > 300, "{png}");
    }

    // A folder class the model does not know is an error naming it.
    std::fs::create_dir_all(data.join("cactus")).unwrap();
    std::fs::copy(data.join("daisy").read_dir().unwrap().next().unwrap().unwrap().path(), data.join("cactus/x.jpg")).unwrap();
    let mut args = vec!["evaluate", "--model", s(&f.a), "--data", s(&data)];
    args.extend(FAST);
    let o = run(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cactus"));
}

/// The archive `tools/package-predictor.sh` makes: its binary links no libtorch, and it
/// predicts from another directory with an empty environment, finding the library beside it.
/// It packs the predictor this test run has built (`--binary`): the same dependency graph and
/// packing as the release archive, without a release build of every dependency in the suite.
#[test]
fn packaged_archive_links_no_libtorch_and_runs_alone_with_an_empty_environment() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    let o = Command::new(manifest().join("tools/package-predictor.sh")).args(["--out", s(&dist), "--binary", bin()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let archive = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().lines().last().unwrap());
    assert!(archive.starts_with(&dist) && s(&archive).ends_with("-linux-x86_64.tar.gz"), "{archive:?}");
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    assert!(Command::new("tar").args(["-xzf", s(&archive), "-C", s(&unpacked)]).status().unwrap().success());
    let root = std::fs::read_dir(&unpacked).unwrap().next().unwrap().unwrap().path();
    let exe = root.join("predictor");
    let files: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(files.iter().any(|n| n.starts_with("libonnxruntime.so.")), "{files:?}");
    assert!(files.contains(&"README.txt".to_string()), "{files:?}");

    let o = Command::new("ldd").arg(&exe).output().expect("ldd is available on Linux");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("libc.so"), "ldd output looks wrong:\n{text}");
    for lib in ["libtorch", "libc10", "libonnxruntime"] {
        assert!(!text.contains(lib), "packaged predictor links {lib}:\n{text}");
    }

    let (images, sample, names) = small_test_set(tmp.path(), 3);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = elsewhere.join("sub.csv");
    let o = Command::new("env")
        .args(["-i", s(&exe), "predict", "--model", s(&f.a), "--images", s(&images), "--sample-submission", s(&sample)])
        .args(["--out", "sub.csv", "--device", "cpu", "--threads", "1", "--workers", "1"])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_csv(&out).len(), names.len() + 1);

    // The same archive serves, from elsewhere, with an empty environment: ready, and the
    // identification of a photo names the species `predict` wrote for it.
    let mut cmd = Command::new("env");
    cmd.args(["-i", s(&exe), "serve", "--model", s(&f.a), "--device", "cpu", "--threads", "1", "--workers", "1"])
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(&elsewhere);
    let server = server::Server::spawn(cmd);
    assert_eq!(server.get("/v2/health/ready").status, 200, "{}", server.log_text());
    let rows = read_csv(&out);
    let (id, want) = (&rows[1][0], &rows[1][1]);
    let photo = std::fs::read(images.join(id)).unwrap();
    let r = server.identify(&photo, "?top_k=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["results"][0]["species"].as_str(), Some(want.as_str()), "{}", r.text());
    assert!(server.stop().success());
}

#[test]
fn runs_as_a_shipped_binary_with_an_empty_environment_and_explains_a_missing_library() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, names) = small_test_set(tmp.path(), 3);
    let ship = tmp.path().join("ship");
    std::fs::create_dir_all(&ship).unwrap();
    std::fs::copy(bin(), ship.join("predictor")).unwrap();
    // The predictor this suite runs comes from the workspace's own build (`cargo test` builds
    // every member with their features unified, the trainer and libtorch included): it still
    // needs no libtorch.
    let o = Command::new("ldd").arg(bin()).output().expect("ldd is available on Linux");
    let needed = String::from_utf8_lossy(&o.stdout);
    assert!(needed.contains("libc.so"), "ldd output looks wrong:\n{needed}");
    for lib in ["libtorch", "libc10"] {
        assert!(!needed.contains(lib), "the workspace build's predictor links {lib}:\n{needed}");
    }
    let model = ship.join("model.onnx");
    std::fs::copy(&f.a, &model).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = elsewhere.join("sub.csv");
    let predict = |exe: &Path| {
        Command::new("env")
            .args(["-i", s(exe), "predict", "--model", s(&model), "--images", s(&images), "--sample-submission", s(&sample)])
            .args(["--out", s(&out), "--device", "cpu", "--threads", "1", "--workers", "1"])
            .current_dir(&elsewhere)
            .output()
            .unwrap()
    };

    // Binary alone: a clear message saying where it looked and how to fix it.
    let o = predict(&ship.join("predictor"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("cannot find the ONNX Runtime library") && err.contains("SORBIER_ORT_LIB") && err.contains(s(&ship)), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // `info` needs no runtime at all.
    let o = Command::new("env").args(["-i", s(&ship.join("predictor")), "info", s(&model)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Library next to the binary, as in the archive.
    let lib = ort_lib();
    std::fs::copy(&lib, ship.join(lib.file_name().unwrap())).unwrap();
    let o = predict(&ship.join("predictor"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = read_csv(&out);
    assert_eq!(rows.len(), names.len() + 1);
}
