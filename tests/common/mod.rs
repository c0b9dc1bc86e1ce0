//! Helpers shared by the integration tests; each test file is its own crate and includes this
//! module with `mod common;`.
#![allow(dead_code)]

/// The project's Python (`SORBIER_PYTHON`, else the repo's `.venv/bin/python`), for the tests
/// that compare against PyTorch, torchvision or timm.
pub fn python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = std::env::var("SORBIER_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|_| std::path::PathBuf::from(".venv/bin/python"));
    if p.is_absolute() {
        p
    } else {
        root.join(p)
    }
}

/// Reads a C-order `.npy` file whose dtype is `descr` (`<f4`, `|u1`, …): its shape and raw
/// little-endian bytes.
pub fn read_npy_bytes(path: &std::path::Path, descr: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not a .npy file", path.display());
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains(&format!("'descr': '{descr}'")) && header.contains("'fortran_order': False"), "unexpected header {header}");
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_str.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    (shape, bytes[start + hlen..].to_vec())
}

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

/// Output `logits` of the ONNX model at `path` for an input of `shape` (one intra-op thread).
pub fn ort_logits(path: &std::path::Path, shape: &[usize], input: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let x = ort::value::Tensor::from_array((shape.to_vec(), input.to_vec().into_boxed_slice())).unwrap();
    let mut s = ort::session::Session::builder(ort_env()).unwrap().with_intra_threads(1).unwrap().commit_from_file(path).unwrap();
    let outputs = s.run(ort::inputs!["input" => x]).unwrap();
    let (shape, data) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
    (shape.iter().map(|&d| d as usize).collect(), data.to_vec())
}
