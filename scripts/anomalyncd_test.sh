#!/usr/bin/env bash
# Evaluates the checkpoints that scripts/anomalyncd.sh saved, category by category, on their crops
# (or, with test_anomaly_map_path/test_dataset_path set, on other maps and images, binarized with
# each checkpoint's threshold range). Writes metrics.csv, predictions.csv, metrics.json and
# report.html into outputs/<run_exp>_test/<category>/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/anomalyncd}

device=auto
categories=("bottle" "cable" "capsule" "carpet" "grid" "hazelnut" "leather" "metal_nut" "pill" "screw" "tile" "toothbrush" "transistor" "wood" "zipper")
run_exp="mvtec_musc_crop"            # as in scripts/anomalyncd.sh
exp_root="outputs"
test_dataset_path=""                 # e.g. data/mvtec_anomaly_detection (then <category>/test/)
test_anomaly_map_path=""             # e.g. data/mvtec_other_anomaly_map (then <category>/)
for category in "${categories[@]}"
do
    ckpt="$exp_root/$run_exp/$category/checkpoint.safetensors"
    if [ ! -f "$ckpt" ]; then
        echo "anomalyncd_test: no checkpoint for $category at $ckpt (run scripts/anomalyncd.sh first); skipped" >&2
        continue
    fi
    out="$exp_root/${run_exp}_test/$category"
    if [ -n "$test_anomaly_map_path" ]; then
        "$BIN" test --device "$device" --checkpoint "$ckpt" --out "$out" --overwrite \
            --anomaly-maps "$test_anomaly_map_path/$category" \
            --images "$test_dataset_path/$category/test"
    else
        "$BIN" test --device "$device" --checkpoint "$ckpt" --out "$out" --overwrite
    fi
done
