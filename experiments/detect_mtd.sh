#!/usr/bin/env bash
# The built-in detector on the real Magnetic-Tile-Defect data (../shared/data/mtd): the
# localisation benchmark of docs/detect.md. Fits on the 952 normal tiles of train/MT_Free, maps
# the 392 defective test tiles, and scores the maps against the ground truth with `maps-eval`
# (argmax in defect, best-threshold IoU, MEBin crops touching a defect, pixel AUROC / AUPRO);
# then the same zero-shot (no normal images). Each detect runs under /usr/bin/time -v.
#
#   experiments/detect_mtd.sh [WORK_DIR] [extra detect flags…]     (WORK_DIR default outputs/mtd_detect)
#   MODES="fit" experiments/detect_mtd.sh …                          (only the fitted detector; "zero-shot" only the other)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/anomalyncd}"
SRC="${MTD:-../shared/data/mtd}"
WORK="${1:-outputs/mtd_detect}"
shift || true
MODES="${MODES:-fit zero-shot}"
[ -x "$BIN" ] || { echo "detect_mtd: $BIN is missing: run scripts/setup.sh first" >&2; exit 1; }
[ -d "$SRC/train/MT_Free" ] || { echo "detect_mtd: $SRC/train/MT_Free not found (set MTD=DIR)" >&2; exit 2; }
mkdir -p "$WORK"

for mode in $MODES; do
    out="$WORK/maps_$mode"
    case "$mode" in
        fit) src=(--train "$SRC/train/MT_Free") ;;
        zero-shot) src=(--zero-shot) ;;
        *) echo "detect_mtd: unknown mode $mode (fit, zero-shot)" >&2; exit 2 ;;
    esac
    echo "==> detect ($mode) -> $out"
    /usr/bin/time -v -o "$WORK/detect_$mode.time.txt" "$BIN" detect "${src[@]}" --test "$SRC/test" \
        --masks "$SRC/ground_truth" --out "$out" --overwrite "$@"
    grep -E "Elapsed|Maximum resident" "$WORK/detect_$mode.time.txt"
    echo "==> maps-eval ($mode) -> $WORK/loc_$mode.json"
    "$BIN" maps-eval --anomaly-maps "$out" --masks "$SRC/ground_truth" --images "$SRC/test" \
        --out "$WORK/loc_$mode.json"
done
