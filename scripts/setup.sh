#!/usr/bin/env bash
# Sets up anomalyncd on a fresh machine; safe to re-run (each step is skipped when already done):
#   1. a project-local Python venv (.venv) with torch==2.13.0 from PyPI (the libtorch tch 0.26 needs),
#   2. the release binary built against it (LIBTORCH_USE_PYTORCH=1, rpath to torch's lib folder),
#   3. the offline default backbone weights (data/weights/), when the weights script exists.
# Environment: ANOMALYNCD_SKIP_WEIGHTS=1 skips step 3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.13.0"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || fail "python3 not found: install Python 3.9 or newer with venv support (e.g. apt-get install python3 python3-venv)"
command -v cargo >/dev/null || fail "cargo not found: install the Rust toolchain (rustup) and re-run"

free_gb() { df -Pk "$ROOT" | awk 'NR==2 {print int($4/1024/1024)}'; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the Python venv in $VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed: install the venv module (e.g. apt-get install python3-venv)"
fi

if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  step "torch $TORCH_VERSION already in the venv"
else
  if [ "$(free_gb)" -lt 8 ]; then
    fail "only $(free_gb) GB free on $(df -P "$ROOT" | awk 'NR==2 {print $6}'); torch with its CUDA libraries needs about 8 GB: free some space and re-run"
  fi
  step "installing torch==$TORCH_VERSION from PyPI into the venv (~5 GB with its CUDA libraries; pip caches it after the first time)"
  "$VENV/bin/pip" install --disable-pip-version-check -q "torch==$TORCH_VERSION" \
    || fail "pip could not install torch==$TORCH_VERSION: check that PyPI is reachable (pip's message above) and that the disk is not full (df -h)"
fi

step "building the release binary against the venv's libtorch (torch-sys takes ~2 minutes the first time)"
export LIBTORCH_USE_PYTORCH=1
export PATH="$VENV/bin:$PATH"
cargo build --release --locked || fail "cargo build failed (see above)"

if [ "${ANOMALYNCD_SKIP_WEIGHTS:-0}" != "1" ] && [ -x scripts/prepare_weights.sh ]; then
  step "preparing the offline default backbone (data/weights/)"
  scripts/prepare_weights.sh || fail "could not prepare the default backbone weights (see above)"
fi

"$ROOT/target/release/anomalyncd" --version >/dev/null 2>&1 \
  || fail "the binary target/release/anomalyncd does not start; run it by hand to see why"
step "ready: $ROOT/target/release/anomalyncd"
"$ROOT/target/release/anomalyncd" --version | sed 's/^/    /'
