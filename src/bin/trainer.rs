//! `trainer`: inspect a dataset, fine-tune a ResNet with libtorch, export it to ONNX.
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a small procedural plant-like dataset (the built-in default data).
    Synth(sorbier::data::synth::SynthArgs),
    /// Show the classes of a dataset, their sizes and what the scan skipped.
    Inspect(sorbier::data::inspect::InspectArgs),
    /// Fine-tune a ResNet (libtorch; CPU or CUDA) and write a run directory.
    Train(sorbier::train::TrainArgs),
    /// Export a run's checkpoint to a self-describing ONNX model.
    Export(sorbier::export::ExportArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Synth(a) => sorbier::data::synth::run(&a),
        Command::Inspect(a) => sorbier::data::inspect::run(&a),
        Command::Train(a) => sorbier::train::run(&a),
        Command::Export(a) => sorbier::export::run(&a),
    }
}
