//! Build script of the core: compiles the vendored `proto/onnx.proto` into prost message types
//! (pure Rust, no protoc) for the ONNX writer and the model-card reader.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
