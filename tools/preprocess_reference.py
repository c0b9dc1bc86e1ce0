"""Reference eval preprocessing with PIL + torchvision, for the Rust parity test.

Runs torchvision's classification eval transform -- the ImageFolder loader
(`Image.open(f).convert('RGB')`), `Resize(resize)` (bilinear, Pillow's antialiased filter),
`CenterCrop(crop)`, `ToTensor()`, `Normalize(ImageNet mean, std)` -- on the first `n` files of
an image folder in sorted name order, and writes the stacked float32 tensors (N, 3, crop, crop)
to a `.npy` file plus the file names (one per line) beside it as `<out>.names`.

Deterministic: no randomness is involved; the file order is sorted by name.

    .venv/bin/python tools/preprocess_reference.py ../shared/data/flowers/test out.npy 256 224 40
"""
import argparse
import os

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image_dir")
    ap.add_argument("out", help="output .npy path")
    ap.add_argument("resize", type=int)
    ap.add_argument("crop", type=int)
    ap.add_argument("n", type=int, help="number of images (sorted by name)")
    args = ap.parse_args()

    torch.manual_seed(0)
    names = sorted(f for f in os.listdir(args.image_dir) if f.lower().endswith(EXTENSIONS))[: args.n]
    if not names:
        raise SystemExit(f"no images in {args.image_dir}")
    tf = transforms.Compose(
        [
            transforms.Resize(args.resize, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(args.crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    out = np.empty((len(names), 3, args.crop, args.crop), dtype=np.float32)
    for i, name in enumerate(names):
        with open(os.path.join(args.image_dir, name), "rb") as f:
            img = Image.open(f).convert("RGB")
        out[i] = tf(img).numpy()
    np.save(args.out, out)
    with open(args.out + ".names", "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"wrote {out.shape} to {args.out}")


if __name__ == "__main__":
    main()
