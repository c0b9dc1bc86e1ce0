//! Data-parallel training on c10d, Gloo over loopback, 2 ranks: one step's averaged gradients
//! equal one process's on the concatenated batch; ranks stay bit-identical over several steps
//! (BatchNorm buffers broadcast); a Python `torch.distributed` rank and a sorbier rank
//! allreduce together; `torchrun --no-python` trains a run that `export` and `predictor` use;
//! a rank killed mid-epoch ends its peer with an error naming it, and `--resume` completes.
//!
//! Ranks of the in-process tests are this test binary run again (`ROLE` set) with the launch
//! variables torchrun would set.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sorbier::arch::Arch;
use sorbier_train::dist::{Backend, Collective, Launch};
use sorbier_train::model::Net;
use sorbier_train::optim::{OptimConfig, Optimizer, OptimizerKind};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "SORBIER_DIST_TEST_ROLE";
const OUT: &str = "SORBIER_DIST_TEST_OUT";
const CLASSES: usize = 5;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn launch_env(cmd: &mut Command, rank: usize, world: usize, port: u16) {
    cmd.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_USE_AGENT_STORE");
}

/// This binary's test `name` as rank `rank` of 2.
fn spawn_rank(name: &str, rank: usize, port: u16, out: &Path) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads", "1"]).env(ROLE, "1").env(OUT, out);
    launch_env(&mut cmd, rank, 2, port);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// `trainer ARGS` as rank `rank` of 2, its output piped.
fn trainer_rank(args: &[String], rank: usize, port: u16) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args);
    launch_env(&mut cmd, rank, 2, port);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn wait_ok(children: Vec<Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "a rank failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

fn join() -> Collective {
    let launch = Launch::from_env().unwrap().expect("launch variables");
    Collective::join(Some(&launch), Backend::Gloo, Device::Cpu, Duration::from_secs(30)).unwrap()
}

/// ResNet-18 for 5 classes from a fixed seed, its parameters in name order.
fn model() -> (nn::VarStore, Net, Vec<(String, Tensor)>) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &Arch::Resnet18.spec(CLASSES), 0.0);
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (vs, net, params)
}

/// A fixed batch of 8 images (32 px) and labels; rank r of 2 takes rows 4r..4r+4.
fn batch() -> (Tensor, Tensor) {
    tch::manual_seed(11);
    (Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu)), Tensor::randint(CLASSES as i64, [8], (Kind::Int64, Device::Cpu)))
}

/// Mean cross-entropy gradients, BatchNorm in eval mode (running statistics, so a sample's
/// gradient does not depend on the rest of its batch).
fn gradients(net: &Net, params: &[(String, Tensor)], x: &Tensor, y: &Tensor) -> Vec<Tensor> {
    let loss = net.forward_t(x, false).cross_entropy_for_logits(y);
    let vars: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    Tensor::run_backward(&[loss], &vars, false, false)
}

fn save(path: &Path, names: impl Iterator<Item = String>, tensors: &[Tensor]) {
    let named: Vec<(String, Tensor)> = names.zip(tensors.iter().map(|t| t.shallow_clone())).collect();
    Tensor::write_safetensors(&named, path).unwrap();
}

fn load(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Rank body: one averaged gradient on its half of the batch, then 4 Adam steps in train mode
/// on data of its own, with DDP's buffer broadcast; writes both for the parent to compare.
fn rank_steps() {
    let comm = join();
    let out = PathBuf::from(std::env::var(OUT).unwrap());
    let rank = comm.rank() as i64;
    let (vs, net, params) = model();
    comm.broadcast(&sorbier_train::dist::variables(&vs, |_| true)).unwrap();
    let (x, y) = batch();
    let grads = gradients(&net, &params, &x.narrow(0, 4 * rank, 4), &y.narrow(0, 4 * rank, 4));
    comm.average(&grads).unwrap();
    save(&out.join(format!("grads{rank}.safetensors")), params.iter().map(|(n, _)| n.clone()), &grads);

    let buffers = comm.replicated_buffers(&vs);
    assert!(!buffers.is_empty());
    let mut opt = Optimizer::new(OptimConfig::new(OptimizerKind::Adam), params.iter().map(|(n, t)| (n.clone(), t.shallow_clone(), true)).collect()).unwrap();
    tch::manual_seed(100 + rank);
    for _ in 0..4 {
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(CLASSES as i64, [4], (Kind::Int64, Device::Cpu));
        comm.broadcast(&buffers).unwrap();
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
        let g = opt.gradients(&loss).unwrap();
        comm.average(&g).unwrap();
        opt.step(&g, 1e-3).unwrap();
    }
    // The last forward pass updated each rank's BatchNorm statistics from its own batch; the
    // next step (or validation) starts from rank 0's, as in DDP.
    comm.broadcast(&buffers).unwrap();
    let all = sorbier_train::dist::variables(&vs, |_| true);
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    save(&out.join(format!("final{rank}.safetensors")), names.into_iter(), &all);
    comm.barrier().unwrap();
}

#[test]
fn two_ranks_average_gradients_like_one_process_and_stay_identical() {
    if std::env::var(ROLE).is_ok() {
        return rank_steps();
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let name = "two_ranks_average_gradients_like_one_process_and_stay_identical";
    let ranks = vec![spawn_rank(name, 0, port, dir.path()), spawn_rank(name, 1, port, dir.path())];

    // The same step in one process, on the concatenated batch.
    let (_vs, net, params) = model();
    let (x, y) = batch();
    let want = gradients(&net, &params, &x, &y);
    wait_ok(ranks);

    for rank in 0..2 {
        let got = load(&dir.path().join(format!("grads{rank}.safetensors")));
        assert_eq!(got.len(), want.len());
        let mut worst = 0f64;
        for ((name, g), w) in got.iter().zip(&want) {
            let diff = (g - w).abs().max().double_value(&[]);
            let scale = w.abs().max().double_value(&[]).max(1.0);
            assert!(diff <= 1e-5 * scale, "rank {rank}: gradient of {name} differs by {diff}");
            worst = worst.max(diff);
        }
        assert!(want.iter().any(|w| w.abs().max().double_value(&[]) > 1e-3), "gradients too small to mean anything");
        eprintln!("rank {rank}: largest gradient difference from one process {worst:.2e}");
    }
    let (a, b) = (load(&dir.path().join("final0.safetensors")), load(&dir.path().join("final1.safetensors")));
    let (_vs0, _, start) = model();
    let mut moved = 0;
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the ranks after 4 steps");
        if let Some((_, s)) = start.iter().find(|(n, _)| n == na) {
            moved += usize::from(!ta.equal(s));
        }
    }
    assert!(moved > 10, "the steps changed only {moved} parameters");
    let rm = a.iter().find(|(n, _)| n == "bn1.running_mean").unwrap();
    assert!(rm.1.abs().max().double_value(&[]) > 0.0, "BatchNorm statistics never updated");
}

fn python() -> String {
    std::env::var("SORBIER_PYTHON").ok().or_else(|| option_env!("SORBIER_PYTHON").map(String::from)).unwrap_or_else(|| ".venv/bin/python".into())
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Rank body of the interoperability test: rank 0, hosting the store, with a Python rank 1.
fn rank_interop() {
    let comm = join();
    let t = Tensor::arange(5, (Kind::Float, Device::Cpu));
    comm.sum(std::slice::from_ref(&t)).unwrap();
    let b = Tensor::full([3], 42.0, (Kind::Double, Device::Cpu));
    comm.broadcast(std::slice::from_ref(&b)).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![0.0, 3.0, 6.0, 9.0, 12.0]);
}

#[test]
fn a_python_rank_and_a_sorbier_rank_allreduce_together() {
    if std::env::var(ROLE).is_ok() {
        return rank_interop();
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sorbier_rank = spawn_rank("a_python_rank_and_a_sorbier_rank_allreduce_together", 0, port, dir.path());
    let mut py = Command::new(python());
    py.arg(repo().join("tools/ddp_peer.py")).arg("allreduce");
    launch_env(&mut py, 1, 2, port);
    let py = py.output().unwrap();
    assert!(py.status.success(), "python rank failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v["allreduce"], serde_json::json!([0.0, 3.0, 6.0, 9.0, 12.0]), "{v}");
    assert_eq!(v["broadcast"], serde_json::json!([42.0, 42.0, 42.0]), "{v}");
    wait_ok(vec![sorbier_rank]);
}

fn flowers() -> PathBuf {
    repo().join("../shared/data/flowers")
}

fn trainer_args(out: &Path, epochs: usize, steps: usize) -> Vec<String> {
    let data = flowers().join("train");
    let mut a: Vec<String> = ["train", data.to_str().unwrap(), "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let rest = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "6", "--workers", "1", "--threads", "1", "--seed", "3", "--quiet", "--no-report", "--device", "cpu", "--dist-timeout", "20"];
    a.extend(rest.iter().map(|s| s.to_string()));
    a.extend(["--epochs".to_string(), epochs.to_string(), "--max-steps-per-epoch".into(), steps.to_string()]);
    a
}

fn check(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The workspace's `predictor` (see tests/end_to_end.rs: built when missing).
fn predictor_bin() -> PathBuf {
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let bin = trainer.with_file_name("predictor");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo).args(["build", "--quiet", "-p", "sorbier-predict", "--bin", "predictor"]).status().unwrap();
        assert!(status.success(), "building the predictor failed");
    }
    bin
}

#[test]
fn torchrun_trains_a_run_that_export_and_predictor_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let torchrun = Path::new(&python()).with_file_name("torchrun");
    let out = Command::new(&torchrun)
        .args(["--standalone", "--nproc-per-node", "2", "--no-python", env!("CARGO_BIN_EXE_trainer")])
        .args(trainer_args(&run, 2, 3))
        .output()
        .unwrap();
    check(&out, "torchrun trainer train");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("data-parallel: rank 0 of 2 (Gloo"), "{stdout}");
    assert_eq!(stdout.matches("epoch 2/2").count(), 1, "rank 0 alone prints the summaries:\n{stdout}");

    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["runtime"]["world_size"], 2);
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 3, "{history}");
    // 3 steps × 6 images × 2 ranks per epoch.
    let model = dir.path().join("m.onnx");
    check(&Command::new(env!("CARGO_BIN_EXE_trainer")).args(["export", run.to_str().unwrap(), "-o", model.to_str().unwrap()]).output().unwrap(), "export");
    let sub = dir.path().join("sub.csv");
    let data = flowers();
    let pred = Command::new(predictor_bin())
        .args(["predict", "--model", model.to_str().unwrap(), "--images", data.join("test").to_str().unwrap()])
        .args(["--sample-submission", data.join("sample_submission.csv").to_str().unwrap(), "--out", sub.to_str().unwrap(), "--device", "cpu", "--quiet"])
        .output()
        .unwrap();
    check(&pred, "predictor predict");
    assert_eq!(std::fs::read_to_string(&sub).unwrap().lines().count(), 251);
}

#[test]
fn a_killed_rank_ends_its_peer_with_an_error_naming_it_and_resume_completes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Epochs of 40 steps: long enough to be killed in the middle of the second.
    let args = trainer_args(&run, 3, 40);
    let port = free_port();
    let survivor = trainer_rank(&args, 0, port);
    let mut victim = trainer_rank(&args, 1, port);
    let last = run.join("last.state.json");
    let deadline = Instant::now() + Duration::from_secs(240);
    while !last.exists() {
        assert!(Instant::now() < deadline, "the first epoch never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();
    let out = survivor.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 carried on alone:\n{stderr}");
    assert!(waited < Duration::from_secs(20), "rank 0 took {waited:?} to notice");
    assert!(stderr.contains("rank 0 of 2") && stderr.contains("lost rank 1"), "{stderr}");
    eprintln!("survivor exited {:?} after {waited:?}: {}", out.status.code(), stderr.lines().last().unwrap_or(""));

    let mut resume: Vec<String> = vec!["train".into(), "--resume".into(), run.to_str().unwrap().into(), "--quiet".into(), "--no-report".into(), "--dist-timeout".into(), "20".into()];
    resume.extend(["--epochs".into(), "3".into()]);
    let port = free_port();
    let ranks = vec![trainer_rank(&resume, 0, port), trainer_rank(&resume, 1, port)];
    wait_ok(ranks);
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 4, "{history}");
}

/// SIGINT to one rank in the middle of an epoch stops every rank after the same step: both exit
/// with status 75, rank 0 commits the stop record, and `--resume` on two ranks goes on from the
/// next step and completes the run.
#[test]
fn sigint_to_one_rank_stops_every_rank_after_the_same_step_and_resume_completes() {
    const STEPS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = trainer_args(&run, 2, STEPS);
    let port = free_port();
    let started = Instant::now();
    let writer = trainer_rank(&args, 0, port);
    let signalled = trainer_rank(&args, 1, port);
    while !run.join("last.state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(240), "the first epoch never committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A third of an epoch into epoch 2, to the rank that writes nothing.
    std::thread::sleep(started.elapsed() / 3);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(signalled.id() as i32, libc::SIGINT) };
    let (w, s) = (writer.wait_with_output().unwrap(), signalled.wait_with_output().unwrap());
    let text = |o: &Output| format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.status.code(), Some(75), "the signalled rank:\n{}", text(&s));
    assert_eq!(w.status.code(), Some(75), "rank 0 did not stop with its peer:\n{}", text(&w));
    let stop: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("stopped.state.json")).unwrap()).unwrap();
    let step = stop["progress"]["step"].as_u64().unwrap() as usize;
    assert!((1..STEPS).contains(&step), "stopped at step {step}: not inside epoch 2");
    assert_eq!(stop["state"]["epoch"], 1, "epoch 1 was complete, epoch 2 was not");
    for o in [&w, &s] {
        assert!(text(o).contains(&format!("after step {step} of epoch 2")), "every rank names the same step {step}:\n{}", text(o));
    }

    let resume: Vec<String> = ["train", "--resume", run.to_str().unwrap(), "--quiet", "--no-report", "--dist-timeout", "20"].iter().map(|s| s.to_string()).collect();
    let port = free_port();
    let ranks = vec![trainer_rank(&resume, 0, port), trainer_rank(&resume, 1, port)];
    let outs: Vec<Output> = ranks.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        check(o, "the resumed rank");
    }
    assert!(String::from_utf8_lossy(&outs[0].stdout).contains(&format!("resuming at step {} of epoch 2", step + 1)), "{}", text(&outs[0]));
    assert_eq!(std::fs::read_to_string(run.join("history.csv")).unwrap().lines().count(), 3);
    assert!(!run.join("stopped.state.json").exists(), "the stop record is removed once its epoch is committed");
}

/// `--dist-backend nccl` on a rank that trains on the CPU is refused with a message that says
/// why and what to use, before any process group is made.
#[test]
fn nccl_on_a_cpu_rank_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(trainer_args(&dir.path().join("run"), 1, 1)).args(["--dist-backend", "nccl"]);
    launch_env(&mut cmd, 0, 1, free_port());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let built_with_nccl = sorbier_train::dist::compiled_backends().1;
    let expected = if built_with_nccl { "NCCL reduces CUDA tensors only" } else { "built without NCCL" };
    assert!(stderr.contains("--dist-backend nccl") && stderr.contains(expected), "{stderr}");
    println!("NCCL compiled in: {built_with_nccl}; {}", stderr.lines().last().unwrap_or(""));
}

/// Images that fail to load can leave one rank's batch below the 2 images BatchNorm needs while
/// the other rank's is whole: every rank then skips that step together (their collectives must
/// pair up), each says so, and the run completes.
#[test]
fn a_batch_emptied_by_load_failures_on_one_rank_is_skipped_by_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train");
    let source = flowers().join("train");
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    for (k, class) in classes.iter().enumerate() {
        let to = data.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        let mut photos: Vec<PathBuf> = std::fs::read_dir(class).unwrap().map(|e| e.unwrap().path()).collect();
        photos.sort();
        for p in &photos {
            std::os::unix::fs::symlink(p, to.join(p.file_name().unwrap())).unwrap();
        }
        // A JPEG cut after 1 KiB in three of the classes: it lists, and fails to decode.
        if k < 3 {
            let bytes = std::fs::read(&photos[0]).unwrap();
            std::fs::write(to.join("zz-truncated.jpg"), &bytes[..1024]).unwrap();
        }
    }
    let run = dir.path().join("run");
    let mut args: Vec<String> = ["train", data.to_str().unwrap(), "--out", run.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let rest = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "2", "--workers", "1", "--threads", "1", "--seed", "5"];
    args.extend(rest.iter().map(|s| s.to_string()));
    let rest = ["--quiet", "--no-report", "--device", "cpu", "--dist-timeout", "20", "--val-fraction", "0", "--epochs", "1", "--max-steps-per-epoch", "100"];
    args.extend(rest.iter().map(|s| s.to_string()));
    let port = free_port();
    let ranks: Vec<Child> = (0..2).map(|rank| trainer_rank(&args, rank, port)).collect();
    let outs: Vec<Output> = ranks.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        check(o, "a rank with load failures");
    }
    let stderr: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
    let skipped = |s: &str| s.lines().filter(|l| l.contains("skipped") && l.contains("BatchNorm needs")).map(|l| l.split("warning: ").nth(1).unwrap().split(" skipped").next().unwrap().to_string()).collect::<Vec<_>>();
    let (a, b) = (skipped(&stderr[0]), skipped(&stderr[1]));
    assert!(!a.is_empty(), "no step was skipped: the truncated images never left a batch short\n{}\n{}", stderr[0], stderr[1]);
    assert_eq!(a, b, "the ranks skipped different steps");
    assert!(stderr.iter().any(|s| s.contains("this rank's batch holds")) && stderr.iter().any(|s| s.contains("another rank's batch holds")), "{stderr:?}");
    println!("skipped together: {a:?}");
    assert_eq!(std::fs::read_to_string(run.join("history.csv")).unwrap().lines().count(), 2);
}
