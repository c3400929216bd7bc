#!/usr/bin/env python3
"""Where a run loses before training: MEBin's masks and crop boxes against the ground-truth masks.

    .venv/bin/python scripts/crops_vs_gt.py BINARIZE_OUT GROUND_TRUTH_DIR

BINARIZE_OUT is a `binarize` output (or a run's `binarize/` folder: mebin.json + binary/);
GROUND_TRUTH_DIR holds <type>/<stem>.png masks. Prints the mean and median IoU of the binary
masks with the ground truth, how many maps had no stable MEBin interval, and how many
crops touch a defect at all. Then the same for the maps without a stable interval alone (whole-image
crops with an empty mask under `no_interval: whole_image`, the region around the peak under `peak`):
crops touching the defect, masks touching it, mask IoU, crop area as a share of the image, crop score.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(out: Path, gt_dir: Path) -> None:
    summary = json.loads((out / "mebin.json").read_text())
    ious, empty, crops, touching = [], 0, 0, 0
    fb = {"maps": 0, "gt": 0, "crops": 0, "touch": 0, "mask_touch": 0, "iou": [], "area": [], "score": []}
    for r in summary["records"]:
        gt_file = gt_dir / r["class_name"] / f"{r['stem']}.png"
        gt = np.array(Image.open(gt_file).convert("L")) > 127
        mask_img = Image.open(out / "binary" / r["class_name"] / f"{r['stem']}.png").convert("L")
        if mask_img.size != (gt.shape[1], gt.shape[0]):
            mask_img = mask_img.resize((gt.shape[1], gt.shape[0]), Image.NEAREST)
        mask = np.array(mask_img) > 127
        union = (gt | mask).sum()
        ious.append((gt & mask).sum() / union if union else 1.0)
        empty += int(r["est_anomaly_num"] == 0)
        no_interval = r["est_anomaly_num"] == 0
        if no_interval:
            fb["maps"] += 1
            fb["gt"] += int(gt.any())
            fb["mask_touch"] += int((gt & mask).any())
            if gt.any():
                fb["iou"].append(ious[-1])
            fb["score"].extend(r["crop_scores"])
        for left, up, right, bottom in r["crop_boxes"]:
            crops += 1
            box = gt[max(int(round(up)), 0):int(round(bottom)), max(int(round(left)), 0):int(round(right))]
            touching += int(box.any())
            if no_interval:
                fb["crops"] += 1
                fb["touch"] += int(box.any())
                fb["area"].append(box.size / gt.size)
    print(
        f"{out}: {len(ious)} maps; IoU(binary mask, ground truth) mean {np.mean(ious):.3f}, "
        f"median {np.median(ious):.3f}; no stable interval (empty mask) {empty}; "
        f"crops touching a defect {touching} of {crops} ({touching / max(crops, 1):.1%})"
    )
    if fb["maps"]:
        print(
            f"  maps without a stable interval: {fb['maps']} ({fb['gt']} with a non-empty ground truth); "
            f"their crops touching a defect {fb['touch']} of {fb['crops']}; masks touching it "
            f"{fb['mask_touch']}; mask IoU mean (non-empty ground truth) {np.mean(fb['iou']):.3f}; crop area {np.mean(fb['area']):.1%} "
            f"of the image on average; crop score mean {np.mean(fb['score']):.3f}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
