#!/usr/bin/env bash
# Self-test of the category job queue (scripts/lib/queue.sh) as scripts/anomalyncd.sh and
# scripts/anomalyncd_test.sh use it, on the CPU with fake devices. Run from anywhere, no arguments:
#
#   dev/queue_selftest.sh                          # part 1: a stub binary, ~10 s
#   QUEUE_SELFTEST_REAL=1 dev/queue_selftest.sh    # also part 2: the real binary (~1 min of CPU)
#
# Part 1 replaces the binary with a stub that sleeps and records when it started and ended, the
# device it was given, CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS, and checks: with GPUS="cpu cpu"
# two jobs run at once and never more; every category runs exactly once; a failing category does
# not stop the others, makes the script exit non-zero and is named; GPU tokens give each job one
# GPU, never shared; GPUS="" keeps the sequential loop; the test script queues too; a metrics.csv
# row lost to concurrent writers is restored; SIGTERM stops the running jobs.
# Part 2 (opt-in: it trains) runs two categories of a tiny synthetic set at once with the real
# binary (BIN, default target/release/anomalyncd), GPUS="cpu cpu", 1 thread each, 1 epoch of the
# tiny random ViT, then tests both checkpoints the same way.
#
# Prints one line per check ("ok   - ..." or "FAIL - ...") and a closing "N passed, N failed";
# exits 0 only when every check passed. KEEP=1 keeps the temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/queue_selftest.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
  echo "# temporary folder: $TMP"
else
  trap 'rm -rf "$TMP"' EXIT
fi
passed=0
failed=0
check() { # description, then a command: ok when it succeeds
  local what=$1
  shift
  if "$@"; then
    echo "ok   - $what"
    passed=$((passed + 1))
  else
    echo "FAIL - $what"
    failed=$((failed + 1))
  fi
}
# Lines of the last run's output, on a failure.
show() {
  sed 's/^/#   /' "$1" >&2
}

# ---------------------------------------------------------------- the stub binary
STUB=$TMP/anomalyncd_stub
cat >"$STUB" <<'EOF'
#!/usr/bin/env bash
# Fake anomalyncd: records "start|end NANOSECONDS COMMAND CATEGORY DEVICE CUDA_VISIBLE_DEVICES
# OMP_NUM_THREADS PID" in $STUB_RECORD, sleeps STUB_SLEEP seconds, fails (exit 3) for the
# categories in STUB_FAIL; `train` writes metrics.json and a metrics.csv row under STUB_EXP
# (no row for the categories in STUB_LOSE_ROW, as if a concurrent write had lost it).
cmd=$1
shift
cat="" dev="" ckpt=""
while [ $# -gt 0 ]; do
  case $1 in
    --category) cat=$2; shift ;;
    --device) dev=$2; shift ;;
    --checkpoint) ckpt=$2; shift ;;
  esac
  shift
done
[ "$cmd" = test ] && cat=$(basename "$(dirname "$ckpt")")
cvd=${CUDA_VISIBLE_DEVICES-unset}
[ -n "$cvd" ] || cvd=empty
rec() { echo "$1 $(date +%s%N) $cmd $cat $dev $cvd ${OMP_NUM_THREADS:-unset} $$" >>"$STUB_RECORD"; }
rec start
echo "stub: $cmd $cat on $dev"
sleep "${STUB_SLEEP:-0.4}"
case " ${STUB_FAIL:-} " in
  *" $cat "*)
    echo "stub: $cat fails on purpose" >&2
    rec end
    exit 3
    ;;
esac
if [ "$cmd" = train ] && [ -n "${STUB_EXP:-}" ]; then
  mkdir -p "$STUB_EXP/$cat"
  printf '{"category": "%s", "image_level": {"NMI": 0.5, "ARI": 0.25, "F1": 1.0}}\n' "$cat" >"$STUB_EXP/$cat/metrics.json"
  case " ${STUB_LOSE_ROW:-} " in
    *" $cat "*) ;;
    *)
      [ -f "$STUB_EXP/metrics.csv" ] || echo "category,NMI,ARI,F1" >"$STUB_EXP/metrics.csv"
      echo "$cat,0.5,0.25,1" >>"$STUB_EXP/metrics.csv"
      ;;
  esac
fi
rec end
EOF
chmod +x "$STUB"

# ---------------------------------------------------------------- record analysis
# Greatest number of jobs running at once in a record file (optionally only those with field
# 6, CUDA_VISIBLE_DEVICES, equal to $2).
max_concurrent() {
  awk -v dev="${2:-}" 'dev == "" || $6 == dev { print $2, ($1 == "start" ? 1 : -1) }' "$1" |
    sort -k1,1n -k2,2n | awk '{ n += $2; if (n > m) m = n } END { print m + 0 }'
}
# Category names of the "start" lines, in order.
started() { awk '$1 == "start" { print $4 }' "$1"; }
# Every category in $2 (space separated) started exactly once, and nothing else did.
each_once() {
  [ "$(started "$1" | sort | tr '\n' ' ')" = "$(tr ' ' '\n' <<<"$2" | sed '/^$/d' | sort | tr '\n' ' ')" ]
}
# Every start line has field $2 equal to $3.
all_field() { awk -v f="$2" -v v="$3" '$1 == "start" && $f != v { bad = 1 } END { exit bad }' "$1"; }

CATS="cat_a cat_b cat_c cat_d cat_e"
# run_train NAME [VAR=VALUE...]: scripts/anomalyncd.sh with the stub, output in $TMP/NAME.out,
# record in $TMP/NAME.rec, exit status in $TMP/NAME.rc.
run_train() {
  local name=$1
  shift
  : >"$TMP/$name.rec"
  env BIN="$STUB" STUB_RECORD="$TMP/$name.rec" CATEGORIES="$CATS" EXP_ROOT="$TMP/$name/outputs" \
    LOG_DIR="$TMP/$name/logs" STUB_EXP="$TMP/$name/outputs/mvtec_musc_crop" QUEUE_THREADS=1 \
    "$@" "$ROOT/scripts/anomalyncd.sh" >"$TMP/$name.out" 2>&1
  echo $? >"$TMP/$name.rc"
}
rc_of() { cat "$TMP/$1.rc"; }

echo "# part 1: the queue with a stub binary (categories: $CATS)"
t0=$(date +%s)
syntax_ok() {
  local f
  for f in scripts/anomalyncd.sh scripts/anomalyncd_test.sh dev/queue_selftest.sh \
    scripts/lib/queue.sh scripts/lib/metrics_table.sh scripts/slurm/anomalyncd_array.sbatch \
    scripts/gpu_check.sh; do
    [ -f "$f" ] || continue
    bash -n "$f" || return 1
  done
}
check "bash -n: the queue scripts parse" syntax_ok

# 1. Two CPU slots.
run_train cpu2 GPUS="cpu cpu"
[ "$(rc_of cpu2)" = 0 ] || show "$TMP/cpu2.out"
check "GPUS=\"cpu cpu\": exits 0 when every category succeeds" test "$(rc_of cpu2)" = 0
check "GPUS=\"cpu cpu\": every category runs exactly once" each_once "$TMP/cpu2.rec" "$CATS"
check "GPUS=\"cpu cpu\": two jobs run at once, never more (max at once: $(max_concurrent "$TMP/cpu2.rec"))" \
  test "$(max_concurrent "$TMP/cpu2.rec")" = 2
cpu_env() { all_field "$TMP/cpu2.rec" 5 cpu && all_field "$TMP/cpu2.rec" 6 empty && all_field "$TMP/cpu2.rec" 7 1; }
check "GPUS=\"cpu cpu\": each job gets --device cpu, CUDA_VISIBLE_DEVICES=\"\" and QUEUE_THREADS=1 as OMP_NUM_THREADS" cpu_env
logs_ok() {
  local c
  for c in $CATS; do grep -q "stub: train $c on cpu" "$TMP/cpu2/logs/$c.log" 2>/dev/null || return 1; done
}
check "GPUS=\"cpu cpu\": each category's output is in LOG_DIR/<category>.log" logs_ok

# 2. A failing category.
run_train fail GPUS="cpu cpu" STUB_FAIL="cat_b"
check "a failing category makes the script exit non-zero (exit $(rc_of fail))" test "$(rc_of fail)" != 0
check "the failing category is named in the summary" grep -q "FAILED (1): cat_b" "$TMP/fail.out"
check "a failing category does not stop the others (all 5 still ran once)" each_once "$TMP/fail.rec" "$CATS"

# 3. GPU tokens (no GPU is touched: the stub only records what it was given).
run_train gpu2 GPUS="0 1"
# The distinct CUDA_VISIBLE_DEVICES values the jobs of a record got.
gpus_of() { awk '$1 == "start" { print $6 }' "$1" | sort -u | tr '\n' ' '; }
gpu_env() { [ "$(rc_of gpu2)" = 0 ] && all_field "$TMP/gpu2.rec" 5 cuda && [ "$(gpus_of "$TMP/gpu2.rec")" = "0 1 " ]; }
check "GPUS=\"0 1\": each job gets --device cuda and one GPU (CUDA_VISIBLE_DEVICES 0 or 1)" gpu_env
gpu_alone() {
  [ "$(max_concurrent "$TMP/gpu2.rec" 0)" = 1 ] && [ "$(max_concurrent "$TMP/gpu2.rec" 1)" = 1 ] &&
    [ "$(max_concurrent "$TMP/gpu2.rec")" = 2 ]
}
check "GPUS=\"0 1\": never two jobs on one GPU, both GPUs busy at once" gpu_alone
run_train gpumap GPUS="0 cuda:1" CUDA_VISIBLE_DEVICES="5,7"
gpu_map() { [ "$(rc_of gpumap)" = 0 ] && [ "$(gpus_of "$TMP/gpumap.rec")" = "5 7 " ]; }
check "with CUDA_VISIBLE_DEVICES=5,7 set, tokens 0 and cuda:1 mean GPUs 5 and 7" gpu_map
run_train badtok GPUS="0 tpu"
bad_token() { [ "$(rc_of badtok)" = 2 ] && grep -q "unknown device token .tpu." "$TMP/badtok.out" && [ ! -s "$TMP/badtok.rec" ]; }
check "an unknown device token is a usage error (exit 2) that names it" bad_token

# 4. GPUS="": the reference's sequential loop, unchanged (in order, one at a time, stops at the
# first failure as `set -e` did).
run_train seq GPUS="" DEVICE=cpu STUB_SLEEP=0.05
in_order() { [ "$(started "$1" | tr '\n' ' ')" = "$2 " ]; }
sequential() {
  [ "$(rc_of seq)" = 0 ] && [ "$(max_concurrent "$TMP/seq.rec")" = 1 ] && in_order "$TMP/seq.rec" "$CATS" &&
    all_field "$TMP/seq.rec" 5 cpu
}
check "GPUS=\"\": one category at a time, in order, on DEVICE" sequential
run_train seqfail GPUS="" DEVICE=cpu STUB_SLEEP=0.05 STUB_FAIL="cat_c"
seq_stops() { [ "$(rc_of seqfail)" = 3 ] && in_order "$TMP/seqfail.rec" "cat_a cat_b cat_c"; }
check "GPUS=\"\": stops at the first failing category with its exit status (3)" seq_stops

# 5. A metrics.csv row lost to a concurrent write is put back from metrics.json.
run_train lost GPUS="cpu cpu" STUB_LOSE_ROW="cat_d"
# The categories of a metrics.csv, sorted.
rows_of() { tail -n +2 "$1" | cut -d, -f1 | sort | tr '\n' ' '; }
restored() {
  local table=$TMP/lost/outputs/mvtec_musc_crop/metrics.csv
  [ "$(rc_of lost)" = 0 ] && grep -qx "cat_d,0.5,0.25,1" "$table" && [ "$(rows_of "$table")" = "$CATS " ]
}
check "a metrics.csv row lost to concurrent runs is restored from the run's metrics.json" restored

# 6. scripts/anomalyncd_test.sh: queues the categories that have a checkpoint, skips the others.
exp=$TMP/testq/outputs
for c in cat_a cat_b cat_c cat_e; do
  mkdir -p "$exp/mvtec_musc_crop/$c" && : >"$exp/mvtec_musc_crop/$c/checkpoint.safetensors"
done
: >"$TMP/testq.rec"
env BIN="$STUB" STUB_RECORD="$TMP/testq.rec" CATEGORIES="$CATS" EXP_ROOT="$exp" GPUS="cpu cpu" QUEUE_THREADS=1 \
  "$ROOT/scripts/anomalyncd_test.sh" >"$TMP/testq.out" 2>&1
echo $? >"$TMP/testq.rc"
test_queue() {
  [ "$(rc_of testq)" = 0 ] && each_once "$TMP/testq.rec" "cat_a cat_b cat_c cat_e" &&
    all_field "$TMP/testq.rec" 3 test && [ "$(max_concurrent "$TMP/testq.rec")" = 2 ]
}
check "anomalyncd_test.sh with GPUS=\"cpu cpu\": tests each checkpoint once, two at once" test_queue
check "anomalyncd_test.sh: a category without a checkpoint is skipped with a message" \
  grep -q "no checkpoint for cat_d" "$TMP/testq.out"

# 7. SIGTERM to the script stops its running jobs (no stub left behind).
: >"$TMP/term.rec"
env BIN="$STUB" STUB_RECORD="$TMP/term.rec" CATEGORIES="$CATS" EXP_ROOT="$TMP/term/outputs" \
  LOG_DIR="$TMP/term/logs" GPUS="cpu cpu" QUEUE_THREADS=1 STUB_SLEEP=30 \
  "$ROOT/scripts/anomalyncd.sh" >"$TMP/term.out" 2>&1 &
script_pid=$!
for _ in $(seq 1 100); do
  [ "$(grep -c '^start' "$TMP/term.rec")" -ge 2 ] && break
  sleep 0.1
done
kill -TERM "$script_pid"
echo 0 >"$TMP/term.rc"
wait "$script_pid" || echo $? >"$TMP/term.rc"
stub_pids=()
while read -r pid; do stub_pids+=("$pid"); done < <(awk '$1 == "start" { print $8 }' "$TMP/term.rec")
stubs_gone() {
  local pid _ alive
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${stub_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  # Do not leave them running: each stub and its sleep.
  local kids kid
  for pid in "${stub_pids[@]}"; do
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr '\n' ' ')
    kill -TERM "$pid" 2>/dev/null
    for kid in $kids; do kill -TERM "$kid" 2>/dev/null; done
  done
  return 1
}
stopped() { [ "$(rc_of term)" = 143 ] && [ "${#stub_pids[@]}" = 2 ] && stubs_gone; }
check "SIGTERM: the script exits 143 and its running jobs stop (started: ${#stub_pids[@]})" stopped
echo "# part 1 took $(($(date +%s) - t0)) s"

# ---------------------------------------------------------------- part 2: the real binary
if [ "${QUEUE_SELFTEST_REAL:-0}" = 1 ]; then
  echo "# part 2: the real binary, two synthetic categories at once on GPUS=\"cpu cpu\", 1 thread each"
  t1=$(date +%s)
  REAL=${BIN:-target/release/anomalyncd}
  case $REAL in /*) ;; *) REAL=$ROOT/$REAL ;; esac
  D=$TMP/real
  prep() {
    [ -x "$REAL" ] || { echo "# $REAL is missing: run ./scripts/setup.sh or set BIN" >&2; return 1; }
    mkdir -p "$D" &&
      OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 "$REAL" -q synth --out "$D/synth" --per-type 3 --normal 2 \
        --per-base-class 3 --size 96 &&
      OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 "$REAL" -q prepare-base --images "$D/synth/base/images" \
        --masks "$D/synth/base/masks" --out "$D/base" || return 1
    # An MVTec-style tree of two categories, both the synthetic test set.
    local c
    for c in syn_a syn_b; do
      mkdir -p "$D/mvtec/$c" "$D/maps" &&
        ln -s "$D/synth/test" "$D/mvtec/$c/test" && ln -s "$D/synth/anomaly_maps" "$D/maps/$c" || return 1
    done
  }
  check "real: synthetic set, base crops and a two-category MVTec layout" prep
  tiny="--set models.pretrained_backbone=vit_tiny --set models.grad_from_block=2 --set models.mask_layers=2"
  tiny="$tiny --set models.image_size=32 --set models.precision=fp32 --set training.batch_size=8"
  tiny="$tiny --set training.epochs=1 --set training.num_workers=1 --set loss.repeat_times=1"
  tiny="$tiny --set experiment.exp_root=$D/outputs"
  env BIN="$REAL" CONFIG=configs/demo.yaml GPUS="cpu cpu" QUEUE_THREADS=1 CATEGORIES="syn_a syn_b" \
    DATASET_PATH="$D/mvtec" ANOMALY_MAP_PATH="$D/maps" BASE_DATA_PATH="$D/base" \
    BINARY_DATA_PATH="$D/binary" CROP_DATA_PATH="$D/crops" RUN_EXP=selftest EXP_ROOT="$D/outputs" \
    TRAIN_ARGS="$tiny" "$ROOT/scripts/anomalyncd.sh" >"$TMP/real.out" 2>&1
  echo $? >"$TMP/real.rc"
  [ "$(rc_of real)" = 0 ] || { show "$TMP/real.out"; tail -n 20 "$D"/outputs/selftest/logs/*.log 2>/dev/null | sed 's/^/#   /' >&2; }
  trained() {
    [ "$(rc_of real)" = 0 ] && [ -f "$D/outputs/selftest/syn_a/checkpoint.safetensors" ] &&
      [ -f "$D/outputs/selftest/syn_b/checkpoint.safetensors" ]
  }
  check "real: anomalyncd.sh trains both categories (exit 0, two checkpoints)" trained
  # Both jobs started before the first one ended.
  overlap() { awk '/^queue: start/ { s++ } /^queue: done/ { print s; exit }' "$TMP/real.out" | grep -qx 2; }
  check "real: the two categories ran at the same time" overlap
  one_row_each() { [ "$(rows_of "$D/outputs/selftest/metrics.csv")" = "syn_a syn_b " ]; }
  check "real: metrics.csv has one row per category" one_row_each
  env BIN="$REAL" GPUS="cpu cpu" QUEUE_THREADS=1 CATEGORIES="syn_a syn_b" RUN_EXP=selftest EXP_ROOT="$D/outputs" \
    "$ROOT/scripts/anomalyncd_test.sh" >"$TMP/realtest.out" 2>&1
  echo $? >"$TMP/realtest.rc"
  [ "$(rc_of realtest)" = 0 ] || show "$TMP/realtest.out"
  tested() {
    [ "$(rc_of realtest)" = 0 ] && [ -f "$D/outputs/selftest_test/syn_a/metrics.json" ] &&
      [ -f "$D/outputs/selftest_test/syn_b/metrics.json" ]
  }
  check "real: anomalyncd_test.sh tests both checkpoints (metrics.json of each)" tested
  echo "# part 2 took $(($(date +%s) - t1)) s"
else
  echo "# part 2 (the real binary) skipped: QUEUE_SELFTEST_REAL=1 runs it"
fi

echo "queue selftest: $passed passed, $failed failed"
[ "$failed" = 0 ]
