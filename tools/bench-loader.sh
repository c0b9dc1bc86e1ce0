#!/usr/bin/env bash
# Loader benchmark: sorbier's Loader vs a torchvision DataLoader with PIL, same transforms, same
# worker counts, over ../shared/data/flowers/train (or $1). Prints a table with the ratio.
#   tools/bench-loader.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/flowers/train}"
PY="${SORBIER_PYTHON:-.venv/bin/python}"
WORKERS="${WORKERS:-1,2}"

cargo build --release --quiet --example bench_loader
results=$(mktemp)
trap 'rm -f "$results"' EXIT
target/release/examples/bench_loader "$DATA" --workers "$WORKERS" --batch 32 | tee -a "$results"
"$PY" tools/bench_loader.py "$DATA" --workers "$WORKERS" --batch 32 | tee -a "$results"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
awk '
  { v[$1 " " $2 " " $3] = $4; key[$2 " " $3] = 1 }
  END {
    printf "%-8s %8s %14s %18s %8s\n", "pipeline", "workers", "sorbier img/s", "torchvision img/s", "ratio"
    for (p = 0; p < 2; p++) {
      name = (p == 0) ? "train" : "eval"
      for (k in key) {
        split(k, a, " ")
        if (a[1] != name) continue
        s = v["sorbier " k]; t = v["torchvision " k]
        printf "%-8s %8s %14.1f %18.1f %7.2fx\n", a[1], a[2], s, t, (t > 0 ? s / t : 0)
      }
    }
  }' "$results" | (read -r header; echo "$header"; sort -k1,1r -k2,2n)
