//! Build script:
//! 1. compiles the vendored `proto/onnx.proto` into prost message types (pure Rust, no protoc);
//! 2. with the `train` feature, makes binaries and tests find libtorch at run time (rpath) and
//!    keeps `libtorch_cuda` linked into the trainer, which `--as-needed` would otherwise drop
//!    (then `tch::Cuda::is_available()` is false even on a GPU machine).
use std::env;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;

    if env::var_os("CARGO_FEATURE_TRAIN").is_some() {
        // Set by torch-sys (`links = "tch"`) for its direct dependents.
        if let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            // Per-target link args are refused for target kinds the package lacks.
            let mut targets = vec!["bin=trainer".to_string()];
            for kind in ["tests", "benches", "examples"] {
                let has_rs = std::fs::read_dir(kind).into_iter().flatten().flatten().any(|e| {
                    e.path().extension().is_some_and(|x| x == "rs") || e.path().join("main.rs").exists()
                });
                println!("cargo:rerun-if-changed={kind}");
                if has_rs {
                    targets.push(kind.to_string());
                }
            }
            for target in &targets {
                let prefix = match target.split_once('=') {
                    Some((kind, name)) => format!("cargo:rustc-link-arg-{kind}={name}="),
                    None => format!("cargo:rustc-link-arg-{target}="),
                };
                println!("{prefix}-Wl,--no-as-needed");
                println!("{prefix}-ltorch");
            }
        }
    }
    Ok(())
}
