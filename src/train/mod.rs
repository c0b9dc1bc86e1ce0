//! Training with libtorch: optimisers, schedules, loss, the epoch loop, checkpoints and resume.
use anyhow::Result;

/// Fine-tune a ResNet on an ImageFolder dataset.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset root: `DATA_DIR/<class>/*.jpg`.
    pub data_dir: Option<std::path::PathBuf>,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    todo!("{args:?}")
}
