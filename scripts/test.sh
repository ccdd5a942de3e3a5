#!/usr/bin/env bash
# The whole test suite, real-model tests included: fetches the models if missing (idempotent),
# then runs every test of the workspace in release mode (real models need optimised code).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh --test generation   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# Pin the kernel thread count: candle's pools spin, and tests run side by side.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
cargo test --release --workspace "$@"
