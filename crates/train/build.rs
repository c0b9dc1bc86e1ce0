//! Build script of the training crate:
//! 1. makes binaries and tests find libtorch at run time (rpath) and keeps `libtorch_cuda`
//!    linked into them, which `--as-needed` would otherwise drop (then
//!    `tch::Cuda::is_available()` is false even on a GPU machine);
//! 2. compiles `csrc/` against the same libtorch headers: ATen's fused optimiser and foreach
//!    kernels, the channels-last memory format, and autocast on any device in fp16 or bf16 —
//!    none of which tch wraps;
//! 3. compiles `csrc/dist.cpp`, the data-parallel shim over c10d (TCPStore, ProcessGroupGloo,
//!    ProcessGroupNCCL), with Gloo when Gloo's headers are there (tools/setup.sh extracts
//!    Debian's libgloo-dev into `.venv/gloo`; `SORBIER_GLOO_INCLUDE` overrides) and with NCCL
//!    only where NCCL's and CUDA's headers are installed too. Without Gloo's headers the
//!    trainer still builds and says at run time that distributed training is unavailable.
use std::env;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Set by torch-sys (`links = "tch"`) for its direct dependents.
    let lib = env::var("DEP_TCH_LIBTORCH_LIB").map_err(|_| "torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB)")?;
    compile_aten_shims(Path::new(&lib));
    compile_dist_shim(Path::new(&lib));
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

/// `csrc/dist.cpp` with `-DUSE_C10D_GLOO` (without it `ProcessGroupGloo.hpp` is empty) when
/// Gloo's headers exist, and `-DUSE_C10D_NCCL -DUSE_CUDA` when the CUDA wheels' NCCL and CUDA
/// headers (with `crt/host_config.h` from `cuda-toolkit[crt]`) exist beside torch. The Gloo
/// headers are only parsed: libtorch_cpu already contains Gloo's code.
fn compile_dist_shim(lib: &Path) {
    println!("cargo:rerun-if-env-changed=SORBIER_GLOO_INCLUDE");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let gloo = env::var_os("SORBIER_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|| workspace.join(".venv/gloo/usr/include"));
    println!("cargo:rerun-if-changed={}", gloo.join("gloo/config.h").display());
    let root = env::var_os("LIBTORCH_INCLUDE").map(PathBuf::from).unwrap_or_else(|| lib.join(".."));
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true);
    if gloo.join("gloo/config.h").exists() {
        build.include(&gloo).define("USE_C10D_GLOO", None);
        let nvidia = root.join("../nvidia");
        let nccl = nvidia.join("nccl/include");
        let cuda = nvidia.join("cu13/include");
        if nccl.join("nccl.h").exists() && cuda.join("cuda_runtime_api.h").exists() && cuda.join("crt/host_config.h").exists() {
            // c10's CUDA headers align a pool to std::hardware_destructive_interference_size,
            // which GCC warns about on every include; the value is libtorch's, not ours to pin.
            build.include(nccl).include(cuda).define("USE_C10D_NCCL", None).define("USE_CUDA", None).flag_if_supported("-Wno-interference-size");
        }
    } else {
        println!(
            "cargo:warning=Gloo's headers are not in {}: the trainer is built without distributed training (run tools/setup.sh, which fetches Debian's libgloo-dev)",
            gloo.display()
        );
    }
    build.compile("sorbier_dist");
}
