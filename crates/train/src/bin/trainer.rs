//! `trainer`: inspect a dataset, fine-tune a ResNet or EfficientNet-Lite with libtorch, export it to ONNX.
//! Parses arguments ([`cli`]), calls the libraries and prints.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "trainer/cli.rs"]
mod cli;
#[path = "trainer/data.rs"]
mod data;

#[derive(Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a small procedural plant-like dataset (the built-in default data).
    Synth(data::SynthArgs),
    /// Show the classes of a dataset, their sizes and what the scan skipped.
    Inspect(data::InspectArgs),
    /// Fine-tune a ResNet or EfficientNet-Lite (libtorch; CPU or CUDA) and write a run directory.
    Train(cli::TrainArgs),
    /// Export a run's checkpoint to a self-describing ONNX model.
    Export(data::ExportArgs),
}

fn main() -> ExitCode {
    // A closed stdout (`trainer inspect DIR | head`) ends the process quietly, as it ends Unix
    // tools, instead of a panic in println!. Training commits its checkpoints atomically, so
    // nothing is lost either way.
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Freed tensors stay in the process for the next step instead of being faulted in again
    // (see sorbier_train::malloc; SORBIER_MALLOC=default keeps glibc's settings).
    if let Err(e) = sorbier_train::malloc::tune_for_tensors() {
        eprintln!("Error: {e:?}");
        return ExitCode::FAILURE;
    }
    let result = match Cli::parse().command {
        Command::Synth(a) => data::synth(&a),
        Command::Inspect(a) => data::inspect(&a),
        Command::Train(a) => cli::train(&a),
        Command::Export(a) => data::export(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cli::exit_code(&e);
            if code == sorbier_train::interrupt::EXIT_INTERRUPTED {
                eprintln!("{e:#}");
            } else {
                eprintln!("Error: {e:?}");
            }
            ExitCode::from(code)
        }
    }
}
