#!/usr/bin/env bash
# The quality benchmark (issue 24): each protocol through `anomalyncd discover` as a user runs it,
# over several training seeds, with the maps computed once per protocol, then one table and one
# JSON: experiments/quality_report.py writes OUT/results.md and OUT/results.json.
#
#   experiments/quality_bench.sh                               # all five protocols, seeds 1 2 3
#   MODE=screen experiments/quality_bench.sh                   # 1 seed, 15 epochs, mtd_fitted + tire_fitted
#   MODE=screen EXTRA_SET="loss.sup_weight=0.5" OUT=outputs/qb_sup05 experiments/quality_bench.sh
#
# Protocols (paths from the repository root; ../shared is only read):
#   mtd_fitted      --images ../shared/data/mtd/test --normal ../shared/data/mtd/train/MT_Free, K=5
#   mtd_zeroshot    --images ../shared/data/mtd/test (zero-shot detector), K=5
#   sd900_zeroshot  --images ../shared/data/sd900/images (900 images, zero-shot, built-in base set), K=3
#   tire_fitted     --images OUT/tire_fitted/images (symlinks to tire/test/{contamination,cut,hole}:
#                   test/good is not scored) --normal ../shared/data/tire/train/good, K=3
#   mtd_oracle      --anomaly-maps ../shared/data/mtd_oracle_maps --images ../shared/data/mtd/test, K=5
#   synth           what `anomalyncd synth --out OUT/synth/data $SYNTH_ARGS` writes, fitted on its
#                   train/good, K = its number of types (for tests; not in the default list)
#
# Units: every protocol x seed is one run folder OUT/<protocol>/seed<S>_view<V>/ (`--set
# experiment.seed=S --set training.view_seed=V --num-classes K`). The first seed's run computes the
# maps (detector, or the given maps); the others pass `--anomaly-maps <first run>/maps`, so every seed
# trains on the same crops (results.md says per run whether binarize/scores.json is byte-identical to
# the first run's). With VIEW_CHECK=1, one more run: the first seed with view seed V+1. A unit whose
# discover.json exists is skipped; an unfinished one is continued with `discover --resume`; so the
# bench can be stopped (Ctrl-C) and started again, in another session too. Then per protocol once:
# `anomalyncd maps-eval` (OUT/<protocol>/maps_eval.json), `experiments/crops_vs_gt.py` on the first run's
# binarize/ (OUT/<protocol>/crops_vs_gt.txt), and, when the binary does not report
# found.training_free, `anomalyncd baseline --method kmeans` on the same crops with the true K.
#
# Environment (bad values: exit 2 naming the variable):
#   OUT         output folder (default outputs/quality_bench; screen: outputs/quality_bench_screen)
#   MODE        full (default) | screen (defaults: SEEDS=1, EPOCHS=15, PROTOCOLS="mtd_fitted
#               tire_fitted", VIEW_CHECK=0)
#   PROTOCOLS   space-separated, from the list above (default: the five real ones)
#   SEEDS       training seeds (default "1 2 3")
#   EPOCHS      training epochs (default: the config's, no override)
#   VIEW_SEED   the view-bank seed V of every protocol (default 1000); `none`: not passed
#   VIEW_CHECK  1: the extra run with view seed V+1 (default 1 in full mode, 0 in screen)
#   CACHE       auto (default: --cache-dir OUT/<protocol>/token_cache when discover has the flag) | 1 | 0
#   LOC         1 (default): localisation (maps-eval, crops_vs_gt.py) | 0
#   BASELINE    auto (default: k-means baseline only when discover.json lacks training_free) | 1 | 0
#   AUTO_K      auto (default: when the first run reports no `auto` K, as under `soft` guidance with
#               the true K given, one more discover with --num-classes auto on its maps, stopped
#               after one epoch, reads the K that `auto` chooses: OUT/<protocol>/auto_k.json) | 1
#               (that run also when the runs report a K: runs of older binaries estimated it beside
#               a given K on the training's own tokens, which `auto` under `soft` no longer reads) | 0
#   EXTRA_SET   extra "section.key=value ..." passed as --set to every discover (and the baseline)
#   EXTRA_ARGS  extra discover flags (e.g. the hidden --detector-random-weights of the tests)
#   CONFIG      --config FILE for discover (default: none, discover's defaults)
#   THREADS     anomalyncd --threads N|auto (default: not passed, i.e. auto / ANOMALYNCD_THREADS)
#   BIN         the binary (default target/release/anomalyncd)
#   SHARED      the real data sets (default ../shared/data)
#   SYNTH_ARGS  flags of `anomalyncd synth` for the synth protocol (default: none)
#   BASE_OUT    an earlier benchmark folder: every protocol takes its maps (its first run's, for any
#               SEEDS) and shares its token caches, so a variant of training alone (EXTRA_SET of
#               training or loss keys) re-runs only training; its MEBin settings must be the earlier ones'
#   KEEP_CHECKPOINTS 0 (default): a finished unit's train/checkpoint.safetensors (the trained
#               weights, ~90 MB with ViT-S/14) is removed once its scores are in discover.json, so
#               a long series of runs cannot fill the disk; checkpoint.json stays | 1: kept (what
#               experiments/inference_sweep.sh needs)
#   GT_PYTHON   a Python with numpy and Pillow for experiments/crops_vs_gt.py (default: .venv/bin/python,
#               else python3; without one the MEBin mask IoU is left out, with a note)
# OUT records the settings that change results (EPOCHS, EXTRA_SET, EXTRA_ARGS, CONFIG, VIEW_SEED,
# SYNTH_ARGS, SHARED); a later invocation with other values is refused (exit 2): use another OUT.
# Exit: 0 all units done, 1 a unit or step failed (the report is still written), 2 bad settings,
# 130 interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPORT=$ROOT/experiments/quality_report.py
PY=${PYTHON:-python3}

die2() { echo "quality_bench: $*" >&2; exit 2; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
ALL_PROTOCOLS="mtd_fitted mtd_zeroshot sd900_zeroshot tire_fitted mtd_oracle"
KNOWN_PROTOCOLS="$ALL_PROTOCOLS synth"

MODE=${MODE:-full}
case $MODE in
  full)
    OUT=${OUT:-outputs/quality_bench}
    PROTOCOLS=${PROTOCOLS:-$ALL_PROTOCOLS}
    SEEDS=${SEEDS:-1 2 3}
    EPOCHS=${EPOCHS:-}
    VIEW_CHECK=${VIEW_CHECK:-1} ;;
  screen)
    OUT=${OUT:-outputs/quality_bench_screen}
    PROTOCOLS=${PROTOCOLS:-mtd_fitted tire_fitted}
    SEEDS=${SEEDS:-1}
    EPOCHS=${EPOCHS:-15}
    VIEW_CHECK=${VIEW_CHECK:-0} ;;
  *) die2 "MODE=$MODE: expected full or screen" ;;
esac
BIN=${BIN:-target/release/anomalyncd}
VIEW_SEED_GIVEN=${VIEW_SEED:+1}
VIEW_SEED=${VIEW_SEED:-1000}
CACHE=${CACHE:-auto}
LOC=${LOC:-1}
BASELINE=${BASELINE:-auto}
AUTO_K=${AUTO_K:-auto}
EXTRA_SET=${EXTRA_SET:-}
EXTRA_ARGS=${EXTRA_ARGS:-}
CONFIG=${CONFIG:-}
THREADS=${THREADS:-}
SHARED=${SHARED:-../shared/data}
SYNTH_ARGS=${SYNTH_ARGS:-}
GT_PYTHON=${GT_PYTHON:-}
BASE_OUT=${BASE_OUT:-}
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-0}

# ---- checks of the settings, before anything runs
[ -n "$OUT" ] || die2 "OUT is empty: give an output folder"
[ -n "${PROTOCOLS// }" ] || die2 "PROTOCOLS is empty: give one or more of: $KNOWN_PROTOCOLS"
for p in $PROTOCOLS; do
  [[ " $KNOWN_PROTOCOLS " == *" $p "* ]] || die2 "PROTOCOLS: unknown protocol '$p' (known: $KNOWN_PROTOCOLS)"
done
[ -n "${SEEDS// }" ] || die2 "SEEDS is empty: give one or more integers, e.g. SEEDS=\"1 2 3\""
seen=" "
for s in $SEEDS; do
  is_uint "$s" || die2 "SEEDS: '$s' is not a non-negative integer"
  [[ $seen == *" $s "* ]] && die2 "SEEDS: seed $s appears twice"
  seen+="$s "
done
[ -z "$EPOCHS" ] || { is_uint "$EPOCHS" && [ "$EPOCHS" -ge 1 ]; } || die2 "EPOCHS=$EPOCHS: expected a positive integer (or empty for the config's)"
[ "$VIEW_SEED" = none ] || is_uint "$VIEW_SEED" || die2 "VIEW_SEED=$VIEW_SEED: expected a non-negative integer or none"
case $VIEW_CHECK in 0|1) ;; *) die2 "VIEW_CHECK=$VIEW_CHECK: expected 0 or 1" ;; esac
case $CACHE in auto|0|1) ;; *) die2 "CACHE=$CACHE: expected auto, 0 or 1" ;; esac
case $LOC in 0|1) ;; *) die2 "LOC=$LOC: expected 0 or 1" ;; esac
case $BASELINE in auto|0|1) ;; *) die2 "BASELINE=$BASELINE: expected auto, 0 or 1" ;; esac
case $AUTO_K in auto|0|1) ;; *) die2 "AUTO_K=$AUTO_K: expected auto, 0 or 1" ;; esac
case $KEEP_CHECKPOINTS in 0|1) ;; *) die2 "KEEP_CHECKPOINTS=$KEEP_CHECKPOINTS: expected 0 or 1" ;; esac
[ -z "$THREADS" ] || [ "$THREADS" = auto ] || { is_uint "$THREADS" && [ "$THREADS" -ge 1 ]; } \
  || die2 "THREADS=$THREADS: expected auto or a positive integer"
# Split on blanks without glob expansion.
read -r -a EXTRA_SET_A <<<"$EXTRA_SET"
read -r -a EXTRA_ARGS_A <<<"$EXTRA_ARGS"
read -r -a SYNTH_ARGS_A <<<"$SYNTH_ARGS"
for kv in "${EXTRA_SET_A[@]}"; do
  [[ $kv =~ ^[A-Za-z_]+\.[A-Za-z_]+=.+$ ]] || die2 "EXTRA_SET: '$kv' is not section.key=value"
done
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die2 "CONFIG=$CONFIG: no such file"
[ -z "$BASE_OUT" ] || [ -d "$BASE_OUT" ] || die2 "BASE_OUT=$BASE_OUT: no such benchmark folder"
[ -z "$BASE_OUT" ] || BASE_OUT=$(cd "$BASE_OUT" && pwd)
[ -x "$BIN" ] || die2 "BIN=$BIN: not an executable (build it: cargo build --release, or ./scripts/setup.sh)"
command -v "$PY" >/dev/null || die2 "PYTHON=$PY: not found (the report needs Python 3)"
[ -z "$CONFIG" ] || CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# What this binary offers (the flag and key arrive with issue 24's Rust side).
HAS_CACHE_DIR=0
"$BIN" discover --help 2>/dev/null | grep -q -- '--cache-dir' && HAS_CACHE_DIR=1
case $CACHE in
  1) [ $HAS_CACHE_DIR = 1 ] || die2 "CACHE=1: $BIN discover has no --cache-dir (use CACHE=0 or auto)" ;;
  auto) CACHE=$HAS_CACHE_DIR ;;
esac
HAS_VIEW_SEED=0
"$BIN" config show 2>/dev/null | grep -q '^ *view_seed:' && HAS_VIEW_SEED=1
if [ "$VIEW_SEED" != none ] && [ $HAS_VIEW_SEED = 0 ]; then
  [ -n "$VIEW_SEED_GIVEN" ] && die2 "VIEW_SEED=$VIEW_SEED: $BIN has no training.view_seed (use VIEW_SEED=none)"
  echo "quality_bench: note: $BIN has no training.view_seed: not passed, no view check" >&2
  VIEW_SEED=none
fi
[ "$VIEW_SEED" = none ] && VIEW_CHECK=0

SHARED_ABS=$(cd "$SHARED" 2>/dev/null && pwd || echo "$SHARED")
# Each protocol's inputs must exist before anything runs.
need() { [ -d "$1" ] || die2 "PROTOCOLS: $2 needs $1, which is absent (SHARED=$SHARED)"; }
for p in $PROTOCOLS; do
  case $p in
    mtd_fitted) need "$SHARED_ABS/mtd/test" $p; need "$SHARED_ABS/mtd/train/MT_Free" $p ;;
    mtd_zeroshot) need "$SHARED_ABS/mtd/test" $p ;;
    sd900_zeroshot) need "$SHARED_ABS/sd900/images" $p ;;
    tire_fitted) need "$SHARED_ABS/tire/test" $p; need "$SHARED_ABS/tire/train/good" $p ;;
    mtd_oracle) need "$SHARED_ABS/mtd/test" $p; need "$SHARED_ABS/mtd_oracle_maps" $p ;;
  esac
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The settings that change what a unit computes: a finished unit is only reused under the same ones.
SETTINGS="epochs=${EPOCHS:-default}
extra_set=$EXTRA_SET
extra_args=$EXTRA_ARGS
config=$CONFIG
view_seed=$VIEW_SEED
synth_args=$SYNTH_ARGS
shared=$SHARED_ABS${BASE_OUT:+
base_out=$BASE_OUT}"
if [ -f "$OUT/settings.txt" ]; then
  if [ "$(cat "$OUT/settings.txt")" != "$SETTINGS" ]; then
    echo "quality_bench: OUT=$OUT holds runs made with other settings:" >&2
    diff <(cat "$OUT/settings.txt") <(echo "$SETTINGS") | sed 's/^/  /' >&2 || true
    die2 "OUT=$OUT: use another OUT for these settings (or remove the folder)"
  fi
else
  echo "$SETTINGS" >"$OUT/settings.txt"
fi

GLOBAL=()
[ -z "$THREADS" ] || GLOBAL=(--threads "$THREADS")
event() { "$PY" "$REPORT" event "$OUT" "$@"; }
loadavg() { awk '{printf "[%s,%s,%s]", $1, $2, $3}' /proc/loadavg 2>/dev/null || echo null; }
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
say() { echo "[bench $(date +%H:%M:%S)] $*"; }

event --machine event=start mode="$MODE" protocols="$PROTOCOLS" \
  settings:="{\"mode\":$(json_str "$MODE"),\"seeds\":$(json_str "$SEEDS"),\"epochs\":$(json_str "$EPOCHS"),\"view_seed\":$(json_str "$VIEW_SEED"),\"view_check\":$VIEW_CHECK,\"cache\":$CACHE,\"loc\":$LOC,\"baseline\":$(json_str "$BASELINE"),\"extra_set\":$(json_str "$EXTRA_SET"),\"extra_args\":$(json_str "$EXTRA_ARGS"),\"config\":$(json_str "$CONFIG"),\"threads\":$(json_str "${THREADS:-auto}"),\"bin\":$(json_str "$BIN"),\"synth_args\":$(json_str "$SYNTH_ARGS")}"
say "start: protocols [$PROTOCOLS], seeds [$SEEDS], epochs ${EPOCHS:-default}, view seed $VIEW_SEED, cache-dir $CACHE, out $OUT | $(uptime)"

INTERRUPTED=0
trap 'INTERRUPTED=1' INT
FAILED=()

# ---- one protocol's inputs: P_IMAGES, P_NORMAL, P_MAPS (given maps), P_K, P_GT
protocol_inputs() {
  local p=$1 pdir=$OUT/$1
  P_NORMAL= P_MAPS=
  case $p in
    mtd_fitted) P_IMAGES=$SHARED_ABS/mtd/test P_NORMAL=$SHARED_ABS/mtd/train/MT_Free P_K=5 P_GT=$SHARED_ABS/mtd/ground_truth ;;
    mtd_zeroshot) P_IMAGES=$SHARED_ABS/mtd/test P_K=5 P_GT=$SHARED_ABS/mtd/ground_truth ;;
    sd900_zeroshot) P_IMAGES=$SHARED_ABS/sd900/images P_K=3 P_GT=$SHARED_ABS/sd900/masks ;;
    mtd_oracle) P_IMAGES=$SHARED_ABS/mtd/test P_MAPS=$SHARED_ABS/mtd_oracle_maps P_K=5 P_GT=$SHARED_ABS/mtd/ground_truth ;;
    tire_fitted)
      P_IMAGES=$pdir/images P_NORMAL=$SHARED_ABS/tire/train/good P_K=3 P_GT=$SHARED_ABS/tire/ground_truth
      mkdir -p "$P_IMAGES"
      for t in contamination cut hole; do
        [ -L "$P_IMAGES/$t" ] || ln -s "$SHARED_ABS/tire/test/$t" "$P_IMAGES/$t"
      done ;;
    synth)
      local data=$pdir/data
      if [ ! -f "$data/.complete" ]; then
        rm -rf "$data"
        "$BIN" -q synth --out "$data" "${SYNTH_ARGS_A[@]}"
        touch "$data/.complete"
      fi
      P_IMAGES=$data/test P_NORMAL=$data/train/good P_GT=$data/ground_truth
      P_K=$(find "$data/test" -mindepth 1 -maxdepth 1 -type d | wc -l) ;;
  esac
}

# ---- one unit: run_unit PROTOCOL UNIT SEED VIEW ROLE MAPS; returns discover's exit code
run_unit() {
  local proto=$1 unit=$2 seed=$3 view=$4 role=$5 maps=$6
  local pdir=$OUT/$proto run=$OUT/$proto/$unit
  if [ -f "$run/discover.json" ]; then
    say "$proto $unit: skipped (finished earlier) | $(uptime)"
    event event=unit protocol="$proto" unit="$unit" role="$role" seed:="$seed" action=skipped
    return 0
  fi
  local args=(discover --images "$P_IMAGES" --out "$run" --num-classes "$P_K" --set "experiment.seed=$seed")
  [ "$view" = none ] || args+=(--set "training.view_seed=$view")
  [ -z "$EPOCHS" ] || args+=(--set "training.epochs=$EPOCHS")
  [ -z "$CONFIG" ] || args+=(--config "$CONFIG")
  local kv
  for kv in "${EXTRA_SET_A[@]}"; do args+=(--set "$kv"); done
  args+=("${EXTRA_ARGS_A[@]}")
  [ "$CACHE" = 0 ] || args+=(--cache-dir "${BASE_OUT:-$OUT}/$proto/token_cache")
  if [ -n "$maps" ]; then args+=(--anomaly-maps "$maps")
  elif [ -n "$P_NORMAL" ]; then args+=(--normal "$P_NORMAL"); fi
  local action=ran
  if [ -d "$run" ]; then args+=(--resume); action=resumed; fi
  local load0 t0 rc
  load0=$(loadavg)
  t0=$(date +%s.%N)
  local verb=starting
  [ $action = ran ] || verb="continuing (--resume)"
  say "$proto $unit: $verb (seed $seed, view seed $view, K $P_K${maps:+, maps $maps}) | $(uptime)"
  { echo "# $(date -Is) $BIN ${GLOBAL[*]} ${args[*]}"; } >>"$pdir/$unit.log"
  set +e
  "$BIN" "${GLOBAL[@]}" "${args[@]}" >>"$pdir/$unit.log" 2>&1
  rc=$?
  set -e
  local wall
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  event --machine event=unit protocol="$proto" unit="$unit" role="$role" seed:="$seed" \
    action="$action" rc:=$rc wall_s:="$wall" load_start:="$load0" load_end:="$(loadavg)" \
    start="$(date -d "@${t0%.*}" -Is)" end="$(date -Is)" threads="${THREADS:-auto}"
  local result
  result=$(grep -a '^NMI ' "$pdir/$unit.log" | tail -1 || true)
  if [ $rc = 0 ] && [ -f "$run/discover.json" ]; then
    [ "$KEEP_CHECKPOINTS" = 1 ] || rm -f "$run/train/checkpoint.safetensors"
    say "$proto $unit: done in ${wall} s: ${result:-no scores} | $(uptime)"
    return 0
  fi
  [ $rc = 0 ] && rc=1
  if [ $rc = 130 ] || [ $INTERRUPTED = 1 ]; then
    say "$proto $unit: interrupted; run the same command again to continue it"
    return 130
  fi
  say "$proto $unit: FAILED (exit $rc; log $pdir/$unit.log):"
  tail -n 5 "$pdir/$unit.log" | sed 's/^/    /'
  [ $rc = 2 ] && grep -qi 'lock\|another process' "$pdir/$unit.log" \
    && say "$proto $unit: (another process holds this run folder)"
  return $rc
}

gt_python() {
  local c
  for c in ${GT_PYTHON:-$ROOT/.venv/bin/python python3}; do
    if "$c" -c 'import numpy, PIL' 2>/dev/null; then echo "$c"; return 0; fi
  done
  return 1
}

# ---- once per protocol: localisation of the maps and MEBin's masks, and the training-free row
protocol_extras() {
  local proto=$1 first=$2 pdir=$OUT/$1 maps
  maps=${P_MAPS:-${BASE_MAPS:-$first/maps}}
  if [ "$LOC" = 1 ]; then
    if [ ! -f "$pdir/maps_eval.json" ]; then
      say "$proto: maps-eval of $maps | $(uptime)"
      if ! "$BIN" "${GLOBAL[@]}" -q maps-eval --anomaly-maps "$maps" --masks "$P_GT" \
          --images "$P_IMAGES" --out "$pdir/maps_eval.json" >"$pdir/maps_eval.txt" 2>&1; then
        say "$proto: maps-eval FAILED (log $pdir/maps_eval.txt)"; tail -n 3 "$pdir/maps_eval.txt" | sed 's/^/    /'
        FAILED+=("$proto:maps-eval")
      fi
    fi
    if [ ! -s "$pdir/crops_vs_gt.txt" ]; then
      local gp
      if gp=$(gt_python); then
        if "$gp" "$ROOT/experiments/crops_vs_gt.py" "$first/binarize" "$P_GT" >"$pdir/crops_vs_gt.tmp" 2>&1; then
          mv "$pdir/crops_vs_gt.tmp" "$pdir/crops_vs_gt.txt"
          say "$proto: $(head -1 "$pdir/crops_vs_gt.txt" | sed "s|^$first/binarize: ||")"
        else
          say "$proto: crops_vs_gt.py FAILED (log $pdir/crops_vs_gt.tmp)"; FAILED+=("$proto:crops_vs_gt")
        fi
      else
        local note="MEBin mask IoU not computed: no Python with numpy and Pillow for experiments/crops_vs_gt.py (set GT_PYTHON, or pip install numpy pillow into .venv)"
        say "$proto: $note"
        event event=localisation protocol="$proto" note="$note"
      fi
    fi
  fi
  local want=$BASELINE
  if [ "$want" = auto ]; then
    want=0
    grep -q '"training_free": *\[' "$first/discover.json" || want=1
  fi
  if [ "$want" = 1 ] && [ ! -f "$pdir/baseline/metrics.json" ]; then
    say "$proto: training-free row: baseline --method kmeans, K $P_K, on $first/binarize | $(uptime)"
    local b=(baseline --method kmeans --data "$first/binarize" --num-classes "$P_K" --out "$pdir/baseline"
      --overwrite --config "${CONFIG:-$ROOT/configs/demo.yaml}" --set "experiment.seed=${SEEDS%% *}")
    local kv
    for kv in "${EXTRA_SET_A[@]}"; do b+=(--set "$kv"); done
    if ! "$BIN" "${GLOBAL[@]}" "${b[@]}" >"$pdir/baseline.log" 2>&1; then
      say "$proto: baseline FAILED (log $pdir/baseline.log)"; tail -n 3 "$pdir/baseline.log" | sed 's/^/    /'
      FAILED+=("$proto:baseline")
    fi
  fi
}

# ---- once per protocol: the K that `--num-classes auto` chooses, beside the true one (issue 25,
# item 4). The runs give the true K; under `soft` guidance a given K makes no estimate beside it
# (`auto` reads K from tokens guided within the masks, a backbone pass of its own), so one more
# discover with `auto` on the first run's maps and token cache, stopped after one epoch, reads it
# from its checkpoint.
auto_k() {
  local proto=$1 first=$2 pdir=$OUT/$1 maps run=$OUT/$1/auto_k
  maps=${P_MAPS:-${BASE_MAPS:-$first/maps}}
  [ "$AUTO_K" = 0 ] && return 0
  [ -f "$pdir/auto_k.json" ] && return 0
  [ "$AUTO_K" = auto ] && grep -q '"auto_k": *[0-9]' "$first/discover.json" 2>/dev/null && return 0
  local a=(discover --images "$P_IMAGES" --out "$run" --num-classes auto --stop-after-epochs 1
    --set "experiment.seed=${SEEDS%% *}" --anomaly-maps "$maps")
  [ "$VIEW_SEED" = none ] || a+=(--set "training.view_seed=$VIEW_SEED")
  [ -z "$CONFIG" ] || a+=(--config "$CONFIG")
  local kv
  for kv in "${EXTRA_SET_A[@]}"; do a+=(--set "$kv"); done
  a+=("${EXTRA_ARGS_A[@]}")
  [ "$CACHE" = 0 ] || a+=(--cache-dir "${BASE_OUT:-$OUT}/$proto/token_cache")
  [ -d "$run" ] && a+=(--resume)
  say "$proto: the K that auto chooses: discover --num-classes auto, one epoch, on $maps | $(uptime)"
  { echo "# $(date -Is) $BIN ${GLOBAL[*]} ${a[*]}"; } >>"$pdir/auto_k.log"
  local k
  if "$BIN" "${GLOBAL[@]}" "${a[@]}" >>"$pdir/auto_k.log" 2>&1 \
      && k=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_classes_estimate"]["chosen"])' \
        "$run/train/checkpoint.json" 2>>"$pdir/auto_k.log"); then
    printf '{"auto_k": %s, "true_k": %s}\n' "$k" "$P_K" >"$pdir/auto_k.json"
    say "$proto: auto chooses K = $k (true $P_K)"
  else
    say "$proto: the auto K run FAILED (log $pdir/auto_k.log)"; tail -n 3 "$pdir/auto_k.log" | sed 's/^/    /'
    FAILED+=("$proto:auto_k")
  fi
}

run_protocol() {
  local proto=$1 pdir=$OUT/$1
  mkdir -p "$pdir"
  protocol_inputs "$proto"
  local first_seed=${SEEDS%% *} units=() u s rc
  for s in $SEEDS; do units+=("$s:$VIEW_SEED:seed"); done
  [ "$VIEW_CHECK" = 0 ] || units+=("$first_seed:$((VIEW_SEED + 1)):view_check")
  local name json="[" sep=""
  for u in "${units[@]}"; do
    IFS=: read -r s v role <<<"$u"
    name=seed$s; [ "$v" = none ] || name+=_view$v
    json+="$sep{\"unit\":\"$name\",\"role\":\"$role\",\"seed\":$s,\"view_seed\":$([ "$v" = none ] && echo null || echo "$v")}"
    sep=,
  done
  json+="]"
  local first_name=seed$first_seed
  [ "$VIEW_SEED" = none ] || first_name+=_view$VIEW_SEED
  local first=$pdir/$first_name
  # BASE_OUT: every unit takes the earlier benchmark's maps of this protocol.
  BASE_MAPS=
  if [ -n "$BASE_OUT" ] && [ -z "$P_MAPS" ]; then
    BASE_MAPS=$BASE_OUT/$proto/$first_name/maps
    # Other seeds than the base's: its first run is the one that holds the maps.
    [ -d "$BASE_MAPS" ] || BASE_MAPS=$(ls -d "$BASE_OUT/$proto"/seed*/maps 2>/dev/null | head -1)
    [ -d "$BASE_MAPS" ] || die2 "BASE_OUT: $BASE_MAPS is absent (run the base benchmark's $proto first)"
  fi
  local cmd="anomalyncd discover --images $P_IMAGES${P_NORMAL:+ --normal $P_NORMAL}${P_MAPS:+ --anomaly-maps $P_MAPS} --num-classes $P_K"
  event event=protocol protocol="$proto" k:="$P_K" images="$P_IMAGES" normal="$P_NORMAL" \
    anomaly_maps="$P_MAPS" ground_truth="$P_GT" view_seed:="$([ "$VIEW_SEED" = none ] && echo null || echo "$VIEW_SEED")" \
    command="$cmd" units:="$json"
  for u in "${units[@]}"; do
    IFS=: read -r s v role <<<"$u"
    name=seed$s; [ "$v" = none ] || name+=_view$v
    # The first run computes the maps (or uses the given ones); the others reuse them.
    local maps=${P_MAPS:-$BASE_MAPS}
    [ "$name" = "$first_name" ] || [ -n "$maps" ] || maps=$first/maps
    rc=0
    run_unit "$proto" "$name" "$s" "$v" "$role" "$maps" || rc=$?
    [ $rc = 130 ] && return 130
    if [ $rc != 0 ]; then
      FAILED+=("$proto/$name")
      if [ "$name" = "$first_name" ]; then
        say "$proto: the first run failed: its other runs need its maps; next protocol"
        return 0
      fi
    fi
  done
  protocol_extras "$proto" "$first"
  auto_k "$proto" "$first"
}

for p in $PROTOCOLS; do
  rc=0
  run_protocol "$p" || rc=$?
  if [ $rc = 130 ] || [ $INTERRUPTED = 1 ]; then
    "$PY" "$REPORT" report "$OUT" || true
    say "interrupted: finished units are kept; run the same command again to continue"
    exit 130
  fi
done

"$PY" "$REPORT" report "$OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "failed: ${FAILED[*]}"
  exit 1
fi
say "all units done | $(uptime)"
