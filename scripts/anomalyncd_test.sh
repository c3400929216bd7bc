#!/usr/bin/env bash
# Evaluates the checkpoints that scripts/anomalyncd.sh saved, category by category, on their crops
# (or, with test_anomaly_map_path/test_dataset_path set, on other maps and images, binarized with
# each checkpoint's threshold range). Writes metrics.csv, predictions.csv, metrics.json and
# report.html into outputs/<run_exp>_test/<category>/.
#
# gpus="0 1" (or GPUS in the environment) spreads the categories over those GPUs, one at a time
# per GPU, as scripts/anomalyncd.sh does (logs in <exp_root>/<run_exp>_test/logs/<category>.log;
# exit 1 naming the failed ones); gpus="" runs them one after another here. Environment overrides:
# GPUS, DEVICE, CATEGORIES, RUN_EXP, EXP_ROOT, TEST_DATASET_PATH, TEST_ANOMALY_MAP_PATH, LOG_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/anomalyncd}

gpus=${GPUS:-}                       # e.g. "0 1 2 3" (tokens: N, cuda:N, cpu)
device=${DEVICE:-auto}
categories=("bottle" "cable" "capsule" "carpet" "grid" "hazelnut" "leather" "metal_nut" "pill" "screw" "tile" "toothbrush" "transistor" "wood" "zipper")
if [ -n "${CATEGORIES:-}" ]; then read -r -a categories <<<"$CATEGORIES"; fi
run_exp=${RUN_EXP:-"mvtec_musc_crop"}            # as in scripts/anomalyncd.sh
exp_root=${EXP_ROOT:-"outputs"}
test_dataset_path=${TEST_DATASET_PATH:-""}           # e.g. data/mvtec_anomaly_detection (then <category>/test/)
test_anomaly_map_path=${TEST_ANOMALY_MAP_PATH:-""}   # e.g. data/mvtec_other_anomaly_map (then <category>/)
log_dir=${LOG_DIR:-"$exp_root/${run_exp}_test/logs"} # per-category logs when gpus is set

has_checkpoint() { # category
    local ckpt="$exp_root/$run_exp/$1/checkpoint.safetensors"
    if [ ! -f "$ckpt" ]; then
        echo "anomalyncd_test: no checkpoint for $1 at $ckpt (run scripts/anomalyncd.sh first); skipped" >&2
        return 1
    fi
}

test_category() { # device, category
    local ckpt="$exp_root/$run_exp/$2/checkpoint.safetensors"
    local out="$exp_root/${run_exp}_test/$2"
    if [ -n "$test_anomaly_map_path" ]; then
        "$BIN" test --device "$1" --checkpoint "$ckpt" --out "$out" --overwrite \
            --anomaly-maps "$test_anomaly_map_path/$2" \
            --images "$test_dataset_path/$2/test"
    else
        "$BIN" test --device "$1" --checkpoint "$ckpt" --out "$out" --overwrite
    fi
}

if [ -z "$gpus" ]; then
    for category in "${categories[@]}"
    do
        has_checkpoint "$category" || continue
        test_category "$device" "$category"
    done
else
    todo=()
    for category in "${categories[@]}"; do
        if has_checkpoint "$category"; then todo+=("$category"); fi
    done
    if [ "${#todo[@]}" -eq 0 ]; then
        echo "anomalyncd_test: no checkpoint to test" >&2
        exit 0
    fi
    # shellcheck source=scripts/lib/queue.sh
    source scripts/lib/queue.sh
    queue_run "$gpus" "$log_dir" test_category "${todo[@]}"
fi
