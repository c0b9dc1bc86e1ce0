"""Drives a `predictor serve` server with NVIDIA's Python client, tritonclient[http] (an Open
Inference Protocol client nobody in this project wrote), and checks what the protocol
promises: server and model readiness, server and model metadata (input FP32 [-1, 3, S, S],
output FP32 [-1, C]), model configuration and repository index, and inference on a batch with
binary tensors (the client's default), with JSON tensors, and with the classification
extension; unknown models and wrong shapes must be errors, not answers.

The input batch is read from a safetensors file (tensor `input`, N x 3 x S x S float32, made by
the Rust test with the model's own preprocessing); the outputs the server returned are written
to --out (tensors `binary` and `json`) for the test to compare with `predictor predict`'s
logits. A one-line JSON summary goes to stdout. Any failed check raises, so the exit status says
whether the server conforms.

  .venv/bin/python tools/triton_client_check.py --url 127.0.0.1:PORT --model NAME \
      --input in.safetensors --out out.safetensors [--top-k 3]
"""
import argparse
import json

import numpy as np
import tritonclient.http as httpclient
from safetensors.numpy import load_file, save_file
from tritonclient.utils import InferenceServerException


def expect_error(what, call, needle):
    try:
        call()
    except InferenceServerException as e:
        msg = str(e)
        assert needle in msg, f"{what}: the error does not mention {needle!r}: {msg}"
        return msg
    raise AssertionError(f"{what}: the server answered instead of refusing")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--top-k", type=int, default=3)
    a = ap.parse_args()

    x = load_file(a.input)["input"]
    assert x.dtype == np.float32 and x.ndim == 4, (x.dtype, x.shape)
    n, _, s, _ = x.shape

    client = httpclient.InferenceServerClient(url=a.url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(a.model), "model not ready"
    assert not client.is_model_ready("no-such-model"), "an unknown model is ready"

    server = client.get_server_metadata()
    assert server["name"] == "sorbier", server
    for ext in ("binary_tensor_data", "classification"):
        assert ext in server["extensions"], server

    meta = client.get_model_metadata(a.model)
    assert meta["name"] == a.model, meta
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, s, s]}], meta["inputs"]
    [out] = meta["outputs"]
    assert out["datatype"] == "FP32" and out["shape"][0] == -1 and len(out["shape"]) == 2, out
    out_name, classes = out["name"], out["shape"][1]
    [version] = meta["versions"]
    assert client.get_model_metadata(a.model, version) == meta
    assert client.is_model_ready(a.model, version)
    expect_error("unknown version", lambda: client.get_model_metadata(a.model, "0"), "no version")
    expect_error("unknown model", lambda: client.get_model_metadata("no-such-model"), "unknown model")

    config = client.get_model_config(a.model)
    assert config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [3, s, s], config
    index = client.get_model_repository_index()
    assert {"name": a.model, "version": version, "state": "READY"} in index, index

    # Binary tensors both ways: what the client does by default.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(a.model, [inp], request_id="42")
    binary = r.as_numpy(out_name)
    resp = r.get_response()
    assert resp["model_name"] == a.model and resp["model_version"] == version and resp["id"] == "42", resp
    assert binary.shape == (n, classes) and binary.dtype == np.float32, (binary.shape, binary.dtype)

    # JSON tensors both ways.
    inp_json = httpclient.InferInput("input", list(x.shape), "FP32")
    inp_json.set_data_from_numpy(x, binary_data=False)
    r = client.infer(a.model, [inp_json], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=False)])
    as_json = r.as_numpy(out_name)
    assert as_json.shape == (n, classes), as_json.shape

    # The classification extension: top-k as "<value>:<index>:<label>".
    r = client.infer(a.model, [inp], outputs=[httpclient.InferRequestedOutput(out_name, class_count=a.top_k)])
    labels = r.as_numpy(out_name)
    assert labels.shape == (n, a.top_k), labels.shape
    labels = [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in labels]

    # Wrong inputs are refused with a message.
    bad = httpclient.InferInput("input", [n, 3, s // 2, s // 2], "FP32")
    bad.set_data_from_numpy(np.ascontiguousarray(x[:, :, : s // 2, : s // 2]))
    shape_error = expect_error("wrong shape", lambda: client.infer(a.model, [bad]), "shape")
    dtype = httpclient.InferInput("input", list(x.shape), "FP64")
    dtype.set_data_from_numpy(x.astype(np.float64))
    dtype_error = expect_error("wrong datatype", lambda: client.infer(a.model, [dtype]), "FP32")
    expect_error("unknown model", lambda: client.infer("no-such-model", [inp]), "unknown model")

    save_file({"binary": np.ascontiguousarray(binary), "json": np.ascontiguousarray(as_json)}, a.out)
    print(json.dumps({"version": version, "output": out_name, "classification": labels, "shape_error": shape_error, "dtype_error": dtype_error}))


if __name__ == "__main__":
    main()
