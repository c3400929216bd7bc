"""Oracle anomaly maps for a data set in the MVTec AD layout (ground_truth/<type>/<stem>.png), made
as ../shared/data/mtd_oracle_maps describes its own: each ground-truth mask resized to 256 x 256,
Gaussian-blurred (sigma 3 px), scaled by a random strength per image (200 x U(0.3, 1)), over
smoothed noise (sigma 2 px, 12 +- 12), on one global 8-bit scale. Used to split a protocol's loss
between localisation and representation (issue 25: tire on oracle maps).

    .venv/bin/python experiments/oracle_maps.py GROUND_TRUTH_DIR OUT_DIR [SEED]

numpy, scipy and Pillow. OUT_DIR/<type>/<stem>.png, to pass as `discover --anomaly-maps OUT_DIR`.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    gt, out = Path(argv[0]), Path(argv[1])
    rng = np.random.default_rng(int(argv[2]) if len(argv) == 3 else 7)
    masks = sorted(gt.glob("*/*.png"))
    if not masks:
        sys.exit(f"{gt}: no <type>/<stem>.png masks")
    for f in masks:
        m = np.asarray(Image.open(f).convert("L").resize((256, 256), Image.BILINEAR), float) / 255
        strength = rng.uniform(0.3, 1.0)
        noise = gaussian_filter(rng.normal(0, 1, (256, 256)), 2) * 12 + 12
        a = np.clip(gaussian_filter(m, 3) * 200 * strength + noise, 0, 255).astype(np.uint8)
        dest = out / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            sys.exit(f"{dest} exists: choose an empty OUT_DIR")
        Image.fromarray(a).save(dest)
    print(f"{len(masks)} maps in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
