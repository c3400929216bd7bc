#!/usr/bin/env python3
"""Does the answer's graph gain from the images' pooled detector features? An offline study
(issue 25, `inference.spectral_graph`).

    .venv/bin/python experiments/pooled_graph_study.py PROTOCOL=POOLED:RUN1,RUN2,... ...

POOLED is a folder with the images' pooled detector features: the maps folder the built-in
detector wrote them in (pooled_features.safetensors + pooled_features.csv) or a `baseline
--method pooled` output (pooled_features.safetensors + predictions.csv). Each RUN is a `discover`
run folder (train/class_tokens.safetensors, crop_predictions.csv, predictions.csv). For every run,
with the true K, spectral clustering (experiments/spectral_study.py's mirror of
src/cluster/spectral.rs, 10 neighbours) of the images on:

  trained            the graph of the trained image features (`spectral_graph: trained`)
  trained+pooled     the sum of that graph and the pooled features' graph, each locally scaled
                     with 10 neighbours (`spectral_graph: trained_and_pooled`)
  pooled             the pooled features' graph alone (training-free)
  joined             one graph of the two features side by side (unit each, concatenated)

Printed: F1 mean +- sd / mean NMI per protocol, and the mean F1 over the protocols.
Standard library + numpy; the readers and metrics from the scripts beside this one.
"""
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, fmt, norm_key, rows, run_images, unit  # noqa: E402
from k_study import kmeans, read_tokens  # noqa: E402
from spectral_study import affinity  # noqa: E402

NEIGHBOURS = 10


def pooled_features(dir_: Path):
    """{image key: unit pooled feature} of a maps folder or a `baseline --method pooled` output."""
    listing = dir_ / "pooled_features.csv"
    if not listing.exists():
        listing = dir_ / "predictions.csv"
    keys = [norm_key(r["image"]) for r in rows(listing)]
    x = unit(read_tokens(dir_ / "pooled_features.safetensors"))
    assert len(keys) == len(x), (dir_, len(keys), len(x))
    return dict(zip(keys, x))


def spectral_on(w, k, seed=0):
    """Ng-Jordan-Weiss on the affinity `w`: the top k eigenvectors of D^-1/2 W D^-1/2, rows made
    unit length, split by k-means (spectral_study.spectral, from a given affinity)."""
    deg = w.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    _, vecs = np.linalg.eigh(inv[:, None] * w * inv[None, :])
    u = vecs[:, -k:]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
    return kmeans(u, k, np.random.default_rng(seed))[0]


def study(pooled_dir, runs):
    pooled = pooled_features(Path(pooled_dir))
    found = OrderedDict()
    for run in runs:
        keys, truth, _, x = run_images(Path(run))
        missing = [k for k in keys if k not in pooled]
        assert not missing, (run, missing[:3])
        p = np.stack([pooled[k] for k in keys])
        k = len(set(truth))
        graphs = {
            "trained": affinity(x, NEIGHBOURS),
            "trained+pooled": affinity(x, NEIGHBOURS) + affinity(p, NEIGHBOURS),
            "pooled": affinity(p, NEIGHBOURS),
            "joined": affinity(unit(np.hstack([x, p])), NEIGHBOURS),
        }
        for name, w in graphs.items():
            found.setdefault(name, []).append(f1_nmi(truth, list(spectral_on(w, k))))
    return found


def main(argv):
    if not argv:
        sys.exit(__doc__)
    table = OrderedDict()
    for arg in argv:
        name, _, rest = arg.partition("=")
        pooled_dir, _, runs = rest.partition(":")
        if not (name and pooled_dir and runs):
            sys.exit(f"{arg}: expected PROTOCOL=POOLED:RUN1,RUN2,...")
        table[name] = study(pooled_dir, runs.split(","))
    print("| graph | " + " | ".join(f"{n} ({len(next(iter(t.values())))} runs)" for n, t in table.items())
          + " | mean F1 |")
    print("|---|" + "---|" * (len(table) + 1))
    for g in next(iter(table.values())):
        cells, means = [], []
        for t in table.values():
            f1 = np.array([a for a, _ in t[g]])
            means.append(f1.mean())
            cells.append(f"{fmt(f1)} / {np.mean([b for _, b in t[g]]):.3f}")
        print(f"| {g} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
