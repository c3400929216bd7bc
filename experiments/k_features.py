#!/usr/bin/env python3
"""Does K read better from other features than the pretrained class tokens? The K estimate on
every subset of a set's types, on the images' pooled detector features, on their pretrained
class tokens, and on both side by side.

    .venv/bin/python experiments/k_features.py NAME=MAPS,TOKENS [NAME=MAPS,TOKENS ...]

MAPS is a `discover` run's maps folder holding pooled_features.safetensors / .csv (the features
the detector pooled per image while it scored, which `training.neighbor_features: pooled`
reads); TOKENS a `baseline --num-classes auto` folder (class_tokens.safetensors and
crop_predictions.csv, as experiments/k_subsets.py reads them), whose images are matched to the
pooled rows by name. An image's tokens are the mean of its crops'. Each feature set is made unit
length; "concat" joins the two unit vectors; "sum" reads the gaps of the sum of the two
features' kNN graphs (each of the multi-k neighbour counts), as the answer's graph adds them
(`inference.spectral_graph: trained_and_pooled`; multi-k only). For every subset of two or more true types (the
images' type folders) the estimators of experiments/k_subsets.py pick K (2..10):
eigengap/multi-k (the product's default, `eigengap_scales`) and eigengap (one graph of sqrt n
neighbours). Printed per set and feature: the estimate on the whole set, the mean absolute
error over the subsets and the mean signed error (negative: too few).
"""
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k_study as ks  # noqa: E402
import k_subsets as kss  # noqa: E402


def read_pooled(maps: Path):
    x = ks.read_tokens(maps / "pooled_features.safetensors")
    names = [r["image"] for r in csv.DictReader(open(maps / "pooled_features.csv"))]
    assert len(names) == len(x), (maps, len(names), len(x))
    return x, names


def read_image_tokens(d: Path):
    _, _, xi, _ = ks.load(d)
    rows = list(csv.DictReader(open(d / "crop_predictions.csv")))
    images = list(dict.fromkeys(r["image"] for r in rows))
    return xi, [Path(i).with_suffix("").as_posix() for i in images]


def summed_multi_k(xs):
    """multi-k's gap curves, each on the sum of the features' kNN graphs."""
    r = np.sqrt(len(xs[0]))
    nns = [max(2, int(round(f * r))) for f in (0.5, 1, 2)]
    return kss.argmax_k(kss.mean_curve([kss.laplacian_gaps(sum(kss.knn_graph(x, nn) for x in xs)) for nn in nns]))


def main(argv):
    if not argv or any("=" not in a or "," not in a for a in argv):
        sys.exit(__doc__)
    for arg in argv:
        name, dirs = arg.split("=", 1)
        maps, tokens = (Path(p) for p in dirs.split(",", 1))
        xp, pnames = read_pooled(maps)
        xt, tnames = read_image_tokens(tokens)
        prow = {n: i for i, n in enumerate(pnames)}
        trow = {n: i for i, n in enumerate(tnames)}
        common = [n for n in tnames if n in prow]
        xp = ks.unit(xp[[prow[n] for n in common]])
        xt = ks.unit(xt[[trow[n] for n in common]])
        y = np.array([n.split("/")[0] for n in common])
        types = sorted(set(y))
        feats = {"pooled": xp, "tokens": xt, "concat": ks.unit(np.hstack([xp, xt]))}
        estimators = {"multi-k": kss.multi_k, "eigengap": kss.eigengap_nn}
        feats["sum"] = (xp, xt)
        for fname, x in feats.items():
            if fname == "sum":
                estimators = {"multi-k": summed_multi_k}
            errs = {e: [] for e in estimators}
            whole = {}
            for sub in kss.subsets(types):
                m = np.isin(y, sub)
                for e, f in estimators.items():
                    k = f(tuple(v[m] for v in x) if fname == "sum" else x[m])
                    errs[e].append(k - len(sub))
                    if len(sub) == len(types):
                        whole[e] = k
            print(f"{name} {fname}: {len(common)} images, {len(types)} types; "
                  + "; ".join(f"{e}: whole set {whole[e]}, error {np.mean(np.abs(v)):.2f} "
                              f"(signed {np.mean(v):+.2f})" for e, v in errs.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
