#!/usr/bin/env bash
# Inference settings swept over a benchmark folder's finished runs, without retraining. Each run's
# recorded `discover` command is run again with `--resume` and one more `--set`: a change of
# `inference.*` alone evaluates the checkpoint again from the token cache (seconds per run,
# docs/discover.md "Resume"). A run folder cannot be copied instead: its stage records hold
# absolute paths, so a copy would redo MEBin and training. So the runs are evaluated in place,
# each answer is kept under SWEEP_OUT, and every run is then evaluated again with its own
# settings; the script checks that this gives back the run's scores (exit 1 if not) and puts
# back the run's discover.json and train/stage.json, whose timings an evaluation rewrites.
#
#   experiments/inference_sweep.sh OUT SWEEP_OUT "inference.assign=heads" "inference.merge_temperature=100" ...
#
# OUT        a folder of experiments/quality_bench.sh (OUT/<protocol>/<unit>/discover.json and
#            OUT/<protocol>/<unit>.log, whose first "# <date> <binary> ... discover ..." line is the
#            command the unit ran). Do not run the bench on OUT meanwhile.
# SWEEP_OUT  per setting: SWEEP_OUT/<setting>/<protocol>/<unit>.json (the run's discover.json under
#            that setting) and <unit>.log; a setting whose .json exists is not run again.
# settings   one or more "inference.key=value", or several joined by "+" to be evaluated
#            together ("inference.spectral_center=false+inference.spectral_scales=[1]");
#            another section would retrain. The default's
#            value written out (`inference.merge_temperature=50`: discover treats data as not
#            MVTec-style) is a check that a re-evaluation reproduces the run's scores.
# Environment: BIN overrides the binary recorded in the log; UNITS (default "seed*") selects units.
# Prints one table per protocol: F1 per run and F1 / NMI mean ± sd for each setting beside the
# runs' own. Exit: 0 done, 1 a run failed or did not come back to its scores, 2 bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
die2() { echo "inference_sweep.sh: $*" >&2; exit 2; }
[ $# -ge 3 ] || die2 "usage: experiments/inference_sweep.sh OUT SWEEP_OUT SETTING [SETTING ...]"
OUT=$1 SWEEP=$2
shift 2
[ -d "$OUT" ] || die2 "OUT=$OUT is not a folder (give a quality_bench.sh output folder)"
if ! compgen -G "$OUT/*/${UNITS:-seed*}/train/checkpoint.safetensors" >/dev/null; then
  die2 "no trained weights under $OUT/<protocol>/${UNITS:-seed*}/train/: quality_bench.sh removes them unless run with KEEP_CHECKPOINTS=1; re-run the bench that way into another OUT"
fi
case "$(realpath -m "$SWEEP")/" in
  "$(realpath "$OUT")"/*) die2 "SWEEP_OUT=$SWEEP lies inside OUT=$OUT: give another folder" ;;
esac
for s in "$@"; do
  IFS=+ read -r -a parts <<<"$s"
  for part in "${parts[@]}"; do
    [[ "$part" =~ ^inference\.[a-z_]+=[^[:space:]/+]+$ ]] ||
      die2 "setting '$s' is not inference.key=value[+inference.key=value...] (only inference settings are evaluated again without retraining)"
  done
done
# set_args SETTING: the --set arguments of one setting (its parts joined by +).
set_args() {
  local part
  IFS=+ read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do printf '%s\0' --set "$part"; done
}
UNITS=${UNITS:-seed*}
# put SRC DST: DST replaced by a copy of SRC in one rename.
put() { cp "$1" "$2.sweep.tmp" && mv "$2.sweep.tmp" "$2"; }
scores() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["found"]["scores"])' "$1"; }
failed=0
for run in "$OUT"/*/$UNITS; do
  [ -f "$run/discover.json" ] || continue
  proto=$(basename "$(dirname "$run")") unit=$(basename "$run")
  log="$OUT/$proto/$unit.log"
  line=$(grep -a -m1 '^# .* discover ' "$log" 2>/dev/null) ||
    die2 "$log has no recorded discover command"
  read -r -a words <<<"$line"
  words=("${words[@]:2}") # drop "#" and the date
  [ -z "${BIN:-}" ] || words[0]=$BIN
  cmd=()
  for w in "${words[@]}"; do [ "$w" = --resume ] || cmd+=("$w"); done
  cmd+=(--resume)
  # The run's own records are kept aside first (a sweep stopped halfway leaves the run under
  # another setting) and put back at the end: an evaluation rewrites their timings.
  keep="$SWEEP/own/$proto/$unit"
  mkdir -p "$(dirname "$keep")"
  if [ ! -f "$keep.json" ]; then
    put "$run/train/stage.json" "$keep.train_stage.json"
    put "$run/discover.json" "$keep.json" # last: its presence says both are kept
  fi
  own=$(scores "$keep.json")
  ran=0
  for s in "$@"; do
    dst="$SWEEP/$s/$proto/$unit"
    [ -f "$dst.json" ] && continue
    mkdir -p "$(dirname "$dst")"
    t0=$(date +%s.%N)
    ran=1
    mapfile -d '' sets < <(set_args "$s")
    if "${cmd[@]}" "${sets[@]}" >"$dst.log" 2>&1; then
      put "$run/discover.json" "$dst.json"
      awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$proto $unit $s" 'BEGIN{printf "%s: %.1f s\n", l, b-a}'
    else
      echo "$proto $unit $s: failed (log: $dst.log)" >&2
      failed=1
    fi
  done
  now=$(scores "$run/discover.json")
  if [ $ran = 1 ] || [ "$now" != "$own" ]; then
    if ! "${cmd[@]}" >"$keep.restore.log" 2>&1; then
      echo "$proto $unit: evaluating it again with its own settings failed (log: $keep.restore.log)" >&2
      failed=1
      continue
    elif [ "$(scores "$run/discover.json")" != "$own" ]; then
      echo "$proto $unit: evaluated again with its own settings it gives $(scores "$run/discover.json"), not its scores $own" >&2
      failed=1
      continue
    fi
  fi
  # Same answer again: the run's own records (with the timings of its training) go back.
  put "$keep.train_stage.json" "$run/train/stage.json"
  put "$keep.json" "$run/discover.json"
done
python3 - "$OUT" "$SWEEP" "$UNITS" "$@" <<'EOF'
import json, statistics as st, sys
from pathlib import Path
out, sweep, units_glob, settings = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
def scores(path):
    try:
        return json.loads(path.read_text())["found"]["scores"]
    except (OSError, KeyError, ValueError, TypeError):
        return None
def ms(v):
    return f"{st.mean(v):.3f} ± {st.stdev(v):.3f}" if len(v) > 1 else (f"{v[0]:.3f}" if v else "–")
for pdir in sorted(p for p in out.iterdir() if p.is_dir()):
    units = sorted(u.name for u in pdir.glob(units_glob) if (u / "discover.json").is_file())
    if not units:
        continue
    print(f"\n{pdir.name} ({len(units)} runs: {', '.join(units)})\n")
    print("| setting | runs | F1 per run | F1 | NMI |\n|---|---|---|---|---|")
    for label in ["own"] + settings:
        got = [scores(sweep / label / pdir.name / f"{u}.json") for u in units]
        got = [g for g in got if g]
        f1, nmi = [g[2] for g in got], [g[0] for g in got]
        name = "the runs' own settings" if label == "own" else label
        print(f"| {name} | {len(got)} | {', '.join(f'{x:.3f}' for x in f1)} | {ms(f1)} | {ms(nmi)} |")
EOF
exit $failed
