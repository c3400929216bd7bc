#!/usr/bin/env bash
# Why training collapses beside a busy process, and what `--threads auto` keeps: `cargo bench
# --bench train` (short: 1 uncached step, 8 cached steps, 2 views) under each thread setting, each
# printing its idle rates and its rates beside one busy single-threaded process in the same run. Run on an otherwise idle
# machine (check `uptime`).
#
#   ./experiments/thread_probe.sh
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
# PROBE="auto fixed" runs only those settings (default: all four).
for setting in ${PROBE:-auto fixed passive one}; do
  case $setting in
    auto) run "--threads auto (the default: libtorch's threads follow the free cores)" BENCH_THREADS=auto ;;
    fixed) run "--threads $(nproc) (libtorch's own count, fixed: the default before --threads auto)" BENCH_THREADS="$(nproc)" ;;
    passive) run "--threads $(nproc) with OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers instead of spinning)" BENCH_THREADS="$(nproc)" OMP_WAIT_POLICY=PASSIVE ;;
    one) run "--threads 1" BENCH_THREADS=1 ;;
    *) echo "thread_probe: unknown setting $setting (auto, fixed, passive, one)" >&2; exit 2 ;;
  esac
done
