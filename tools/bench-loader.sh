#!/usr/bin/env bash
# Loader benchmark: sorbier's Loader vs a torchvision DataLoader with PIL, same transforms, same
# worker counts, over ../shared/data/flowers/train (or $1). Pipelines: train (RandomResizedCrop
# 224 + flips), autoaug (the same + timm's RandAugment $AUTO_AUGMENT after the flips), eval
# (Resize 256 + CenterCrop 224). Prints a table with the ratio.
#   tools/bench-loader.sh [DATA_DIR]      (WORKERS=1,2 PIPELINES=train,autoaug,eval AUTO_AUGMENT=rand-m9-mstd0.5)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/flowers/train}"
PY="${SORBIER_PYTHON:-.venv/bin/python}"
WORKERS="${WORKERS:-1,2}"
PIPELINES="${PIPELINES:-train,autoaug,eval}"
AUTO_AUGMENT="${AUTO_AUGMENT:-rand-m9-mstd0.5}"

cargo build --release --quiet -p sorbier --example bench_loader
results=$(mktemp)
trap 'rm -f "$results"' EXIT
"${CARGO_TARGET_DIR:-target}/release/examples/bench_loader" "$DATA" --workers "$WORKERS" --batch 32 \
  --pipelines "$PIPELINES" --auto-augment "$AUTO_AUGMENT" | tee -a "$results"
"$PY" tools/bench_loader.py "$DATA" --workers "$WORKERS" --batch 32 \
  --pipelines "$PIPELINES" --auto-augment "$AUTO_AUGMENT" | tee -a "$results"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); autoaug = $AUTO_AUGMENT"
awk -v order="$PIPELINES" '
  { v[$1 " " $2 " " $3] = $4; key[$2 " " $3] = 1 }
  END {
    n = split(order, names, ",")
    for (i = 1; i <= n; i++) rank[names[i]] = i
    for (k in key) {
      split(k, a, " ")
      s = v["sorbier " k]; t = v["torchvision " k]
      printf "%d %-8s %8s %14.1f %18.1f %7.2fx\n", rank[a[1]], a[1], a[2], s, t, (t > 0 ? s / t : 0)
    }
  }' "$results" | sort -k1,1n -k3,3n | cut -d" " -f2- \
  | (printf "%-8s %8s %14s %18s %8s\n" "pipeline" "workers" "sorbier img/s" "torchvision img/s" "ratio"; cat)
