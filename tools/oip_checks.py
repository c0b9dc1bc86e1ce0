"""What the two Open Inference Protocol conformance scripts (tools/triton_client_check.py over
HTTP, tools/triton_grpc_check.py over gRPC) share: explicit checks that also run under
`python -O` (not `assert`), and the check that a call is refused with a given message."""
from tritonclient.utils import InferenceServerException


class CheckFailed(Exception):
    pass


def check(ok, what):
    """Raises CheckFailed(what) unless ok."""
    if not ok:
        raise CheckFailed(what)


def expect_error(what, call, needle):
    """Calls `call`, which must be refused with an error mentioning `needle`; returns it."""
    try:
        call()
    except InferenceServerException as e:
        msg = str(e)
        check(needle in msg, f"{what}: the error does not mention {needle!r}: {msg}")
        return msg
    raise CheckFailed(f"{what}: the server answered instead of refusing")


def arguments_and_input():
    """The scripts' command line (--url, --model, --input, --out, --top-k) and the input batch
    it names (tensor `input`, N x 3 x S x S float32): (args, batch, N, S)."""
    import argparse

    import numpy as np
    from safetensors.numpy import load_file

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--top-k", type=int, default=3)
    a = ap.parse_args()
    x = load_file(a.input)["input"]
    check(x.dtype == np.float32 and x.ndim == 4, f"the input is not N x 3 x S x S float32: {x.dtype} {x.shape}")
    n, _, s, _ = x.shape
    return a, x, n, s


def check_readiness(client, model):
    """Liveness, readiness, the model's readiness, and an unknown model's lack of it."""
    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    check(client.is_model_ready(model), "model not ready")
    check(not client.is_model_ready("no-such-model"), "an unknown model is ready")
