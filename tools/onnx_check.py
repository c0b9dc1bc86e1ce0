#!/usr/bin/env python3
"""Independent validation of ONNX files written by `trainer export`, with the `onnx` package.

For each file: `onnx.checker.check_model(path, full_check=True)` (schema, types and shape
inference over the whole graph), then sorbier's own contract: input `input` [N,3,H,W] float32
with a symbolic batch, output `logits` [N,classes] float32, no BatchNormalization or Dropout
node, and every `sorbier.*` metadata key present. Prints one JSON line per file; exits 1 if any
file fails.

    .venv/bin/python tools/onnx_check.py models/NAME.onnx [more.onnx ...]
"""
import json
import sys
from collections import Counter

import onnx

META_KEYS = ["classes", "arch", "preprocess", "metrics", "data_fingerprint", "sorbier_version", "precision", "source"]


def dims(value_info):
    t = value_info.type.tensor_type
    return t.elem_type, [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]


def check(path):
    onnx.checker.check_model(path, full_check=True)
    m = onnx.load(path)
    g = m.graph
    problems = []
    ops = Counter(n.op_type for n in g.node)
    for banned in ("BatchNormalization", "Dropout"):
        if ops.get(banned):
            problems.append(f"{ops[banned]} {banned} node(s)")
    if [i.name for i in g.input] != ["input"] or [o.name for o in g.output] != ["logits"]:
        problems.append(f"inputs {[i.name for i in g.input]}, outputs {[o.name for o in g.output]}")
    in_type, in_shape = dims(g.input[0])
    out_type, out_shape = dims(g.output[0])
    f32 = onnx.TensorProto.FLOAT
    if in_type != f32 or len(in_shape) != 4 or not isinstance(in_shape[0], str) or in_shape[1] != 3:
        problems.append(f"input is {onnx.TensorProto.DataType.Name(in_type)} {in_shape}")
    if out_type != f32 or len(out_shape) != 2 or out_shape[0] != in_shape[0]:
        problems.append(f"output is {onnx.TensorProto.DataType.Name(out_type)} {out_shape}")
    meta = {p.key: p.value for p in m.metadata_props}
    missing = [k for k in META_KEYS if "sorbier." + k not in meta]
    if missing:
        problems.append(f"metadata keys missing: {missing}")
    classes = json.loads(meta.get("sorbier.classes", "[]"))
    if len(classes) != out_shape[-1]:
        problems.append(f"{len(classes)} class names for {out_shape[-1]} outputs")
    return {
        "path": path,
        "ok": not problems,
        "problems": problems,
        "ir_version": m.ir_version,
        "opset": [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")],
        "producer": f"{m.producer_name} {m.producer_version}",
        "input": in_shape,
        "output": out_shape,
        "ops": dict(sorted(ops.items())),
        "initializer_types": sorted({onnx.TensorProto.DataType.Name(t.data_type) for t in g.initializer}),
    }


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = 0
    for path in paths:
        try:
            result = check(path)
        except Exception as e:  # report every file, then fail
            result = {"path": path, "ok": False, "problems": [f"{type(e).__name__}: {e}"]}
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
