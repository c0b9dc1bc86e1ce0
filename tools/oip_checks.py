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
