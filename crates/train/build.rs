//! Build script of the training crate:
//! 1. makes binaries and tests find libtorch at run time (rpath) and keeps `libtorch_cuda`
//!    linked into them, which `--as-needed` would otherwise drop (then
//!    `tch::Cuda::is_available()` is false even on a GPU machine);
//! 2. compiles `csrc/` against the same libtorch headers: ATen's fused optimiser and foreach
//!    kernels, the channels-last memory format, and autocast on any device in fp16 or bf16 —
//!    none of which tch wraps.
use std::env;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Set by torch-sys (`links = "tch"`) for its direct dependents.
    let lib = env::var("DEP_TCH_LIBTORCH_LIB").map_err(|_| "torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB)")?;
    compile_aten_shims(Path::new(&lib));
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
    Ok(())
}

/// `csrc/*.cpp` → a static library linked into the crate. The headers are those of
/// the libtorch we link (`<torch>/lib/../include`, or `LIBTORCH_INCLUDE` as torch-sys reads
/// it), with the same C++ ABI flag torch-sys uses.
fn compile_aten_shims(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let root = env::var_os("LIBTORCH_INCLUDE").map(PathBuf::from).unwrap_or_else(|| lib.join(".."));
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .file("csrc/multi_tensor.cpp")
        .file("csrc/memory_format.cpp")
        .file("csrc/autocast.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true)
        .compile("sorbier_aten");
}
