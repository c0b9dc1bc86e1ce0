//! `trainer synth`: competition layout, long tail, decodable JPEGs of varied sizes, CSVs that
//! match the test folder, byte-identical output for a seed.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use sorbier::data::synth::{generate, SynthOptions};

fn args(out: &Path, seed: u64) -> SynthOptions {
    SynthOptions { seed, scale: 0.1, test_per_class: 20, threads: Some(2), ..SynthOptions::new(out) }
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(root).unwrap().to_path_buf(), fs::read(e.path()).unwrap()))
        .collect()
}

fn read_csv(p: &Path) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(p).unwrap();
    assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), vec!["image_name", "class"]);
    r.records().map(|x| x.unwrap()).map(|x| (x[0].to_string(), x[1].to_string())).collect()
}

#[test]
fn layout_counts_and_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let s = generate(&args(&out, 7)).unwrap();
    assert_eq!(s.classes, vec!["acer", "bellis", "campanula", "dianthus", "echinacea", "10"]);
    // 120, 80, 50, 30, 20, 12 scaled by 0.1 (at least two).
    assert_eq!(s.train_counts, vec![12, 8, 5, 3, 2, 2]);
    assert_eq!(s.test_counts, vec![2; 6]);

    // The data layer sees the classes as strings, sorted as names: "10" first.
    let ds = sorbier::data::Dataset::scan(&out.join("train")).unwrap();
    assert_eq!(ds.classes, vec!["10", "acer", "bellis", "campanula", "dianthus", "echinacea"]);
    assert!(ds.report.is_clean());
    let counts: BTreeMap<&str, usize> = ds.classes.iter().map(String::as_str).zip(ds.class_counts()).collect();
    assert_eq!(counts["acer"], 12);
    assert_eq!(counts["10"], 2);
    assert!(counts["acer"] > counts["bellis"] && counts["bellis"] > counts["campanula"]);

    // Every image decodes, sizes vary within 80–320 px, in more than one aspect ratio.
    let mut sizes = BTreeSet::new();
    for p in ds.paths() {
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let (w, h) = (img.width(), img.height());
        assert!((80..=320).contains(&w) && (80..=320).contains(&h), "{}: {w}x{h}", p.display());
        sizes.insert((w, h));
    }
    assert!(sizes.len() > 10, "{sizes:?}");
    assert!(sizes.iter().any(|(w, h)| w > h) && sizes.iter().any(|(w, h)| w < h));

    // test/: anonymous names, one row each in both CSVs, in the same order.
    let test: BTreeSet<String> = fs::read_dir(out.join("test")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(test.len(), 12);
    assert!(test.iter().all(|n| n.starts_with("test_") && n.ends_with(".jpg")));
    let sol = read_csv(&out.join("solution.csv"));
    let sub = read_csv(&out.join("sample_submission.csv"));
    assert_eq!(sol.len(), 12);
    assert_eq!(sol.iter().map(|r| &r.0).collect::<Vec<_>>(), sub.iter().map(|r| &r.0).collect::<Vec<_>>());
    assert_eq!(sol.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>(), test);
    // Balanced test classes, and the placeholder class is a real class name.
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, c) in &sol {
        *per.entry(c).or_default() += 1;
    }
    assert_eq!(per.len(), 6);
    assert!(per.values().all(|&n| n == 2), "{per:?}");
    assert!(sub.iter().all(|(_, c)| c == "acer"));
    // The order of the test files does not give the class away.
    let classes_in_order: Vec<&str> = sol.iter().map(|r| r.1.as_str()).collect();
    let mut sorted = classes_in_order.clone();
    sorted.sort();
    assert_ne!(classes_in_order, sorted);

    // The test folder reads back through the data layer with the sample submission's order.
    let ts = sorbier::data::TestSet::scan(&out.join("test"), Some(&out.join("sample_submission.csv"))).unwrap();
    assert!(ts.missing.is_empty() && ts.unlisted.is_empty());
    assert_eq!(ts.names, sol.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
}

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    generate(&args(&a, 1)).unwrap();
    // A different thread count must not change anything.
    generate(&SynthOptions { threads: Some(1), ..args(&b, 1) }).unwrap();
    generate(&args(&c, 2)).unwrap();
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta.len(), tb.len());
    assert!(ta == tb, "same seed gave different files");
    // Same names (layout depends only on counts), different pixels.
    assert_eq!(ta.keys().filter(|k| k.starts_with("train")).collect::<Vec<_>>(), tc.keys().filter(|k| k.starts_with("train")).collect::<Vec<_>>());
    let differing = ta.iter().filter(|(k, v)| tc.get(*k).is_some_and(|w| w != *v)).count();
    assert!(differing > ta.len() / 2, "only {differing} of {} files differ", ta.len());
}

#[test]
fn refuses_non_empty_out_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = format!("{:#}", generate(&args(&out, 0)).unwrap_err());
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    assert!(!out.join("train").exists());
    // --force replaces what synth writes and leaves other files alone.
    fs::create_dir_all(out.join("train/stale")).unwrap();
    fs::write(out.join("train/stale/x.jpg"), "old").unwrap();
    generate(&SynthOptions { force: true, ..args(&out, 0) }).unwrap();
    assert!(!out.join("train/stale").exists());
    assert_eq!(fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    assert!(out.join("solution.csv").is_file());
    // Bad arguments are refused before anything is written.
    let e = format!("{:#}", generate(&SynthOptions { classes: 1, ..args(&dir.path().join("e"), 0) }).unwrap_err());
    assert!(e.contains("--classes"), "{e}");
}
