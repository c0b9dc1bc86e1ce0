//! Build script of the predictor: compiles `proto/grpc_service.proto` (the Open Inference
//! Protocol's gRPC service) into prost messages and a tonic service, without protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    let fds = protox::compile(["proto/grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).build_transport(false).compile_fds(fds)?;
    Ok(())
}
