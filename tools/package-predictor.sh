#!/usr/bin/env bash
# Builds the standalone predictor and packs it with the ONNX Runtime library it loads:
#   dist/sorbier-predictor-<version>-linux-x86_64.tar.gz
#     sorbier-predictor-<version>/predictor
#     sorbier-predictor-<version>/libonnxruntime.so.<ort version>   (found next to the binary)
#     sorbier-predictor-<version>/README.txt
#   with --with-cuda also libonnxruntime_providers_{shared,cuda}.so (the CUDA execution
#   provider; the target machine then needs CUDA 13 and cuDNN 9).
# The binary comes from the prediction crate, which has no libtorch in its dependency graph (checked with
# ldd below); it runs on any x86_64 Linux with a glibc at least as new as the build machine's.
# Usage: tools/package-predictor.sh [--with-cuda] [--out DIR] [--binary PATH]
#   (prints the archive path last; --binary packs an already-built predictor instead of making
#   the release build, as the test suite does with the one it has built)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

WITH_CUDA=0
OUT="$ROOT/dist"
BIN=
while [ $# -gt 0 ]; do
  case "$1" in
    --with-cuda) WITH_CUDA=1 ;;
    --out) OUT=$2; shift ;;
    --binary) BIN=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CAPI="$ROOT/.venv/site/onnxruntime/capi"
ORT_LIB=$(ls "$CAPI"/libonnxruntime.so.[0-9]* 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$ORT_LIB" ]; then
  echo "no libonnxruntime.so.<version> in $CAPI: run tools/setup.sh first" >&2
  exit 1
fi

# The workspace's own build (features resolved across every member, as `cargo build --release`
# resolves them), limited to the predictor binary.
if [ -z "$BIN" ]; then
  cargo build --release --bin predictor >&2
  BIN="$ROOT/target/release/predictor"
fi
[ -x "$BIN" ] || { echo "no predictor binary at $BIN" >&2; exit 1; }
if ldd "$BIN" | grep -Eq 'libtorch|libc10'; then
  echo "refusing to package: $BIN links libtorch:" >&2
  ldd "$BIN" >&2
  exit 1
fi

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
NAME="sorbier-predictor-$VERSION"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
DIR="$STAGE/$NAME"
mkdir -p "$DIR"
cp "$BIN" "$DIR/predictor"
strip "$DIR/predictor" 2>/dev/null || true
cp "$ORT_LIB" "$DIR/"
if [ "$WITH_CUDA" = 1 ]; then
  for lib in libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    [ -f "$CAPI/$lib" ] || { echo "missing $CAPI/$lib (is onnxruntime-gpu installed?)" >&2; exit 1; }
    cp "$CAPI/$lib" "$DIR/"
  done
fi
cat > "$DIR/README.txt" <<EOF
sorbier predictor $VERSION — ONNX Runtime inference for models exported by \`trainer export\`.

Runs with nothing else installed (x86_64 Linux, glibc as new as the build machine's):
the ONNX Runtime library ($(basename "$ORT_LIB")) is found next to the binary.
$( [ "$WITH_CUDA" = 1 ] && echo "CUDA execution provider included: needs an NVIDIA driver, CUDA 13 and cuDNN 9 (--device cuda)." || echo "CPU only (rebuild with --with-cuda for the CUDA execution provider)." )

  ./predictor info model.onnx
  ./predictor predict --model model.onnx --images test/ --sample-submission sample_submission.csv --out submission.csv
  ./predictor predict --model a.onnx --model b.onnx --tta flips --top-k 3 --images test/ --out submission.csv
  ./predictor evaluate --model model.onnx --data labelled_folder/ --report report/
  ./predictor score --submission submission.csv --solution solution.csv

Library lookup: --ort-lib PATH, then \$SORBIER_ORT_LIB, \$ORT_DYLIB_PATH, then this folder and ../lib.
EOF
mkdir -p "$OUT"
ARCHIVE="$OUT/$NAME-linux-x86_64.tar.gz"
tar -C "$STAGE" -czf "$ARCHIVE.tmp" "$NAME"
mv "$ARCHIVE.tmp" "$ARCHIVE"
echo "$ARCHIVE"
