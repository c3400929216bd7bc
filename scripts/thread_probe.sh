#!/usr/bin/env bash
# Why training collapses beside a busy process: `cargo bench --bench train` (short: 1 uncached
# step, 8 cached steps, 2 views) under thread settings set by hand, each printing its idle rates
# and its rates beside one busy single-threaded process in the same run. Run on an otherwise idle
# machine (check `uptime`).
#
#   ./scripts/thread_probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH_USE_PYTORCH=1 PATH="$(pwd)/.venv/bin:$PATH"
export BENCH_STEPS=${BENCH_STEPS:-1} BENCH_CACHED_STEPS=${BENCH_CACHED_STEPS:-8} BENCH_VIEWS=${BENCH_VIEWS:-2} BENCH_BF16=skip
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # label, env...
  local label=$1; shift
  echo "==> $label"
  env "$@" cargo bench --bench train 2>/dev/null | grep -E "^(uncached|frozen|beside|training step)"
}
run "default (libtorch: 2 threads, OpenMP's default wait policy)"
run "OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers instead of spinning)" OMP_WAIT_POLICY=PASSIVE
run "OMP_NUM_THREADS=1 (libtorch on one thread)" OMP_NUM_THREADS=1
