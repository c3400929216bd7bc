#!/usr/bin/env bash
# The end-to-end demo on the synthetic dataset (no download): synth -> prepare-base -> train
# (MEBin binarization, mask-guided ViT on the offline DINOv2 ViT-S/14, evaluation) -> test.
# Re-runnable: each run trains anew. Run ./scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/anomalyncd}
[ -x "$BIN" ] || { echo "demo: $BIN is missing: run ./scripts/setup.sh first" >&2; exit 1; }
DATA=data/synth
BASE=data/synth_base_crop
RUN=outputs/demo/synth

echo "==> 1/4 synthetic dataset -> $DATA"
"$BIN" synth --out "$DATA" --seed 0

echo "==> 2/4 base set cropped by its masks -> $BASE"
"$BIN" prepare-base --images "$DATA/base/images" --masks "$DATA/base/masks" --out "$BASE" --overwrite

echo "==> 3/4 train (binarize + crop the novel images, train, evaluate) -> $RUN"
"$BIN" train --config configs/demo.yaml --dataset folder --category synth \
  --dataset-path "$DATA/test" --anomaly-map-path "$DATA/anomaly_maps" \
  --base-data-path "$BASE" --runner-name demo --overwrite

echo "==> 4/4 test the saved checkpoint"
"$BIN" test --checkpoint "$RUN/checkpoint.safetensors"

echo "==> demo finished"
echo "    dataset:      $DATA"
echo "    run folder:   $RUN (checkpoint, log.txt, predictions.csv, metrics.json)"
echo "    metrics:      outputs/demo/metrics.csv (category,NMI,ARI,F1)"
