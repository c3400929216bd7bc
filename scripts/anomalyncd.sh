#!/usr/bin/env bash
# Mirrors the reference's scripts/anomalyncd.sh: train and evaluate AnomalyNCD on every MVTec AD
# category (anomaly maps from your detector, e.g. MuSc), then the MTD block (commented out, as in the
# reference). Set the paths below; the reference's --dataset/--category/... arguments are the same
# flags of `anomalyncd train`. Results: outputs/<run_exp>/metrics.csv (category,NMI,ARI,F1).
#
# Categories are independent runs. With gpus="0 1 2 3" (or GPUS="0 1 2 3" in the environment) they
# are spread over those GPUs, one category per GPU at a time (scripts/lib/queue.sh): each run's log
# goes to <exp_root>/<run_exp>/logs/<category>.log, a failed category does not stop the others, and
# the script exits 1 naming the failed ones. Tokens: N or cuda:N (a GPU), cpu (a CPU job; "cpu cpu"
# = two at once). gpus="" (the default) runs them one after another here, as the reference does.
# For a Slurm cluster see scripts/slurm/anomalyncd_array.sbatch.
#
# Every variable below can also be set from the environment: GPUS, DEVICE, CATEGORIES (space
# separated), DATASET_PATH, ANOMALY_MAP_PATH, BASE_DATA_PATH, BINARY_DATA_PATH, CROP_DATA_PATH,
# RUN_EXP, EXP_ROOT, LOG_DIR, and TRAIN_ARGS (extra `train` arguments, e.g. "--set training.epochs=5").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/anomalyncd}
CONFIG=${CONFIG:-configs/anomalyncd.yaml}

# GPUs to spread the categories over; "" = one after another (see above)
gpus=${GPUS:-}              # e.g. "0 1 2 3"
# MVTec AD dataset
device=${DEVICE:-auto}      # the reference's gpu=0; here: auto | cpu | cuda | cuda:N (when gpus="")
categories=("bottle" "cable" "capsule" "carpet" "grid" "hazelnut" "leather" "metal_nut" "pill" "screw" "tile" "toothbrush" "transistor" "wood" "zipper")
if [ -n "${CATEGORIES:-}" ]; then read -r -a categories <<<"$CATEGORIES"; fi
# input data path
dataset_path=${DATASET_PATH:-"data/mvtec_anomaly_detection"}
anomaly_map_path=${ANOMALY_MAP_PATH:-"data/mvtec_musc_anomaly_map"}
base_data_path=${BASE_DATA_PATH:-"data/AeBAD_crop"}   # anomalyncd prepare-base --images … --masks … --out data/AeBAD_crop
# output data path
binary_data_path=${BINARY_DATA_PATH:-"data/mvtec_musc"}      # the MEBin's output path of the binary data
crop_data_path=${CROP_DATA_PATH:-"data/mvtec_musc_crop"}     # the MEBin's output path of the crop data
# experiment name
run_exp=${RUN_EXP:-"mvtec_musc_crop"}
exp_root=${EXP_ROOT:-"outputs"}                 # experiment.exp_root of $CONFIG
log_dir=${LOG_DIR:-"$exp_root/$run_exp/logs"}   # per-category logs when gpus is set
extra_args=()
if [ -n "${TRAIN_ARGS:-}" ]; then read -r -a extra_args <<<"$TRAIN_ARGS"; fi

train_category() { # device, category
    "$BIN" train --config "$CONFIG" --device "$1" \
        --runner-name "$run_exp" \
        --dataset "mvtec" \
        --category "$2" \
        --dataset-path "$dataset_path" \
        --anomaly-map-path "$anomaly_map_path" \
        --binary-data-path "$binary_data_path" \
        --crop-data-path "$crop_data_path" \
        --base-data-path "$base_data_path" \
        ${extra_args[@]+"${extra_args[@]}"}
}

if [ -z "$gpus" ]; then
    for category in "${categories[@]}"
    do
        train_category "$device" "$category"
    done
else
    # shellcheck source=scripts/lib/queue.sh
    source scripts/lib/queue.sh
    # shellcheck source=scripts/lib/metrics_table.sh
    source scripts/lib/metrics_table.sh
    table="$exp_root/$run_exp/metrics.csv"
    table_lines=$(metrics_table_lines "$table")
    status=0
    queue_run "$gpus" "$log_dir" train_category "${categories[@]}" || status=$?
    metrics_table_fill "$table" "$exp_root/$run_exp" "$table_lines" ${QUEUE_OK[@]+"${QUEUE_OK[@]}"}
    exit "$status"
fi


# # MTD dataset (anomalyncd prepare-mtd converts the original MTD layout; see also experiments/eval_mtd.sh)
# device=auto
# categories=("MTD")
# # input data path
# dataset_path="data/mtd_anomaly_detection/test"
# anomaly_map_path="data/mtd_musc_anomaly_map"
# base_data_path="data/AeBAD_crop"
# # output data path
# binary_data_path="data/mtd_musc"
# crop_data_path="data/mtd_musc_crop"
# run_exp="mtd_musc_crop"
# for category in "${categories[@]}"
# do
#     "$BIN" train --config "$CONFIG" --device "$device" \
#         --runner-name "$run_exp" \
#         --dataset "mtd" \
#         --category "$category" \
#         --dataset-path "$dataset_path" \
#         --anomaly-map-path "$anomaly_map_path" \
#         --binary-data-path "$binary_data_path" \
#         --crop-data-path "$crop_data_path" \
#         --base-data-path "$base_data_path"
# done
