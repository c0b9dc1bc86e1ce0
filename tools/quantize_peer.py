"""Python peer of `predictor quantize`: ONNX Runtime's own post-training static quantisation,
`onnxruntime.quantization.quantize_static`, on a sorbier float32 model.

QDQ format, per-channel int8 weights, uint8 activations (or int8 with --activation-type s8),
MinMax calibration (or --method percentile / entropy) over the images listed in --list (one
path per line: the benchmark passes sorbier's own stratified draw, so both quantisers see the
same photos), preprocessed as the model's card says with PIL + torchvision (Resize + CenterCrop
+ ToTensor + Normalize). The model card is copied with precision `int8` and a
`sorbier.quantization` record naming this peer, so `predictor predict` runs the file like its
own. Prints one JSON line: {"seconds": quantisation wall time, "images": n}.

    .venv/bin/python tools/quantize_peer.py --model M.onnx --list images.txt --out M.peer-int8.onnx
"""
import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from PIL import Image
from torchvision import transforms

INTERPOLATION = {
    "nearest": transforms.InterpolationMode.NEAREST,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
}


class Reader(CalibrationDataReader):
    def __init__(self, paths, tf, input_name, batch):
        self.paths, self.tf, self.input_name, self.batch, self.i = paths, tf, input_name, batch, 0

    def get_next(self):
        if self.i >= len(self.paths):
            return None
        chunk = self.paths[self.i : self.i + self.batch]
        self.i += len(chunk)
        x = np.stack([self.tf(Image.open(p).convert("RGB")).numpy() for p in chunk])
        return {self.input_name: x}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--list", required=True, help="calibration images, one path per line")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--activation-type", choices=["u8", "s8"], default="u8")
    ap.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    a = ap.parse_args()

    model = onnx.load(a.model)
    meta = {p.key: p.value for p in model.metadata_props}
    pre = json.loads(meta["sorbier.preprocess"])
    tf = transforms.Compose([
        transforms.Resize(pre["resize"], interpolation=INTERPOLATION[pre["interpolation"]]),
        transforms.CenterCrop(pre["crop"]),
        transforms.ToTensor(),
        transforms.Normalize(pre["mean"], pre["std"]),
    ])
    with open(a.list) as f:
        paths = [line.strip() for line in f if line.strip()]
    input_name = model.graph.input[0].name
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[a.method]
    act = QuantType.QUInt8 if a.activation_type == "u8" else QuantType.QInt8

    t = time.perf_counter()
    quantize_static(
        a.model,
        a.out,
        Reader(paths, tf, input_name, a.batch),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=act,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
    )
    seconds = time.perf_counter() - t

    q = onnx.load(a.out)
    card = {p.key: p.value for p in q.metadata_props}
    card.update({k: v for k, v in meta.items() if k not in card})
    card["sorbier.precision"] = json.dumps("int8")
    card["sorbier.quantization"] = json.dumps({
        "method": f"{a.method} (onnxruntime {onnxruntime.__version__} quantize_static, QDQ, per-channel)",
        "images": len(paths),
        "data_fingerprint": "",
        "selection": a.list,
        "weights": "int8 symmetric per output channel",
        "activations": ("uint8" if a.activation_type == "u8" else "int8") + " asymmetric per tensor",
        "nodes": {},
        "parent_sha256": "",
        "sorbier_version": "",
    })
    del q.metadata_props[:]
    for k, v in card.items():
        q.metadata_props.add(key=k, value=v)
    onnx.save(q, a.out)
    print(json.dumps({"seconds": seconds, "images": len(paths)}))


if __name__ == "__main__":
    main()
