#!/usr/bin/env bash
# The built-in detector on the real Magnetic-Tile-Defect data (../shared/data/mtd, MVTec layout,
# all 952 normal tiles in train/MT_Free): rebuilds the original MTD layout from it with symlinks,
# converts it back with `prepare-mtd` (a seeded 80/20 split: 762 normal tiles to train on, 190 held
# out as test/good for the evaluation only: image AUROC, normal pixels of the pixel metrics), then
# runs `detect` under /usr/bin/time -v.
# Usage: scripts/detect_mtd.sh [WORK_DIR] [extra detect flags…]   (WORK_DIR default outputs/mtd_detect)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/anomalyncd}"
SRC="${MTD:-../shared/data/mtd}"
WORK="${1:-outputs/mtd_detect}"
shift || true
[ -x "$BIN" ] || { echo "detect_mtd: $BIN is missing: cargo build --release first" >&2; exit 1; }
[ -d "$SRC/train/MT_Free" ] || { echo "detect_mtd: $SRC/train/MT_Free not found (set MTD=DIR)" >&2; exit 1; }
SRC="$(cd "$SRC" && pwd)"

RAW="$WORK/raw"
if [ ! -d "$RAW" ]; then
    echo "==> original MTD layout (symlinks) -> $RAW"
    mkdir -p "$RAW/MT_Free/Imgs"
    for f in "$SRC"/train/MT_Free/*.jpg; do ln -s "$f" "$RAW/MT_Free/Imgs/"; done
    for d in "$SRC"/test/MT_*; do
        t="$(basename "$d")"
        mkdir -p "$RAW/$t/Imgs"
        for f in "$d"/*.jpg; do ln -s "$f" "$RAW/$t/Imgs/"; done
        for f in "$SRC/ground_truth/$t"/*.png; do ln -s "$f" "$RAW/$t/Imgs/"; done
    done
fi

echo "==> prepare-mtd (seed 0) -> $WORK/mtd"
"$BIN" prepare-mtd --raw "$RAW" --out "$WORK/mtd" --seed 0

echo "==> detect -> $WORK/maps"
/usr/bin/time -v -o "$WORK/detect.time.txt" "$BIN" detect --train "$WORK/mtd/train" --test "$WORK/mtd/test" \
    --masks "$WORK/mtd/ground_truth" --out "$WORK/maps" --overwrite "$@"
grep -E "Elapsed|Maximum resident" "$WORK/detect.time.txt"
