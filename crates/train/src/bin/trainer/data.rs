//! The trainer's command line for the commands that need no libtorch (`synth`, `inspect`,
//! `export`): argument structs (their doc comments are the `--help` text) and what each prints.
use sorbier::cli::spelled;
use std::path::PathBuf;

use anyhow::Result;
use sorbier::data::synth::SynthOptions;
use sorbier::export::ExportOptions;
use sorbier::run::Checkpoint;

/// Generate a small, seeded, long-tailed plant-like dataset in competition layout.
#[derive(Clone, Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder (gets `train/<class>/`, `test/`, `sample_submission.csv`, `solution.csv`).
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed; the same seed and arguments give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of classes (2–16).
    #[arg(long, default_value_t = 6)]
    pub classes: usize,
    /// Multiplies every image count (train 120, 80, 50, 30, 20, 12, …; test 15 per class);
    /// each class keeps at least 2 train images and 1 test image.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Test images per class before scaling.
    #[arg(long, default_value_t = 15)]
    pub test_per_class: usize,
    /// Write into a non-empty OUT: replaces its train/, test/ and the two CSVs.
    #[arg(long)]
    pub force: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}


impl SynthArgs {
    fn options(&self) -> SynthOptions {
        SynthOptions {
            out: self.out.clone(),
            seed: self.seed,
            classes: self.classes,
            scale: self.scale,
            test_per_class: self.test_per_class,
            force: self.force,
            threads: self.threads,
        }
    }
}

/// `trainer synth`.
pub fn synth(args: &SynthArgs) -> Result<()> {
    let s = sorbier::data::synth::generate(&args.options())?;
    let train: usize = s.train_counts.iter().sum();
    let test: usize = s.test_counts.iter().sum();
    println!("wrote {} train and {} test images in {} classes to {} ({:.1} s)", train, test, s.classes.len(), s.out.display(), s.seconds);
    for (name, (tr, te)) in s.classes.iter().zip(s.train_counts.iter().zip(&s.test_counts)) {
        println!("  {name:<12} train {tr:>4}  test {te:>3}");
    }
    println!("  + sample_submission.csv, solution.csv");
    Ok(())
}

/// Show the classes of an ImageFolder tree, their sizes and what was skipped.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Dataset root: `DATA_DIR/<class>/*.jpg` (or a competition folder holding `train/`).
    pub data_dir: PathBuf,
    /// Read the sizes of at most N images (evenly spaced over the classes); 0 skips sizes.
    /// All images by default. Only file headers are read.
    #[arg(long, value_name = "N")]
    pub sizes_sample: Option<usize>,
    /// Print the summary as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write pictures and tables (class sizes, sample grid, image sizes, statistics) here.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Class-size chart on a log scale (for long-tailed data).
    #[arg(long)]
    pub log_scale: bool,
}


/// `trainer inspect`.
pub fn inspect(args: &InspectArgs) -> Result<()> {
    let (ds, summary) = sorbier::data::inspect::inspect_dataset(&args.data_dir, args.sizes_sample)?;
    if let Some(dir) = &args.report {
        let opts = sorbier::report::dataset::DatasetReportOptions { log_scale: args.log_scale, ..Default::default() };
        for p in sorbier::report::dataset::render(&ds, &summary, dir, &opts)? {
            eprintln!("wrote {}", p.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", sorbier::data::inspect::render(&summary));
    }
    Ok(())
}


/// Export a run's checkpoint to ONNX.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Run directory written by `trainer train`.
    pub run_dir: PathBuf,
    /// Which checkpoint of the run to export.
    #[arg(long, value_parser = spelled::<Checkpoint>(), default_value_t = Checkpoint::Best)]
    pub checkpoint: Checkpoint,
    /// Output file [default: models/<run name>.onnx].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Store weights and compute in float16 (input and output stay float32), for GPU inference.
    #[arg(long)]
    pub fp16: bool,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `trainer export`.
pub fn export(args: &ExportArgs) -> Result<()> {
    let options = ExportOptions { run_dir: args.run_dir.clone(), checkpoint: args.checkpoint, output: args.output.clone(), fp16: args.fp16, force: args.force };
    let e = sorbier::export::export(&options)?;
    let m = &e.meta;
    println!(
        "wrote {} ({:.1} MB): {}, {} classes, {}, input N×3×{}×{}, opset {}, from {}",
        e.path.display(),
        e.bytes as f64 / 1e6,
        m.arch,
        m.classes.len(),
        m.precision,
        m.preprocess.crop,
        m.preprocess.crop,
        sorbier::export::OPSET,
        m.source
    );
    Ok(())
}

