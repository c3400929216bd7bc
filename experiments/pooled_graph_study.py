#!/usr/bin/env python3
"""Does the answer's graph gain from the images' pooled detector features? An offline study
(issue 25, `inference.spectral_graph`).

    .venv/bin/python experiments/pooled_graph_study.py [--run-k] PROTOCOL=POOLED:RUN1,RUN2,... ...

POOLED is a folder with the images' pooled detector features: the maps folder the built-in
detector wrote them in (pooled_features.safetensors + pooled_features.csv) or a `baseline
--method pooled` output (pooled_features.safetensors + predictions.csv). Each RUN is a `discover`
run folder (train/class_tokens.safetensors, crop_predictions.csv, predictions.csv). For every run,
with the true K (with --run-k: the K the run clustered into, `found.num_clusters` of its
discover.json, as for runs with `--num-classes auto`), spectral clustering (experiments/spectral_study.py's mirror of
src/cluster/spectral.rs, 10 neighbours) of the images on:

  trained            the graph of the trained image features (`spectral_graph: trained`)
  trained+pooled     the sum of that graph and the pooled features' graph, each locally scaled
                     with 10 neighbours (`spectral_graph: trained_and_pooled`)
  pooled             the pooled features' graph alone (training-free)
  joined             one graph of the two features side by side (unit each, concatenated)

Printed: F1 mean +- sd / mean NMI per protocol, and the mean F1 over the protocols.
Standard library + numpy; the readers and metrics from the scripts beside this one.
"""
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, fmt, norm_key, rows, run_images, unit  # noqa: E402
from k_study import read_tokens  # noqa: E402
from spectral_study import affinity, spectral_on  # noqa: E402

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


def study(pooled_dir, runs, run_k=False):
    pooled = pooled_features(Path(pooled_dir))
    found = OrderedDict()
    for run in runs:
        keys, truth, _, x = run_images(Path(run))
        missing = [k for k in keys if k not in pooled]
        assert not missing, (run, missing[:3])
        p = np.stack([pooled[k] for k in keys])
        k = len(set(truth))
        if run_k:
            k = json.loads((Path(run) / "discover.json").read_text())["found"]["num_clusters"]
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
    run_k = "--run-k" in argv
    argv = [a for a in argv if a != "--run-k"]
    if not argv:
        sys.exit(__doc__)
    table = OrderedDict()
    for arg in argv:
        name, _, rest = arg.partition("=")
        pooled_dir, _, runs = rest.partition(":")
        if not (name and pooled_dir and runs):
            sys.exit(f"{arg}: expected PROTOCOL=POOLED:RUN1,RUN2,...")
        table[name] = study(pooled_dir, runs.split(","), run_k)
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
