#!/usr/bin/env bash
# Load benchmark of `predictor serve` on loopback beside the batch predictor, in one run (see
# crates/predict/examples/bench_serve.rs): one client's latency against one forward pass, then N
# concurrent clients posting flowers photos for a fixed time — throughput, p50/p95/p99, mean
# batch size, errors, peak RSS, and the ratio to `predictor predict`'s images/s.
# Extra arguments go to the benchmark, e.g. `--clients 16 --seconds 20 --arch resnet50`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sorbier-predict --bin predictor
exec cargo run --release -p sorbier-predict --example bench_serve -- "$@"
