#!/usr/bin/env bash
# Mirrors the reference's scripts/anomalyncd.sh: train and evaluate AnomalyNCD on every MVTec AD
# category (anomaly maps from your detector, e.g. MuSc), then the MTD block (commented out, as in the
# reference). Set the paths below; the reference's --dataset/--category/... arguments are the same
# flags of `anomalyncd train`. Results: outputs/<run_exp>/metrics.csv (category,NMI,ARI,F1).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/anomalyncd}
CONFIG=${CONFIG:-configs/anomalyncd.yaml}

# MVTec AD dataset
device=auto   # the reference's gpu=0; here: auto | cpu | cuda | cuda:N
categories=("bottle" "cable" "capsule" "carpet" "grid" "hazelnut" "leather" "metal_nut" "pill" "screw" "tile" "toothbrush" "transistor" "wood" "zipper")
# input data path
dataset_path="data/mvtec_anomaly_detection"
anomaly_map_path="data/mvtec_musc_anomaly_map"
base_data_path="data/AeBAD_crop"   # anomalyncd prepare-base --images … --masks … --out data/AeBAD_crop
# output data path
binary_data_path="data/mvtec_musc"      # the MEBin's output path of the binary data
crop_data_path="data/mvtec_musc_crop"   # the MEBin's output path of the crop data
# experiment name
run_exp="mvtec_musc_crop"
for category in "${categories[@]}"
do
    "$BIN" train --config "$CONFIG" --device "$device" \
        --runner-name "$run_exp" \
        --dataset "mvtec" \
        --category "$category" \
        --dataset-path "$dataset_path" \
        --anomaly-map-path "$anomaly_map_path" \
        --binary-data-path "$binary_data_path" \
        --crop-data-path "$crop_data_path" \
        --base-data-path "$base_data_path"
done


# # MTD dataset (anomalyncd prepare-mtd converts the original MTD layout; see also scripts/eval_mtd.sh)
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
