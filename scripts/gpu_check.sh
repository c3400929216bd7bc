#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU, after ./scripts/setup.sh. Sized for
# at most about 8 minutes on one GPU (an estimate: it has not been timed on one yet; most of it is
# the MTD runs and building the tests). It runs, on CUDA:
#
#   1. the MTD oracle protocol (as experiments/eval_mtd.sh, MAPS=oracle): SD-900 base cropped by
#      prepare-base, `train` with configs/mtd.yaml, precision auto, EPOCHS epochs, once on the
#      frozen-prefix cache (training.cache_frozen: true) and once without it, then `test` of each
#      checkpoint; samples/s (the train log's epoch lines), peak GPU memory (nvidia-smi, sampled
#      every 0.5 s) and the wall time of each stage;
#   2. class-token parity: the pretrained backbone's class tokens of the same crops (`baseline`
#      writes them, L2-normalised, to class_tokens.safetensors) on the CPU in fp32 and on CUDA in
#      fp32 (max abs difference <= 1e-3) and bf16 (min cosine >= 0.999); and the CUDA-trained
#      checkpoint tested on the CPU and on CUDA (cluster agreement, for information);
#   3. a ViT-B/8-shaped model at batch 128: 3 uncached training epochs of dino_vitb8 on the MTD
#      crops (the DINO weights when present, else random weights of that shape made with the
#      venv's torch: the speed is the same), samples/s and peak GPU memory;
#   4. the tests that run on CUDA here: tests/train.rs, tests/num_classes.rs, tests/cli.rs and
#      tests/bad_inputs/ run the binary with its default --device auto, i.e. on the GPU (no test
#      is gated on an environment variable or #[ignore]).
# Checks that need code that does not exist yet print "not available yet" and what is missing.
#
# Exit status: 0 every check passed; 1 a stage or check failed; 2 nothing was checked: no GPU
# that libtorch can use (e.g. a CPU-only machine), the binary or the data missing.
#
# Environment: SHARED (../shared/data: mtd/, mtd_oracle_maps/, sd900/), EPOCHS (5),
# BASE_PER_CLASS (100 SD-900 images per class), WORK (outputs/gpu_check), GPU (index for
# CUDA_VISIBLE_DEVICES, default 0 or the first of an existing CUDA_VISIBLE_DEVICES),
# NUM_WORKERS (data loader threads, default min(cores, 8)), MTD_PER_TYPE (use only the first N
# images of each MTD type), VITB8_WEIGHTS (a dino_vitb8 weights file), TORCH_PYTHON (a python with
# torch, to make random ViT-B/8 weights; default .venv/bin/python), SKIP_TESTS=1, SKIP_VITB8=1,
# EXTRA_SET (more --set arguments for every run), VITB8_SET (more for the ViT-B/8 run),
# BIN (target/release/anomalyncd).
# GPU_CHECK_DEVICE=cpu runs every stage on the CPU instead (to test this script on a machine
# without a GPU; slow: use it with MTD_PER_TYPE, EPOCHS=1 and a small EXTRA_SET image size).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
BIN=${BIN:-target/release/anomalyncd}
SHARED=${SHARED:-../shared/data}
EPOCHS=${EPOCHS:-5}
BASE_PER_CLASS=${BASE_PER_CLASS:-100}
WORK=${WORK:-outputs/gpu_check}
CONFIG=configs/mtd.yaml
WEIGHTS=${WEIGHTS:-data/weights/dinov2_vits14.safetensors}
DEV=${GPU_CHECK_DEVICE:-cuda}
cores=$(nproc 2>/dev/null || echo 4)
NUM_WORKERS=${NUM_WORKERS:-$((cores < 8 ? cores : 8))}
read -r -a extra_set <<<"${EXTRA_SET:-}"
t_start=$(date +%s)

say() { printf '%s\n' "$*"; }
die2() { # message: nothing could be checked
  say "gpu_check: $*" >&2
  say "gpu_check: nothing checked (exit 2)" >&2
  exit 2
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- 0. preflight
say "==> 0. preflight"
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
[ -x "$BIN" ] || die2 "$BIN is missing: run ./scripts/setup.sh first (or set BIN)"
version=$("$BIN" --version 2>&1) || die2 "$BIN --version failed: $version"
say "$version" | sed 's/^/    /'
SMI=""
command -v nvidia-smi >/dev/null 2>&1 && SMI=nvidia-smi
if [ "$DEV" = cuda ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    GPU=${GPU:-${CUDA_VISIBLE_DEVICES%%,*}}
  else
    GPU=${GPU:-0}
  fi
  export CUDA_VISIBLE_DEVICES=$GPU
  if ! grep -q "CUDA available: yes" <<<"$version"; then
    if [ -n "$SMI" ] && nvidia-smi -L >/dev/null 2>&1 && [ -n "$(nvidia-smi -L 2>/dev/null)" ]; then
      die2 "nvidia-smi sees a GPU but libtorch does not (CUDA_VISIBLE_DEVICES=$GPU; 'CUDA available: no' above): check that GPU $GPU exists (nvidia-smi -L) and that the driver supports the CUDA version of the venv's torch (see .venv/lib/python*/site-packages/torch/version.py)"
    fi
    die2 "no NVIDIA GPU found: libtorch says 'CUDA available: no'${SMI:+ and nvidia-smi lists no GPU}${SMI:- and nvidia-smi is not installed}. This check needs a machine with an NVIDIA GPU and its driver; on a CPU machine use ./scripts/test.sh"
  fi
  if [ -n "$SMI" ]; then
    nvidia-smi -i "$GPU" --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
      sed 's/^/    GPU: /'
  else
    say "    nvidia-smi not found: peak GPU memory will not be measured"
  fi
else
  say "    GPU_CHECK_DEVICE=$DEV: every stage runs on the CPU (a test of this script, not of a GPU)"
  GPU=""
fi
for d in "$SHARED/mtd/test" "$SHARED/mtd_oracle_maps" "$SHARED/sd900/images" "$SHARED/sd900/masks"; do
  [ -d "$d" ] || die2 "$d is missing (set SHARED=<folder holding mtd/, mtd_oracle_maps/ and sd900/>)"
done
[ -f "$WEIGHTS" ] || die2 "$WEIGHTS is missing: run ./scripts/setup.sh (it prepares the offline backbone) or set WEIGHTS"
mkdir -p "$WORK/logs" || die2 "cannot create $WORK"
OUT=$WORK/outputs
RUNNER=gpu_check
failures=0
summary=()

# ---------------------------------------------------------------- stage runner
MEM_PID=""
mem_start() { # file
  MEM_PID=""
  if [ -z "$SMI" ] || [ -z "$GPU" ]; then return 0; fi
  nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$1" 2>/dev/null &
  MEM_PID=$!
}
mem_stop() { # file -> prints the peak in MiB, or "n/a"
  if [ -n "$MEM_PID" ]; then
    kill "$MEM_PID" 2>/dev/null
    wait "$MEM_PID" 2>/dev/null
    MEM_PID=""
    awk '$1 ~ /^[0-9]+$/ && $1 > m { m = $1 } END { if (m) print m " MiB"; else print "n/a" }' "$1"
  else
    echo "n/a"
  fi
}
idle_mem() {
  if [ -z "$SMI" ] || [ -z "$GPU" ]; then
    echo "n/a"
    return
  fi
  echo "$(nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' ') MiB"
}
# stage NAME COMMAND...: runs COMMAND with its output in $WORK/logs/NAME.log; prints and records
# its status, wall time and peak GPU memory (device-wide).
stage() {
  local name=$1
  shift
  local slug=${name//[^A-Za-z0-9._-]/_}
  local log=$WORK/logs/$slug.log t0 t1 rc=0 peak idle
  STAGE_LOG=$log
  idle=$(idle_mem)
  mem_start "$WORK/logs/$slug.mem"
  t0=$(now)
  "$@" >"$log" 2>&1 || rc=$?
  t1=$(now)
  peak=$(mem_stop "$WORK/logs/$slug.mem")
  local line
  line=$(printf '%-28s %-8s %8s s  peak GPU memory %s (before: %s)' "$name" \
    "$([ "$rc" = 0 ] && echo ok || echo "FAIL($rc)")" "$(secs "$t0" "$t1")" "$peak" "$idle")
  say "    $line   [log: $log]"
  summary+=("$line")
  if [ "$rc" != 0 ]; then
    failures=$((failures + 1))
    tail -n 15 "$log" | sed 's/^/    | /'
  fi
  return "$rc"
}
check() { # description, command...: a pass/fail check
  local what=$1
  shift
  if "$@"; then
    say "    ok   - $what"
    summary+=("ok   - $what")
  else
    say "    FAIL - $what"
    summary+=("FAIL - $what")
    failures=$((failures + 1))
  fi
}
na() { # a check that needs code that does not exist yet
  say "    not available yet - $*"
  summary+=("not available yet - $*")
}
# Prints the phases of a train run from its log.txt: cache build, epochs (samples/s), evaluation.
train_report() { # run folder
  local log=$1/log.txt
  [ -f "$log" ] || { say "    (no $log)"; return; }
  awk '
    { t = substr($0, 2, index($0, "s ") - 2) + 0 }
    /novel crops ->/ { t_data = t }
    /frozen-prefix cache:/ { printf "    cache build: %.1f s (%s)\n", t - t_data, substr($0, index($0, "cache:") + 7) }
    /^\[.*\] epoch [0-9]+\/[0-9]+:/ {
      n++; sps = $NF == "samples/s" ? $(NF - 1) : ""; if (n == 1) first = sps; else { sum += sps; k++ }
      last_t = t; if (n == 1) first_t = t
    }
    /image \(region merged\)/ { metrics = substr($0, index($0, "NMI")); t_eval = t }
    END {
      if (n) printf "    epochs: %d, samples/s: epoch 1 %s (warm-up), mean of epochs 2..%d %s\n", n, first, n, k ? sprintf("%.1f", sum / k) : "-"
      if (t_eval) printf "    evaluation + report: %.1f s; image level %s\n", t_eval - last_t, metrics
    }' "$log"
}

# ---------------------------------------------------------------- data
say "==> 1. MTD oracle protocol on $DEV ($EPOCHS epochs, precision auto, $NUM_WORKERS loader threads)"
images=$SHARED/mtd/test
maps=$SHARED/mtd_oracle_maps
if [ -n "${MTD_PER_TYPE:-}" ]; then
  sub=$WORK/mtd_subset
  rm -rf "$sub"
  for t in "$images"/*/; do
    t=$(basename "$t")
    mkdir -p "$sub/test/$t" "$sub/maps/$t"
    find "$images/$t" -maxdepth 1 -type f | sort | head -n "$MTD_PER_TYPE" | while read -r f; do
      stem=$(basename "${f%.*}")
      ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$sub/test/$t/"
      for m in "$maps/$t/$stem".*; do
        [ -e "$m" ] && ln -s "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$sub/maps/$t/"
      done
    done
  done
  images=$sub/test
  maps=$sub/maps
  say "    using the first $MTD_PER_TYPE images of each type ($sub)"
fi
base=$WORK/sd900_base
# train_mtd CATEGORY [ARGS...]: `train` on the MTD oracle maps (weights: $W, else $WEIGHTS); later
# --set arguments override earlier ones.
train_mtd() {
  local cat=$1
  shift
  rm -rf "${OUT:?}/$RUNNER/$cat"
  "$BIN" train --config "$CONFIG" --device "$DEV" --backbone-weights "${W:-$WEIGHTS}" \
    --dataset mtd --category "$cat" --dataset-path "$images" --anomaly-map-path "$maps" \
    --base-data-path "$base" --runner-name "$RUNNER" --overwrite \
    --set "experiment.exp_root=$OUT" --set "training.num_workers=$NUM_WORKERS" \
    --set "training.epochs=$EPOCHS" --set models.precision=auto ${extra_set[@]+"${extra_set[@]}"} "$@"
}
stage prepare-base "$BIN" prepare-base --images "$SHARED/sd900/images" --masks "$SHARED/sd900/masks" \
  --out "$base" --max-per-class "$BASE_PER_CLASS" --overwrite
for mode in cache nocache; do
  flag=true
  [ "$mode" = nocache ] && flag=false
  cat=mtd_oracle_$mode
  if stage "train ($mode)" train_mtd "$cat" --set "training.cache_frozen=$flag"; then
    train_report "$OUT/$RUNNER/$cat"
    stage "test ($mode)" "$BIN" test --device "$DEV" --checkpoint "$OUT/$RUNNER/$cat/checkpoint.safetensors" \
      --out "$WORK/test_$mode" --overwrite && grep -h "NMI" "$STAGE_LOG" | tail -n 1 | sed 's/^/    /'
  fi
done

# ---------------------------------------------------------------- 2. parity
say "==> 2. class-token parity: CPU fp32 vs $DEV fp32 (max abs diff <= 1e-3) and $DEV bf16 (min cosine >= 0.999)"
baseline() { # out folder, device, precision, crop source arguments...
  local out=$1 dev=$2 prec=$3
  shift 3
  "$BIN" baseline --method kmeans --config "$CONFIG" --device "$dev" --backbone-weights "$WEIGHTS" \
    --set "models.precision=$prec" --set "training.num_workers=$NUM_WORKERS" ${extra_set[@]+"${extra_set[@]}"} \
    --num-classes 5 --category parity --out "$out" --overwrite "$@"
}
compare_tokens() { # a.safetensors b.safetensors max-abs|min-cos LIMIT
  python3 - "$@" <<'PY'
import array, json, math, struct, sys
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    t = json.loads(b[8:8 + n])["class_tokens"]
    assert t["dtype"] == "F32", t["dtype"]
    s, e = t["data_offsets"]
    a = array.array("f")
    a.frombytes(b[8 + n + s:8 + n + e])
    if sys.byteorder != "little":
        a.byteswap()
    return t["shape"], a
(sa, a), (sb, b) = load(sys.argv[1]), load(sys.argv[2])
mode, limit = sys.argv[3], float(sys.argv[4])
if sa != sb:
    print(f"    shapes differ: {sa} vs {sb}")
    sys.exit(1)
n, d = sa
worst, cmin = 0.0, 1.0
for i in range(n):
    ra, rb = a[i * d:(i + 1) * d], b[i * d:(i + 1) * d]
    worst = max(worst, max(abs(x - y) for x, y in zip(ra, rb)))
    dot = sum(x * y for x, y in zip(ra, rb))
    na, nb = math.sqrt(sum(x * x for x in ra)), math.sqrt(sum(y * y for y in rb))
    cmin = min(cmin, dot / (na * nb) if na and nb else 0.0)
ok = worst <= limit if mode == "max-abs" else cmin >= limit
print(f"    {n} tokens x {d}: max abs diff {worst:.3e}, min cosine {cmin:.6f}")
sys.exit(0 if ok else 1)
PY
}
same_crops() { cmp -s <(cut -d, -f1 "$1/crop_predictions.csv") <(cut -d, -f1 "$2/crop_predictions.csv"); }
if command -v python3 >/dev/null; then
  P=$WORK/parity
  ref=$P/reference_cpu_fp32
  if stage "tokens CPU fp32 (reference)" baseline "$ref" cpu fp32 --anomaly-maps "$maps" --images "$images"; then
    for prec in fp32 bf16; do
      if stage "tokens $DEV $prec" baseline "$P/${DEV}_$prec" "$DEV" "$prec" --data "$ref/binarize"; then
        if [ "$prec" = fp32 ]; then lim=(max-abs 1e-3 "max abs diff <= 1e-3"); else lim=(min-cos 0.999 "min cosine >= 0.999"); fi
        check "class tokens $DEV $prec vs CPU fp32: same crops in the same order" same_crops "$ref" "$P/${DEV}_$prec"
        check "class tokens $DEV $prec vs CPU fp32: ${lim[2]} (L2-normalised tokens)" \
          compare_tokens "$ref/class_tokens.safetensors" "$P/${DEV}_$prec/class_tokens.safetensors" "${lim[0]}" "${lim[1]}"
      fi
    done
  fi
  # The trained checkpoint, tested on both devices: how often the clusters agree (information).
  ck=$OUT/$RUNNER/mtd_oracle_cache/checkpoint.safetensors
  if [ -f "$ck" ] && [ -f "$WORK/test_cache/crop_predictions.csv" ] &&
    stage "test cpu (cached ckpt)" "$BIN" test --device cpu --checkpoint "$ck" --out "$WORK/test_cache_cpu" --overwrite; then
    python3 - "$WORK/test_cache/crop_predictions.csv" "$WORK/test_cache_cpu/crop_predictions.csv" "$DEV" <<'PY'
import csv, sys
def rows(p):
    with open(p, newline="") as f:
        return {r["crop"]: r for r in csv.DictReader(f)}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
common = sorted(set(a) & set(b))
agree = sum(a[k]["predicted_cluster"] == b[k]["predicted_cluster"] for k in common)
diff = max((abs(float(a[k]["confidence"]) - float(b[k]["confidence"])) for k in common), default=0.0)
print(f"    info - trained checkpoint, {sys.argv[3]} vs CPU: {agree}/{len(common)} crops in the same cluster, max confidence difference {diff:.2e} (each device's precision: auto)")
PY
  fi
else
  na "class-token parity: python3 is needed to compare the token files"
fi
na "parity of a trained model's class tokens: no command writes them (test and predict write cluster confidences only; 'baseline' writes the pretrained backbone's) - needs e.g. a token dump in 'test'"

# ---------------------------------------------------------------- 3. ViT-B/8 at batch 128
say "==> 3. ViT-B/8 shape at batch 128 on $DEV (3 uncached epochs, data loading included)"
na "forward-only GPU timing in benches/model.rs: its BENCH_ARCHS=dino_vitb8 BENCH_BATCH=128 knobs exist but it builds the model on Device::Cpu (no device knob); timed here through 'train' instead"
if [ "${SKIP_VITB8:-0}" = 1 ]; then
  say "    skipped (SKIP_VITB8=1)"
else
  w8=${VITB8_WEIGHTS:-}
  [ -z "$w8" ] && [ -f data/weights/dino_vitbase8_pretrain.pth ] && w8=data/weights/dino_vitbase8_pretrain.pth
  py=${TORCH_PYTHON:-.venv/bin/python}
  if [ -z "$w8" ] && [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null; then
    w8=$WORK/vitb8_random.pth
    if [ ! -f "$w8" ]; then
      stage "random ViT-B/8 weights" "$py" - "$w8" <<'PY'
# Random weights with the names and shapes of DINO's ViT-B/8 backbone (86 M parameters): the
# speed of a step does not depend on the values.
import sys, torch
d, depth, patch, grid = 768, 12, 8, 28
g = torch.Generator().manual_seed(0)
def w(*shape):
    return torch.randn(*shape, generator=g) * 0.02
sd = {"cls_token": w(1, 1, d), "pos_embed": w(1, 1 + grid * grid, d),
      "patch_embed.proj.weight": w(d, 3, patch, patch), "patch_embed.proj.bias": torch.zeros(d),
      "norm.weight": torch.ones(d), "norm.bias": torch.zeros(d)}
for k in range(depth):
    b = f"blocks.{k}."
    for norm in ("norm1", "norm2"):
        sd[b + norm + ".weight"], sd[b + norm + ".bias"] = torch.ones(d), torch.zeros(d)
    for lin, n_out, n_in in [("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("mlp.fc1", 4 * d, d), ("mlp.fc2", d, 4 * d)]:
        sd[b + lin + ".weight"], sd[b + lin + ".bias"] = w(n_out, n_in), torch.zeros(n_out)
torch.save(sd, sys.argv[1])
PY
    fi
  fi
  if [ -n "$w8" ] && [ -f "$w8" ]; then
    say "    weights: $w8"
    read -r -a vitb8_set <<<"${VITB8_SET:-}"
    if W=$w8 stage "train ViT-B/8 b128" train_mtd vitb8_b128 --set models.pretrained_backbone=dino_vitb8 \
      --set training.batch_size=128 --set training.cache_frozen=false --set training.epochs=3 \
      ${vitb8_set[@]+"${vitb8_set[@]}"}; then
      train_report "$OUT/$RUNNER/vitb8_b128"
    fi
  else
    na "ViT-B/8 timing: no dino_vitb8 weights (VITB8_WEIGHTS or data/weights/dino_vitbase8_pretrain.pth) and no .venv torch to make random ones"
  fi
fi

# ---------------------------------------------------------------- 4. tests
say "==> 4. the tests that run on $DEV: cargo test --release --test train --test num_classes --test cli --test bad_inputs"
if [ "${SKIP_TESTS:-0}" = 1 ]; then
  say "    skipped (SKIP_TESTS=1)"
elif ! command -v cargo >/dev/null; then
  na "the tests: cargo not found"
else
  run_tests() {
    LIBTORCH_USE_PYTORCH=1 PATH="$ROOT/.venv/bin:$PATH" \
      cargo test --release --locked --test train --test num_classes --test cli --test bad_inputs
  }
  stage "cargo test (CUDA tests)" run_tests
  grep -E "^test result:|^failures:|^    [a-z_:]+$" "$STAGE_LOG" | sed 's/^/    /'
fi

# ---------------------------------------------------------------- summary
total=$(($(date +%s) - t_start))
say "==> summary ($DEV${GPU:+, GPU $GPU}; total $total s; logs in $WORK/logs/)"
for line in "${summary[@]}"; do say "    $line"; done
if [ "$total" -gt 480 ]; then
  say "    note: took more than 8 minutes; lower EPOCHS or set MTD_PER_TYPE / SKIP_TESTS=1"
fi
if [ "$failures" -gt 0 ]; then
  say "gpu_check: $failures stage(s) or check(s) FAILED"
  exit 1
fi
say "gpu_check: all checks passed"
