//! `predictor`: batched ONNX Runtime inference and submissions; links no libtorch.
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "predictor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's inputs, outputs, opset and metadata.
    Info { model: std::path::PathBuf },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Info { model } => anyhow::bail!("not yet: {}", model.display()),
    }
}
