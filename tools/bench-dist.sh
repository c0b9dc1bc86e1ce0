#!/usr/bin/env bash
# Data-parallel training throughput on the same 2 cores: one process × 2 threads against
# 2 ranks × 1 thread (Gloo over loopback, launched by torchrun), for sorbier
# (crates/train/examples/bench_dist.rs: the trainer's step with c10d's bucketed allreduce) and
# for PyTorch DDP (tools/ddp_peer.py bench), the same model, size and global batch, on pre-made
# random batches; then the bus bandwidth c10d's Gloo allreduce reaches. Prints JSON lines and
# a table.
#
#   tools/bench-dist.sh [--global-batch 32] [--steps 8] [--lite0]
# --lite0 adds EfficientNet-Lite0 at 224 px to ResNet-18 at 112 px.
# Both sides keep freed memory in the process (sorbier's malloc settings; PyTorch gets glibc's
# equivalent through its environment variables), so the table compares engines, not allocators.
set -euo pipefail
cd "$(dirname "$0")/.."
global=32 steps=8 models=("resnet18 112")
while [[ $# -gt 0 ]]; do
  case $1 in
    --global-batch) global=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --lite0) models+=("efficientnet-lite0 224"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ ${SORBIER_BENCH_NO_BUILD:-0} != 1 ]]; then
  cargo build --release -p sorbier-train --example bench_dist >&2
fi
py=${SORBIER_PYTHON:-.venv/bin/python}
torchrun=$(dirname "$py")/torchrun
bin=target/release/examples/bench_dist
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((1 << 62))
two=(--standalone --nproc-per-node 2)
lines=()
for m in "${models[@]}"; do
  read -r arch size <<<"$m"
  half=$((global / 2))
  lines+=("$("$bin" --arch "$arch" --size "$size" --batch "$global" --threads 2 --steps "$steps")")
  lines+=("$(OMP_NUM_THREADS=1 "$torchrun" "${two[@]}" --no-python "$bin" --arch "$arch" --size "$size" --batch "$half" --threads 1 --steps "$steps" 2>/dev/null)")
  lines+=("$("$py" tools/ddp_peer.py bench --arch "$arch" --size "$size" --batch-size "$global" --threads 2 --steps "$steps")")
  lines+=("$(OMP_NUM_THREADS=1 "$torchrun" "${two[@]}" tools/ddp_peer.py bench --arch "$arch" --size "$size" --batch-size "$half" --threads 1 --steps "$steps" 2>/dev/null)")
done
lines+=("$("$torchrun" "${two[@]}" --no-python "$bin" --allreduce-mib 64 2>/dev/null)")
lines+=("$("$torchrun" "${two[@]}" tools/ddp_peer.py allreduce-bandwidth --mib 64 2>/dev/null)")
printf '%s\n' "${lines[@]}"
echo
printf '%s\n' "${lines[@]}" | "$py" tools/bench_dist_table.py
