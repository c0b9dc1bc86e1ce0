//! The predictor's command line: argument structs (their doc comments are the `--help` text)
//! and what each command prints. Everything else is in the library.
use sorbier::cli::spelled;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sorbier::metrics::{most_confused, per_class_accuracy, Metrics};
use sorbier_predict::engine::ensemble::Average;
use sorbier_predict::engine::runtime::Device;
use sorbier_predict::output::shard::Shard;
use sorbier_predict::engine::tta::Tta;
use sorbier_predict::commands::{evaluate, info, predict, score};
use sorbier_predict::ModelOptions;

/// Models, how to combine them, and where/how to run them (shared by the commands that run
/// models).
/// Where ONNX Runtime comes from and how many threads it and the decoders get (every command
/// that runs a model takes these).
#[derive(Clone, Debug, clap::Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime intra-op threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Decoding/preprocessing threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// ONNX Runtime library (file or folder); else $SORBIER_ORT_LIB, $ORT_DYLIB_PATH, or next to the executable.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// An exported model (.onnx); repeat for an ensemble.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Per-model weights for the average, comma-separated, one per --model [default: equal].
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// Average raw logits or softmax probabilities across models and TTA variants.
    #[arg(long, value_parser = spelled::<Average>(), default_value_t = Average::Logits)]
    pub average: Average,
    /// Test-time augmentation, averaged like ensemble members.
    #[arg(long, value_parser = spelled::<Tta>(), default_value_t = Tta::None)]
    pub tta: Tta,
    /// auto (CUDA if it starts, else CPU), cpu, cuda or cuda:N (an error if CUDA cannot start).
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Images per inference batch (serve: the most images in one dynamic batch).
    #[arg(long, visible_alias = "max-batch", default_value_t = 32)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// No progress bar (serve: no log line per request).
    #[arg(long)]
    pub quiet: bool,
}

impl ModelArgs {
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            models: self.models.clone(),
            weights: self.weights.clone(),
            average: self.average,
            tta: self.tta,
            device: self.device,
            batch_size: self.batch_size,
            threads: self.runtime.threads,
            workers: self.runtime.workers,
            ort_lib: self.runtime.ort_lib.clone(),
            progress: !self.quiet,
        }
    }
}

fn log(msg: &str) {
    eprintln!("{msg}");
}

#[derive(Clone, Debug, clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder of test images (flat).
    #[arg(long)]
    pub images: PathBuf,
    /// CSV whose first column gives the rows and their order [default: <images>/../sample_submission.csv if present, else sorted file names].
    #[arg(long)]
    pub sample_submission: Option<PathBuf>,
    /// Ignore a sample submission next to the images folder and use sorted file names.
    #[arg(long, conflicts_with = "sample_submission")]
    pub no_sample_submission: bool,
    /// Output CSV.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the K best classes and their probabilities (class_1..K, score_1..K).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Save averaged and per-model outputs (safetensors, see the README) to combine later.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    /// Write rows of missing or undecodable images with an empty class and list them in <out>.skipped.csv, instead of failing.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Predict only part K of N of the ordered rows (contiguous; needs --save-logits; join the parts with `predictor merge`).
    ///
    /// `auto`: K/N from RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS (srun), and
    /// `.shard-K-of-N` goes before the extension of --out and --save-logits
    /// (`sub.csv` → `sub.shard-2-of-4.csv`), so ranks started with one command line never
    /// write the same file.
    #[arg(long)]
    pub shard: Option<ShardArg>,
}

/// `--shard K/N`, or `auto` (from the launcher's environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    Auto,
}

impl std::str::FromStr for ShardArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<ShardArg, String> {
        if s.trim() == "auto" {
            Ok(ShardArg::Auto)
        } else {
            s.parse().map(ShardArg::Fixed).map_err(|e| format!("{e}, or auto"))
        }
    }
}

impl PredictArgs {
    /// The library's options, with `--shard auto` resolved from the environment and put into
    /// the output names.
    pub fn options(&self) -> Result<predict::PredictOptions> {
        let (shard, out, save_logits) = match self.shard {
            None => (None, self.out.clone(), self.save_logits.clone()),
            Some(ShardArg::Fixed(s)) => (Some(s), self.out.clone(), self.save_logits.clone()),
            Some(ShardArg::Auto) => {
                let s = Shard::from_launcher(|k| std::env::var(k).ok())?;
                (Some(s), s.tagged(&self.out), self.save_logits.as_deref().map(|p| s.tagged(p)))
            }
        };
        Ok(predict::PredictOptions {
            model: self.model.options(),
            images: self.images.clone(),
            sample_submission: self.sample_submission.clone(),
            no_sample_submission: self.no_sample_submission,
            out,
            top_k: self.top_k,
            save_logits,
            skip_unreadable: self.skip_unreadable,
            shard,
        })
    }
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    let opts = args.options()?;
    let p = predict::predict(&opts, &log)?;
    let skipped = if p.skipped == 0 {
        String::new()
    } else {
        format!("; {} row(s) with an empty class, listed in {}", p.skipped, p.skipped_file.display())
    };
    println!("wrote {} ({} rows, {} classes) at {:.1} images/s{skipped}", opts.out.display(), p.rows, p.classes, p.images_per_s);
    Ok(())
}

#[derive(Clone, Debug, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled ImageFolder (<data>/<class>/<images>); a competition root with train/ is not assumed.
    #[arg(long)]
    pub data: PathBuf,
    /// Write confusion.csv/png, per_class.csv/png, most_confused.csv and metrics.json here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    // Cheap checks first, before loading models.
    if let Some(r) = &args.report {
        std::fs::create_dir_all(r).with_context(|| format!("cannot create report folder {}", r.display()))?;
    }
    let opts = args.model.options();
    let mut ens = opts.open()?;
    for n in &ens.notes {
        log(n);
    }
    log(&ens.summary());
    let eval = evaluate::evaluate(&mut ens, &args.data, opts.tta, &opts.pipeline(), opts.progress)?;

    let line = |name: &str, m: &Metrics| {
        println!("{name:<40} top-1 {:.4}  top-5 {:.4}  macro {:.4}  loss {:.4}  (n={})", m.top1, m.top5, m.macro_acc, m.loss.unwrap_or(f64::NAN), m.n)
    };
    if eval.members.len() > 1 {
        for (p, m) in &eval.members {
            line(p, m);
        }
        line(&format!("ensemble ({} average)", eval.average), &eval.ensemble);
    } else {
        line(&eval.members[0].0, &eval.ensemble);
    }
    println!("per class (accuracy, images):");
    let per = per_class_accuracy(&eval.confusion);
    for (i, name) in eval.classes.iter().enumerate() {
        let total: usize = eval.confusion[i].iter().sum();
        if total > 0 {
            println!("  {name:<24} {:.3}  {total}", per[i].unwrap_or(0.0));
        }
    }
    let confused = most_confused(&eval.confusion, 1);
    if !confused.is_empty() {
        println!("most confused (actual → predicted, images):");
        for x in confused.iter().take(10) {
            println!("  {} → {}  {}", eval.classes[x.actual], eval.classes[x.predicted], x.count);
        }
    }
    if let Some(dir) = &args.report {
        for p in evaluate::write_report(dir, &eval)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

#[derive(Clone, Debug, clap::Args)]
pub struct ScoreArgs {
    /// The submission to score (image_name,class).
    #[arg(long)]
    pub submission: PathBuf,
    /// The ground truth (image_name,class).
    #[arg(long)]
    pub solution: PathBuf,
}

pub fn score(args: &ScoreArgs) -> Result<()> {
    let score = score::score_files(&args.submission, &args.solution)?;
    println!("accuracy {:.4} ({}/{})  macro-average accuracy {:.4} over {} classes", score.accuracy, score.correct, score.n, score.macro_accuracy, score.per_class.len());
    for (class, total, hit) in &score.per_class {
        println!("  {class:<24} {hit:>5}/{total:<5} {:.3}", *hit as f64 / *total as f64);
    }
    Ok(())
}

#[derive(Clone, Debug, clap::Args)]
pub struct InfoArgs {
    /// The .onnx file.
    pub model: PathBuf,
}

pub fn info(args: &InfoArgs) -> Result<()> {
    print!("{}", info::describe_file(&args.model)?);
    Ok(())
}
