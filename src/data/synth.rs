//! `trainer synth`: a small procedural plant-like dataset in competition layout, so the
//! whole toolkit runs anywhere with no download.
use std::path::PathBuf;

use anyhow::Result;

/// Generate a small, seeded, long-tailed plant-like dataset in competition layout.
#[derive(Clone, Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder (gets `train/<class>/`, `test/`, `sample_submission.csv`, `solution.csv`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &SynthArgs) -> Result<()> {
    todo!("{args:?}")
}
