#!/usr/bin/env python3
"""Reference side of sorbier's ONNX export checks, with torchvision as the ground truth.

make     Writes, per architecture, a fake run directory as `trainer train` leaves it
         (config.json, best.safetensors, best.json, last.*), from a torchvision ResNet with
         random weights and BatchNorm statistics, plus `input.safetensors` (a seeded image
         batch) and `logits.safetensors` (torchvision's eval-mode logits for it).
compare  Loads a run's checkpoint into torchvision (strict=True), runs the same seeded input
         through torchvision and through onnxruntime on an exported .onnx file, and prints the
         largest difference relative to the logit scale; exits 1 above --tol.

Deterministic: everything is drawn from torch generators seeded by --seed.

    .venv/bin/python tools/export_reference.py make --arch resnet18,resnet50 --classes 5 --out DIR
    .venv/bin/python tools/export_reference.py compare --run runs/NAME --onnx models/NAME.onnx
"""
import argparse
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def randomise(model, size, seed):
    """Gives every BatchNorm realistic running statistics (measured on random images, so the
    activations stay normalised through 150 layers and fit in float16) and random affine
    parameters, so that folding them into the convolutions is actually exercised."""
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=g))
        for bn in bns:
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
            bn.momentum = 0.1
    model.eval()


def run_config(arch, classes, size, seed):
    """A config.json in exactly the serde format of sorbier's RunConfig."""
    return {
        "sorbier_version": "0.1.0",
        "arch": arch,
        "classes": classes,
        "dropout": 0.0,
        "preprocess": {
            "resize": round(size * 256 / 224),
            "crop": size,
            "interpolation": "bilinear",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        "augment": {
            "random_resized_crop": True,
            "scale": [0.08, 1.0],
            "ratio": [3 / 4, 4 / 3],
            "hflip": True,
            "vflip": True,
            "rot90": False,
            "blur_sigma": 0.0,
            "color_jitter": 0.0,
        },
        "seed": seed,
        "split": {"kind": "holdout", "val_fraction": 0.2, "seed": seed},
        "data_root": "data/reference",
        "data_fingerprint": f"reference-{arch}-{seed}",
        "train": {"epochs": 3, "batch_size": 2, "optimizer": "adam", "lr": 0.001},
    }


def reference_input(batch, size, seed):
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randn(batch, 3, size, size, generator=g)


def make(args):
    # Class names that are not indices, in a non-alphabetical index order, to catch any place
    # that would sort or renumber them.
    base = ["10", "2", "daisy", "rose", "sunflower", "tulip", "Lily of the valley"]
    classes = [base[i % len(base)] + ("" if i < len(base) else f"_{i}") for i in range(args.classes)]
    for arch in args.arch.split(","):
        torch.manual_seed(args.seed)
        model = torchvision.models.get_model(arch, weights=None, num_classes=args.classes)
        randomise(model, args.size, args.seed)
        out = os.path.join(args.out, arch)
        os.makedirs(out, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        assert any(v.dtype == torch.int64 for v in state.values())  # num_batches_tracked kept on purpose
        save_file(state, os.path.join(out, "best.safetensors"))
        # Same weights for `last` (a hard link saves disk); last.json tells the two apart.
        os.link(os.path.join(out, "best.safetensors"), os.path.join(out, "last.safetensors"))
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(run_config(arch, classes, args.size, args.seed), f, indent=2)
        with open(os.path.join(out, "best.json"), "w") as f:
            json.dump({"epoch": 2, "metrics": {"top1": 0.75, "top5": 1.0, "macro_acc": 0.625, "loss": 0.5}}, f)
        with open(os.path.join(out, "last.json"), "w") as f:
            json.dump({"epoch": 3, "metrics": {"top1": 0.5, "top5": 1.0, "macro_acc": 0.5, "loss": 0.75}}, f)
        x = reference_input(args.batch, args.size, args.seed)
        with torch.no_grad():
            logits = model(x)
        save_file({"input": x.contiguous()}, os.path.join(out, "input.safetensors"))
        save_file({"logits": logits.contiguous()}, os.path.join(out, "logits.safetensors"))
        print(f"{arch}: {out} max|logit| {logits.abs().max().item():.4g}")


def compare(args):
    import numpy as np
    import onnxruntime as ort

    with open(os.path.join(args.run, "config.json")) as f:
        config = json.load(f)
    model = torchvision.models.get_model(config["arch"], weights=None, num_classes=len(config["classes"]))
    model.load_state_dict(load_file(os.path.join(args.run, f"{args.checkpoint}.safetensors")), strict=True)
    model.eval()
    crop = config["preprocess"]["crop"]
    x = reference_input(args.batch, crop, args.seed)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": x.numpy()})
    scale = float(np.abs(expected).max())
    diff = float(np.abs(got - expected).max())
    result = {
        "arch": config["arch"],
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "relative": diff / scale,
        "tol": args.tol,
        "ok": diff <= args.tol * scale,
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write reference run directories")
    m.add_argument("--arch", default="resnet18", help="comma-separated torchvision names")
    m.add_argument("--classes", type=int, default=5)
    m.add_argument("--size", type=int, default=64, help="crop size of config.json and the reference input")
    m.add_argument("--batch", type=int, default=3)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="torchvision vs onnxruntime on an exported file")
    c.add_argument("--run", required=True)
    c.add_argument("--onnx", required=True)
    c.add_argument("--checkpoint", default="best", choices=["best", "last"])
    c.add_argument("--batch", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tol", type=float, default=1e-4, help="allowed max|diff| / max|logit|")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.cmd == "make":
        make(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
