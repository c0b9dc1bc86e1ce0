#!/usr/bin/env bash
# Training throughput: sorbier (crates/train/examples/bench_train.rs) beside PyTorch (tools/bench_train.py),
# each on pre-made tensors and from JPEGs through its loader, with the same model, size, batch
# and worker count. Builds the release example if needed, then prints a table.
#
#   tools/bench-train.sh [DATA_DIR] [--arch resnet18] [--size 112] [--batch 32] [--workers 2]
#                        [--steps 20] [--device cpu] [--channels-last] [--bf16] [--drop-path R]
# PYTORCH_ARGS adds options for the PyTorch side only (e.g. --fused).
#
# sorbier keeps freed tensors in the process (crates/train/src/malloc.rs; SORBIER_MALLOC=default
# turns it off). PyTorch runs twice: as installed, and with the same glibc settings through
# glibc's environment variables (`pytorch-retain`), so the table separates the allocator from
# the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/flowers/train
if [[ $# -gt 0 && $1 != --* ]]; then data=$1; shift; fi
if [[ ${SORBIER_BENCH_NO_BUILD:-0} != 1 ]]; then
  cargo build --release -p sorbier-train --example bench_train >&2
fi
py=${SORBIER_PYTHON:-.venv/bin/python}
rs=$(target/release/examples/bench_train "$data" "$@")
pt=$("$py" tools/bench_train.py "$data" "$@" ${PYTORCH_ARGS:-})
ptr=$(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((1 << 62)) "$py" tools/bench_train.py "$data" "$@" ${PYTORCH_ARGS:-} | sed 's/^pytorch /pytorch-retain /')
echo "$rs"; echo "$pt"; echo "$ptr"
echo
printf '%-15s %14s %14s %8s\n' engine 'tensors img/s' 'jpeg img/s' ratio
for e in sorbier pytorch pytorch-retain; do
  all="$rs"$'\n'"$pt"$'\n'"$ptr"
  get() { awk -v e="$e" -v k="$1" '$1==e && $2==k {print $3}' <<<"$all"; }
  printf '%-15s %14s %14s %8s\n' "$e" "$(get tensors)" "$(get jpeg)" "$(get ratio)"
done
