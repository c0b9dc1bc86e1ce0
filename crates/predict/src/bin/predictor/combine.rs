//! `predictor merge` and `predictor blend`: the command lines of [`sorbier_predict::commands::merge::merge`]
//! and [`sorbier_predict::commands::blend::blend`], which combine saved logits without running a model.
use sorbier::cli::spelled;
use std::path::PathBuf;

use anyhow::Result;
use sorbier_predict::commands::blend::{self, BlendOptions};
use sorbier_predict::engine::ensemble::Average;
use sorbier_predict::commands::merge::{self, MergeOptions};
use sorbier_predict::output::submission::skipped_path;

/// What merge and blend write.
#[derive(Clone, Debug, clap::Args)]
pub struct OutputArgs {
    /// The submission: for merge in the order of the whole image list (the sample submission's), for blend in the first file's.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the K best classes and their probabilities (class_1..K, score_1..K).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Also write the combined outputs in the --save-logits format (for merge: what the unsharded run writes).
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct MergeArgs {
    /// The saved logits of every shard (`predict --shard K/N --save-logits F`), in any order.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BlendArgs {
    /// Saved logits of earlier runs (`predict --save-logits`, `merge --save-logits`); each file counts as one member.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// One weight per file, comma-separated [default: equal].
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// Average raw logits or softmax probabilities.
    #[arg(long, value_parser = spelled::<Average>(), default_value_t = Average::Logits)]
    pub average: Average,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn skipped_note(n: usize, out: &std::path::Path) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; {n} row(s) with an empty class, listed in {}", skipped_path(out).display())
    }
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let out = &a.output;
    let o = MergeOptions { shards: a.shards.clone(), out: out.out.clone(), top_k: out.top_k, save_logits: out.save_logits.clone() };
    let m = merge::merge(&o)?;
    println!("wrote {} ({} rows, {} classes) from {} shards{}", out.out.display(), m.rows, m.classes, m.shards, skipped_note(m.skipped, &out.out));
    Ok(())
}

pub fn blend(a: &BlendArgs) -> Result<()> {
    let out = &a.output;
    let o = BlendOptions {
        inputs: a.inputs.clone(),
        weights: a.weights.clone(),
        average: a.average,
        out: out.out.clone(),
        top_k: out.top_k,
        save_logits: out.save_logits.clone(),
    };
    let b = blend::blend(&o)?;
    let how = a.average.to_string();
    println!("wrote {} ({} rows, {} classes) blending {} files by {how}{}", out.out.display(), b.rows, b.classes, b.inputs, skipped_note(b.skipped, &out.out));
    Ok(())
}
