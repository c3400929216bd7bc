#!/usr/bin/env bash
# The MTD evaluation: novel = MTD's 5 defect types, base = SD-900 cropped by its masks,
# backbone = the offline DINOv2 ViT-S/14, anomaly maps from (a) ../shared/data/mtd_oracle_maps and
# (b) the built-in detector (DINOv2 ViT-S/14) fitted on MTD's normal tiles, or (c) zero-shot. Prints and saves the
# image-level NMI / ARI / F1 of each (outputs/eval_mtd/metrics.csv) and the time of each stage.
#
#   ./experiments/eval_mtd.sh                 # both map sources
#   MAPS=oracle ./experiments/eval_mtd.sh     # only the oracle maps (MAPS=detector: only the detector;
#                                             # MAPS=zero-shot: the detector without normal images)
#   DETECTOR_MAPS=DIR / ZERO_SHOT_MAPS=DIR    # reuse maps an earlier `detect` wrote
#   AUTO_TRAIN=1 ./experiments/eval_mtd.sh    # also train with --num-classes auto (when it picks K != 5)
#
# After each training run, the k-means baseline clusters the same crops with the pretrained
# backbone (K = 5, and K estimated by --num-classes auto), to show what training adds.
#
# Settings: configs/mtd.yaml (paper defaults, 50 epochs, on the frozen-prefix cache with 4 views
# per crop); BASE_PER_CLASS SD-900 images per class (default 100 of 300) to fit 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/anomalyncd
[ -x "$BIN" ] || { echo "eval_mtd: $BIN is missing: run ./scripts/setup.sh first" >&2; exit 1; }
SHARED=${SHARED:-../shared/data}
MAPS=${MAPS:-both}
BASE_PER_CLASS=${BASE_PER_CLASS:-100}
CONFIG=${CONFIG:-configs/mtd.yaml}
WORK=${WORK:-data/eval_mtd}
RUNNER=eval_mtd
for d in "$SHARED/mtd/test" "$SHARED/mtd/train/MT_Free" "$SHARED/sd900/images"; do
  [ -d "$d" ] || { echo "eval_mtd: $d is missing (set SHARED=<folder holding mtd/ and sd900/>)" >&2; exit 2; }
done
mkdir -p "$WORK"
stamp() { date +%s; }
# Runs a stage, printing its wall time and peak memory (GNU time, when the machine has it).
timed() { # label, command...
  local label=$1; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "    $label: %e s wall, peak memory %M KiB" "$@"
  else
    local t; t=$(stamp); "$@"; echo "    $label: $(( $(stamp) - t )) s wall"
  fi
}

t0=$(stamp)
echo "==> base set: SD-900 cropped by its masks ($BASE_PER_CLASS images per class) -> $WORK/sd900_base"
timed prepare-base "$BIN" prepare-base --images "$SHARED/sd900/images" --masks "$SHARED/sd900/masks" \
  --out "$WORK/sd900_base" --max-per-class "$BASE_PER_CLASS" --overwrite -q

run_source() { # name, maps folder
  local name=$1 maps=$2
  echo "==> train + evaluate on $name maps ($maps)"
  timed "train + evaluate ($name)" "$BIN" train --config "$CONFIG" --dataset mtd --category "mtd_$name" \
    --dataset-path "$SHARED/mtd/test" --anomaly-map-path "$maps" \
    --base-data-path "$WORK/sd900_base" --runner-name "$RUNNER" --overwrite
  local crops="outputs/$RUNNER/mtd_$name/binarize"
  echo "==> k-means baseline on the same crops (K = 5 and K estimated)"
  timed "baseline K=5 ($name)" "$BIN" baseline --method kmeans --config "$CONFIG" --data "$crops" \
    --num-classes 5 --category "mtd_${name}_kmeans_k5" --out "outputs/$RUNNER/baseline_${name}_k5" --overwrite
  timed "baseline auto K ($name)" "$BIN" baseline --method kmeans --config "$CONFIG" --data "$crops" \
    --num-classes auto --base-data-path "$WORK/sd900_base" --category "mtd_${name}_kmeans_auto" \
    --out "outputs/$RUNNER/baseline_${name}_auto" --overwrite
  if [ "${AUTO_TRAIN:-0}" = 1 ]; then
    timed "train auto K ($name)" "$BIN" train --config "$CONFIG" --dataset mtd --category "mtd_${name}_autok" \
      --dataset-path "$SHARED/mtd/test" --anomaly-map-path "$maps" --num-classes auto \
      --base-data-path "$WORK/sd900_base" --runner-name "$RUNNER" --overwrite
  fi
}

if [ "$MAPS" = both ] || [ "$MAPS" = oracle ]; then
  run_source oracle "$SHARED/mtd_oracle_maps"
fi
if [ "$MAPS" = both ] || [ "$MAPS" = detector ]; then
  if [ -n "${DETECTOR_MAPS:-}" ]; then
    echo "==> anomaly maps from the built-in detector: reusing $DETECTOR_MAPS"
  else
    DETECTOR_MAPS="$WORK/detector_maps"
    echo "==> anomaly maps from the built-in detector fitted on MT_Free -> $DETECTOR_MAPS"
    timed detect "$BIN" detect --train "$SHARED/mtd/train/MT_Free" --test "$SHARED/mtd/test" \
      --masks "$SHARED/mtd/ground_truth" --out "$DETECTOR_MAPS" --overwrite
  fi
  run_source detector "$DETECTOR_MAPS"
fi
if [ "$MAPS" = zero-shot ]; then
  if [ -n "${ZERO_SHOT_MAPS:-}" ]; then
    echo "==> zero-shot anomaly maps: reusing $ZERO_SHOT_MAPS"
  else
    ZERO_SHOT_MAPS="$WORK/zero_shot_maps"
    echo "==> zero-shot anomaly maps of the built-in detector (no normal images) -> $ZERO_SHOT_MAPS"
    timed detect "$BIN" detect --zero-shot --test "$SHARED/mtd/test" \
      --masks "$SHARED/mtd/ground_truth" --out "$ZERO_SHOT_MAPS" --overwrite
  fi
  run_source zero_shot "$ZERO_SHOT_MAPS"
fi

echo "==> image-level results (outputs/$RUNNER/metrics.csv; paper, MTD: PatchCore+AnomalyNCD 0.380/0.390/0.617, MuSc+AnomalyNCD 0.268/0.228/0.509)"
cat "outputs/$RUNNER/metrics.csv"
for f in outputs/$RUNNER/baseline_*/metrics.csv; do [ -f "$f" ] && tail -n +2 "$f"; done
echo "    total: $(( $(stamp) - t0 )) s"
