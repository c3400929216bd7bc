#!/bin/bash
# bf16 against fp32 in quality (issue 26): benchmark units with the maps and the frozen prefix in
# fp32, to set beside the benchmark's own (bf16 where `precision: auto` picks it) rows.
#
#   experiments/precision_quality.sh PROTOCOL [SEEDS]
#     PROTOCOL  mtd_fitted | mtd_zeroshot | mtd_oracle | tire_fitted
#     SEEDS     default "1 2 3"
#   BIN (default target/release/anomalyncd), OUT (default outputs/qb_fp32),
#   TIRE_IMAGES (tire_fitted: the benchmark's symlinked tire images, default
#   outputs/qb_tire672/tire_fitted/images)
#
# Each unit: `discover --num-classes K --set experiment.seed=S --set training.view_seed=1000
# --set models.guidance=soft_masked --set models.guidance_lambda=8 --set models.precision=fp32
# --cache-dir OUT/PROTOCOL/token_cache --anomaly-maps MAPS`, where MAPS are made once by
# `detect --precision fp32` with the benchmark's detector inputs (the oracle maps as they are).
# A unit whose discover.json exists is skipped. Results: OUT/PROTOCOL/seed<S>_view1000/discover.json.
set -u
cd "$(dirname "$0")/.."
PROTOCOL=${1:?usage: experiments/precision_quality.sh PROTOCOL [SEEDS]}
SEEDS=${2:-1 2 3}
BIN=${BIN:-target/release/anomalyncd}
OUT=${OUT:-outputs/qb_fp32}
SHARED=../shared/data
TIRE_IMAGES=${TIRE_IMAGES:-outputs/qb_tire672/tire_fitted/images}
K=5; IMAGES=$SHARED/mtd/test; DETECT=()
case $PROTOCOL in
  mtd_fitted) DETECT=(--train $SHARED/mtd/train/MT_Free --test $IMAGES) ;;
  mtd_zeroshot) DETECT=(--zero-shot --test $IMAGES) ;;
  mtd_oracle) MAPS=$SHARED/mtd_oracle_maps ;;
  tire_fitted) K=3; IMAGES=$TIRE_IMAGES; DETECT=(--train $SHARED/tire/train/good --test $IMAGES --image-size 672) ;;
  *) echo "PROTOCOL: mtd_fitted, mtd_zeroshot, mtd_oracle or tire_fitted, not $PROTOCOL" >&2; exit 2 ;;
esac
mkdir -p "$OUT/$PROTOCOL"
if [ ${#DETECT[@]} -gt 0 ]; then
  MAPS=$OUT/$PROTOCOL/maps_fp32
  if [ ! -f "$MAPS/detect.json" ]; then
    echo "$(date -Is) $PROTOCOL: fp32 maps (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BIN" detect "${DETECT[@]}" --precision fp32 --out "$MAPS" -q || exit 1
  fi
fi
for s in $SEEDS; do
  run=$OUT/$PROTOCOL/seed${s}_view1000
  [ -f "$run/discover.json" ] && continue
  echo "$(date -Is) $PROTOCOL seed $s (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$BIN" discover --images "$IMAGES" --out "$run" --num-classes $K --set experiment.seed=$s \
    --set training.view_seed=1000 --set models.guidance=soft_masked --set models.guidance_lambda=8 \
    --set models.precision=fp32 --cache-dir "$OUT/$PROTOCOL/token_cache" --anomaly-maps "$MAPS" -q \
    > "$OUT/$PROTOCOL/seed${s}.log" 2>&1 || { echo "  failed: $OUT/$PROTOCOL/seed${s}.log" >&2; exit 1; }
done
python3 - "$OUT/$PROTOCOL" <<'PY'
import glob, json, statistics as st, sys
fs, ns = [], []
for d in sorted(glob.glob(sys.argv[1] + "/seed*_view1000/discover.json")):
    s = json.load(open(d))["found"]["scores"]
    ns.append(s[0]); fs.append(s[2])
sd = lambda v: st.stdev(v) if len(v) > 1 else float("nan")
print(f"{sys.argv[1]}: {len(fs)} seeds, F1 {st.mean(fs):.3f} ± {sd(fs):.3f}, NMI {st.mean(ns):.3f} ± {sd(ns):.3f}")
PY
