//! Report files: each picture exists, decodes, has a sensible size and is not blank; the
//! tables beside them agree with the confusion matrix they came from.
use std::fs;
use std::path::{Path, PathBuf};

use sorbier::report::{dataset, evaluation, tables, training};

/// Decodes a PNG and checks it is a real picture: both sides above `min_side`, and not one
/// flat colour. Returns (width, height).
fn check_png(p: &Path, min_side: u32) -> (u32, u32) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8();
    let (w, h) = img.dimensions();
    assert!(w > min_side && h > min_side, "{}: {w}x{h}", p.display());
    let n = (w * h) as f64;
    let mean = img.pixels().map(|px| px.0[0] as f64).sum::<f64>() / n;
    let var = img.pixels().map(|px| (px.0[0] as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(var > 1.0, "{} looks blank (variance {var})", p.display());
    // Not mostly empty either: a good share of pixels are not white.
    let inked = img.pixels().filter(|px| px.0 != [255, 255, 255]).count();
    assert!(inked as f64 > 0.01 * n, "{}: only {inked} non-white pixels", p.display());
    (w, h)
}

const CLASSES: [&str; 5] = ["acer", "bellis", "10", "dianthus", "echinacea"];
const TRAIN: [usize; 5] = [120, 80, 12, 30, 20];
const CM: [[usize; 5]; 5] = [[20, 2, 0, 1, 1], [3, 12, 0, 0, 1], [0, 1, 1, 1, 0], [2, 0, 0, 4, 0], [1, 0, 2, 0, 1]];

fn names() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}

fn cm() -> Vec<Vec<usize>> {
    CM.iter().map(|r| r.to_vec()).collect()
}

/// A run directory as the trainer writes it, after three epochs.
fn write_run(dir: &Path) {
    fs::write(
        dir.join("history.csv"),
        "epoch,lr,train_loss,train_acc,val_loss,val_top1,val_top5,val_macro_acc,train_images_per_s,seconds\n\
         1,0.001,1.60,0.30,1.45,0.41,0.95,0.30,210.5,12.0\n\
         2,0.001,1.20,0.52,1.10,0.55,0.98,0.44,215.0,11.8\n\
         3,0.0001,0.90,0.66,0.95,0.64,1.00,0.48,214.2,11.9\n",
    )
    .unwrap();
    tables::write_confusion(&dir.join("best_confusion.csv"), &names(), &cm()).unwrap();
    let mut pc = String::from("class,train_size,support,correct,accuracy\n");
    for (i, row) in CM.iter().enumerate() {
        let support: usize = row.iter().sum();
        pc.push_str(&format!("{},{},{},{},{}\n", CLASSES[i], TRAIN[i], support, row[i], row[i] as f64 / support as f64));
    }
    fs::write(dir.join("best_per_class.csv"), pc).unwrap();
}

fn file_names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn run_report_pictures_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path());
    let written = training::render_run(dir.path()).unwrap();
    let names = file_names(&written);
    for f in ["curves.png", "confusion.png", "per_class.png", "most_confused.csv", "report.html"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
        assert!(dir.path().join(f).is_file());
    }
    for p in written.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        check_png(p, 300);
    }

    // most_confused.csv: every row is the matrix cell it names, and all off-diagonal mass is there.
    let idx = |s: &str| CLASSES.iter().position(|c| *c == s).unwrap();
    let mut r = csv::Reader::from_path(dir.path().join("most_confused.csv")).unwrap();
    let rows: Vec<(String, String, usize)> = r.deserialize().map(|x| x.unwrap()).map(|x: (String, String, usize, f64)| (x.0, x.1, x.2)).collect();
    for (a, p, n) in &rows {
        assert_eq!(CM[idx(a)][idx(p)], *n, "{a} -> {p}");
    }
    let off_diag: usize = (0..5).flat_map(|i| (0..5).filter(move |&j| j != i).map(move |j| CM[i][j])).sum();
    assert_eq!(rows.iter().map(|r| r.2).sum::<usize>(), off_diag);
    assert!(rows.windows(2).all(|w| w[0].2 >= w[1].2), "not sorted: {rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2), ("bellis", "acer", 3));

    // The per-class table's correct counts sum to the confusion diagonal.
    let pc = tables::read_per_class(&dir.path().join("best_per_class.csv")).unwrap();
    let diag: usize = (0..5).map(|i| CM[i][i]).sum();
    assert_eq!(pc.iter().map(|r| r.correct).sum::<usize>(), diag);

    let html = fs::read_to_string(dir.path().join("report.html")).unwrap();
    for f in ["curves.png", "confusion.png", "per_class.png", "most_confused.csv"] {
        assert!(html.contains(f), "report.html does not link {f}");
    }
}

#[test]
fn run_report_skips_missing_and_names_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing to draw yet: a clear error.
    let e = format!("{:#}", training::render_run(dir.path()).unwrap_err());
    assert!(e.contains("history.csv"), "{e}");

    write_run(dir.path());
    fs::remove_file(dir.path().join("best_confusion.csv")).unwrap();
    fs::remove_file(dir.path().join("best_per_class.csv")).unwrap();
    let names = file_names(&training::render_run(dir.path()).unwrap());
    assert_eq!(names, vec!["curves.png", "report.html"]);
    check_png(&dir.path().join("curves.png"), 300);

    // A single epoch without validation still draws.
    fs::write(dir.path().join("history.csv"), "epoch,lr,train_loss,train_acc\n1,0.01,2.0,0.2\n").unwrap();
    training::render_run(dir.path()).unwrap();
    check_png(&dir.path().join("curves.png"), 300);

    fs::write(dir.path().join("best_confusion.csv"), "true\\pred,a,b\na,1,2\nb,x,3\n").unwrap();
    let e = format!("{:#}", training::render_run(dir.path()).unwrap_err());
    assert!(e.contains("best_confusion.csv") && e.contains("row 3"), "{e}");

    // Per-class numbers that disagree with the matrix are refused, naming both files.
    write_run(dir.path());
    let pc = fs::read_to_string(dir.path().join("best_per_class.csv")).unwrap().replace("acer,120,24,20", "acer,120,24,19");
    fs::write(dir.path().join("best_per_class.csv"), pc).unwrap();
    let e = format!("{:#}", training::render_run(dir.path()).unwrap_err());
    assert!(e.contains("best_per_class.csv") && e.contains("best_confusion.csv") && e.contains("acer"), "{e}");
}

#[test]
fn evaluation_report_and_metrics_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let written = evaluation::render(&out, &names(), &cm(), Some(&TRAIN)).unwrap();
    let names = file_names(&written);
    for f in ["confusion.csv", "per_class.csv", "confusion.png", "per_class.png", "most_confused.csv", "metrics.json"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
    }
    check_png(&out.join("confusion.png"), 300);
    check_png(&out.join("per_class.png"), 300);

    let m: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let n: usize = CM.iter().flatten().sum();
    let diag: usize = (0..5).map(|i| CM[i][i]).sum();
    assert_eq!(m["n"], n);
    assert_eq!(m["correct"], diag);
    assert!((m["top1"].as_f64().unwrap() - diag as f64 / n as f64).abs() < 1e-12);
    let pc = tables::read_per_class(&out.join("per_class.csv")).unwrap();
    assert_eq!(pc.iter().map(|r| r.correct).sum::<usize>(), diag);
    assert_eq!(pc.iter().map(|r| r.train_size.unwrap()).collect::<Vec<_>>(), TRAIN.to_vec());
    let macro_acc = pc.iter().map(|r| r.accuracy.unwrap()).sum::<f64>() / 5.0;
    assert!((m["macro_acc"].as_f64().unwrap() - macro_acc).abs() < 1e-12);
    // The CSV round-trips to the same matrix.
    assert_eq!(tables::read_confusion(&out.join("confusion.csv")).unwrap(), (self::names(), cm()));

    // A matrix that does not fit the class list is refused.
    assert!(evaluation::render(&out, &self::names()[..4], &cm(), None).is_err());
}

#[test]
fn confusion_picture_scales_with_class_count() {
    let dir = tempfile::tempdir().unwrap();
    let n = 153;
    let classes: Vec<String> = (0..n).map(|i| format!("species_{i:03}")).collect();
    // Mostly right, with a few confusions with neighbours; long-tailed sizes.
    let cm: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let mut row = vec![0; n];
            row[i] = 3 + i % 7;
            row[(i + 1) % n] = i % 3;
            row
        })
        .collect();
    let sizes: Vec<usize> = (0..n).map(|i| 5 + 600 / (i + 1)).collect();
    let big = dir.path().join("big");
    evaluation::render(&big, &classes, &cm, Some(&sizes)).unwrap();
    let (w153, h153) = check_png(&big.join("confusion.png"), 300);
    let small = dir.path().join("small");
    evaluation::render(&small, &names(), &self::cm(), None).unwrap();
    let (w5, h5) = check_png(&small.join("confusion.png"), 300);
    // Every class keeps at least 6 px, so the picture grows with the class count.
    assert!(w153 >= 6 * n as u32 && h153 >= 6 * n as u32, "{w153}x{h153}");
    assert!(w153 > w5 && h153 > h5);
}

#[test]
fn dataset_report_on_a_tiny_synth_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let args = sorbier::data::synth::SynthOptions { scale: 0.1, threads: Some(2), ..sorbier::data::synth::SynthOptions::new(&data) };
    sorbier::data::synth::generate(&args).unwrap();
    let ds = sorbier::data::Dataset::scan(&data.join("train")).unwrap();
    let summary = sorbier::data::inspect::summarize(&ds, None).unwrap();
    let out = dir.path().join("report");
    let opts = dataset::DatasetReportOptions { log_scale: true, ..Default::default() };
    let written = dataset::render(&ds, &summary, &out, &opts).unwrap();
    let names = file_names(&written);
    for f in ["class_sizes.png", "samples.png", "image_sizes.png", "class_table.csv", "stats.csv", "summary.json"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
    }
    for f in ["class_sizes.png", "samples.png", "image_sizes.png"] {
        check_png(&out.join(f), 300);
    }
    // The class table holds the scanned counts, and the stats the total.
    let mut r = csv::Reader::from_path(out.join("class_table.csv")).unwrap();
    let rows: Vec<(usize, String, usize, f64)> = r.deserialize().map(|x| x.unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), ds.class_counts());
    assert_eq!(rows[0].1, "10");
    let stats = fs::read_to_string(out.join("stats.csv")).unwrap();
    assert!(stats.contains(&format!("images,{}", ds.samples.len())), "{stats}");
    assert!(stats.contains("class_size_max,12"), "{stats}");
}
