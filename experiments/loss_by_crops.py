#!/usr/bin/env python3
"""Where a trained run loses after MEBin: image-level accuracy of the matched classes, split by
whether the image's crops touch its ground-truth defect.

    .venv/bin/python experiments/loss_by_crops.py RUN_DIR GROUND_TRUTH_DIR

RUN_DIR is a `train`, `test` or `baseline` output (predictions.csv; binarize/mebin.json, or
pass the binarize folder as BINARIZE=DIR). For each image: correct when its cluster's matched
class is its true class. Prints the accuracy and share of images with and without a touching
crop, overall and per type, so the loss can be put on localisation or on clustering.
"""
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(run: Path, gt_dir: Path) -> None:
    binarize = Path(os.environ.get("BINARIZE", run / "binarize"))
    records = {f"{r['class_name']}/{r['stem']}": r for r in json.loads((binarize / "mebin.json").read_text())["records"]}
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    stats = {}  # (type, touching) -> [images, correct]
    for row in rows:
        key = row["image"].rsplit(".", 1)[0]
        r = records.get(key)
        if r is None:
            continue
        gt = np.array(Image.open(gt_dir / f"{key}.png").convert("L")) > 127
        touch = any(
            gt[max(int(round(u)), 0):int(round(b)), max(int(round(l)), 0):int(round(rt))].any()
            for l, u, rt, b in r["crop_boxes"]
        )
        ok = row["matched_class"] == row["true_class"]
        for t in (row["true_class"], "all"):
            s = stats.setdefault((t, touch), [0, 0])
            s[0] += 1
            s[1] += int(ok)
    types = sorted({t for t, _ in stats if t != "all"}) + ["all"]
    print(f"{run}: image accuracy (cluster's matched class = true class) by whether a crop touches the defect")
    print(f"{'type':<14}{'touching: n':>12}{'acc':>7}{'not touching: n':>17}{'acc':>7}")
    for t in types:
        a = stats.get((t, True), [0, 0])
        b = stats.get((t, False), [0, 0])
        acc = lambda s: f"{s[1] / s[0]:.3f}" if s[0] else "  -  "
        print(f"{t:<14}{a[0]:>12}{acc(a):>7}{b[0]:>17}{acc(b):>7}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
