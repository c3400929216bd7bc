#!/usr/bin/env bash
# The heap policy (src/malloc.rs) side by side: one anomalyncd command run with the policy and with
# glibc's default heap (MALLOC_MMAP_MAX_=65536, glibc's own value: a user's malloc variable turns the
# policy off), alternating, ROUNDS times each, under /usr/bin/time. Prints wall, user and system
# seconds, minor page faults and peak memory per run, then the mean wall ratio policy / default.
# Same answers either way: the policy only changes where freed memory goes.
#
#   experiments/heap_ab.sh OUT ARGS...     # ARGS: the command's arguments; {out} becomes a fresh
#                                          # folder OUT/<policy|default><round> for each run
#   experiments/heap_ab.sh /tmp/ab detect --train T --test X --out {out} --image-size 448 -q
#   ROUNDS=1 BIN=/path/to/anomalyncd experiments/heap_ab.sh ...
#
# Run it on an idle machine (check `uptime`). OUT must not exist: this script never overwrites.
set -uo pipefail
cd "$(dirname "$0")/.."
die2() { echo "heap_ab: $*" >&2; exit 2; }
BIN=${BIN:-target/release/anomalyncd}
ROUNDS=${ROUNDS:-2}
[ $# -ge 2 ] || die2 "usage: experiments/heap_ab.sh OUT ARGS... (ARGS hold {out})"
OUT=$1
shift
[ -x "$BIN" ] || die2 "BIN=$BIN is not an executable: run ./scripts/setup.sh first or set BIN"
[ -x /usr/bin/time ] || die2 "/usr/bin/time is missing (GNU time; apt-get install time)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die2 "ROUNDS=$ROUNDS: expected a whole number >= 1"
[[ " $* " == *"{out}"* ]] || die2 "no {out} in the arguments: each run needs its own output folder"
[ ! -e "$OUT" ] || die2 "$OUT already exists: pass another OUT"
mkdir -p "$OUT" || exit 1

echo "| run | wall (s) | user (s) | system (s) | minor faults | peak RSS (GiB) |" | tee "$OUT/heap_ab.md"
echo "|---|---|---|---|---|---|" | tee -a "$OUT/heap_ab.md"
for r in $(seq 1 "$ROUNDS"); do
  for v in policy default; do
    args=("${@//\{out\}/$OUT/$v$r}")
    envs=()
    [ $v = default ] && envs=(MALLOC_MMAP_MAX_=65536)
    env "${envs[@]}" /usr/bin/time -f "%e %U %S %R %M" -o "$OUT/$v$r.time" "$BIN" "${args[@]}" \
      >"$OUT/$v$r.stdout" 2>"$OUT/$v$r.stderr" || {
      echo "heap_ab: the $v run $r failed; see $OUT/$v$r.stderr" >&2
      exit 1
    }
    read -r wall user sys faults rss <"$OUT/$v$r.time"
    printf '| %s %s | %s | %s | %s | %s | %.2f |\n' "$v" "$r" "$wall" "$user" "$sys" "$faults" \
      "$(awk -v k="$rss" 'BEGIN { print k / 1024 / 1024 }')" | tee -a "$OUT/heap_ab.md"
  done
done
awk '/^\| policy/ { p += $5; np++ } /^\| default/ { d += $5; nd++ }
  END { printf "\nmean wall policy / default: %.2f over %d rounds\n", (p / np) / (d / nd), np }' \
  "$OUT/heap_ab.md" | tee -a "$OUT/heap_ab.md"
