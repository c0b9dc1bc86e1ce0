//! `predictor`: batched ONNX Runtime inference and submissions; links no libtorch.
//! Parses arguments ([`cli`]), calls [`sorbier_predict`] and prints.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "predictor/cli.rs"]
mod cli;
#[path = "predictor/combine.rs"]
mod combine;
#[path = "predictor/quantize.rs"]
mod quantize;
#[path = "predictor/serve.rs"]
mod serve;

#[derive(Parser)]
#[command(name = "predictor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict a folder of test images and write a submission CSV (one model or an ensemble).
    Predict(cli::PredictArgs),
    /// Accuracy, top-5, macro accuracy, per-class accuracy and confusions on a labelled ImageFolder.
    Evaluate(cli::EvaluateArgs),
    /// Score a submission against a solution CSV (no ONNX Runtime needed).
    Score(cli::ScoreArgs),
    /// Print a model's inputs, outputs, opset and metadata (no ONNX Runtime needed).
    Info(cli::InfoArgs),
    /// Quantise a float32 model to int8 (QDQ), calibrated on images run through it.
    Quantize(quantize::QuantizeArgs),
    /// Join the shards of `predict --shard K/N` into one submission (refusing missing, duplicated or mismatched shards).
    Merge(combine::MergeArgs),
    /// Blend the saved logits of earlier runs into one submission, without running any model.
    Blend(combine::BlendArgs),
    /// Serve the models over HTTP: Open Inference Protocol (KServe v2) and /v1/identify, with dynamic batching.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if !matches!(command, Command::Serve(_)) {
        // A closed stdout (`predictor score … | head -1`) ends the process quietly, as it
        // ends Unix tools, instead of a panic in println!. The server keeps Rust's default
        // (SIGPIPE ignored): it writes only to sockets and its log.
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match command {
        Command::Predict(a) => cli::predict(&a),
        Command::Evaluate(a) => cli::evaluate(&a),
        Command::Score(a) => cli::score(&a),
        Command::Info(a) => cli::info(&a),
        Command::Quantize(a) => quantize::quantize(&a),
        Command::Merge(a) => combine::merge(&a),
        Command::Blend(a) => combine::blend(&a),
        Command::Serve(a) => serve::serve(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
