"""Drives `predictor serve --grpc-listen` with NVIDIA's Python client, tritonclient[grpc] (an
Open Inference Protocol client nobody in this project wrote), and checks what the gRPC protocol
promises: server liveness and readiness, model readiness (and an unknown model's), server and
model metadata (input FP32 [-1, 3, S, S], output FP32 [-1, C]), the repository index, and
inference on a batch with raw tensors both ways (what the client sends and reads by default)
and with the classification extension; unknown models and wrong shapes must be errors.

The input batch is read from a safetensors file (tensor `input`, N x 3 x S x S float32, made by
the Rust test with the model's own preprocessing); the outputs are written to --out (tensor
`grpc`) for the test to compare with `predictor predict`'s logits. A one-line JSON summary goes
to stdout. Any failed check raises, so the exit status says whether the server conforms.

  .venv/bin/python tools/triton_grpc_check.py --url 127.0.0.1:PORT --model NAME \
      --input in.safetensors --out out.safetensors [--top-k 3]
"""
import json

import numpy as np
import tritonclient.grpc as grpcclient
from safetensors.numpy import save_file
from tritonclient.utils import InferenceServerException

from oip_checks import arguments_and_input, check, check_readiness, expect_error


def main():
    a, x, n, s = arguments_and_input()
    client = grpcclient.InferenceServerClient(url=a.url)
    check_readiness(client, a.model)

    server = client.get_server_metadata(as_json=True)
    check(server["name"] == "sorbier", f"server metadata: {server}")
    check("classification" in server["extensions"], f"server extensions: {server}")

    meta = client.get_model_metadata(a.model, as_json=True)
    check(meta["name"] == a.model, f"model metadata: {meta}")
    [inp_meta] = meta["inputs"]
    check(inp_meta["name"] == "input" and inp_meta["datatype"] == "FP32" and [int(d) for d in inp_meta["shape"]] == [-1, 3, s, s], f"model input: {inp_meta}")
    [out] = meta["outputs"]
    shape = [int(d) for d in out["shape"]]
    check(out["datatype"] == "FP32" and shape[0] == -1 and len(shape) == 2, f"model output: {out}")
    out_name, classes = out["name"], shape[1]
    [version] = meta["versions"]
    check(client.is_model_ready(a.model, version), f"version {version} not ready")
    expect_error("unknown version", lambda: client.get_model_metadata(a.model, "0"), "no version")
    expect_error("unknown model", lambda: client.get_model_metadata("no-such-model"), "unknown model")
    index = client.get_model_repository_index(as_json=True)
    check({"name": a.model, "version": version, "state": "READY"} in index["models"], f"repository index: {index}")

    # A batch with raw tensors both ways.
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(a.model, [inp], request_id="42")
    resp = r.get_response(as_json=True)
    check(resp["model_name"] == a.model and resp["model_version"] == version and resp["id"] == "42", f"infer response: {resp}")
    raw = r.get_response().raw_output_contents
    check(len(raw) == 1 and len(raw[0]) == n * classes * 4, f"raw_output_contents: {[len(b) for b in raw]} bytes for {n} x {classes} float32")
    logits = r.as_numpy(out_name)
    check(logits is not None and logits.shape == (n, classes) and logits.dtype == np.float32, f"output: {None if logits is None else (logits.shape, logits.dtype)}")

    # The classification extension.
    r = client.infer(a.model, [inp], outputs=[grpcclient.InferRequestedOutput(out_name, class_count=a.top_k)])
    labels = r.as_numpy(out_name)
    check(labels is not None and labels.shape == (n, a.top_k), f"classification output shape {None if labels is None else labels.shape}")
    labels = [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in labels]

    # Wrong inputs are refused with a message.
    bad = grpcclient.InferInput("input", [n, 3, s // 2, s // 2], "FP32")
    bad.set_data_from_numpy(np.ascontiguousarray(x[:, :, : s // 2, : s // 2]))
    shape_error = expect_error("wrong shape", lambda: client.infer(a.model, [bad]), "shape")
    expect_error("unknown model", lambda: client.infer("no-such-model", [inp]), "unknown model")

    save_file({"grpc": np.ascontiguousarray(logits)}, a.out)
    print(json.dumps({"version": version, "output": out_name, "classification": labels, "shape_error": shape_error}))


if __name__ == "__main__":
    main()
