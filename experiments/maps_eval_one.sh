#!/usr/bin/env bash
# Localisation of one folder of maps, as the quality benchmark measures it (issue 25, item 3):
#   experiments/maps_eval_one.sh PROTOCOL MAPS OUT [binarize --set ...]
# PROTOCOL: mtd | tire. Writes OUT/maps_eval.json (anomalyncd maps-eval), OUT/binarize (MEBin with
# the default settings plus any extra arguments) and OUT/crops_vs_gt.txt (experiments/crops_vs_gt.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/anomalyncd}
SHARED=${SHARED:-$ROOT/../shared/data}
PY=${GT_PYTHON:-$ROOT/.venv/bin/python}
proto=$1 maps=$2 out=$3; shift 3
case $proto in
  mtd) images=$SHARED/mtd/test gt=$SHARED/mtd/ground_truth ;;
  tire) images=${TIRE_IMAGES:-$ROOT/outputs/maps_variants/tire_images} gt=$SHARED/tire/ground_truth ;;
  *) echo "unknown protocol $proto" >&2; exit 2 ;;
esac
mkdir -p "$out"
"$BIN" --threads 1 -q maps-eval --anomaly-maps "$maps" --masks "$gt" --images "$images" --skip-unpaired --out "$out/maps_eval.json" >"$out/maps_eval.txt"
"$BIN" --threads 1 -q binarize --anomaly-maps "$maps" --images "$images" --out "$out/binarize" --overwrite "$@" >/dev/null
"$PY" "$ROOT/experiments/crops_vs_gt.py" "$out/binarize" "$gt" >"$out/crops_vs_gt.txt"
grep overall "$out/maps_eval.txt" || tail -3 "$out/maps_eval.txt"
head -1 "$out/crops_vs_gt.txt" | sed 's|^.*: [0-9]* maps; ||'
