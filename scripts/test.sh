#!/usr/bin/env bash
# Runs the test suite: sets up (idempotent: venv + torch + release build), then all tests in the
# release profile (tests that read ../shared are skipped with a reason when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export LIBTORCH_USE_PYTORCH=1
export PATH="$(pwd)/.venv/bin:$PATH"
echo "==> cargo test --release"
cargo test --release --locked "$@"
