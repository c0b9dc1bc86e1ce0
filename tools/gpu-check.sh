#!/usr/bin/env bash
# Every GPU check in one go, on a machine with an NVIDIA GPU, using binaries built elsewhere
# (this script builds nothing). Prints a short table last.
#
# Needs, relative to the repository root:
#   target/release/trainer, target/release/examples/bench_train  (cargo build --release --bins -p sorbier-train --example bench_train)
#   target/release/predictor                                     (optional: the CUDA execution provider check)
# and the environment:
#   TORCH_LIB   torch/lib of a torch 2.11.0 CUDA install   (default: /opt/torch/.venv/.../torch/lib)
#   PYTHON      that install's python, for the PyTorch peer (default: /opt/torch/.venv/bin/python)
#   ORT_LIB     libonnxruntime.so.* of onnxruntime-gpu ≥ 1.31 with its CUDA provider (optional)
# and, to rehearse the script elsewhere (e.g. DEVICE=cpu ARCH=resnet18 SIZE=64 BATCH=8 STEPS=3):
#   DEVICE (cuda)  ARCH (resnet152)  SIZE (224)  BATCH (64)  STEPS (30)  WORKERS (all cores)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/torch/.venv/bin/python}
TORCH_LIB=${TORCH_LIB:-$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
DATA=${DATA:-../shared/data/flowers}
T=target/release
DEVICE=${DEVICE:-cuda} ARCH=${ARCH:-resnet152} SIZE=${SIZE:-224} BATCH=${BATCH:-64} STEPS=${STEPS:-30}
WORKERS=${WORKERS:-$(nproc)}
declare -a ROWS
row() { ROWS+=("$(printf '%-44s %s' "$1" "$2")"); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. Training steps through the trainer: fp32, fp16 autocast with loss scaling, bf16 autocast
#    with channels-last.
for amp in "" "--amp" "--amp --amp-dtype bf16 --channels-last"; do
  tag=${amp// /}
  if $T/trainer train "$DATA/train" --out "$W/run$tag" --arch "$ARCH" --image-size "$SIZE" --epochs 2 \
       --max-steps-per-epoch 20 --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE" $amp --quiet --no-report >"$W/train$tag.log" 2>&1; then
    row "trainer $ARCH $DEVICE ${amp:-fp32}: 2×20 steps" "ok, $(grep -o '[0-9.]* img/s' "$W/train$tag.log" | tail -n1), $(grep -m1 '^device' "$W/train$tag.log")"
  else
    row "trainer $ARCH $DEVICE ${amp:-fp32}" "FAILED: $(tail -n 3 "$W/train$tag.log" | tr '\n' ' ')"
  fi
done

# 2. Training throughput: JPEG pipeline vs pre-made tensors, sorbier and PyTorch eager, in
#    fp32 (sorbier's fused Adam against PyTorch's default), then bf16 autocast + channels-last.
B=(--arch "$ARCH" --size "$SIZE" --batch "$BATCH" --workers "$WORKERS" --steps "$STEPS" --device "$DEVICE")
for variant in "" "--bf16 --channels-last"; do
  rs=$($T/examples/bench_train "$DATA/train" "${B[@]}" $variant 2>"$W/bench_rs.err") || rs="sorbier failed $(tail -n 2 "$W/bench_rs.err" | tr '\n' ' ')"
  pt=$("$PYTHON" tools/bench_train.py "$DATA/train" "${B[@]}" $variant 2>"$W/bench_pt.err") || pt="pytorch failed $(tail -n 2 "$W/bench_pt.err" | tr '\n' ' ')"
  all="$rs"$'\n'"$pt"
  for e in sorbier pytorch; do
    get() { awk -v e="$e" -v k="$1" '$1==e && $2==k {print $3}' <<<"$all"; }
    if grep -q "^$e failed" <<<"$all"; then
      row "train img/s $e ${variant:-fp32}" "FAILED: $(grep "^$e failed" <<<"$all" | cut -d' ' -f3-)"
    else
      row "train img/s $e $ARCH $SIZE b$BATCH ${variant:-fp32} (tensors/jpeg/ratio)" "$(get tensors) / $(get jpeg) / $(get ratio)"
    fi
  done
done

# 3. Export, then the predictor on the exported model (the CUDA execution provider when
#    DEVICE is cuda: needs ORT_LIB pointing at onnxruntime-gpu ≥ 1.31).
if $T/trainer export "$W/run" -o "$W/model.onnx" >"$W/export.log" 2>&1; then
  row "export $ARCH" "ok ($(du -h "$W/model.onnx" | cut -f1))"
  if [ -z "${ORT_LIB:-}" ] || [ ! -x $T/predictor ]; then
    row "predictor $DEVICE" "not run (needs target/release/predictor and ORT_LIB)"
  elif $T/predictor predict --ort-lib "$ORT_LIB" --model "$W/model.onnx" --images "$DATA/test" \
         --out "$W/sub.csv" --device "$DEVICE" --batch-size "$BATCH" --quiet >"$W/predict.log" 2>&1; then
    row "predictor $DEVICE $ARCH" "ok, $(grep -o '[0-9.]* images/s' "$W/predict.log" | tail -n1), $(($(wc -l <"$W/sub.csv") - 1)) rows"
  else
    row "predictor $DEVICE $ARCH" "FAILED: $(tail -n 3 "$W/predict.log" | tr '\n' ' ')"
  fi
else
  row "export $ARCH" "FAILED: $(tail -n 3 "$W/export.log" | tr '\n' ' ')"
fi

echo
echo "check                                        result"
printf '%s\n' "${ROWS[@]}"
