#!/usr/bin/env bash
# Int8 benchmark beside the prediction benchmark: for ResNet-18 and ResNet-50 at 224 px (random
# weights) or for trained models (--models a.onnx,b.onnx --solution solution.csv), model-only
# and end-to-end images/s and top-1 of the float32 model, sorbier's int8 (`predictor quantize`)
# and ONNX Runtime's Python quantize_static int8 (tools/quantize_peer.py), calibrated on the same
# images, same threads, in one run. Extra arguments go to the benchmark, e.g.
# `--threads 2 --workers 2 --archs resnet50`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The prediction crate only: no libtorch needed.
exec cargo run --release -p sorbier-predict --example bench_int8 -- "$@"
