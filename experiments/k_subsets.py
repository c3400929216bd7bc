#!/usr/bin/env python3
"""Does `--num-classes auto` read K from the data? The K estimate on every subset of a set's types.

    .venv/bin/python experiments/k_subsets.py NAME=DIR [NAME=DIR ...] [--more] [--slow] [--drop-low-scores Q]

Each DIR is a `baseline --num-classes auto` output (class_tokens.safetensors and
crop_predictions.csv, read as experiments/k_study.py reads them). For every subset of at least two
of the set's true types, the crops of those types' images are kept and each estimator picks K
from 2..10; its error against the subset's true K is tallied. A set of 5 types gives 26 subsets
(K = 2, 3, 4, 5), so the estimators meet a spread of true K, which the five benchmark protocols
(true K 5, 5, 5, 3, 3) do not give: there a constant guess of 4 is within +-1 everywhere
(docs/results.md, "K on real crops").

Estimators (all deterministic; none has a constant fitted to these sets):
- eigengap: the rule until 2026-12-06 (`training.k_criterion: eigengap`; k_study.eigengap):
  crops, k = round(sqrt n).
- eigengap/images: the same on the images (the mean of an image's crop tokens).
- eigengap/k10, eigengap/images/k10: the same graph with 10 neighbours.
- eigengap/bagged: the crops' gap curves of 20 seeded subsamples of 80 % averaged, then the
  largest gap (a near tie between two peaks then goes to the one that holds across draws).
- eigengap/multi-k: the crops' gap curves with round(sqrt n)/2, sqrt n and 2 sqrt n neighbours
  (at least 2) averaged: the product's default since 2026-12-06 (`eigengap_scales`).
- eigengap/multi-k/images: the same three graphs on the images (fourteenth session).
- eigengap/multi-k/centred: the same on the crops centred on their mean, unit again.
- with --more (fifteenth session), other graphs and feature transforms, each under the same
  three-graph average:
  - snn/multi-k, snn/multi-k/images: shared-nearest-neighbour weights (the share of the two
    points' neighbour lists in common) on the kNN graph's edges, said to be robust to clusters
    of unequal density;
  - pc1/crops, pc1/images, pc3/images: the rows centred, less their first 1 or 3 principal
    components, unit again (a dominant nuisance direction, such as grey level, removed);
  - white16/images, white32/crops, white32/images: the rows' coordinates on their first 16 or
    32 principal axes, each axis scaled to unit variance, unit again (every direction weighed
    alike).
- with --slow, ps, stab, pac, bic, gmeans on the images: experiments/k_study.py's criteria of
  those names (seed 0), each as that script describes it.
- const3, const4: the same guess for every subset, for scale.

With --drop-low-scores Q, the crops whose anomaly score (DIR/binarize/scores.json) is below
the set's Q-quantile are left out of every crop estimator first (K read from the crops the
detector is surest of; the image estimators keep every crop).

Printed per set and over all sets: the mean absolute error, the share within +-1, the mean signed
error (negative: too few types), and the estimate for each true K.
"""
import csv
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k_study as ks  # noqa: E402


def knn_matrix(x, nn):
    """The directed 0/1 kNN matrix of the rows of x (row i: its nn nearest others, ties by index)."""
    n = len(x)
    nn = int(np.clip(nn, 1, n - 1))
    d = ks.sqdist(x, x)
    np.fill_diagonal(d, np.inf)
    m = np.zeros((n, n))
    m[np.repeat(np.arange(n), nn), np.argsort(d, axis=1, kind="stable")[:, :nn].ravel()] = 1
    return m


def knn_graph(x, nn):
    """The symmetric 0/1 kNN graph (i and j joined when either is among the other's nearest)."""
    m = knn_matrix(x, nn)
    return np.maximum(m, m.T)


def laplacian_gaps(a):
    """{K: lambda_K - lambda_{K-1}} of the normalised Laplacian of the graph a, K = KMIN..KMAX."""
    s = 1 / np.sqrt(a.sum(1))
    ev = np.linalg.eigvalsh(np.eye(len(a)) - s[:, None] * a * s[None, :])
    return {k: ev[k] - ev[k - 1] for k in range(ks.KMIN, min(ks.KMAX, len(a) - 1) + 1)}


def gap_curve(x, nn_fixed=None):
    """k_study.eigengap's gaps {K: lambda_K - lambda_{K-1}}, with an optional fixed neighbour
    count (it uses round(sqrt n))."""
    return laplacian_gaps(knn_graph(x, nn_fixed if nn_fixed else int(round(np.sqrt(len(x))))))


def argmax_k(gaps):
    return max(gaps, key=lambda k: (gaps[k], -k))


def eigengap_nn(x, nn_fixed=None):
    return argmax_k(gap_curve(x, nn_fixed))


def mean_curve(curves):
    ks_ = set.intersection(*(set(c) for c in curves))
    return {k: float(np.mean([c[k] for c in curves])) for k in ks_}


def bagged(x, draws=20, frac=0.8, seed=0):
    """The gap curves of `draws` seeded subsamples of `frac` of the points, averaged."""
    rng = np.random.default_rng(seed)
    m = max(3, int(round(frac * len(x))))
    return argmax_k(mean_curve([gap_curve(x[rng.choice(len(x), m, replace=False)]) for _ in range(draws)]))


def multi_k(x):
    """The gap curves of the graphs with sqrt(n)/2, sqrt(n) and 2 sqrt(n) neighbours, averaged."""
    r = np.sqrt(len(x))
    return argmax_k(mean_curve([gap_curve(x, max(2, int(round(f * r)))) for f in (0.5, 1, 2)]))


def centred(x):
    """The rows less their mean, unit again (as `inference.spectral_center` treats the trained
    features)."""
    return ks.unit(x - x.mean(0))


def snn_curve(x, nn):
    """gap_curve's gaps on the kNN graph whose edges weigh the share of neighbours in common."""
    m = knn_matrix(x, nn)
    edges = np.maximum(m, m.T)
    # a tiny floor keeps an edge whose ends share no neighbour (no isolated rows)
    return laplacian_gaps(edges * (m @ m.T / m.sum(1).max()) + 1e-9 * edges)


def snn_multi_k(x):
    r = np.sqrt(len(x))
    return argmax_k(mean_curve([snn_curve(x, max(2, int(round(f * r)))) for f in (0.5, 1, 2)]))


def less_pcs(x, m):
    """The rows centred, less their first m principal components, unit again."""
    z = x - x.mean(0)
    vt = np.linalg.svd(z, full_matrices=False)[2][:m]
    return ks.unit(z - (z @ vt.T) @ vt)


def whitened(x, d):
    """The rows' coordinates on their first d principal axes, each of unit variance, unit again."""
    return ks.unit(np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :d])


ESTIMATORS = {
    "eigengap": lambda c, i: eigengap_nn(c),
    "eigengap/images": lambda c, i: eigengap_nn(i),
    "eigengap/k10": lambda c, i: eigengap_nn(c, 10),
    "eigengap/images/k10": lambda c, i: eigengap_nn(i, 10),
    "eigengap/bagged": lambda c, i: bagged(c),
    "eigengap/multi-k": lambda c, i: multi_k(c),
    "eigengap/multi-k/images": lambda c, i: multi_k(i),
    "eigengap/multi-k/centred": lambda c, i: multi_k(centred(c)),
}
MORE = {
    "snn/multi-k": lambda c, i: snn_multi_k(c),
    "snn/multi-k/images": lambda c, i: snn_multi_k(i),
    "pc1/crops": lambda c, i: multi_k(less_pcs(c, 1)),
    "pc1/images": lambda c, i: multi_k(less_pcs(i, 1)),
    "pc3/images": lambda c, i: multi_k(less_pcs(i, 3)),
    "white16/images": lambda c, i: multi_k(whitened(i, 16)),
    "white32/crops": lambda c, i: multi_k(whitened(c, 32)),
    "white32/images": lambda c, i: multi_k(whitened(i, 32)),
}
SLOW = {
    **{f"{c}/images": (lambda c: lambda _c, i: ks.run_all(i, 0, {c})[c][0])(c)
       for c in ("ps", "stab", "pac", "bic", "gmeans")},
}
CONSTANTS = {
    "const3": lambda c, i: 3,
    "const4": lambda c, i: 4,
}


def subsets(types, min_k=2):
    for k in range(min_k, len(types) + 1):
        yield from itertools.combinations(types, k)


def crop_scores(d: Path):
    """The anomaly score of each crop of crop_predictions.csv, from the binarize stage's
    scores.json ({type: {crop file: score}})."""
    scores = json.load(open(d / "binarize" / "scores.json"))
    rows = csv.DictReader(open(d / "crop_predictions.csv"))
    return np.array([scores[t][f] for t, f in (r["crop"].split("/", 1) for r in rows)])


def main(argv):
    global ESTIMATORS
    drop = None
    if "--drop-low-scores" in argv:
        i = argv.index("--drop-low-scores")
        drop = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    ESTIMATORS = {**ESTIMATORS, **(MORE if "--more" in argv else {}),
                  **(SLOW if "--slow" in argv else {}), **CONSTANTS}
    sets = [a.split("=", 1) for a in argv if "=" in a]
    if not sets:
        sys.exit(__doc__)
    tally = defaultdict(lambda: defaultdict(list))  # estimator -> set -> [(true, est)]
    for name, d in sets:
        xc, yc, xi, yi = ks.load(Path(d))
        if drop is not None:
            s = crop_scores(Path(d))
            keep = s >= np.quantile(s, drop)
            xc, yc = xc[keep], [y for y, k in zip(yc, keep) if k]
        yc, yi = np.array(yc), np.array(yi)
        types = sorted(set(yi))
        for sub in subsets(types):
            mc, mi = np.isin(yc, sub), np.isin(yi, sub)
            c, i = ks.unit(xc[mc]), ks.unit(xi[mi])
            row = []
            for e, f in ESTIMATORS.items():
                k = f(c, i)
                tally[e][name].append((len(sub), k))
                row.append(f"{e}={k}")
            print(f"{name} K={len(sub)} {'+'.join(sub)} crops={len(c)} images={len(i)}: {' '.join(row)}",
                  file=sys.stderr, flush=True)
    names = [n for n, _ in sets]
    print("| estimator | " + " | ".join(f"{n}: mean abs err / within +-1 / bias" for n in names)
          + " | all sets (each set weighted equally) |")
    print("|---" * (len(names) + 2) + "|")
    for e in ESTIMATORS:
        cells, errs, within, bias = [], [], [], []
        for n in names:
            t = np.array(tally[e][n])
            err = t[:, 1] - t[:, 0]
            cells.append(f"{np.abs(err).mean():.2f} / {np.mean(np.abs(err) <= 1):.0%} / {err.mean():+.2f}")
            errs.append(np.abs(err).mean())
            within.append(np.mean(np.abs(err) <= 1))
            bias.append(err.mean())
        cells.append(f"{np.mean(errs):.2f} / {np.mean(within):.0%} / {np.mean(bias):+.2f}")
        print(f"| {e} | " + " | ".join(cells) + " |")
    print()
    print("Whole sets (every type; true K " + ", ".join(f"{n} {max(t for t, _ in tally[e0][n])}"
                                                    for e0 in list(ESTIMATORS)[:1] for n in names) + "):")
    for e in ESTIMATORS:
        print(f"- {e}: " + ", ".join(f"{n} {tally[e][n][-1][1]}" for n in names))
    print()
    print("Estimates by true K (each subset's estimate; all sets):")
    for e in ESTIMATORS:
        by = defaultdict(list)
        for n in names:
            for t, k in tally[e][n]:
                by[t].append(k)
        print(f"- {e}: " + "; ".join(f"K={t}: {sorted(v)}" for t, v in sorted(by.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
