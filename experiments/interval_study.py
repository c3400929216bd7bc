#!/usr/bin/env python3
"""MEBin's mask at other points of its stable interval, against the ground truth (offline).

    .venv/bin/python experiments/interval_study.py RUN_OR_BINARIZE_DIR GROUND_TRUTH_DIR

Reads a `binarize` output (or a run folder holding `binarize/`): `mebin.json` with each map's
component counts and the map files it names. For every map with a stable interval it rebuilds the
final mask `erode(map > threshold)` (6x6 minimum filter, borders never eroded, as MEBin) at
thresholds from the interval's start (position 0, the highest threshold) to its end (1, the
reference's choice), and prints the mean and median IoU with the ground-truth masks per position,
the IoU at the best single threshold of each map (an upper bound no rule reaches), and how many
recorded thresholds and mask sizes the transcription reproduced. `binarization.interval_position`
is the product's setting for the same choice (docs/results.md, "MEBin's threshold within its
stable interval").
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import minimum_filter

POSITIONS = [0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0]


def stable_run(counts, min_len):
    """(start, end) of the longest run of equal non-zero counts, at least min_len long; the
    product's tie-breaks are not needed here, since only maps with a recorded interval are read and
    the check below compares with the recorded threshold."""
    best, i, n = (0, None, None), 0, len(counts)
    while i < n:
        j = i
        while j + 1 < n and counts[j + 1] == counts[i]:
            j += 1
        if counts[i] > 0 and j - i + 1 >= min_len and j - i + 1 > best[0]:
            best = (j - i + 1, i, j)
        i = j + 1
    return best[1], best[2]


def iou(mask, gt):
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((gt.shape[1], gt.shape[0]), Image.NEAREST)
    m = np.array(m) > 127
    union = (m | gt).sum()
    return (m & gt).sum() / union if union else 1.0


def main(run: Path, gt_dir: Path) -> None:
    out = run / "binarize" if (run / "binarize" / "mebin.json").exists() else run
    d = json.loads((out / "mebin.json").read_text())
    lo, hi, step, min_len = d["min_th"], d["max_th"], d["sample_rate"], d["min_interval_len"]
    scores = [255 - k * step for k in range(256) if 255 - k * step > 0]
    raw = lambda s: int(s * (hi - lo) / 255 + lo)  # noqa: E731 (MEBin's raw_threshold)
    at = {p: [] for p in POSITIONS}
    best, reproduced, maps = [], 0, 0
    for r in d["records"]:
        if r["est_anomaly_num"] == 0:
            continue
        maps += 1
        amap = np.array(Image.open(r["map"]).convert("L")).astype(np.int32)
        gt = np.array(Image.open(gt_dir / r["class_name"] / f"{r['stem']}.png").convert("L")) > 127
        start, end = stable_run(r["component_counts"], min_len)
        eroded = minimum_filter(amap, size=6, mode="constant", cval=255) if d["erode"] else amap
        end_th = raw(scores[end])
        reproduced += int(end_th == r["threshold"] and (eroded > end_th).sum() == r["binary_foreground_pixels"])
        for p in POSITIONS:
            at[p].append(iou(eroded > raw(scores[int(round(start + p * (end - start)))]), gt))
        best.append(max(iou(eroded > raw(s), gt) for s in scores[: len(r["component_counts"])]))
    print(f"{out}: {maps} maps with a stable interval; recorded threshold and mask size reproduced for {reproduced}")
    for p in POSITIONS:
        print(f"  position {p:.2f}: mask IoU mean {np.mean(at[p]):.3f}, median {np.median(at[p]):.3f}")
    print(f"  best single threshold per map: mean {np.mean(best):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
