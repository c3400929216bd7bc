#!/usr/bin/env python3
"""How much does the answer's summed graph (`inference.spectral_graph: trained_and_pooled`) depend
on its settings and on the k-means that splits its embedding? An offline study (issue 25,
thirteenth session), on the same trained models and pooled features as
experiments/pooled_graph_study.py, with the true K.

    .venv/bin/python experiments/graph_sweeps.py weights|neighbours|kmeans-seeds|dims PROTOCOL=POOLED:RUN1,RUN2,... ...

  weights       the trained graph plus w times the pooled graph, w = 0, 0.25, 0.5, 1, 2, 4 (w = 1:
                the product), and w chosen per run by an unsupervised criterion: the largest
                eigengap at K of the normalised Laplacian, or the smallest K-th eigenvalue (cut)
  neighbours    both graphs with 5, 8, 10, 15, 20 neighbours (10: the product), and a consensus
                of the five partitions (spectral clustering of their co-association)
  kmeans-seeds  per run, the sum's embedding split by k-means with seeds 0..9 (10 restarts
                each, the lowest inertia kept, as the product does): the spread of F1 that the
                split alone gives, and the F1 of a consensus of the ten splits (spectral
                clustering of their co-association)
  dims          the embedding of K (the product), K + 1 or K + 2 eigenvectors, split into K
                clusters; each run's F1 the mean over k-means seeds 0..4
  center-scales the trained features as they are, centred on their mean (`inference.
                spectral_center`), standardised per dimension, or centred less their first
                principal component; and each graph the sum of those with b/2, b and 2b
                neighbours (`inference.spectral_scales: [0.5, 1, 2]`), alone or on the centred
                features. Each run's F1 is the mean over base neighbour counts b = 8, 10, 15 and
                k-means seeds 0..2, so that no setting wins by one neighbour count; the last
                column gives the mean over the protocols at each b (fourteenth session)

Printed: mean F1 per protocol and setting (weights, neighbours) and the mean over the protocols;
for kmeans-seeds one line per run. Standard library + numpy; the readers, graph and clustering
from the scripts beside this one.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, protocol_args, run_images  # noqa: E402
from pooled_graph_study import pooled_features  # noqa: E402
from k_study import kmeans, unit  # noqa: E402
from spectral_study import affinity, spectral_on  # noqa: E402

WEIGHTS = (0, 0.25, 0.5, 1, 2, 4)
NEIGHBOURS = (5, 8, 10, 15, 20)


def runs_of(pooled_dir, runs):
    """(truth, trained features, pooled features) per run, the rows in the run's image order."""
    pooled = pooled_features(Path(pooled_dir))
    for run in runs:
        keys, truth, _, x = run_images(Path(run))
        yield run, truth, x, np.stack([pooled[k] for k in keys])


def laplacian_eigenvalues(w):
    deg = w.sum(1)
    inv = 1 / np.sqrt(np.maximum(deg, 1e-300))
    return np.linalg.eigvalsh(np.eye(len(w)) - inv[:, None] * w * inv[None, :])


def f1(truth, w, k, seed=0):
    return f1_nmi(truth, list(spectral_on(w, k, seed)))[0]


def weights(truth, x, p):
    k = len(set(truth))
    at, ap = affinity(x, 10), affinity(p, 10)
    found, gap, cut = {}, {}, {}
    for w in WEIGHTS:
        a = at + w * ap
        ev = laplacian_eigenvalues(a)
        gap[w], cut[w] = ev[k] - ev[k - 1], ev[k - 1]
        found[f"w = {w}"] = f1(truth, a, k)
    found["w by eigengap"] = found[f"w = {max(WEIGHTS, key=gap.get)}"]
    found["w by cut"] = found[f"w = {min(WEIGHTS, key=cut.get)}"]
    return found


def embedding_dims(truth, x, p):
    k = len(set(truth))
    w = affinity(x, 10) + affinity(p, 10)
    deg = w.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    _, vecs = np.linalg.eigh(inv[:, None] * w * inv[None, :])
    found = {}
    for extra in (0, 1, 2):
        u = vecs[:, -(k + extra):]
        u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
        splits = [kmeans(u, k, np.random.default_rng(s))[0] for s in range(5)]
        found[f"K + {extra} eigenvectors"] = np.mean([f1_nmi(truth, list(v))[0] for v in splits])
    return found


def centred(x):
    return unit(x - x.mean(0))


def standardised(x):
    return unit((x - x.mean(0)) / np.maximum(x.std(0), 1e-6))


def less_top_component(x):
    y = x - x.mean(0)
    top = np.linalg.svd(y, full_matrices=False)[2][:1]
    return unit(y - (y @ top.T) @ top)


def scales(z, b):
    """The sum of the graphs with b/2, b and 2b neighbours (their mean: the same answer)."""
    return sum(affinity(z, max(2, int(round(f * b)))) for f in (0.5, 1, 2)) / 3


CENTER_SCALES = {
    "as they are (the product until now)": lambda x, p, b: affinity(x, b) + affinity(p, b),
    "centred": lambda x, p, b: affinity(centred(x), b) + affinity(p, b),
    "standardised": lambda x, p, b: affinity(standardised(x), b) + affinity(p, b),
    "centred, less the top component": lambda x, p, b: affinity(less_top_component(x), b)
    + affinity(p, b),
    "scales 0.5, 1, 2": lambda x, p, b: scales(x, b) + scales(p, b),
    "centred, scales 0.5, 1, 2 (the new default)": lambda x, p, b: scales(centred(x), b)
    + scales(p, b),
}
BASES = (8, 10, 15)


def center_scales(truth, x, p):
    k = len(set(truth))
    found = {}
    for name, graph in CENTER_SCALES.items():
        for b in BASES:
            w = graph(x, p, b)
            found[(name, b)] = np.mean([f1(truth, w, k, s) for s in range(3)])
    return found


def neighbours(truth, x, p):
    k = len(set(truth))
    found, labels = {}, []
    for nn in NEIGHBOURS:
        lab = np.array(spectral_on(affinity(x, nn) + affinity(p, nn), k))
        labels.append(lab)
        found[f"{nn} neighbours"] = f1_nmi(truth, list(lab))[0]
    co = np.mean([(lab[:, None] == lab[None, :]).astype(float) for lab in labels], 0)
    np.fill_diagonal(co, 0)
    found["consensus"] = f1(truth, co, k)
    return found


def main(argv):
    modes = {"weights": weights, "neighbours": neighbours, "dims": embedding_dims,
             "center-scales": center_scales}
    if not argv or argv[0] not in (*modes, "kmeans-seeds"):
        sys.exit(__doc__)
    mode, args = argv[0], argv[1:]
    table = {}
    for name, pooled_dir, runs in protocol_args(args, __doc__, pooled=True):
        for run, truth, x, p in runs_of(pooled_dir, runs):
            if mode == "kmeans-seeds":
                k = len(set(truth))
                w = affinity(x, 10) + affinity(p, 10)
                labels = [np.array(spectral_on(w, k, s)) for s in range(10)]
                v = [f1_nmi(truth, list(lab))[0] for lab in labels]
                co = np.mean([(lab[:, None] == lab[None, :]).astype(float) for lab in labels], 0)
                np.fill_diagonal(co, 0)
                print(f"{name} {run}: F1 {min(v):.3f}..{max(v):.3f}, mean {np.mean(v):.3f}, "
                      f"consensus {f1(truth, co, k):.3f} (" + " ".join(f"{a:.3f}" for a in v)
                      + ")", flush=True)
                continue
            for setting, v in modes[mode](truth, x, p).items():
                table.setdefault(setting, {}).setdefault(name, []).append(v)
    if not table:
        return
    if mode == "center-scales":
        print_by_base(table)
        return
    names = list(next(iter(table.values())))
    print("| setting | " + " | ".join(names) + " | mean F1 |")
    print("|---|" + "---|" * (len(names) + 1))
    for setting, cols in table.items():
        means = [np.mean(cols[n]) for n in names]
        print(f"| {setting} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f} |")


def print_by_base(table):
    """One row per setting: each protocol's F1 averaged over the bases, the mean over the
    protocols, and that mean at each base."""
    names = list(next(iter(table.values())))
    print("| setting | " + " | ".join(names) + " | mean F1 | at b = "
          + ", ".join(map(str, BASES)) + " |")
    print("|---|" + "---|" * (len(names) + 2))
    for setting in CENTER_SCALES:
        cols = {n: np.mean([table[(setting, b)][n] for b in BASES], axis=0) for n in names}
        at = [np.mean([np.mean(table[(setting, b)][n]) for n in names]) for b in BASES]
        means = [np.mean(cols[n]) for n in names]
        print(f"| {setting} | " + " | ".join(f"{m:.3f}" for m in means)
              + f" | {np.mean(means):.3f} | " + " / ".join(f"{a:.3f}" for a in at) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
