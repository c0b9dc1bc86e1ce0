"""Reference auto-augment ops with timm and torchvision, for the Rust parity test.

Takes the first `--images` photos of an image folder (sorted by name), opened as the ImageFolder
loader opens them (`Image.open(f).convert('RGB')`), resized (shorter side to size + 8, bilinear)
and center-cropped to `--size` square; then applies, to each, every case below with the real
libraries and writes into OUT_DIR:

  input.npy     uint8 (images, size, size, 3): the squares the ops start from (so decoding and
                resizing differences never enter the comparison)
  cases.json    [{"policy": "timm" | "torchvision", "op": name, "arg": float or null}, ...]
  cases.npy     uint8 (cases, images, size, size, 3): the results, in that order
  levels.json   timm's LEVEL_TO_ARG for every RandAugment op name at a grid of levels, with the
                random sign forced each way: [{"name", "level", "negate", "fn", "args"}, ...]
  ta_space.json torchvision TrivialAugmentWide()._augmentation_space(31): [{"name", "signed",
                "magnitudes": [float32 values as floats] or null}, ...] in its order
  erasing.json  timm RandomErasing(probability=1, mode='pixel') box searches with scripted draws:
                [{"height", "width", "uniforms", "ints", "box": [top, left, h, w] or null,
                  "used_uniforms", "used_ints"}, ...]

timm's ops are its functions in timm.data.auto_augment, called by name with a fixed argument and
the keyword arguments timm's AugmentOp passes them: fillcolor = timm's img_mean for the ImageNet
mean (124, 116, 104) and resample = BILINEAR (what timm's transforms_factory passes when the
interpolation is 'bilinear'). torchvision's are `_apply_op(img, name, magnitude,
interpolation=NEAREST, fill=None)`, as TrivialAugmentWide() calls it on a PIL image.

Every float in the JSON files is written as a string, Python's repr (the shortest text that reads
back to the same double), so no JSON reader's float parsing comes between the two sides.

Deterministic: no randomness reaches the images; the scripted draws come from a seeded numpy RNG.

    .venv/bin/python tools/auto_augment_reference.py ../shared/data/flowers/test OUT_DIR --images 4 --size 64
"""
import argparse
import json
import os
import random as pyrandom

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as aa
from timm.data import random_erasing as tre
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import TrivialAugmentWide, _apply_op

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
# timm transforms_factory: img_mean=tuple([min(255, round(255 * x)) for x in mean])
FILL = tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN)

# (timm function name, argument); None = the op takes no argument.
TIMM_CASES = [
    ("auto_contrast", None),
    ("equalize", None),
    ("invert", None),
    ("rotate", 17.3),
    ("rotate", -27.0),
    ("rotate", 3.2),
    ("rotate", 90.0),
    ("rotate", -90.0),
    ("rotate", 180.0),
    ("posterize", 1),
    ("posterize", 2),
    ("posterize", 4),
    ("solarize", 0),
    ("solarize", 77),
    ("solarize", 230),
    ("solarize_add", 40),
    ("solarize_add", 110),
    ("color", 0.1),
    ("color", 0.73),
    ("color", 1.9),
    ("contrast", 0.1),
    ("contrast", 0.55),
    ("contrast", 1.72),
    ("brightness", 0.1),
    ("brightness", 0.64),
    ("brightness", 1.9),
    ("sharpness", 0.1),
    ("sharpness", 0.5),
    ("sharpness", 1.9),
    ("shear_x", 0.27),
    ("shear_x", -0.3),
    ("shear_y", 0.135),
    ("shear_y", -0.22),
    ("translate_x_rel", 0.405),
    ("translate_x_rel", -0.2),
    ("translate_y_rel", 0.31),
    ("translate_y_rel", -0.45),
]

# (TrivialAugmentWide op, magnitude bin, sign); magnitudes are taken from torchvision's own table.
TA_CASES = [
    ("Identity", None, 1),
    ("ShearX", 10, 1),
    ("ShearX", 30, -1),
    ("ShearY", 17, 1),
    ("ShearY", 23, -1),
    ("TranslateX", 15, 1),
    ("TranslateX", 30, -1),
    ("TranslateY", 7, -1),
    ("TranslateY", 22, 1),
    ("Rotate", 7, 1),
    ("Rotate", 13, -1),
    ("Rotate", 20, -1),
    ("Rotate", 30, 1),
    ("Brightness", 30, -1),
    ("Brightness", 19, 1),
    ("Color", 25, -1),
    ("Color", 30, 1),
    ("Contrast", 12, -1),
    ("Contrast", 27, 1),
    ("Sharpness", 30, -1),
    ("Sharpness", 30, 1),
    ("Posterize", 25, 1),
    ("Posterize", 30, 1),
    ("Solarize", 1, 1),
    ("Solarize", 17, 1),
    ("AutoContrast", None, 1),
    ("Equalize", None, 1),
]

LEVELS = [0.0, 0.5, 1.3, 2.5, 3.7, 5.0, 6.25, 7.77, 9.0, 9.5, 10.0, 12.5, 15.0, 20.0]


def exact(x):
    """A float as Python's repr, for an exact round trip through JSON."""
    return repr(float(x))


def squares(image_dir, n, size):
    names = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(EXTENSIONS))[:n]
    if not names:
        raise SystemExit(f"no images in {image_dir}")
    out = []
    for name in names:
        with open(os.path.join(image_dir, name), "rb") as f:
            img = Image.open(f).convert("RGB")
        img = F.resize(img, size + 8, interpolation=InterpolationMode.BILINEAR)
        out.append(F.center_crop(img, size))
    return names, out


def timm_op(img, fn, arg):
    kwargs = dict(fillcolor=FILL, resample=Image.BILINEAR)  # AugmentOp's kwargs (a fresh dict: timm pops from it)
    f = getattr(aa, fn)
    return f(img, **kwargs) if arg is None else f(img, arg, **kwargs)


def level_table():
    names = list(dict.fromkeys(aa._RAND_TRANSFORMS + aa._RAND_INCREASING_TRANSFORMS))
    hparams = dict(translate_const=100, img_mean=FILL)
    rows = []
    real = pyrandom.random
    try:
        for name in names:
            level_fn = aa.LEVEL_TO_ARG[name]
            for level in LEVELS:
                for negate in (False, True):
                    # _randomly_negate: `-v if random.random() > 0.5 else v`
                    pyrandom.random = (lambda: 0.9) if negate else (lambda: 0.1)
                    args = list(level_fn(level, hparams)) if level_fn is not None else []
                    rows.append(dict(name=name, level=exact(level), negate=negate, fn=aa.NAME_TO_OP[name].__name__, args=[exact(a) for a in args]))
    finally:
        pyrandom.random = real
    return rows


def erasing_cases():
    class Scripted:
        """Stands in for the `random` module inside timm.data.random_erasing."""

        def __init__(self, uniforms, ints):
            self.u, self.v = list(uniforms), list(ints)

        def random(self):
            return 0.0  # the probability test passes: 0.0 > 1.0 is false

        def uniform(self, a, b):
            return a + (b - a) * self.u.pop(0)

        def randint(self, a, b):
            return a + int(self.v.pop(0) * (b - a + 1))

    rng = np.random.RandomState(0)
    sizes = [(224, 224), (64, 64), (13, 13), (31, 57), (100, 40)]
    scripts = []
    for i in range(200):
        h, w = sizes[i % len(sizes)]
        # Every other script leans towards large areas and extreme aspects: more rejected attempts.
        us = rng.uniform(size=20) ** (0.15 if i % 2 else 1.0)
        scripts.append((h, w, us.tolist(), rng.uniform(size=2).tolist()))
    # Every attempt too large (largest area, most extreme aspect): nothing is erased.
    scripts.append((13, 13, [0.999999] * 20, [0.5, 0.5]))
    # The first attempts fail, a later one fits.
    scripts.append((64, 64, [0.999, 0.999, 0.999, 0.0, 0.2, 0.5] + [0.3] * 14, [0.99, 0.01]))
    real = tre.random
    rows = []
    try:
        for h, w, us, vs in scripts:
            script = Scripted(us, vs)
            tre.random = script
            x = torch.zeros(3, h, w)
            tre.RandomErasing(probability=1.0, mode="pixel", device="cpu")(x)
            changed = (x != 0).any(0).nonzero()
            box = None
            if len(changed):
                top, left = changed.min(0).values.tolist()
                bottom, right = changed.max(0).values.tolist()
                box = [top, left, bottom - top + 1, right - left + 1]
            rows.append(
                dict(
                    height=h,
                    width=w,
                    uniforms=[exact(u) for u in us],
                    ints=[exact(v) for v in vs],
                    box=box,
                    used_uniforms=len(us) - len(script.u),
                    used_ints=len(vs) - len(script.v),
                )
            )
    finally:
        tre.random = real
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    names, imgs = squares(args.image_dir, args.images, args.size)
    np.save(os.path.join(args.out_dir, "input.npy"), np.stack([np.asarray(i) for i in imgs]))

    space = TrivialAugmentWide()._augmentation_space(31)
    cases, results = [], []
    for fn, arg in TIMM_CASES:
        cases.append(dict(policy="timm", op=fn, arg=None if arg is None else exact(arg)))
        results.append([np.asarray(timm_op(img, fn, arg)) for img in imgs])
    for name, bin_, sign in TA_CASES:
        magnitudes, signed = space[name]
        m = float(magnitudes[bin_].item()) * sign if bin_ is not None else 0.0
        cases.append(dict(policy="torchvision", op=name, arg=exact(m)))
        results.append([np.asarray(_apply_op(img, name, m, interpolation=InterpolationMode.NEAREST, fill=None)) for img in imgs])
    np.save(os.path.join(args.out_dir, "cases.npy"), np.array(results, dtype=np.uint8))
    with open(os.path.join(args.out_dir, "cases.json"), "w") as f:
        json.dump(cases, f)
    with open(os.path.join(args.out_dir, "levels.json"), "w") as f:
        json.dump(level_table(), f)
    ta = [dict(name=k, signed=bool(s), magnitudes=[exact(v) for v in m.tolist()] if m.ndim > 0 else None) for k, (m, s) in space.items()]
    with open(os.path.join(args.out_dir, "ta_space.json"), "w") as f:
        json.dump(ta, f)
    with open(os.path.join(args.out_dir, "erasing.json"), "w") as f:
        json.dump(erasing_cases(), f)
    print(f"{len(cases)} cases on {len(imgs)} images ({', '.join(names)}) written to {args.out_dir}")


if __name__ == "__main__":
    main()
