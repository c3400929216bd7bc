#!/usr/bin/env python3
"""Does K read from the trained features? The K estimate on the trained image features, and the
answer's F1 at that K (issue 25, fifteenth session).

    .venv/bin/python experiments/k_trained.py NAME=RUN[:POOLED] [NAME=RUN[:POOLED] ...] [--each-k]

Each RUN is a `discover` (or `train`) output: its crops' trained class tokens
(class_tokens.safetensors, crop_predictions.csv) give each image's trained feature (the mean of
its crops' unit tokens, unit again: what the answer's graph is built on), predictions.csv each
image's true type. POOLED is a folder of the images' pooled detector features
(pooled_features.safetensors with pooled_features.csv or predictions.csv, as
experiments/pooled_graph_study.py reads them).

The product's estimator (`training.k_criterion: eigengap_scales`, experiments/k_subsets.py
"eigengap/multi-k": the gaps of the kNN graphs with sqrt(n)/2, sqrt(n) and 2 sqrt(n) neighbours
averaged) reads K from the images of every subset of two or more true types, each subset's
features centred on their own mean and made unit again (as `inference.spectral_center` treats
them). The models were trained with a K of their own (the run's --num-classes), so runs of one
set trained with different K show whether the reading follows the data or the K the model was
given.

Printed per run: the number of clusters it answered with (its K), the whole set's estimate, the
mean absolute error over the subsets; with POOLED, the F1 of the answer's graph (the centred
trained features' and the pooled features' graphs, each summed over 5, 10 and 20 neighbours:
`discover`'s defaults, as experiments/graph_sweeps.py builds them) split into the true K and
into the estimated K, each the mean over k-means seeds 0..2. With --each-k (POOLED needed), a
second table: the same graph's F1 when split into K = 2..8 (what a wrong K costs the answer).
Numpy only.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k_subsets as kss  # noqa: E402
from fusion_study import run_images  # noqa: E402
from graph_sweeps import centred, f1, scales  # noqa: E402
from pooled_graph_study import pooled_features  # noqa: E402


def answer_graph(run, pooled_dir):
    """(truth, the answer's graph) of a run, as `discover`'s defaults build it."""
    keys, truth, _, x = run_images(Path(run))
    pooled = pooled_features(Path(pooled_dir))
    p = np.stack([pooled[k] for k in keys])
    return truth, scales(centred(x), 10) + scales(p, 10)


def each_k(runs):
    ks_ = range(2, 9)
    print()
    print("| run | true K | " + " | ".join(f"F1 at K = {k}" for k in ks_) + " |")
    print("|---|---|" + "---|" * len(ks_))
    for name, spec in runs:
        run, _, pooled_dir = spec.partition(":")
        truth, w = answer_graph(run, pooled_dir)
        cells = [f"{np.mean([f1(truth, w, k, s) for s in range(3)]):.3f}" for k in ks_]
        print(f"| {name} | {len(set(truth))} | " + " | ".join(cells) + " |", flush=True)


def main(argv):
    runs = [a.split("=", 1) for a in argv if "=" in a]
    if not runs:
        sys.exit(__doc__)
    if "--each-k" in argv and not all(":" in spec for _, spec in runs):
        sys.exit("--each-k needs NAME=RUN:POOLED for every run")
    print("| run | K it answered with | whole set: estimate (true K) | mean abs err over subsets "
          "| F1 at the true K | F1 at the estimate |")
    print("|---|---|---|---|---|---|")
    for name, spec in runs:
        run, _, pooled_dir = spec.partition(":")
        keys, truth, head, x = run_images(Path(run))
        y = np.array(truth)
        types = sorted(set(truth))
        errs, whole = [], None
        for sub in kss.subsets(types):
            m = np.isin(y, sub)
            whole = kss.multi_k(centred(x[m]))  # the last subset is the whole set
            errs.append(abs(whole - len(sub)))
        cells = ["", ""]
        if pooled_dir:
            _, w = answer_graph(run, pooled_dir)
            cells = [f"{np.mean([f1(truth, w, k, s) for s in range(3)]):.3f}" for k in (len(types), whole)]
        print(f"| {name} | {len(set(head))} | {whole} ({len(types)}) | {np.mean(errs):.2f} | "
              + " | ".join(cells) + " |", flush=True)
    if "--each-k" in argv:
        each_k(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
