"""Loader benchmark, torchvision side: images/s of the train pipeline (PIL decode +
RandomResizedCrop(224) + RandomHorizontalFlip + RandomVerticalFlip + ToTensor + Normalize), the
same with timm's RandAugment after the flips (`autoaug`: `rand_augment_transform('rand-m9-mstd0.5',
hparams)` with the hparams timm's transforms_factory passes -- translate_const int(224 * 0.45),
img_mean the rounded ImageNet mean, interpolation BILINEAR) and the eval pipeline (Resize(256) +
CenterCrop(224) + ToTensor + Normalize) through a torchvision `ImageFolder` and a `DataLoader`
(batch 32) with 1 and 2 worker processes.

Each measurement iterates the whole set once after a short warm-up (two batches through the
same persistent workers). Prints `torchvision <pipeline> <workers> <images/s>` lines, like
`examples/bench_loader.rs`; `tools/bench-loader.sh` runs both. Seeded (torch.manual_seed(0)).

    .venv/bin/python tools/bench_loader.py [DATA_DIR] [--workers 1,2] [--batch 32]
"""
import argparse
import itertools
import os
import sys
import time

import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", default=os.path.join(here, "..", "..", "shared", "data", "flowers", "train"))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pipelines", default="train,autoaug,eval")
    ap.add_argument("--auto-augment", default="rand-m9-mstd0.5")
    args = ap.parse_args()
    torch.manual_seed(0)
    norm = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    crop_flips = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip()]
    aa_params = dict(translate_const=int(224 * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in MEAN), interpolation=Image.BILINEAR)
    pipelines = {
        "train": transforms.Compose(crop_flips + norm),
        "autoaug": transforms.Compose(crop_flips + [rand_augment_transform(args.auto_augment, aa_params)] + norm),
        "eval": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)] + norm),
    }
    for name in args.pipelines.split(","):
        tf = pipelines[name]
        ds = datasets.ImageFolder(args.data, transform=tf)
        for w in [int(x) for x in args.workers.split(",")]:
            dl = DataLoader(ds, batch_size=args.batch, shuffle=False, num_workers=w, persistent_workers=True)
            for _ in itertools.islice(iter(dl), 2):  # warm-up: worker start-up, imports, page cache
                pass
            t = time.perf_counter()
            n = sum(len(y) for _, y in dl)
            dt = time.perf_counter() - t
            print(f"torchvision {name} {w} {n / dt:.1f}", flush=True)
            del dl
    print(f"{len(ds)} images in {args.data}", file=sys.stderr)


if __name__ == "__main__":
    main()
