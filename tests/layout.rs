//! The shape of the code, checked on every test run by `tools/check_layout.py`: no import
//! circle between the modules of a crate (an edge goes to the module that *defines* what is
//! named, through re-exports, as cargo-modules resolves it) and no function over 100 lines
//! outside tests. The script's own fixtures prove it finds both.
use std::path::Path;
use std::process::Command;

fn python() -> String {
    std::env::var("SORBIER_PYTHON").unwrap_or_else(|_| env!("SORBIER_PYTHON").to_string())
}

fn check(root: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_layout.py");
    let out = Command::new(python()).arg(script).arg(root).output().expect("run tools/check_layout.py");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn no_import_circle_and_no_long_function() {
    let (ok, report) = check(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(ok, "{report}");
    assert!(report.contains("crates/predict/src:") && report.contains(", 0 circles"), "{report}");
}

#[test]
fn the_check_finds_a_circle_through_a_reexport_and_a_long_function() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    // a/mod.rs re-exports A from a/inner.rs; b uses crate::a::A (defined in a::inner); a::inner uses b.
    std::fs::write(src.join("a/mod.rs"), "mod inner;\npub use inner::A;\n").unwrap();
    std::fs::write(src.join("a/inner.rs"), "use crate::b::B;\npub struct A(pub B);\n").unwrap();
    let long: String = (0..101).map(|i| format!("    let _x{i} = {i};\n")).collect();
    std::fs::write(src.join("b.rs"), format!("use crate::a::A;\npub struct B;\npub fn f(_: Option<A>) {{\n{long}}}\n")).unwrap();
    let (ok, report) = check(dir.path());
    assert!(!ok, "{report}");
    assert!(report.contains("import circle between crate::a::inner, crate::b"), "{report}");
    assert!(report.contains("src/b.rs:3: fn f is 103 lines"), "{report}");
}
