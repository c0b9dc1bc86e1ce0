#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo test --workspace --no-fail-fast "$@"
