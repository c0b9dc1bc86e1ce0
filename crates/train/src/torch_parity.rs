//! Parity of the schedules, clipping, optimisers and loss with PyTorch: `tools/torch_schedules.py`
//! (run with the venv's Python at test time) prints PyTorch's values for fixed inputs.
//! Tolerances: LRs 1e-9 relative (f64 both sides; PyTorch's chained forms accumulate rounding);
//! float32 tensors 1e-6 absolute (same formulas, op order may differ by an ulp).
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use tch::{Kind, Tensor};

use super::loss;
use super::optim::{self, OptimConfig, OptimizerKind, Optimizer};
use super::schedule::{warmup_cosine, LrSchedule, ScheduleConfig, ScheduleKind};

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let py = std::env::var("SORBIER_PYTHON").unwrap_or_else(|_| env!("SORBIER_PYTHON").to_string());
        let py = if PathBuf::from(&py).is_absolute() { PathBuf::from(py) } else { root.join(py) };
        let out = std::process::Command::new(&py).arg(root.join("tools/torch_schedules.py")).output().expect("run tools/torch_schedules.py");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(a: &[f64], b: &[f64], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * y.abs().max(1e-12), "{what}[{i}]: {x} vs torch {y}");
    }
}

fn cfg(kind: ScheduleKind, base: f64) -> ScheduleConfig {
    ScheduleConfig { kind, base_lr: base, step_size: 1, gamma: 1.0, plateau_patience: 0, plateau_factor: 1.0, warmup_epochs: 0.0, warmup_start_factor: 1.0, min_lr: 0.0 }
}

#[test]
fn step_lr_matches_torch() {
    let r = &reference()["step_lr"];
    let mut c = cfg(ScheduleKind::Step, r["base"].as_f64().unwrap());
    c.step_size = r["step_size"].as_u64().unwrap() as usize;
    c.gamma = r["gamma"].as_f64().unwrap();
    let s = LrSchedule::new(c, 10, 1, true);
    let ours: Vec<f64> = (0..=r["epochs"].as_u64().unwrap() as usize).map(|e| s.lr(e, 0)).collect();
    assert_close(&ours, &f64s(&r["lrs"]), 1e-9, "StepLR");
}

#[test]
fn plateau_matches_torch() {
    let cases = reference()["plateau"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let mut c = cfg(ScheduleKind::Plateau, case["base"].as_f64().unwrap());
        c.plateau_patience = case["patience"].as_u64().unwrap() as usize;
        c.plateau_factor = case["factor"].as_f64().unwrap();
        c.min_lr = case["min_lr"].as_f64().unwrap();
        let maximize = case["mode"] == "max";
        let mut s = LrSchedule::new(c, 20, 1, maximize);
        let mut ours = vec![s.lr(0, 0)];
        for m in f64s(&case["metrics"]) {
            s.end_epoch(m);
            ours.push(s.lr(0, 0));
        }
        assert_close(&ours, &f64s(&case["lrs"]), 1e-9, &format!("ReduceLROnPlateau {case}"));
    }
}

#[test]
fn warmup_cosine_matches_torch() {
    let r = &reference()["warmup_cosine"];
    let g = |k: &str| r[k].as_f64().unwrap();
    let total = g("total") as usize;
    let ours: Vec<f64> = (0..total).map(|t| warmup_cosine(g("base"), g("start_factor"), g("warmup"), g("total"), g("min_lr"), t as f64)).collect();
    assert_close(&ours, &f64s(&r["lrs_sequential"]), 1e-9, "SequentialLR(LinearLR, CosineAnnealingLR)");
    assert_close(&ours, &f64s(&r["lrs_lambda"]), 1e-12, "LambdaLR");
    // Through the schedule: warmup epochs × steps per epoch = the script's warmup steps.
    let mut c = cfg(ScheduleKind::Cosine, g("base"));
    c.warmup_epochs = 3.0;
    c.warmup_start_factor = g("start_factor");
    c.min_lr = g("min_lr");
    let s = LrSchedule::new(c, 20, 2, true);
    let via: Vec<f64> = (0..total).map(|t| s.lr(t / 2, t % 2)).collect();
    assert_close(&via, &ours, 1e-15, "LrSchedule cosine");
}

fn tensor(values: &Value, shape: &Value) -> Tensor {
    let v: Vec<f32> = f64s(values).into_iter().map(|x| x as f32).collect();
    let shape: Vec<i64> = shape.as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
    Tensor::from_slice(&v).view(shape.as_slice())
}

fn flat(t: &Tensor) -> Vec<f64> {
    Vec::<f32>::try_from(t.detach().contiguous().view([-1])).unwrap().into_iter().map(f64::from).collect()
}

fn assert_abs(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs torch {y}");
    }
}

/// Gradients from the fixture.
fn with_grads(shapes: &Value, grads: &[Value]) -> Vec<Tensor> {
    shapes.as_array().unwrap().iter().zip(grads).map(|(shape, g)| tensor(g, shape)).collect()
}

#[test]
fn clipping_matches_torch() {
    let r = &reference()["clip"];
    let grads = r["grads"].as_array().unwrap();
    for key in ["norm_small", "norm_large"] {
        let ps = with_grads(&r["shapes"], grads);
        let total = optim::clip_grad_norm(&ps, r[key]["max_norm"].as_f64().unwrap()).unwrap();
        let want = r[key]["total_norm"].as_f64().unwrap();
        assert!((total - want).abs() < 1e-5, "{key}: total norm {total} vs {want}");
        for (i, g) in ps.iter().enumerate() {
            assert_abs(&flat(g), &f64s(&r[key]["clipped"][i]), 1e-6, key);
        }
    }
    let ps = with_grads(&r["shapes"], grads);
    optim::clip_grad_value(&ps, r["value"]["clip"].as_f64().unwrap()).unwrap();
    for (i, g) in ps.iter().enumerate() {
        assert_abs(&flat(g), &f64s(&r["value"]["clipped"][i]), 0.0, "clip_grad_value_");
    }
}

#[test]
fn optimizers_match_torch_over_three_steps() {
    for case in reference()["optim"].as_array().unwrap() {
        let kind = match case["name"].as_str().unwrap() {
            "adam" => OptimizerKind::Adam,
            "adamw" => OptimizerKind::Adamw,
            _ => OptimizerKind::Sgd,
        };
        for (fused, after) in [(false, "after"), (true, "after_fused")] {
            let mut c = OptimConfig::new(kind);
            c.weight_decay = case["weight_decay"].as_f64().unwrap();
            c.momentum = case["momentum"].as_f64().unwrap();
            c.nesterov = case["nesterov"].as_bool().unwrap();
            c.fused = fused;
            let lr = case["lr"].as_f64().unwrap();
            let shapes = case["shapes"].as_array().unwrap();
            let vars: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| tensor(&case["init"][i], s).set_requires_grad(true)).collect();
            // Parameter 0 takes decay, parameter 1 does not (as the script's two groups).
            let params = vars.iter().enumerate().map(|(i, v)| (format!("p{i}"), v.shallow_clone(), i == 0)).collect();
            let mut opt = Optimizer::new(c, params).unwrap();
            for (step, grads) in case["grads"].as_array().unwrap().iter().enumerate() {
                let loss = vars.iter().enumerate().map(|(i, v)| (v * tensor(&grads[i], &shapes[i])).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
                let g = opt.gradients(&loss).unwrap();
                opt.step(&g, lr).unwrap();
                for (i, v) in vars.iter().enumerate() {
                    assert_abs(&flat(v), &f64s(&case[after][step][i]), 1e-6, &format!("fused {fused} {} step {step} param {i}", case["name"]));
                }
            }
        }
    }
}

#[test]
fn optimizer_state_round_trips() {
    let case = &reference()["optim"][0];
    let shapes = case["shapes"].as_array().unwrap();
    let make = || -> (Vec<Tensor>, Optimizer) {
        let vars: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| tensor(&case["init"][i], s).set_requires_grad(true)).collect();
        let params = vars.iter().enumerate().map(|(i, v)| (format!("p{i}"), v.shallow_clone(), true)).collect();
        (vars, Optimizer::new(OptimConfig::new(OptimizerKind::Adam), params).unwrap())
    };
    let step = |vars: &[Tensor], opt: &mut Optimizer, k: usize| {
        let g = &case["grads"][k];
        let loss = vars.iter().enumerate().map(|(i, v)| (v * tensor(&g[i], &shapes[i])).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
        let grads = opt.gradients(&loss).unwrap();
        opt.step(&grads, 0.01).unwrap();
    };
    let (va, mut a) = make();
    step(&va, &mut a, 0);
    let (vb, mut b) = make();
    tch::no_grad(|| {
        for (x, y) in vb.iter().zip(&va) {
            x.shallow_clone().copy_(y);
        }
    });
    b.load_state(a.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect(), &a.steps()).unwrap();
    step(&va, &mut a, 1);
    step(&vb, &mut b, 1);
    for (x, y) in va.iter().zip(&vb) {
        assert!(x.equal(y), "resumed optimiser diverged");
    }
    let (_, mut c) = make();
    assert!(c.load_state(vec![("exp_avg/nope".into(), Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)))], &Default::default()).is_err());
}

#[test]
fn loss_matches_torch_cross_entropy() {
    let r = &reference()["loss"];
    let c = r["classes"].as_i64().unwrap();
    let logits = Tensor::from_slice(&f64s(&r["logits"]).into_iter().map(|x| x as f32).collect::<Vec<_>>()).view([-1, c]);
    let targets = Tensor::from_slice(&r["targets"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>());
    let weight = Tensor::from_slice(&f64s(&r["weight"]).into_iter().map(|x| x as f32).collect::<Vec<_>>());
    for case in r["cases"].as_array().unwrap() {
        let w = case["weighted"].as_bool().unwrap().then_some(&weight);
        let got = loss::cross_entropy(&logits, &targets, w, case["label_smoothing"].as_f64().unwrap()).double_value(&[]);
        let want = case["loss"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{case}: {got} vs {want}");
    }
}

#[test]
fn loss_scaling_matches_torch_grad_scaler() {
    let r = &reference()["grad_scaler"];
    let mut sc = super::amp::LossScaler { growth_interval: r["growth_interval"].as_u64().unwrap() as u32, ..Default::default() };
    for (step, (inf, want)) in r["found_inf"].as_array().unwrap().iter().zip(r["after"].as_array().unwrap()).enumerate() {
        sc.update(inf.as_u64().unwrap() == 1);
        assert_eq!((sc.scale, sc.growth_tracker as u64), (want[0].as_f64().unwrap(), want[1].as_u64().unwrap()), "step {step}");
    }
}
