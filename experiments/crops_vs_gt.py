#!/usr/bin/env python3
"""Where a run loses before training: MEBin's masks and crop boxes against the ground-truth masks.

    .venv/bin/python experiments/crops_vs_gt.py BINARIZE_OUT GROUND_TRUTH_DIR

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
    per_type = {}  # type -> [maps without an interval, crops touching, masks touching]
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
            amap = np.array(Image.open(r["map"]).convert("F")) if not r["map"].endswith(".npy") else np.load(r["map"]).squeeze()
            my, mx = np.unravel_index(np.argmax(amap), amap.shape)
            gy, gx = int(my * gt.shape[0] / amap.shape[0]), int(mx * gt.shape[1] / amap.shape[1])
            fb.setdefault("max_in", 0)
            fb["max_in"] += int(gt[max(gy - 1, 0):gy + 2, max(gx - 1, 0):gx + 2].any())
            t = per_type.setdefault(r["class_name"], [0, 0, 0])
            t[0] += 1
            t[2] += int((gt & mask).any())
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
                per_type[r["class_name"]][1] += int(box.any())
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
            f"of the image on average; crop score mean {np.mean(fb['score']):.3f}; map maximum in (±1 px of) "
            f"the defect {fb.get('max_in', 0)}"
        )
        print("  per type (maps, crops touching, masks touching): " + ", ".join(
            f"{t} {n}/{c}/{m}" for t, (n, c, m) in sorted(per_type.items())))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
