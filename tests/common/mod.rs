//! Helpers shared by the integration tests; each test file is its own crate and includes this
//! module with `mod common;`.
#![allow(dead_code)]

/// The process-wide ONNX Runtime environment, from the library the build points at
/// (`ORT_DYLIB_PATH`, at test time or at build time).
pub fn ort_env() -> &'static ort::environment::Environment {
    static ENV: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| env!("ORT_DYLIB_PATH").to_string());
        ort::init_from(&lib)
            .unwrap_or_else(|e| panic!("cannot load ONNX Runtime from {lib}: {e}"))
            .with_name("sorbier-tests")
            .build()
            .unwrap()
    })
}
