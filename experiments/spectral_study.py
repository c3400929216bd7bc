"""Do the trained image features carry the defect types locally better than globally, and does a
nearest-neighbour graph recover them? An offline study (issue 25, `inference.assign`).

For each run it reads the trained class tokens (train/class_tokens.safetensors; an image's
feature is the normalised mean of its crops' unit tokens, as `inference.refine_steps` and
`inference.assign: spectral` use) and the chosen head (balance_study.image_probs: the heads'
region-merged answer, also for runs whose predictions.csv holds the spectral answer; none for a
`baseline --method kmeans` folder, whose tokens are the pretrained ones), and scores:

  1-NN, 5-NN   leave-one-out accuracy of the true type by the nearest 1 / 5 other images (how
               well the features carry the types locally; not a clustering, uses the labels)
  heads        the heads' region-merged answer (the reference's)
  kmeans       k-means on the image features (10 restarts), the true K
  spectral N   spectral clustering on the locally scaled N-nearest-neighbour graph, the true K
               (this script's mirror of src/cluster/spectral.rs)
  spectral+nc  the spectral answer, then every image to its cluster's nearest centroid (what
               storing centroids instead of the images would give `test` and `predict`)

    .venv/bin/python experiments/spectral_study.py PROTOCOL=RUN1,RUN2,RUN3 ...

Standard library + numpy; F1 / NMI, k-means and the runs' readers from the scripts beside this one.
"""
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balance_study import image_probs  # noqa: E402
from fusion_study import f1_nmi, fmt, protocol_args, refine, run_images, train_dir  # noqa: E402
from k_study import kmeans  # noqa: E402

SCALE_NEIGHBOUR = 7
NEIGHBOURS = (5, 8, 10, 15)


def affinity(x, nn):
    """The locally scaled kNN affinity of the unit rows of `x` (Zelnik-Manor & Perona)."""
    n = len(x)
    d = np.sqrt(np.maximum(2 - 2 * x @ x.T, 0))
    np.fill_diagonal(d, np.inf)
    nn = min(nn, n - 1)
    idx = np.argsort(d, 1, kind="stable")[:, :nn]
    sigma = np.maximum(d[np.arange(n), idx[:, min(nn, SCALE_NEIGHBOUR) - 1]], 1e-6)
    a = np.exp(-d ** 2 / (sigma[:, None] * sigma[None, :]))
    joined = np.zeros((n, n), bool)
    joined[np.repeat(np.arange(n), nn), idx.ravel()] = True
    w = np.where(joined | joined.T, a, 0.0)
    np.fill_diagonal(w, 0)
    return w


def spectral(x, k, nn, seed=0):
    return spectral_on(affinity(x, nn), k, seed)


def spectral_on(w, k, seed=0):
    """Ng-Jordan-Weiss on the affinity `w`: the top k eigenvectors of D^-1/2 W D^-1/2, rows made
    unit length, split by k-means."""
    deg = w.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    _, vecs = np.linalg.eigh(inv[:, None] * w * inv[None, :])
    u = vecs[:, -k:]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
    return kmeans(u, k, np.random.default_rng(seed))[0]


def knn_accuracy(x, truth, m):
    y = np.array(truth)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, 1, kind="stable")[:, :m]
    return float(np.mean([Counter(y[r]).most_common(1)[0][0] == y[i] for i, r in enumerate(idx)]))


def study(runs):
    rows = OrderedDict()
    for run in runs:
        _, truth, _, x = run_images(Path(run))
        k = len(set(truth))
        found = {"1-NN": knn_accuracy(x, truth, 1), "5-NN": knn_accuracy(x, truth, 5)}
        # A `baseline --method kmeans` folder (pretrained tokens) has no heads.
        if (train_dir(Path(run)) / "checkpoint.safetensors").exists():
            p, truth2, _ = image_probs(Path(run))
            assert truth == truth2, run
            found["heads"] = list(p.argmax(1))
        found["kmeans"] = list(kmeans(x, k, np.random.default_rng(0))[0])
        for nn in NEIGHBOURS:
            found[f"spectral {nn}"] = list(spectral(x, k, nn))
        found["spectral 10+nc"] = list(refine(x, found["spectral 10"], 1))
        for name, v in found.items():
            rows.setdefault(name, []).append(v if isinstance(v, float) else f1_nmi(truth, v))
    return rows


def print_table(table):
    """One markdown row per variant, one column per protocol: the mean of the probes, or F1 ± sd
    / NMI of the partitions, and the partitions' mean F1 over the protocols."""
    print("| variant | " + " | ".join(table) + " | mean F1 |")
    print("|---|" + "---|" * (len(table) + 1))
    for v in next(iter(table.values())):
        cells, means = [], []
        for rows in table.values():
            r = rows[v]
            if isinstance(r[0], float):
                cells.append(f"{np.mean(r):.3f}")
                continue
            f1 = np.array([a for a, _ in r])
            means.append(f1.mean())
            cells.append(f"{fmt(f1)} / {np.mean([b for _, b in r]):.3f}")
        mean = f"{np.mean(means):.3f}" if means else ""
        print(f"| {v} | " + " | ".join(cells) + f" | {mean} |")


def main(argv):
    print_table(OrderedDict((name, study(runs))
                            for name, _, runs in protocol_args(argv, __doc__, pooled=False)))


if __name__ == "__main__":
    main(sys.argv[1:])
