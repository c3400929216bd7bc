#!/usr/bin/env python3
"""K read before training, after it, and the larger of the two, on every subset of the types
(issue 25, sixteenth session: what `inference.num_clusters: auto` chooses under
`--num-classes auto`).

    .venv/bin/python experiments/k_combined.py NAME=BASELINE:RUN [NAME=BASELINE:RUN ...]

BASELINE is a `baseline --num-classes auto` output: the pretrained crop tokens that `--num-classes
auto` reads before training (read as experiments/k_subsets.py reads them). RUN is a `discover`
(or `train`) output of a model trained with 10 clusters: its trained class tokens give each
image's trained feature (the mean of its crops' unit tokens, unit again), which
`inference.num_clusters: auto` reads after training, centred on the subset's mean as
`inference.spectral_center` centres them.

For every subset of two or more of the set's true types (and the whole set last):
- before: the product's estimator (`eigengap_scales`: the eigengaps of the kNN graphs with
  sqrt(n)/2, sqrt(n) and 2 sqrt(n) neighbours averaged, K = 2..10) on the subset's crops;
- after: the same on the subset's trained image features, centred;
- larger: max(before, after), the product's `auto`.

Printed per set and estimator: the mean absolute error over the subsets, the share within +-1,
the mean signed error (negative: too few), and the whole set's reading; then each estimator's
means over the sets. Caveat: the trained model saw every type of the set, so its features on a
subset are not those of a model trained on that subset alone. Numpy only.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k_study as ks  # noqa: E402
import k_subsets as kss  # noqa: E402
from fusion_study import run_images  # noqa: E402

NAMES = ("before", "after", "larger")


def readings(baseline: Path, run: Path):
    """{estimator: [(true K, estimate), ...]} over the subsets, the whole set last."""
    xc, yc, _, _ = ks.load(baseline)
    yc = np.array(yc)
    _, truth, _, xi = run_images(run)
    yi = np.array(truth)
    types = sorted(set(yi))
    if sorted(set(yc)) != types:
        sys.exit(f"{baseline} and {run} hold different types: {sorted(set(yc))} / {types}")
    out = {n: [] for n in NAMES}
    for sub in kss.subsets(types):
        before = kss.multi_k(ks.unit(xc[np.isin(yc, sub)]))
        after = kss.multi_k(kss.centred(xi[np.isin(yi, sub)]))
        for n, k in zip(NAMES, (before, after, max(before, after))):
            out[n].append((len(sub), k))
    return out


def main(argv):
    sets = [a.split("=", 1) for a in argv if "=" in a]
    if not sets or not all(":" in spec for _, spec in sets):
        sys.exit(__doc__)
    print("| set | estimator | mean abs error | within +-1 | mean signed error | whole set (true K) |")
    print("|---|---|---|---|---|---|")
    means = {n: [] for n in NAMES}
    for name, spec in sets:
        baseline, run = spec.split(":", 1)
        got = readings(Path(baseline), Path(run))
        for n in NAMES:
            pairs = np.array(got[n])
            err = pairs[:, 1] - pairs[:, 0]
            row = (np.abs(err).mean(), (np.abs(err) <= 1).mean(), err.mean())
            means[n].append(row)
            whole_true, whole = got[n][-1]
            print(f"| {name} | {n} | {row[0]:.2f} | {100 * row[1]:.0f} % | {row[2]:+.2f} | "
                  f"{whole} ({whole_true}) |", flush=True)
    print()
    print("| estimator | mean abs error | within +-1 | mean signed error |")
    print("|---|---|---|---|")
    for n in NAMES:
        m = np.array(means[n]).mean(0)
        print(f"| {n} | {m[0]:.2f} | {100 * m[1]:.0f} % | {m[2]:+.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
