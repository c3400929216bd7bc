#!/usr/bin/env bash
# The end-to-end demo on the synthetic dataset (no download): runs every pipeline stage this
# version of anomalyncd has and prints where the outputs are. Run ./scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/anomalyncd
[ -x "$BIN" ] || { echo "demo: $BIN is missing: run ./scripts/setup.sh first" >&2; exit 1; }
DATA=data/synth
OUT=outputs/demo
mkdir -p "$OUT"

echo "==> 1. synthetic dataset -> $DATA"
"$BIN" synth --out "$DATA" --seed 0

echo "==> demo finished"
echo "    dataset:        $DATA (train/good, test/<type>, ground_truth/<type>, anomaly_maps/<type>, base/)"
