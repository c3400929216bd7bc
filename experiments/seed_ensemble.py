"""Would an ensemble of training seeds answer better than one seed? An offline study (issue 25).

For each protocol it reads the image answers of several runs that differ only in the training seed
(each run's train/predictions.csv) and builds the co-association matrix (the share of runs that put
two images in one cluster). Two consensus partitions with the true K are scored against the truth:

  avg-link   average-linkage agglomeration on 1 - co-association
  kmeans     k-means (k-means++, 10 restarts) on the co-association rows

beside each seed's own F1 and their mean.

    .venv/bin/python experiments/seed_ensemble.py PROTOCOL=RUN1,RUN2,RUN3 ...

Standard library + numpy; F1 and k-means from fusion_study.py and k_study.py beside this file.
"""
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, protocol_args  # noqa: E402
from k_study import kmeans  # noqa: E402


def answers(run: Path):
    with open(run / "train" / "predictions.csv", newline="") as f:
        return {r["image"]: (r["true_class"], r["predicted_cluster"]) for r in csv.DictReader(f)}


def average_linkage(dist, k):
    """Labels of `k` clusters from average-linkage agglomeration on a distance matrix."""
    n = len(dist)
    m = dist.astype(float).copy()
    np.fill_diagonal(m, np.inf)
    sizes = np.ones(n)
    alive = np.ones(n, bool)
    members = [[i] for i in range(n)]
    while alive.sum() > k:
        a, b = np.unravel_index(np.argmin(m), m.shape)
        row = (m[a] * sizes[a] + m[b] * sizes[b]) / (sizes[a] + sizes[b])
        m[a], m[:, a] = row, row
        m[a, a] = np.inf
        m[b], m[:, b] = np.inf, np.inf
        alive[b] = False
        sizes[a] += sizes[b]
        members[a] += members[b]
    labels = np.zeros(n, int)
    for j, i in enumerate(np.flatnonzero(alive)):
        labels[members[i]] = j
    return labels


def main(argv):
    protocols = protocol_args(argv, __doc__, pooled=False)
    print("| protocol | seeds' F1 | mean | avg-link | kmeans |")
    print("|---|---|---|---|---|")
    for name, _, runs in protocols:
        res = [answers(Path(r)) for r in runs]
        keys = sorted(res[0])
        truth = [res[0][k][0] for k in keys]
        k = len(set(truth))
        labs = [np.array([r[key][1] for key in keys]) for r in res]
        co = np.mean([(a[:, None] == a[None, :]).astype(float) for a in labs], 0)
        single = [f1_nmi(truth, list(a))[0] for a in labs]
        link = f1_nmi(truth, list(average_linkage(1 - co, k)))[0]
        km = f1_nmi(truth, list(kmeans(co, k, np.random.default_rng(0))[0]))[0]
        print(f"| {name} | {', '.join(f'{s:.3f}' for s in single)} | {np.mean(single):.3f} | "
              f"{link:.3f} | {km:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
