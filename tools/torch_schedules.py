#!/usr/bin/env python3
"""Reference values from PyTorch for sorbier's training unit tests (crates/train/src/*).

Prints one JSON object to stdout: LR sequences of StepLR, ReduceLROnPlateau (on a fixed metric
sequence, modes min and max) and LinearLR→CosineAnnealingLR via SequentialLR (plus the same via
LambdaLR with the closed form); clip_grad_norm_/clip_grad_value_ on fixed tensors; two steps of
Adam, AdamW and SGD (momentum, Nesterov) on fixed tensors with a decay and a no-decay parameter
group; cross_entropy with class weights and label smoothing.

All inputs are exactly representable in float32 (small dyadic fractions), so Rust can rebuild
them bit for bit without sharing an RNG. Deterministic; no arguments.
"""
import json
import math
import warnings

import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def vals(n, a, b, m, scale):
    """n dyadic values ((a·i + b) mod m − m//2) / scale, exactly representable in float32."""
    return [((a * i + b) % m - m // 2) / scale for i in range(n)]


def lrs_of(sched_factory, base, steps, metrics=None):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = sched_factory(opt)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
    out.append(opt.param_groups[0]["lr"])
    return out


def step_lr():
    return {"base": 0.1, "step_size": 3, "gamma": 0.5, "epochs": 10,
            "lrs": lrs_of(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), 0.1, 10)}


def plateau():
    out = []
    loss = [1.0, 0.9, 0.95, 0.9, 0.8999, 0.91, 0.7, 0.71, 0.72, 0.73, 0.7, 0.69995, 0.6, 0.6, 0.6, 0.6]
    acc = [0.2, 0.3, 0.3, 0.30002, 0.29, 0.5, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    for mode, metrics in (("min", loss), ("max", acc)):
        for patience, factor, min_lr in ((2, 0.5, 0.0), (0, 0.1, 1e-3)):
            lrs = lrs_of(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
                o, mode=mode, factor=factor, patience=patience, threshold=1e-4,
                threshold_mode="rel", cooldown=0, min_lr=min_lr), 0.1, len(metrics), metrics)
            out.append({"mode": mode, "patience": patience, "factor": factor, "min_lr": min_lr,
                        "base": 0.1, "metrics": metrics, "lrs": lrs})
    return out


def warmup_cosine():
    base, start, warmup, total, eta_min = 0.1, 0.01, 6, 40, 1e-3

    def seq(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=start, end_factor=1.0, total_iters=warmup)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=eta_min)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warmup])

    def lam(t):
        if t < warmup:
            return start + (1 - start) * t / warmup
        prog = min((t - warmup) / (total - warmup), 1.0)
        return (eta_min + (base - eta_min) * (1 + math.cos(math.pi * prog)) / 2) / base

    return {"base": base, "start_factor": start, "warmup": warmup, "total": total, "min_lr": eta_min,
            "lrs_sequential": lrs_of(seq, base, total)[:total],
            "lrs_lambda": lrs_of(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lam), base, total)[:total]}


def grads_fixture():
    shapes = [[3, 4], [5], [2, 2, 2]]
    grads = [vals(12, 7, 3, 17, 4.0), vals(5, 5, 1, 11, 2.0), vals(8, 3, 2, 13, 8.0)]
    return shapes, grads


def clip():
    shapes, grads = grads_fixture()
    out = {"shapes": shapes, "grads": grads}
    for key, max_norm in (("norm_small", 1.5), ("norm_large", 1000.0)):
        ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        out[key] = {"max_norm": max_norm, "total_norm": float(total),
                    "clipped": [p.grad.flatten().tolist() for p in ps]}
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)
    torch.nn.utils.clip_grad_value_(ps, 0.75)
    out["value"] = {"clip": 0.75, "clipped": [p.grad.flatten().tolist() for p in ps]}
    return out


def optim():
    cases = [
        {"name": "adam", "lr": 0.01, "weight_decay": 0.1, "momentum": 0.0, "nesterov": False},
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.1, "momentum": 0.0, "nesterov": False},
        {"name": "sgd", "lr": 0.1, "weight_decay": 0.01, "momentum": 0.9, "nesterov": False},
        {"name": "sgd", "lr": 0.1, "weight_decay": 0.01, "momentum": 0.9, "nesterov": True},
        {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, "nesterov": False},
    ]
    # Parameter 0 takes weight decay, parameter 1 (a "bias") does not.
    shapes = [[2, 3], [3]]
    init = [vals(6, 5, 2, 9, 4.0), vals(3, 3, 1, 7, 2.0)]
    step_grads = [[vals(6, 7, 1, 13, 8.0), vals(3, 2, 5, 9, 4.0)],
                  [vals(6, 3, 4, 11, 16.0), vals(3, 5, 2, 7, 8.0)],
                  [vals(6, 1, 6, 9, 2.0), vals(3, 4, 3, 5, 4.0)]]
    def run(c, **impl):
        ps = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float32).reshape(s)) for v, s in zip(init, shapes)]
        groups = [{"params": [ps[0]], "weight_decay": c["weight_decay"]}, {"params": [ps[1]], "weight_decay": 0.0}]
        if c["name"] == "adam":
            opt = torch.optim.Adam(groups, lr=c["lr"], **impl)
        elif c["name"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=c["lr"], **impl)
        else:
            opt = torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"], nesterov=c["nesterov"], **impl)
        after = []
        for g in step_grads:
            for p, gv in zip(ps, g):
                p.grad = torch.tensor(gv, dtype=torch.float32).reshape(p.shape)
            opt.step()
            after.append([p.detach().flatten().tolist() for p in ps])
        return after

    for c in cases:
        # The per-tensor for-loop and the fused kernel: sorbier implements both.
        c.update({"shapes": shapes, "init": init, "grads": step_grads,
                  "after": run(c, foreach=False), "after_fused": run(c, fused=True)})
    return cases


def loss():
    n, classes = 6, 4
    logits = torch.tensor(vals(n * classes, 7, 3, 19, 4.0), dtype=torch.float32).reshape(n, classes)
    targets = [0, 3, 1, 1, 2, 3]
    weight = [0.5, 2.0, 1.0, 0.5]
    out = {"logits": logits.flatten().tolist(), "classes": classes, "targets": targets, "weight": weight, "cases": []}
    for w in (None, weight):
        for s in (0.0, 0.1):
            v = torch.nn.functional.cross_entropy(
                logits, torch.tensor(targets), weight=None if w is None else torch.tensor(w), label_smoothing=s)
            out["cases"].append({"weighted": w is not None, "label_smoothing": s, "loss": float(v)})
    return out


def grad_scaler():
    """GradScaler's scale update (the op GradScaler.update calls) over a pattern of overflows."""
    pattern = [0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    scale, tracker = torch.full((1,), 65536.0), torch.zeros((1,), dtype=torch.int32)
    after = []
    for inf in pattern:
        torch._amp_update_scale_(scale, tracker, torch.full((1,), float(inf)), 2.0, 0.5, 3)
        after.append([float(scale), int(tracker)])
    return {"growth_interval": 3, "found_inf": pattern, "after": after}


print(json.dumps({"torch": torch.__version__, "grad_scaler": grad_scaler(), "step_lr": step_lr(), "plateau": plateau(),
                  "warmup_cosine": warmup_cosine(), "clip": clip(), "optim": optim(), "loss": loss()}))
