"""Python peer for the predictor benchmark: what the reference notebook did at inference time.

PIL decoding + torchvision `Resize(resize) + CenterCrop(crop) + ToTensor + Normalize` in a
`DataLoader` with `--workers` worker processes, and onnxruntime with `--threads` intra-op
threads on the same ONNX file, same batch size. Prints one JSON line:
{"e2e": images/s decode+transform+inference, "preprocess": images/s decode+transform only}.
Deterministic: fixed file order, no randomness.
"""
import argparse
import json
import os
import time

import onnxruntime as ort
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class Folder(Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.tf(img)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(1)
    names = sorted(n for n in os.listdir(a.images) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    if a.limit:
        names = names[: a.limit]
    paths = [os.path.join(a.images, n) for n in names]
    tf = transforms.Compose([
        transforms.Resize(a.resize),
        transforms.CenterCrop(a.crop),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])

    def loader():
        return DataLoader(Folder(paths, tf), batch_size=a.batch, num_workers=a.workers, shuffle=False)

    t = time.perf_counter()
    for _ in loader():
        pass
    pre = len(paths) / (time.perf_counter() - t)

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: torch.zeros(1, 3, a.crop, a.crop).numpy()})  # warm-up
    t = time.perf_counter()
    n = 0
    for x in loader():
        sess.run(None, {name: x.numpy()})
        n += x.shape[0]
    e2e = n / (time.perf_counter() - t)
    print(json.dumps({"e2e": e2e, "preprocess": pre}))


if __name__ == "__main__":
    main()
