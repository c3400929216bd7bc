#!/usr/bin/env bash
# What the frozen-prefix cache costs in quality: the MTD oracle protocol (configs/mtd.yaml, SD-900 base)
# trained twice with the same seed and the same number of epochs, once on the cache (4 views per crop,
# augmentations drawn from those views) and once uncached (fresh augmentations through the whole
# backbone every step, as the reference does). Prints image-level NMI / ARI / F1, the wall time of
# each run, and writes outputs/cache_cost/metrics.csv.
#
#   ./experiments/cache_cost.sh               # 50 epochs each: uncached is about 2 h on 2 idle CPU cores
#                                             # (793 two-view samples per epoch at ~6 samples/s)
#   EPOCHS=12 ./experiments/cache_cost.sh     # equal fewer epochs for both (uncached: ~26 min idle)
#   CACHED=false ...                          # only the uncached run (default "true false": both)
#   THREADS=1 ...                             # passed as --threads (two runs side by side on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/anomalyncd
[ -x "$BIN" ] || { echo "cache_cost: $BIN is missing: run ./scripts/setup.sh first" >&2; exit 1; }
SHARED=${SHARED:-../shared/data}
EPOCHS=${EPOCHS:-50}
CONFIG=${CONFIG:-configs/mtd.yaml}
WORK=${WORK:-data/eval_mtd}
BASE_PER_CLASS=${BASE_PER_CLASS:-100}
RUNNER=cache_cost
for d in "$SHARED/mtd/test" "$SHARED/mtd_oracle_maps" "$SHARED/sd900/images"; do
  [ -d "$d" ] || { echo "cache_cost: $d is missing (set SHARED=<folder holding mtd/, mtd_oracle_maps/, sd900/>)" >&2; exit 2; }
done
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
if [ ! -d "$WORK/sd900_base" ]; then
  "$BIN" prepare-base --images "$SHARED/sd900/images" --masks "$SHARED/sd900/masks" \
    --out "$WORK/sd900_base" --max-per-class "$BASE_PER_CLASS" -q
fi
mkdir -p "outputs/$RUNNER"
summary="outputs/$RUNNER/metrics.csv"
for cached in ${CACHED:-true false}; do
  name="mtd_oracle_cache_${cached}_e${EPOCHS}"
  echo "==> cache_frozen=$cached, $EPOCHS epochs -> outputs/$RUNNER/$name"
  t=$(date +%s)
  "$BIN" "${threads[@]}" train --config "$CONFIG" --dataset mtd --category "$name" \
    --dataset-path "$SHARED/mtd/test" --anomaly-map-path "$SHARED/mtd_oracle_maps" \
    --base-data-path "$WORK/sd900_base" --runner-name "$RUNNER" --overwrite \
    --set "training.epochs=$EPOCHS" --set "training.cache_frozen=$cached"
  wall=$(( $(date +%s) - t ))
  # One row per setting: a rerun replaces its own row and keeps the others.
  python3 - "$name" "$EPOCHS" "$wall" "outputs/$RUNNER/$name/metrics.json" "$summary" "${THREADS:-default}" <<'EOF'
import json, os, sys
name, epochs, wall, path, summary, threads = sys.argv[1:]
m = json.load(open(path))["image_level"]
header = "setting,epochs,threads,NMI,ARI,F1,wall_s"
rows = []
if os.path.exists(summary):
    rows = [r for r in open(summary).read().splitlines()[1:] if r and not r.startswith(name + ",")]
rows.append(f"{name},{epochs},{threads},{m['NMI']:.4f},{m['ARI']:.4f},{m['F1']:.4f},{wall}")
open(summary + ".tmp", "w").write("\n".join([header] + rows) + "\n")
os.replace(summary + ".tmp", summary)
EOF
done
column -s, -t "$summary"
