//! `trainer inspect DATA_DIR`: the class table, class-size statistics, image sizes, and what
//! the scan passed over.
use std::path::PathBuf;

use anyhow::Result;

/// Show the classes of an ImageFolder tree, their sizes and what was skipped.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Dataset root: `DATA_DIR/<class>/*.jpg` (or a competition folder holding `train/`).
    pub data_dir: PathBuf,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    todo!("{args:?}")
}
