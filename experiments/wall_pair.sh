#!/usr/bin/env bash
# Issue 25's cost target, measured side by side: `discover` from scratch on the benchmark's MTD fitted
# protocol with the baseline's settings (the reference's hard mask, 224-px crops, 448-px detector, 8
# cached views, no neighbour views, no CNN choice: `discover`'s defaults of 2026-12-03) and then with today's defaults, one after the
# other, each under `/usr/bin/time -v`. Prints both wall times, their ratio (target <= 1.5) and the
# peak resident memory of each (target <= 3 GB; printed in GiB), with the load average before and
# after each run; the same table goes to OUT/wall_pair.md. Run it on an idle machine (check
# `uptime`): ~23 min on 2 idle cores.
#
#   experiments/wall_pair.sh                          # OUT=outputs/wall_pair, seed 1, view seed 1000
#   OUT=outputs/wall_pair2 SEED=2 experiments/wall_pair.sh
#   BIN=/path/to/anomalyncd ...                       # another build (default target/release/anomalyncd)
#
# Both runs train with the given K (5) and compute their own maps; OUT/baseline and OUT/defaults are
# ordinary `discover` run folders (their F1 is printed too: one seed, not a quality measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
die2() { echo "wall_pair: $*" >&2; exit 2; }
BIN=${BIN:-target/release/anomalyncd}
OUT=${OUT:-outputs/wall_pair}
SEED=${SEED:-1}
SHARED=${SHARED:-../shared/data}
[ -x "$BIN" ] || die2 "BIN=$BIN is not an executable: run ./scripts/setup.sh first or set BIN"
[ -x /usr/bin/time ] || die2 "/usr/bin/time is missing (GNU time; apt-get install time)"
[[ $SEED =~ ^[0-9]+$ ]] || die2 "SEED=$SEED: expected a whole number"
for d in "$SHARED/mtd/test" "$SHARED/mtd/train/MT_Free"; do
  [ -d "$d" ] || die2 "$d is missing (set SHARED=<folder holding mtd/>)"
done
for v in baseline defaults; do
  [ ! -e "$OUT/$v" ] || die2 "$OUT/$v already exists: pass another OUT (this script never overwrites a run)"
done
mkdir -p "$OUT" || exit 1

common=(discover --images "$SHARED/mtd/test" --normal "$SHARED/mtd/train/MT_Free" --num-classes 5
  --set "experiment.seed=$SEED" --set training.view_seed=1000)
baseline=(--set models.guidance=hard --set models.image_size=224 --set training.cache_views=8
  --set detect.image_size=448 --set training.neighbor_views=0 --set detect.fuse_cnn=0)
load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { grep -F "$1" "$2" | sed 's/.*: //'; }
seconds() { # h:mm:ss or m:ss(.ss) as seconds
  awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }' <<<"$1"
}

declare -A wall rss before after f1
for v in baseline defaults; do
  extra=()
  [ $v = baseline ] && extra=("${baseline[@]}")
  before[$v]=$(load)
  echo "wall_pair: $v run starting $(date -Is) (load ${before[$v]})" >&2
  /usr/bin/time -v -o "$OUT/$v.time" "$BIN" "${common[@]}" "${extra[@]}" --out "$OUT/$v" \
    >"$OUT/$v.stdout" 2>"$OUT/$v.stderr" || {
    echo "wall_pair: the $v run failed; see $OUT/$v.stderr" >&2
    exit 1
  }
  after[$v]=$(load)
  wall[$v]=$(seconds "$(field 'Elapsed (wall clock)' "$OUT/$v.time")")
  rss[$v]=$(awk '{ printf "%.2f", $1 / 1024 / 1024 }' <<<"$(field 'Maximum resident' "$OUT/$v.time")")
  f1[$v]=$(grep -o 'F1 [0-9.]*' "$OUT/$v.stdout" | head -1 | cut -d' ' -f2)
done
ratio=$(awk -v a="${wall[defaults]}" -v b="${wall[baseline]}" 'BEGIN { printf "%.2f", a / b }')
{
  echo "| run | wall (s) | peak RSS (GiB) | load before | load after | F1 (seed $SEED) |"
  echo "|---|---|---|---|---|---|"
  for v in baseline defaults; do
    echo "| $v | ${wall[$v]} | ${rss[$v]} | ${before[$v]} | ${after[$v]} | ${f1[$v]} |"
  done
  echo
  echo "wall ratio defaults / baseline: $ratio (target <= 1.5); $("$BIN" --version | head -1), $(date -Is)"
} | tee "$OUT/wall_pair.md"
