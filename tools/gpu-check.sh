#!/usr/bin/env bash
# Every GPU check in one go, on a machine with an NVIDIA GPU, using binaries built elsewhere
# (this script builds nothing). Prints a short table last.
#
# Needs, relative to the repository root:
#   target/release/trainer, target/release/examples/bench_train  (cargo build --release --bins --example bench_train)
#   target/release/predictor                                     (optional: the CUDA execution provider check)
# and the environment:
#   TORCH_LIB   torch/lib of a torch 2.11.0 CUDA install   (default: /opt/torch/.venv/.../torch/lib)
#   PYTHON      that install's python, for the PyTorch peer (default: /opt/torch/.venv/bin/python)
#   ORT_LIB     libonnxruntime.so.* of onnxruntime-gpu ≥ 1.31 with its CUDA provider (optional)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/torch/.venv/bin/python}
TORCH_LIB=${TORCH_LIB:-$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
W=$(mktemp -d)
DATA=${DATA:-../shared/data/flowers}
T=target/release
declare -a ROWS
row() { ROWS+=("$(printf '%-44s %s' "$1" "$2")"); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. CUDA training steps of ResNet-152 at 224 px (fp32, then fp16 autocast with loss scaling).
for amp in "" "--amp"; do
  if $T/trainer train "$DATA/train" --out "$W/run152$amp" --arch resnet152 --image-size 224 \
       --epochs 2 --max-steps-per-epoch 20 --batch-size 64 --device cuda $amp --quiet --no-report >"$W/train$amp.log" 2>&1; then
    row "trainer resnet152 cuda ${amp:-fp32}: 2×20 steps" "ok, $(grep -o '[0-9.]* img/s' "$W/train$amp.log" | tail -n1)"
  else
    row "trainer resnet152 cuda ${amp:-fp32}" "FAILED: $(tail -n 3 "$W/train$amp.log" | tr '\n' ' ')"
  fi
done

# 2. Training throughput: JPEG pipeline vs pre-made tensors, sorbier and PyTorch eager.
rs=$($T/examples/bench_train "$DATA/train" --arch resnet152 --size 224 --batch 64 --workers 16 --steps 30 --device cuda 2>"$W/bench_rs.err")
pt=$("$PYTHON" tools/bench_train.py "$DATA/train" --arch resnet152 --size 224 --batch 64 --workers 16 --steps 30 --device cuda 2>"$W/bench_pt.err")
for e in sorbier pytorch; do
  all="$rs"$'\n'"$pt"
  get() { awk -v e="$e" -v k="$1" '$1==e && $2==k {print $3}' <<<"$all"; }
  row "train img/s $e resnet152 224 b64 (tensors/jpeg/ratio)" "$(get tensors) / $(get jpeg) / $(get ratio)"
done

# 3. Export and the CUDA execution provider.
if $T/trainer export "$W/run152" -o "$W/m152.onnx" >"$W/export.log" 2>&1; then
  row "export resnet152" "ok ($(du -h "$W/m152.onnx" | cut -f1))"
  if [ -n "${ORT_LIB:-}" ] && [ -x $T/predictor ]; then
    if $T/predictor predict --ort-lib "$ORT_LIB" --model "$W/m152.onnx" --images "$DATA/test" \
         --out "$W/sub.csv" --device cuda --batch-size 64 --quiet >"$W/predict.log" 2>&1; then
      row "predictor cuda EP resnet152" "ok, $(grep -o '[0-9.]* images/s' "$W/predict.log" | tail -n1)"
    else
      row "predictor cuda EP resnet152" "FAILED: $(tail -n 3 "$W/predict.log" | tr '\n' ' ')"
    fi
  else
    row "predictor cuda EP" "not run (set ORT_LIB to onnxruntime-gpu ≥ 1.31)"
  fi
else
  row "export resnet152" "FAILED: $(tail -n 3 "$W/export.log" | tr '\n' ' ')"
fi

echo
echo "check                                        result"
printf '%s\n' "${ROWS[@]}"
