//! ONNX Runtime plumbing: finding `libonnxruntime` at run time (the predictor links no ONNX
//! Runtime at build time, `ort`'s `load-dynamic`), creating the environment, and opening
//! sessions on the requested device.
//!
//! Library lookup order, first hit wins:
//! 1. `--ort-lib PATH` (a file, or a folder holding `libonnxruntime.so*`);
//! 2. `SORBIER_ORT_LIB`, then `ORT_DYLIB_PATH` (same forms);
//! 3. next to the executable: `libonnxruntime.so*` in its folder, then in `../lib`
//!    (the layout of the archive `tools/package-predictor.sh` makes).
//!
//! An explicit location (flag or variable) that does not exist is an error rather than a
//! silent fall-through, and when nothing is found the error says where it looked and how to
//! fix it; `ort` itself would panic at its first call.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Environment variables naming the library, in lookup order.
pub const LIB_ENV_VARS: [&str; 2] = ["SORBIER_ORT_LIB", "ORT_DYLIB_PATH"];

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// CUDA if it starts, else CPU (saying so).
    Auto,
    Cpu,
    /// CUDA device index.
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Finds `libonnxruntime` following the lookup order of this module's header; `exe_dir` is
/// the executable's folder (a parameter so the search can be tested).
pub fn find_library(flag: Option<&Path>, env: &dyn Fn(&str) -> Option<String>, exe_dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return resolve_explicit(p).with_context(|| format!("--ort-lib {}", p.display()));
    }
    for var in LIB_ENV_VARS {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            return resolve_explicit(Path::new(&v)).with_context(|| format!("{var}={v}"));
        }
    }
    let mut looked = Vec::new();
    if let Some(dir) = exe_dir {
        for d in [dir.to_path_buf(), dir.join("..").join("lib")] {
            if let Some(p) = library_in(&d) {
                return Ok(p);
            }
            looked.push(d);
        }
    }
    bail!(
        "cannot find the ONNX Runtime library (libonnxruntime.so*). Looked in: --ort-lib (not given), \
         {} (not set), {}. Fix: put libonnxruntime.so.<version> next to the predictor (the archive from \
         tools/package-predictor.sh does), or pass --ort-lib /path/to/libonnxruntime.so.<version>, or set \
         SORBIER_ORT_LIB to it (pip's onnxruntime ships it in site-packages/onnxruntime/capi/)",
        LIB_ENV_VARS.join(", "),
        looked.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// A named file, or a folder searched for the library.
fn resolve_explicit(p: &Path) -> Result<PathBuf> {
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() {
        return library_in(p).with_context(|| format!("folder {} holds no libonnxruntime.so*", p.display()));
    }
    bail!("{} does not exist", p.display())
}

/// `libonnxruntime.so` in `dir`, else the `libonnxruntime.so.X.Y.Z` with the highest version.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("libonnxruntime.so.")?;
            let parts: Option<Vec<u64>> = version.split('.').map(|x| x.parse().ok()).collect();
            Some((parts?, e.path()))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, p)| p)
}

/// The loaded runtime: keeps the environment alive for the sessions made from it.
pub struct Runtime {
    env: Environment,
    pub library: PathBuf,
}

impl Runtime {
    /// Finds and loads the library (see [`find_library`]) and creates the environment, logging
    /// ONNX Runtime's warnings and errors to stderr (its info level is very loud).
    pub fn load(flag: Option<&Path>) -> Result<Runtime> {
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok()).and_then(|p| p.parent().map(Path::to_path_buf));
        let lib = find_library(flag, &|k| std::env::var(k).ok(), exe_dir.as_deref())?;
        // ort resolves a relative path against the executable's folder, not the working directory.
        let lib = lib.canonicalize().with_context(|| format!("cannot resolve {}", lib.display()))?;
        let builder = ort::init_from(&lib).map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
        let env = builder
            .with_name("sorbier")
            .with_telemetry(false)
            .with_logger(Arc::new(|level: LogLevel, category: &str, _id: &str, location: &str, message: &str| {
                if matches!(level, LogLevel::Warning | LogLevel::Error | LogLevel::Fatal) {
                    eprintln!("onnxruntime {level:?} [{category} {location}]: {message}");
                }
            }))
            .build()
            .map_err(|e| anyhow!("cannot create the ONNX Runtime environment ({}): {e}", lib.display()))?;
        Ok(Runtime { env, library: lib })
    }

    /// Opens `model` on `device` with `threads` intra-op threads (0 = ONNX Runtime's default).
    /// Returns the session and the device it actually runs on: `Auto` tries CUDA and falls back
    /// to CPU (the caller prints which); `Cuda` that cannot start is an error.
    pub fn session(&self, model: &Path, device: Device, threads: usize) -> Result<(Session, Device, Option<String>)> {
        match device {
            Device::Cpu => Ok((self.open(model, None, threads).with_context(|| format!("cannot open {}", model.display()))?, Device::Cpu, None)),
            Device::Cuda(n) => {
                let s = self
                    .open(model, Some(n), threads)
                    .with_context(|| format!("cannot open {} on CUDA device {n} (is a GPU with CUDA 13 and cuDNN 9 present, and libonnxruntime_providers_cuda.so next to {}?)", model.display(), self.library.display()))?;
                Ok((s, Device::Cuda(n), None))
            }
            Device::Auto => match self.open(model, Some(0), threads) {
                Ok(s) => Ok((s, Device::Cuda(0), None)),
                Err(cuda_err) => {
                    let s = self.open(model, None, threads).with_context(|| format!("cannot open {}", model.display()))?;
                    Ok((s, Device::Cpu, Some(format!("{cuda_err:#}"))))
                }
            },
        }
    }

    /// The environment, for sessions built with other options (calibration, fusion checks).
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    fn open(&self, model: &Path, cuda: Option<i32>, threads: usize) -> Result<Session> {
        // Builder errors carry the builder (not Send), so they are turned into strings here.
        build_session(&self.env, model, cuda, threads).map_err(|e| anyhow!("{e}"))
    }
}

fn build_session(env: &Environment, model: &Path, cuda: Option<i32>, threads: usize) -> ort::Result<Session> {
    // No spin-waiting between parallel sections: the decoding workers share the cores, and a
    // spinning pool steals their time (measured: end-to-end fell to 0.7× model-only with it).
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_op_spinning(false)?;
    if threads > 0 {
        b = b.with_intra_threads(threads)?;
    }
    if let Some(n) = cuda {
        b = b.with_execution_providers([ort::ep::CUDA::default().with_device_id(n).build().error_on_failure()])?;
    }
    b.commit_from_file(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().is_err());
    }

    #[test]
    fn library_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin");
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&exe).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let none = |_: &str| None;
        let err = format!("{:#}", find_library(None, &none, Some(&exe)).unwrap_err());
        assert!(err.contains("SORBIER_ORT_LIB") && err.contains("--ort-lib") && err.contains(&exe.display().to_string()), "{err}");

        // ../lib, highest version wins.
        std::fs::write(lib.join("libonnxruntime.so.1.9.0"), b"").unwrap();
        std::fs::write(lib.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(find_library(None, &none, Some(&exe)).unwrap(), exe.join("..").join("lib").join("libonnxruntime.so.1.31.1"));
        // Next to the executable beats ../lib.
        std::fs::write(exe.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(find_library(None, &none, Some(&exe)).unwrap(), exe.join("libonnxruntime.so.1.31.1"));
        // Environment beats the executable's folder; SORBIER_ORT_LIB beats ORT_DYLIB_PATH.
        let target = lib.join("libonnxruntime.so.1.9.0");
        let t = target.display().to_string();
        let env = |k: &str| match k {
            "SORBIER_ORT_LIB" => Some(t.clone()),
            "ORT_DYLIB_PATH" => Some("/nonexistent".to_string()),
            _ => None,
        };
        assert_eq!(find_library(None, &env, Some(&exe)).unwrap(), target);
        // A wrong explicit location is an error, not a fall-through.
        let bad = |k: &str| (k == "ORT_DYLIB_PATH").then(|| "/nonexistent/libonnxruntime.so".to_string());
        let err = format!("{:#}", find_library(None, &bad, Some(&exe)).unwrap_err());
        assert!(err.contains("ORT_DYLIB_PATH") && err.contains("does not exist"), "{err}");
        // The flag beats everything and accepts a folder.
        assert_eq!(find_library(Some(&lib), &env, Some(&exe)).unwrap(), lib.join("libonnxruntime.so.1.31.1"));
    }
}
