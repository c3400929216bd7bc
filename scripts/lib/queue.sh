# shellcheck shell=bash
# A small job queue for independent runs (one MVTec category per job), sourced by
# scripts/anomalyncd.sh and scripts/anomalyncd_test.sh:
#
#   source scripts/lib/queue.sh
#   job() { "$BIN" train --device "$1" --category "$2" ...; }   # $1: value for --device, $2: item
#   queue_run "0 1 2 3" outputs/logs job bottle cable capsule ...
#
# Each device token is a slot that runs one job at a time; a job starts as soon as a slot is free,
# in the order of the items:
#   N or cuda:N  GPU N: the job runs with CUDA_VISIBLE_DEVICES set to that one GPU and --device cuda
#                (when CUDA_VISIBLE_DEVICES is already set, e.g. by a scheduler, N is the N-th entry
#                of that list)
#   cpu          a CPU job: --device cpu, CUDA_VISIBLE_DEVICES="" (several cpu tokens = several
#                concurrent CPU jobs)
# A token may repeat ("0 0 1": two jobs share GPU 0).
#
# Each job's stdout and stderr go to LOG_DIR/<item>.log. A failing job does not stop the others.
# queue_run prints one line when a job starts and one when it ends (with the tail of the log of a
# failed one), then a summary, and returns 0 when every job succeeded, 1 when any failed (they are
# named, and left in the array QUEUE_FAILED), 2 on a usage error. SIGINT / SIGTERM stop the running
# jobs (SIGTERM to each) and exit 130 / 143.
#
# Threads: every job gets OMP_NUM_THREADS and RAYON_NUM_THREADS = QUEUE_THREADS when that is set;
# otherwise, when OMP_NUM_THREADS is not set, the cores divided by the number of slots (at least 1),
# so that concurrent jobs do not oversubscribe the CPU. libtorch reads OMP_NUM_THREADS at start.
# Needs bash >= 4.3 (wait -n); on older shells the queue polls instead.

QUEUE_FAILED=()
QUEUE_OK=()

# _queue_slot TOKEN: sets _q_device (for --device), _q_cvd (CUDA_VISIBLE_DEVICES for the job) and
# _q_label (for messages); returns 1 for an unknown token.
_queue_slot() {
  local tok=$1 idx
  case $tok in
    cpu | CPU)
      _q_device=cpu _q_cvd="" _q_label=CPU
      return 0
      ;;
    cuda:*) idx=${tok#cuda:} ;;
    *) idx=$tok ;;
  esac
  [[ $idx =~ ^[0-9]+$ ]] || return 1
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    local -a visible
    IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
    [ "$idx" -lt "${#visible[@]}" ] || return 1
    _q_cvd=${visible[$idx]}
  else
    _q_cvd=$idx
  fi
  _q_device=cuda _q_label="GPU $_q_cvd"
}

_queue_now() { date +%s; }

# _queue_job STATUS_FILE LOG_FILE CVD THREADS JOB_FN DEVICE ITEM: one job, in a background
# subshell; writes the job's exit status to STATUS_FILE when it ends. SIGTERM is passed on to the
# job's whole process group.
_queue_job() {
  local status=$1 log=$2 cvd=$3 threads=$4 fn=$5 device=$6 item=$7
  export CUDA_VISIBLE_DEVICES=$cvd
  if [ -n "$threads" ]; then
    export OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
  fi
  local child rc=0 stopped=0
  # The job gets its own process group (set -m), so that a stop reaches every process it started.
  set -m
  "$fn" "$device" "$item" >"$log" 2>&1 &
  child=$!
  set +m
  trap 'stopped=1; kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null' TERM
  wait "$child" || rc=$?
  if [ "$stopped" = 1 ]; then
    # wait returned early for the trapped signal: wait again for the job's own status.
    local again=0
    wait "$child" 2>/dev/null || again=$?
    [ "$again" = 127 ] || rc=$again
  fi
  echo "$rc" >"$status"
}

# queue_run DEVICES LOG_DIR JOB_FN ITEM...
queue_run() {
  local devices=$1 log_dir=$2 fn=$3
  shift 3
  local -a slots free running
  read -r -a slots <<<"$devices"
  if [ "${#slots[@]}" -eq 0 ]; then
    echo "queue: no device tokens given (e.g. \"0 1\" or \"cpu cpu\")" >&2
    return 2
  fi
  local tok i
  for tok in "${slots[@]}"; do
    _queue_slot "$tok" || {
      echo "queue: unknown device token '$tok' (expected N, cuda:N or cpu; with CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} set, N indexes that list)" >&2
      return 2
    }
  done
  declare -F "$fn" >/dev/null || {
    echo "queue: $fn is not a function" >&2
    return 2
  }
  local -A seen=()
  local item
  for item in "$@"; do
    if [ -z "$item" ] || [[ $item == */* ]] || [ -n "${seen[$item]:-}" ]; then
      echo "queue: item names must be unique, non-empty and without '/' (got '$item')" >&2
      return 2
    fi
    seen[$item]=1
  done
  mkdir -p "$log_dir" || return 2

  local threads=${QUEUE_THREADS:-}
  if [ -z "$threads" ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
    local cores
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    threads=$((cores / ${#slots[@]}))
    [ "$threads" -ge 1 ] || threads=1
  fi
  local status_dir
  status_dir=$(mktemp -d "${TMPDIR:-/tmp}/anomalyncd_queue.XXXXXX") || return 2

  local -A pid_of=() slot_of=() start_of=()
  free=()
  for i in "${!slots[@]}"; do free+=("$i"); done
  running=()
  QUEUE_FAILED=()
  QUEUE_OK=()
  local total=$# started=0 can_wait_n=0
  if [ "${BASH_VERSINFO[0]}" -gt 4 ] || { [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -ge 3 ]; }; then
    can_wait_n=1
  fi
  local threads_note=""
  [ -n "$threads" ] && threads_note=", $threads thread(s) each"
  echo "queue: $total job(s) on ${#slots[@]} slot(s) [${slots[*]}]$threads_note; logs in $log_dir/"

  # Collects the jobs that have ended; returns 0 when at least one did.
  _queue_reap() {
    local it rc any=1 left=() secs
    for it in "${running[@]}"; do
      rc=""
      if [ -f "$status_dir/$it" ]; then
        rc=$(<"$status_dir/$it")
      elif ! kill -0 "${pid_of[$it]}" 2>/dev/null; then
        # Gone without a status (killed hard): look once more, then count it as failed.
        if [ -f "$status_dir/$it" ]; then rc=$(<"$status_dir/$it"); else rc=137; fi
      fi
      if [ -z "$rc" ]; then
        left+=("$it")
        continue
      fi
      wait "${pid_of[$it]}" 2>/dev/null || true
      any=0
      free+=("${slot_of[$it]}")
      secs=$(($(_queue_now) - ${start_of[$it]}))
      if [ "$rc" = 0 ]; then
        QUEUE_OK+=("$it")
        echo "queue: done   $it (ok, ${secs} s)"
      else
        QUEUE_FAILED+=("$it")
        echo "queue: FAILED $it (exit $rc, ${secs} s; log $log_dir/$it.log); its last lines:"
        tail -n 5 "$log_dir/$it.log" 2>/dev/null | sed 's/^/queue:     | /'
      fi
    done
    running=("${left[@]}")
    return "$any"
  }
  # Blocks until some job ends (or a moment passes).
  _queue_block() {
    if [ "$can_wait_n" = 1 ]; then
      wait -n 2>/dev/null || true
    else
      sleep 0.2
    fi
  }
  # shellcheck disable=SC2317  # called from the traps below
  _queue_stop() { # signal name, exit status
    trap - INT TERM
    echo "queue: $1: stopping ${#running[@]} running job(s): ${running[*]}" >&2
    local it
    for it in "${running[@]}"; do kill -TERM "${pid_of[$it]}" 2>/dev/null || true; done
    for it in "${running[@]}"; do wait "${pid_of[$it]}" 2>/dev/null || true; done
    rm -rf "$status_dir"
    exit "$2"
  }
  trap '_queue_stop SIGINT 130' INT
  trap '_queue_stop SIGTERM 143' TERM

  local slot
  for item in "$@"; do
    while [ "${#free[@]}" -eq 0 ]; do
      _queue_reap || _queue_block
    done
    slot=${free[0]}
    free=("${free[@]:1}")
    _queue_slot "${slots[$slot]}"
    started=$((started + 1))
    start_of[$item]=$(_queue_now)
    slot_of[$item]=$slot
    echo "queue: start  $item [$started/$total] on $_q_label (--device $_q_device)"
    _queue_job "$status_dir/$item" "$log_dir/$item.log" "$_q_cvd" "$threads" "$fn" "$_q_device" "$item" &
    pid_of[$item]=$!
    running+=("$item")
  done
  while [ "${#running[@]}" -gt 0 ]; do
    _queue_reap || _queue_block
  done
  trap - INT TERM
  rm -rf "$status_dir"

  if [ "${#QUEUE_FAILED[@]}" -gt 0 ]; then
    echo "queue: ${#QUEUE_OK[@]} of $total job(s) ok; FAILED (${#QUEUE_FAILED[@]}): ${QUEUE_FAILED[*]} (logs in $log_dir/)"
    return 1
  fi
  echo "queue: all $total job(s) ok"
}
