#!/usr/bin/env bash
# Predictor benchmark on the flowers test set: sorbier end-to-end, model-only and
# preprocessing-only images/s beside the Python peer (PIL + torchvision + onnxruntime), in one
# run. Extra arguments go to the benchmark, e.g. `--threads 2 --workers 2 --archs resnet18`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The prediction crate only: no libtorch needed, and the release build the packaging script makes is reused.
exec cargo run --release -p sorbier-predict --example bench_predict -- "$@"
