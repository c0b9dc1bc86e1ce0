//! End-to-end tests of `trainer train` on the real flowers photos at a tiny resolution:
//! the loss falls, the run directory is complete and consistent, `--resume` (also after a
//! `kill -9` inside an epoch) reproduces an uninterrupted run, and bad requests are clear errors.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sorbier::data::split::{self, SplitSpec};
use sorbier::data::Dataset;

use sorbier::run::{CheckpointInfo, RunConfig};
use sorbier_train::files::{read_history, HistoryRow};
use sorbier_train::TrainSettings;

fn flowers() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/data/flowers")
}

/// An ImageFolder of symbolic links to the first `per_class` photos of each flowers class.
fn subset(dir: &Path, per_class: usize) -> PathBuf {
    let root = dir.join("subset");
    for class in std::fs::read_dir(flowers().join("train")).unwrap().flatten() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(class.path()).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        let to = root.join(class.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for f in files.iter().take(per_class) {
            std::os::unix::fs::symlink(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    root
}

/// A mirror of flowers/train (symbolic links) in which one validation photo is a named pipe
/// that a thread of the test serves each time the trainer opens it. A validation photo is read
/// only by the validation pass, which starts after the epoch's last training step and ends
/// before the epoch is committed: while the pipe holds that read back, the trainer is provably
/// inside the epoch, with all its steps taken and none of them saved.
struct PipedPhoto {
    root: PathBuf,
    fifo: PathBuf,
    /// The next read that starts while this file exists is held back (once).
    hold_after: Arc<Mutex<Option<PathBuf>>>,
    held: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl PipedPhoto {
    /// The split of `base_args`' recipe (`--seed 3`, the default 20 % holdout).
    const SPLIT: SplitSpec = SplitSpec::Holdout { val_fraction: 0.2, seed: 3 };

    fn new(dir: &Path) -> PipedPhoto {
        let root = subset(dir, usize::MAX);
        let ds = Dataset::scan(&root).unwrap();
        let split = split::split(&ds.labels(), ds.classes.len(), &Self::SPLIT).unwrap();
        let fifo = ds.samples[split.val[0]].path.clone();
        let photo = std::fs::read(&fifo).unwrap();
        std::fs::remove_file(&fifo).unwrap();
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo failed");
        let (hold_after, stop) = (Arc::new(Mutex::new(None::<PathBuf>)), Arc::new(AtomicBool::new(false)));
        let ((held_tx, held), (release, release_rx)) = (mpsc::channel(), mpsc::channel());
        let (pipe, hold, stopped) = (fifo.clone(), hold_after.clone(), stop.clone());
        let server = std::thread::spawn(move || loop {
            // Opening the write end waits for a reader.
            let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&pipe) else { return };
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            if hold.lock().unwrap().take_if(|marker| marker.exists()).is_some() {
                let _ = held_tx.send(());
                let _ = release_rx.recv();
                continue; // the reader was killed: close without writing
            }
            let _ = w.write_all(&photo);
        });
        PipedPhoto { root, fifo, hold_after, held, release, stop, server: Some(server) }
    }

    /// Runs `args` (a 2-epoch or longer run of `run` on this data), holds back epoch 2's read
    /// of the piped validation photo and kills the trainer with SIGKILL there. Checks that the
    /// run is then committed up to epoch 1 only: epoch 2's training steps were taken and lost.
    fn kill_in_epoch_2(&self, run: &Path, args: &[String]) {
        // Epoch 1's validation reads the photo before last.json exists; epoch 2's after.
        *self.hold_after.lock().unwrap() = Some(run.join("last.json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let mut waited = 0;
        while self.held.recv_timeout(Duration::from_millis(100)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "the trainer exited before epoch 2's validation");
            waited += 1;
            assert!(waited < 6000, "epoch 2's validation did not start within 10 minutes");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        self.release.send(()).unwrap();
        assert_eq!(CheckpointInfo::load(&run.join("last.json")).unwrap().epoch, 1, "killed inside epoch 2");
        assert_eq!(read_history(&run.join("history.csv")).unwrap().len(), 1);
        assert_eq!(RunConfig::load(run).unwrap().split, Self::SPLIT, "the piped photo is a validation photo");
    }
}

impl Drop for PipedPhoto {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Opening the read end lets the server's waiting open return, and it sees `stop`.
        let _ = std::fs::File::open(&self.fifo);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

/// A small, fast, deterministic recipe: ResNet-18, 32 px, 4 steps of 12 images per epoch.
fn base_args(out: &Path, epochs: usize) -> Vec<String> {
    args_for(&flowers(), out, epochs)
}

fn args_for(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let mut a: Vec<String> = ["train", data.to_str().unwrap(), "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let rest = [
        "--arch", "resnet18", "--image-size", "32", "--batch-size", "12", "--max-steps-per-epoch", "4", "--workers", "2",
        "--threads", "1", "--seed", "3", "--dropout", "0.2", "--quiet", "--epochs",
    ];
    a.extend(rest.iter().map(|s| s.to_string()));
    a.push(epochs.to_string());
    a
}

fn trainer(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("run trainer")
}

fn ok(args: &[String]) -> Output {
    let out = trainer(args);
    assert!(out.status.success(), "trainer {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// History rows without the wall-clock columns.
fn results(rows: &[HistoryRow]) -> Vec<[f64; 8]> {
    rows.iter().map(|r| [r.epoch as f64, r.lr, r.train_loss, r.train_acc, r.val_loss, r.val_top1, r.val_top5, r.val_macro_acc]).collect()
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        let diff = (xa.to_kind(tch::Kind::Double) - xb.to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{na} differs by {diff} between {} and {}", a.display(), b.display());
    }
}

#[test]
fn training_lowers_the_loss_and_writes_a_complete_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // The same 40 images (8 per class) every epoch, no augmentation: the loss must fall as
    // the net fits them.
    let data = subset(dir.path(), 10);
    let mut args = args_for(&data, &run, 5);
    args.extend(["--sampling", "shuffle", "--no-random-resized-crop", "--no-hflip", "--no-vflip", "--schedule", "none"].iter().map(|s| s.to_string()));
    let out = ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("| train loss").count(), 5, "{stdout}");

    for f in ["config.json", "history.csv", "best.safetensors", "best.json", "best_confusion.csv", "best_per_class.csv", "last.safetensors", "last.json", "last.state.safetensors", "last.state.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().contains("next") || n.to_string_lossy().contains("tmp") || n == "commit.json").collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The report pictures are redrawn after each epoch.
    assert!(run.join("curves.png").is_file());

    let cfg = RunConfig::load(&run).unwrap();
    assert_eq!(cfg.classes.len(), 5);
    assert_eq!(cfg.arch, sorbier::arch::Arch::Resnet18);
    assert_eq!((cfg.preprocess.crop, cfg.preprocess.resize), (32, 37));
    assert!(!cfg.augment.random_resized_crop && !cfg.augment.hflip);
    let s = TrainSettings::from_config(&cfg).unwrap();
    assert_eq!((s.epochs, s.batch_size, s.max_steps_per_epoch), (5, 12, Some(4)));
    assert_eq!(serde_json::to_value(&s).unwrap(), cfg.train, "settings round-trip");

    let h = read_history(&run.join("history.csv")).unwrap();
    assert_eq!(h.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(h[4].train_loss < 0.8 * h[0].train_loss, "training loss did not fall: {:?}", h.iter().map(|r| r.train_loss).collect::<Vec<_>>());

    // best.json names the best epoch by top-1, and its confusion matrix agrees with it.
    let best = CheckpointInfo::load(&run.join("best.json")).unwrap();
    let top = h.iter().map(|r| r.val_top1).fold(f64::MIN, f64::max);
    assert_eq!(best.metrics["top1"], top);
    assert_eq!(h[best.epoch - 1].val_top1, top);
    let cm = std::fs::read_to_string(run.join("best_confusion.csv")).unwrap();
    let rows: Vec<Vec<String>> = cm.lines().map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows[0][0], "true\\pred");
    assert_eq!(&rows[0][1..], cfg.classes.as_slice());
    let (mut diag, mut total) = (0usize, 0usize);
    for (i, r) in rows[1..].iter().enumerate() {
        let counts: Vec<usize> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
        diag += counts[i];
        total += counts.iter().sum::<usize>();
    }
    assert!((diag as f64 / total as f64 - top).abs() < 1e-12);
    assert_eq!(CheckpointInfo::load(&run.join("last.json")).unwrap().epoch, 5);

    // An existing run is never overwritten.
    let again = trainer(&base_args(&run, 1));
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--resume") && err.contains("not empty"), "{err}");
}

#[test]
fn resume_reproduces_an_uninterrupted_run_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = PipedPhoto::new(dir.path());
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    let uninterrupted = ok(&args_for(&data.root, &a, 3));
    assert!(String::from_utf8_lossy(&uninterrupted.stdout).contains("epoch 3/3"));

    // Stopped cleanly after 2 epochs, then resumed to 3.
    ok(&args_for(&data.root, &b, 2));
    let resume = |run: &Path| {
        let args: Vec<String> = ["train", "--resume", run.to_str().unwrap(), "--epochs", "3", "--quiet"].iter().map(|s| s.to_string()).collect();
        ok(&args)
    };
    let out = resume(&b);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resuming after epoch 2") && stdout.contains("epoch 3/3") && !stdout.contains("epoch 1/3"), "{stdout}");
    let ha = read_history(&a.join("history.csv")).unwrap();
    let hb = read_history(&b.join("history.csv")).unwrap();
    assert_eq!(results(&hb), results(&ha));
    assert_same_weights(&a.join("last.safetensors"), &b.join("last.safetensors"));
    assert_eq!(RunConfig::load(&b).unwrap().train["epochs"], 3);

    // Killed with SIGKILL inside epoch 2 (its steps taken, not committed), then resumed: epoch 2
    // is trained again from epoch 1's checkpoint and the run ends as the uninterrupted one.
    data.kill_in_epoch_2(&c, &args_for(&data.root, &c, 3));
    let out = resume(&c);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resuming after epoch 1") && stdout.contains("epoch 2/3"), "{stdout}");
    let hc = read_history(&c.join("history.csv")).unwrap();
    assert_eq!(results(&hc), results(&ha));
    assert_same_weights(&a.join("last.safetensors"), &c.join("last.safetensors"));
    assert_same_weights(&a.join("best.safetensors"), &c.join("best.safetensors"));

    // Resuming a finished run trains nothing more.
    let out = resume(&c);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already completed 3 of 3"));
    assert_eq!(read_history(&c.join("history.csv")).unwrap().len(), 3);
}

/// `--channels-last` is recorded, keeps checkpoints in the standard layout, and resumes after a
/// `kill -9` inside an epoch to the same result. The layout check: in feature-extraction mode the backbone never changes, so
/// every backbone tensor a channels-last run saves must equal, bit for bit, the one a default
/// run saves from the same seed (a layout mix-up would scramble them). Whole trajectories are
/// not compared: Adam's first steps turn the convolutions' last-bit differences between layouts
/// into lr-sized ones (the gradients themselves agree: see `memory_format`'s unit test).
#[test]
fn channels_last_is_recorded_keeps_the_standard_layout_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, epochs: usize, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = base_args(&out, epochs);
        a.extend(extra.iter().map(|s| s.to_string()));
        (out.clone(), ok(&a))
    };
    let (nchw, _) = run("nchw", 1, &["--mode", "feature-extract"]);
    let (nhwc, out) = run("nhwc", 1, &["--mode", "feature-extract", "--channels-last"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("channels-last"), "the device line says so");
    assert_eq!(RunConfig::load(&nhwc).unwrap().train["channels_last"], true);
    assert_eq!(RunConfig::load(&nchw).unwrap().train["channels_last"], false);
    let (ta, tb) = (tensors(&nchw.join("last.safetensors")), tensors(&nhwc.join("last.safetensors")));
    let mut compared = 0;
    for ((name, a), (_, b)) in ta.iter().zip(&tb).filter(|((n, _), _)| !n.starts_with("fc.")) {
        assert!(a.equal(b), "{name} differs: the channels-last run saved it in another layout");
        compared += (a.dim() == 4) as usize;
    }
    assert_eq!(compared, 20, "ResNet-18's convolution weights");

    let data = PipedPhoto::new(dir.path());
    let piped = |out: &Path| {
        let mut a = args_for(&data.root, out, 2);
        a.push("--channels-last".into());
        a
    };
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    ok(&piped(&straight));
    data.kill_in_epoch_2(&resumed, &piped(&resumed));
    let out = ok(&["train", "--resume", resumed.to_str().unwrap(), "--epochs", "2", "--quiet"].iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming after epoch 1"));
    let history = |run: &Path| results(&read_history(&run.join("history.csv")).unwrap());
    assert_eq!(history(&resumed), history(&straight));
    assert_same_weights(&straight.join("last.safetensors"), &resumed.join("last.safetensors"));
}

/// `--amp --amp-dtype bf16` runs autocast on the CPU (no loss scaling) and trains; fp16
/// autocast needs CUDA, so `--amp` alone on a CPU says so on stderr and trains in fp32.
#[test]
fn bf16_mixed_precision_trains_on_cpu_and_fp16_falls_back_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (bf16, fp16) = (dir.path().join("bf16"), dir.path().join("fp16"));
    let mut a = base_args(&bf16, 2);
    a.extend(["--amp", "--amp-dtype", "bf16", "--device", "cpu", "--lr", "3e-3"].map(String::from));
    let out = ok(&a);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(bf16 autocast)"), "{}", String::from_utf8_lossy(&out.stdout));
    let cfg = RunConfig::load(&bf16).unwrap();
    assert_eq!((cfg.train["amp"].clone(), cfg.train["amp_dtype"].clone()), (true.into(), "bf16".into()));
    let h = read_history(&bf16.join("history.csv")).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|r| r.train_loss.is_finite() && r.val_loss.is_finite()), "{:?}", results(&h));
    // Weights stay float32 (autocast casts per op) and load like any other run's.
    assert!(tensors(&bf16.join("best.safetensors")).iter().all(|(_, t)| t.kind() != tch::Kind::BFloat16));

    let mut a = base_args(&fp16, 1);
    a.extend(["--amp", "--device", "cpu"].map(String::from));
    let out = ok(&a);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fp16 mixed precision (--amp) needs CUDA; training in fp32"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("autocast"));
}

/// Equal, counting NaN as equal to NaN (the validation columns of a run without validation).
fn same_results(a: &[HistoryRow], b: &[HistoryRow]) -> bool {
    let (ra, rb) = (results(a), results(b));
    ra.len() == rb.len() && ra.iter().flatten().zip(rb.iter().flatten()).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

#[test]
fn val_fraction_zero_trains_on_every_image_and_keeps_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = subset(dir.path(), 5);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let with_all = |run: &Path, epochs: usize| {
        let mut args = args_for(&data, run, epochs);
        args.extend(["--val-fraction", "0", "--sampling", "shuffle", "--best-metric", "macro-acc"].iter().map(|s| s.to_string()));
        args
    };
    let out = ok(&with_all(&a, 3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("25 training images, no validation split"), "{stdout}");
    assert_eq!(stdout.matches("| train loss").count(), 3, "{stdout}");
    assert!(!stdout.contains("val loss") && !stdout.contains("*best*"), "{stdout}");
    assert!(stdout.contains("best.safetensors = last epoch"), "{stdout}");

    let cfg = RunConfig::load(&a).unwrap();
    assert!(!cfg.split.has_validation());
    for f in ["config.json", "history.csv", "best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.safetensors", "last.state.json", "curves.png", "report.html"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    for f in ["best_confusion.csv", "best_per_class.csv", "confusion.png", "commit.json"] {
        assert!(!a.join(f).exists(), "{f} should not exist without validation");
    }

    // Every image trains: 25 images, shuffled, batches of 12 with the last one dropped.
    let h = read_history(&a.join("history.csv")).unwrap();
    assert_eq!(h.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3]);
    for r in &h {
        assert!(r.val_loss.is_nan() && r.val_top1.is_nan() && r.val_top5.is_nan() && r.val_macro_acc.is_nan(), "{r:?}");
        assert!(r.train_loss.is_finite() && (0.0..=1.0).contains(&r.train_acc), "{r:?}");
    }

    // best = last: same weights, same epoch, training numbers only (valid JSON, no NaN).
    assert_same_weights(&a.join("best.safetensors"), &a.join("last.safetensors"));
    let best = CheckpointInfo::load(&a.join("best.json")).unwrap();
    assert_eq!(best, CheckpointInfo::load(&a.join("last.json")).unwrap());
    assert_eq!(best.epoch, 3);
    assert_eq!(best.metrics.keys().collect::<Vec<_>>(), ["train_acc", "train_loss"]);
    assert!((best.metrics["train_loss"] - h[2].train_loss).abs() < 1e-12);

    // The report draws from a history with empty validation columns.
    let drawn = sorbier::report::training::render_run(&a).unwrap();
    let names: Vec<String> = drawn.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["curves.png", "report.html"]);
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert_eq!(html.matches("<tr><td>").count(), 3, "one history row per epoch:\n{html}");

    // The run exports, with the training numbers and the epoch on the model card.
    let model = sorbier::export::export_run(&a, sorbier::run::Checkpoint::Best, false).unwrap();
    let meta = sorbier::export::model_meta(&model).unwrap();
    assert_eq!(meta.metrics["epoch"], 3.0);
    assert!((meta.metrics["train_loss"] - h[2].train_loss).abs() < 1e-12);

    // Two epochs, then resumed to three: the same run as the uninterrupted one.
    ok(&with_all(&b, 2));
    let resume: Vec<String> = ["train", "--resume", b.to_str().unwrap(), "--epochs", "3", "--quiet"].iter().map(|s| s.to_string()).collect();
    let out = ok(&resume);
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming after epoch 2"));
    let hb = read_history(&b.join("history.csv")).unwrap();
    assert!(same_results(&hb, &h), "{hb:?}\n{h:?}");
    assert_same_weights(&a.join("last.safetensors"), &b.join("last.safetensors"));
    assert_same_weights(&b.join("best.safetensors"), &b.join("last.safetensors"));

    // No validation metric can drive a plateau schedule.
    let mut args = with_all(&dir.path().join("plateau"), 1);
    args.extend(["--schedule".to_string(), "plateau".to_string()]);
    let out = trainer(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plateau"));
    assert!(!dir.path().join("plateau").exists(), "a refused run leaves no directory");
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    if !tch::Cuda::is_available() {
        let mut args = base_args(&dir.path().join("cuda"), 1);
        args.extend(["--device".to_string(), "cuda".to_string()]);
        let out = trainer(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    }
    let out = trainer(&["train".into(), "--resume".into(), dir.path().join("nothing").to_str().unwrap().into()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

/// `args` with `--max-steps-per-epoch` set to `steps`.
fn with_steps(mut args: Vec<String>, steps: usize) -> Vec<String> {
    let i = args.iter().position(|a| a == "--max-steps-per-epoch").unwrap();
    args[i + 1] = steps.to_string();
    args
}

#[test]
fn sigint_mid_epoch_commits_the_step_exits_75_and_resume_matches_an_uninterrupted_run() {
    const STEPS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    ok(&with_steps(base_args(&reference, 2), STEPS));

    // Epoch 1 commits, then SIGINT lands in epoch 2: a third of an epoch after last.json appears
    // (retried with a shorter wait if it landed after the epoch's last step).
    let mut delay = None;
    for attempt in 0..4 {
        let run = dir.path().join(format!("run{attempt}"));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer")).args(with_steps(base_args(&run, 2), STEPS)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        while !run.join("last.json").exists() {
            assert!(started.elapsed() < Duration::from_secs(300), "epoch 1 never committed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let wait = *delay.get_or_insert(started.elapsed() / 3);
        std::thread::sleep(wait);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        if status.success() {
            delay = Some(wait / 3); // the whole run finished first: stop sooner
            continue;
        }
        assert_eq!(status.code(), Some(75), "{stderr}");
        assert!(stderr.contains("stopped by SIGINT after step") && stderr.contains(&format!("trainer train --resume {}", run.display())), "{stderr}");
        let stop: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("stopped.state.json")).unwrap()).unwrap();
        let step = stop["progress"]["step"].as_u64().unwrap() as usize;
        assert!((1..STEPS).contains(&step), "stopped at step {step}: not inside the epoch");
        assert_eq!(stop["state"]["epoch"], 1, "epoch 1 was complete, epoch 2 was not");
        // The last completed epoch is untouched, and the history has its one row.
        assert_eq!(read_history(&run.join("history.csv")).unwrap().len(), 1);

        let out = ok(&["train".to_string(), "--resume".to_string(), run.to_str().unwrap().to_string(), "--quiet".to_string()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("resuming at step {} of epoch 2", step + 1)), "{}", String::from_utf8_lossy(&out.stdout));
        for (a, b) in tensors(&run.join("last.safetensors")).iter().zip(tensors(&reference.join("last.safetensors"))) {
            assert_eq!(a.0, b.0);
            assert!(a.1.equal(&b.1), "{} differs from the uninterrupted run", a.0);
        }
        let (h, r) = (read_history(&run.join("history.csv")).unwrap(), read_history(&reference.join("history.csv")).unwrap());
        assert_eq!(results(&h), results(&r), "the resumed epoch reports what the uninterrupted one did");
        assert!(!run.join("stopped.state.json").exists(), "the stop record is removed once its epoch is committed");
        return;
    }
    panic!("SIGINT never landed inside epoch 2");
}
