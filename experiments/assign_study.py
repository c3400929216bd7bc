"""Is the images' assignment still where F1 is lost, or the features? An offline study (issue 25,
after `inference.assign: spectral`): clustering alternatives on the trained image features, with
and without the pooled detector features, on the same runs.

For each run it reads the trained image features (fusion_study.run_images: the normalised mean
of an image's crops' unit trained class tokens) and, per protocol, the pooled detector features
of `anomalyncd baseline --method pooled` (fusion_study.pooled), and scores with the true K:

  spectral            spectral_study.spectral, 10 neighbours (the product's default)
  consensus           spectral on the 5, 6, 8, 10, 12, 15-neighbour graphs, 4 k-means seeds each;
                      average linkage on the co-association (1 - share of the 24 partitions that
                      put two images together)
  finch               FINCH (Sarfraz et al., CVPR 2019): first-neighbour links, their components,
                      recursively; the closest cluster means merged down to K
  average, ward       agglomerative clustering (scipy), cosine / Euclidean on unit rows
  scan                SCAN's clustering step (Van Gansbeke et al., ECCV 2020): 5 linear heads
                      trained on fixed features so an image and a random one of its 5 nearest
                      neighbours agree, with entropy weight 5; the head of lowest loss
  graph sum, max      spectral on the sum / elementwise max of the trained and the pooled
                      features' locally scaled 10-nearest-neighbour graphs
  smooth pooled m     the spectral answer, then each image to the majority of its m nearest
                      images by the pooled features (its own vote counts half), once
  1-NN                leave-one-out nearest-neighbour accuracy of the true type (a probe that uses
                      the labels; for the trained, the pooled and the concatenated features)

    .venv/bin/python experiments/assign_study.py [--quick] PROTOCOL=[POOLED_DIR]:RUN1,RUN2,RUN3 ...

An empty POOLED_DIR (`PROTOCOL=:RUN1,...`) leaves out the rows that need the pooled features;
`--quick` keeps only spectral and consensus (for checking them on many trained folders).

numpy, scipy and torch (the venv's); F1 / NMI and the readers from the scripts beside this one.
"""
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, pooled, protocol_args, run_images  # noqa: E402
from k_study import kmeans  # noqa: E402
from spectral_study import affinity, knn_accuracy, print_table, spectral  # noqa: E402


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_cluster(w, k, seed=0):
    deg = w.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    _, vecs = np.linalg.eigh(inv[:, None] * w * inv[None, :])
    return np.asarray(kmeans(unit(vecs[:, -k:]), k, np.random.default_rng(seed))[0])


def consensus(x, k, scales=(5, 6, 8, 10, 12, 15), seeds=4):
    n = len(x)
    co = np.zeros((n, n))
    for nn in scales:
        w = affinity(x, nn)
        deg = w.sum(1)
        inv = 1 / np.sqrt(np.maximum(deg, 1e-300))
        _, vecs = np.linalg.eigh(inv[:, None] * w * inv[None, :])
        u = unit(vecs[:, -k:])
        for s in range(seeds):
            lab = np.asarray(kmeans(u, k, np.random.default_rng(s))[0])
            co += lab[:, None] == lab[None, :]
    d = 1 - co / (len(scales) * seeds)
    np.fill_diagonal(d, 0)
    return fcluster(linkage(squareform(d, checks=False), "average"), k, "maxclust") - 1


def first_neighbour_partition(x):
    s = unit(x) @ unit(x).T
    np.fill_diagonal(s, -np.inf)
    n = len(x)
    a = csr_matrix((np.ones(n), (np.arange(n), s.argmax(1))), shape=(n, n))
    return connected_components(a + a.T + a @ a.T, directed=False)[1]


def finch(x, k):
    labels, feats = np.arange(len(x)), x
    while True:
        c = first_neighbour_partition(feats)
        if c.max() + 1 < k or c.max() + 1 == len(feats):
            break
        labels = c[labels]
        feats = np.stack([x[labels == j].mean(0) for j in range(labels.max() + 1)])
        if labels.max() + 1 == k:
            return labels
    while labels.max() + 1 > k:
        m = unit(np.stack([x[labels == j].mean(0) for j in range(labels.max() + 1)]))
        s = m @ m.T
        np.fill_diagonal(s, -np.inf)
        i, j = sorted(np.unravel_index(s.argmax(), s.shape))
        labels = np.unique(np.where(labels == j, i, labels), return_inverse=True)[1]
    return labels


def agglomerative(x, k, method):
    z = linkage(unit(x), method=method, metric="euclidean" if method == "ward" else "cosine")
    return fcluster(z, k, "maxclust") - 1


def knn(x, m):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, 1, kind="stable")[:, :m]


def scan(x, k, m=5, heads=5, epochs=200, entropy_weight=5.0, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xs, nb = torch.tensor(x, dtype=torch.float32), torch.tensor(knn(x, m))
    layers = [torch.nn.Linear(x.shape[1], k) for _ in range(heads)]
    opt = torch.optim.Adam([p for h in layers for p in h.parameters()], lr=1e-3,
                           weight_decay=1e-4)
    n = len(x)
    for _ in range(epochs):
        j = nb[torch.arange(n), torch.randint(0, m, (n,), generator=g)]
        losses = []
        for h in layers:
            pa, pn = torch.softmax(h(xs), 1), torch.softmax(h(xs[j]), 1)
            agree = -torch.log((pa * pn).sum(1).clamp_min(1e-8)).mean()
            pm = pa.mean(0)
            losses.append(agree + entropy_weight * (pm * torch.log(pm.clamp_min(1e-8))).sum())
        opt.zero_grad()
        sum(losses).backward()
        opt.step()
    best = int(np.argmin([v.item() for v in losses]))
    with torch.no_grad():
        return layers[best](xs).argmax(1).numpy()


def smooth(labels, x, m, k):
    idx = knn(x, m)
    votes = np.zeros((len(x), k))
    np.add.at(votes, (np.repeat(np.arange(len(x)), m), labels[idx].ravel()), 1)
    votes[np.arange(len(x)), labels] += 0.5
    return votes.argmax(1)


def study(pooled_dir, runs, quick):
    pool = pooled(Path(pooled_dir)) if pooled_dir else None
    rows = OrderedDict()
    for run in runs:
        keys, truth, _, t = run_images(Path(run))
        k = len(set(truth))
        sp = np.asarray(spectral(t, k, 10))
        found = OrderedDict()
        if not quick:
            found["1-NN trained"] = knn_accuracy(t, truth, 1)
        found["spectral"] = sp
        found["consensus"] = consensus(t, k)
        if not quick:
            found["finch"] = finch(t, k)
            found["average"] = agglomerative(t, k, "average")
            found["ward"] = agglomerative(t, k, "ward")
            found["scan"] = scan(t, k)
        if pool is not None and not quick:
            p = unit(np.stack([pool[k] for k in keys]))
            found["1-NN pooled"] = knn_accuracy(p, truth, 1)
            found["1-NN concatenated"] = knn_accuracy(unit(np.hstack([t, p])), truth, 1)
            wt, wp = affinity(t, 10), affinity(p, 10)
            found["graph sum"] = embed_cluster(wt + wp, k)
            found["graph max"] = embed_cluster(np.maximum(wt, wp), k)
            for m in (3, 10):
                found[f"smooth pooled {m}"] = smooth(sp, p, m, k)
        for name, v in found.items():
            rows.setdefault(name, []).append(v if isinstance(v, float) else f1_nmi(truth, list(v)))
    return rows


def main(argv):
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    print_table(OrderedDict((name, study(pdir, runs, quick))
                            for name, pdir, runs in protocol_args(argv, __doc__, pooled=True)))


if __name__ == "__main__":
    main(sys.argv[1:])
