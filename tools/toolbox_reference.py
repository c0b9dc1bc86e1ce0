#!/usr/bin/env python3
"""timm's own fine-tuning toolbox on fixed inputs, for the trainer's parity tests
(crates/train/tests/toolbox.rs): the test writes the inputs as .npz, this script runs timm on
them and writes what timm computed.

    ema IN.npz OUT.npz --arch resnet18 --classes C --decay D [--no-warmup] --step K
        IN holds `ema.<name>` (the average before the update) and `model.<name>` (the model
        after optimiser step K) for every state-dict entry of torchvision's network; the
        average goes through `timm.utils.ModelEmaV3(model, decay=D, use_warmup=...)` and
        `.update(model, step=K)`, as timm's train.py calls it. OUT: the updated average.

    mixup IN.npz OUT.npz --classes C --lam L [--cutmix T,B,L,R] --smoothing S
        IN holds `x` (N×C×H×W float32) and `y` (N int64); timm's `Mixup` (batch mode) with
        its per-batch draw fixed to (L, cutmix?) and, for CutMix, `rand_bbox` fixed to the
        given box (rows T..B, columns L..R). OUT: `x` and `target`.
"""
import argparse

import numpy as np
import torch
import torchvision
import timm.data.mixup as timm_mixup
from timm.utils import ModelEmaV3


def ema(a):
    data = dict(np.load(a.inp))
    net = getattr(torchvision.models, a.arch)(num_classes=a.classes)
    sd = net.state_dict()

    def load(prefix):
        state = {k: torch.from_numpy(data[prefix + k]) for k in sd if prefix + k in data}
        missing = [k for k in sd if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise SystemExit(f"{prefix}: missing {missing[:5]}")
        extra = [k for k in data if k.startswith(prefix) and k[len(prefix):] not in sd]
        if extra:
            raise SystemExit(f"{prefix}: unexpected {extra[:5]}")
        return state

    net.load_state_dict(load("model."), strict=False)
    avg = ModelEmaV3(net, decay=a.decay, use_warmup=not a.no_warmup)
    avg.module.load_state_dict(load("ema."), strict=False)
    avg.update(net, step=a.step)
    out = {k: v.detach().numpy() for k, v in avg.module.state_dict().items() if not k.endswith("num_batches_tracked")}
    np.savez(a.out, **out)
    print(f"decay {avg.get_decay(a.step)!r}")


def mixup(a):
    data = np.load(a.inp)
    x, y = torch.from_numpy(data["x"]).clone(), torch.from_numpy(data["y"])
    box = tuple(int(v) for v in a.cutmix.split(",")) if a.cutmix else None
    fn = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="batch", label_smoothing=a.smoothing, num_classes=a.classes)
    fn._params_per_batch = lambda: (a.lam, box is not None)
    if box is not None:
        timm_mixup.rand_bbox = lambda img_shape, lam, margin=0.0, count=None: box
    x, target = fn(x, y)
    np.savez(a.out, x=x.numpy(), target=target.numpy())


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
sub = p.add_subparsers(dest="cmd", required=True)
e = sub.add_parser("ema")
e.add_argument("inp")
e.add_argument("out")
e.add_argument("--arch", default="resnet18")
e.add_argument("--classes", type=int, required=True)
e.add_argument("--decay", type=float, required=True)
e.add_argument("--no-warmup", action="store_true")
e.add_argument("--step", type=int, required=True)
m = sub.add_parser("mixup")
m.add_argument("inp")
m.add_argument("out")
m.add_argument("--classes", type=int, required=True)
m.add_argument("--lam", type=float, required=True)
m.add_argument("--cutmix", default=None)
m.add_argument("--smoothing", type=float, default=0.0)
a = p.parse_args()
{"ema": ema, "mixup": mixup}[a.cmd](a)
