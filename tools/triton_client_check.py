"""Drives a `predictor serve` server with NVIDIA's Python client, tritonclient[http] (an Open
Inference Protocol client nobody in this project wrote), and checks what the protocol
promises: server and model readiness, server and model metadata (input FP32 [-1, 3, S, S],
output FP32 [-1, C]), model configuration and repository index, and inference on a batch with
binary tensors (the client's default), with JSON tensors, and with the classification
extension; unknown models and wrong shapes must be errors, not answers.

The input batch is read from a safetensors file (tensor `input`, N x 3 x S x S float32, made by
the Rust test with the model's own preprocessing); the outputs the server returned are written
to --out (tensors `binary` and `json`) for the test to compare with `predictor predict`'s
logits. A one-line JSON summary goes to stdout. Any failed check raises (explicit checks, not
`assert`, so they also run under `python -O`), so the exit status says whether the server
conforms.

  .venv/bin/python tools/triton_client_check.py --url 127.0.0.1:PORT --model NAME \
      --input in.safetensors --out out.safetensors [--top-k 3]
"""
import json
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from safetensors.numpy import save_file
from tritonclient.utils import InferenceServerException

from oip_checks import arguments_and_input, check, check_readiness, expect_error


def raw_binary_infer(url, model, inp, out_name):
    """The request tritonclient builds for binary tensors both ways, posted with urllib so that
    the reply's headers and bytes can be checked as they came: (JSON header, raw tail)."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=True)])
    req = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        header_length = resp.headers.get("Inference-Header-Content-Length")
        content_type = resp.headers.get("Content-Type")
        raw = resp.read()
    check(header_length is not None, f"a binary reply has no Inference-Header-Content-Length header (Content-Type {content_type})")
    check(content_type == "application/octet-stream", f"a binary reply has Content-Type {content_type}")
    header_length = int(header_length)
    check(0 < header_length <= len(raw), f"Inference-Header-Content-Length {header_length} for a {len(raw)}-byte reply")
    return json.loads(raw[:header_length]), raw[header_length:]


def main():
    a, x, n, s = arguments_and_input()
    client = httpclient.InferenceServerClient(url=a.url)
    check_readiness(client, a.model)

    server = client.get_server_metadata()
    check(server["name"] == "sorbier", f"server metadata: {server}")
    for ext in ("binary_tensor_data", "classification"):
        check(ext in server["extensions"], f"extension {ext} missing: {server}")

    meta = client.get_model_metadata(a.model)
    check(meta["name"] == a.model, f"model metadata names another model: {meta}")
    check(meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, s, s]}], f"model inputs: {meta['inputs']}")
    [out] = meta["outputs"]
    check(out["datatype"] == "FP32" and out["shape"][0] == -1 and len(out["shape"]) == 2, f"model output: {out}")
    out_name, classes = out["name"], out["shape"][1]
    [version] = meta["versions"]
    check(client.get_model_metadata(a.model, version) == meta, "the metadata of the model's version differs from the model's")
    check(client.is_model_ready(a.model, version), f"version {version} not ready")
    expect_error("unknown version", lambda: client.get_model_metadata(a.model, "0"), "no version")
    expect_error("unknown model", lambda: client.get_model_metadata("no-such-model"), "unknown model")

    config = client.get_model_config(a.model)
    check(config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [3, s, s], f"model config: {config}")
    index = client.get_model_repository_index()
    check({"name": a.model, "version": version, "state": "READY"} in index, f"repository index: {index}")

    # Binary tensors both ways: what the client does by default.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(a.model, [inp], request_id="42")
    binary = r.as_numpy(out_name)
    resp = r.get_response()
    check(resp["model_name"] == a.model and resp["model_version"] == version and resp["id"] == "42", f"infer response header: {resp}")
    check(binary.shape == (n, classes) and binary.dtype == np.float32, f"binary output: {binary.shape} {binary.dtype}")
    # ... and the reply really was binary: tritonclient's as_numpy decodes JSON data too, so
    # check the output carries binary_data_size and no "data", and the raw reply's header.
    out_head = r.get_output(out_name)
    check(out_head is not None and "data" not in out_head, f"the output came as JSON data: {out_head}")
    check(out_head.get("parameters", {}).get("binary_data_size") == n * classes * 4, f"binary_data_size of the output: {out_head}")
    head, tail = raw_binary_infer(a.url, a.model, inp, out_name)
    [raw_out] = head["outputs"]
    check("data" not in raw_out and raw_out["parameters"]["binary_data_size"] == n * classes * 4, f"raw binary reply header: {raw_out}")
    check(len(tail) == n * classes * 4, f"{len(tail)} bytes of binary output for {n} x {classes} float32")
    from_raw = np.frombuffer(tail, dtype="<f4").reshape(n, classes)
    check(np.array_equal(from_raw, binary), "the raw reply's floats differ from tritonclient's")

    # JSON tensors both ways.
    inp_json = httpclient.InferInput("input", list(x.shape), "FP32")
    inp_json.set_data_from_numpy(x, binary_data=False)
    r = client.infer(a.model, [inp_json], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=False)])
    as_json = r.as_numpy(out_name)
    check(as_json.shape == (n, classes), f"JSON output shape {as_json.shape}")

    # The classification extension: top-k as "<value>:<index>:<label>".
    r = client.infer(a.model, [inp], outputs=[httpclient.InferRequestedOutput(out_name, class_count=a.top_k)])
    labels = r.as_numpy(out_name)
    check(labels.shape == (n, a.top_k), f"classification output shape {labels.shape}")
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
