//! `predictor`: batched ONNX Runtime inference and submissions; links no libtorch.
//! Parses arguments and calls [`sorbier::predict`].
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sorbier::predict::{evaluate, info, score, submit};

#[derive(Parser)]
#[command(name = "predictor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict a folder of test images and write a submission CSV (one model or an ensemble).
    Predict(submit::PredictArgs),
    /// Accuracy, top-5, macro accuracy, per-class accuracy and confusions on a labelled ImageFolder.
    Evaluate(evaluate::EvaluateArgs),
    /// Score a submission against a solution CSV (no ONNX Runtime needed).
    Score(score::ScoreArgs),
    /// Print a model's inputs, outputs, opset and metadata (no ONNX Runtime needed).
    Info {
        /// The .onnx file.
        model: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Predict(a) => submit::run(&a),
        Command::Evaluate(a) => evaluate::run(&a).map(|_| ()),
        Command::Score(a) => score::run(&a).map(|_| ()),
        Command::Info { model } => info::run(&model),
    }
}
