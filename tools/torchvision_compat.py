#!/usr/bin/env python
"""Fixtures and checks for sorbier's torchvision compatibility tests (tests/model_compat.rs).

make:   for each --arch, builds torchvision.models.<arch>(weights=None, num_classes=N) with a
        fixed seed, randomises every BatchNorm's gamma/beta and calibrates its running
        statistics on random batches (so eval mode differs from train mode and from the
        defaults, which makes a forward-pass comparison meaningful), then writes into --out:
          <arch>.pth          torch.save(state_dict)            (num_batches_tracked kept)
          <arch>.safetensors  safetensors.torch.save_file       (num_batches_tracked dropped)
          <arch>_io.safetensors  {"input": B×3×S×S, "logits": eval-mode logits}
          <first arch>_wrapped.pth  {"epoch", "arch", "state_dict": {"module." + name: tensor}}
check:  loads a state dict written by sorbier into torchvision with strict=True (every key,
        num_batches_tracked included, must be there and nothing else), and with --io compares
        torchvision's eval logits on io["input"] with io["logits"]; exit status 0 = pass.

Deterministic: same seed, same files. Usage:
  .venv/bin/python tools/torchvision_compat.py make --arch resnet18 resnet50 --classes 5 --out DIR
  .venv/bin/python tools/torchvision_compat.py check --arch resnet18 --classes 5 --weights W.safetensors [--io IO.safetensors --tol 1e-4]
"""
import argparse
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file


def build(arch: str, classes: int) -> torch.nn.Module:
    return getattr(torchvision.models, arch)(weights=None, num_classes=classes)


def randomise(model: torch.nn.Module, gen: torch.Generator, size: int) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=gen) * 1.5 + 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    model.eval()


def make(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    summary = {}
    for arch in args.arch:
        torch.manual_seed(args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        model = build(arch, args.classes)
        randomise(model, gen, args.size)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
        with torch.no_grad():
            logits = model(x)
        sd = model.state_dict()
        torch.save(sd, os.path.join(args.out, f"{arch}.pth"))
        save_file(
            {k: v.contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")},
            os.path.join(args.out, f"{arch}.safetensors"),
        )
        save_file({"input": x.contiguous(), "logits": logits.contiguous()}, os.path.join(args.out, f"{arch}_io.safetensors"))
        if arch == args.arch[0]:
            # A training-script checkpoint: the state dict nested and DataParallel-prefixed.
            wrapped = {"epoch": 3, "arch": arch, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
            torch.save(wrapped, os.path.join(args.out, f"{arch}_wrapped.pth"))
        summary[arch] = {"tensors": len(sd), "logit_absmax": logits.abs().max().item()}
    print(json.dumps(summary))
    return 0


def check(args: argparse.Namespace) -> int:
    model = build(args.arch, args.classes)
    sd = load_file(args.weights)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        print(f"strict load of {args.weights} into torchvision {args.arch} failed: {e}")
        return 1
    result = {"strict_load": "ok", "tensors": len(sd)}
    if args.io:
        io = load_file(args.io)
        model.eval()
        with torch.no_grad():
            logits = model(io["input"])
        diff = (logits - io["logits"]).abs().max().item()
        scale = io["logits"].abs().max().item()
        result.update({"max_abs_diff": diff, "logit_absmax": scale})
        if not diff <= args.tol * max(scale, 1.0):
            print(json.dumps(result))
            print(f"logits differ: max |diff| {diff} > {args.tol} × max(|logit|, 1) = {args.tol * max(scale, 1.0)}")
            return 1
    print(json.dumps(result))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", nargs="+", required=True)
    m.add_argument("--classes", type=int, default=5)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--size", type=int, default=64)
    m.add_argument("--batch", type=int, default=2)
    c = sub.add_parser("check")
    c.add_argument("--arch", required=True)
    c.add_argument("--classes", type=int, required=True)
    c.add_argument("--weights", required=True)
    c.add_argument("--io", help="safetensors with 'input' and the 'logits' to reproduce")
    c.add_argument("--tol", type=float, default=1e-4, help="max |diff| allowed, relative to max(|logit|, 1)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    sys.exit(main())
