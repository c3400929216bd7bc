"""Score-weighted detector features fused with the trained class tokens, offline (issue 25,
item 1: "also offer them as an input to the trained path ... decide by measurement").

For each protocol it reads the trained runs of several seeds (each run's `train/` folder:
`predictions.csv`, `crop_predictions.csv` and `class_tokens.safetensors`, the trained class
token of every crop) and one `baseline --method pooled` output on the same maps
(`pooled_features.safetensors` and its `predictions.csv`, one pooled feature per image). Per seed
it scores, at the image level (micro F1 after Hungarian matching, as the product's F1; NMI):

  head           the trained heads' region-merged predictions (what `discover` answers)
  trained        k-means (true K) on the image's mean unit trained crop token
  pooled         k-means on the pooled detector feature (the same for every seed)
  refined        Lloyd iterations on the trained image tokens started from the heads' answer
                 (to convergence; `refined 1`: one step)
  fused w        k-means on [sqrt(w) trained, sqrt(1 - w) pooled], both unit vectors, so w is
                 each part's share of the squared distance
  consensus      of the rows above, the partition with the highest mean ARI to the others

and prints mean +- sd over the seeds. k-means: k-means++ with 10 restarts, seeded per seed.

    .venv/bin/python experiments/fusion_study.py mtd_fitted=POOLED_DIR:RUN1,RUN2,RUN3 ...

RUNk is a discover run folder (its `train/` is read) or a train folder itself. Standard
library + numpy; k-means and the matching come from k_study.py beside this file.
"""
import csv
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k_study import assignment_max, kmeans, read_tokens, unit  # noqa: E402

WEIGHTS = (0.25, 0.5, 0.75)
REFINE_ITERS = 100


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def image_keys(pred_rows):
    return [r["image"] for r in pred_rows]


def norm_key(k: str) -> str:
    """`<type>/<stem>` without an extension, so crops' image keys and pooled rows agree."""
    p = Path(k)
    return str(p.with_suffix("")) if p.suffix else k


def f1_nmi(truth, pred):
    t_names = sorted(set(truth))
    p_names = sorted(set(pred))
    ti = np.array([t_names.index(t) for t in truth])
    pi = np.array([p_names.index(p) for p in pred])
    k = max(len(t_names), len(p_names))
    conf = np.zeros((k, k))
    np.add.at(conf, (pi, ti), 1)
    f1 = assignment_max(conf) / len(truth)
    n = len(truth)
    pij = conf[: len(p_names), : len(t_names)] / n
    pi_, pj_ = pij.sum(1), pij.sum(0)
    mi = sum(
        pij[a, b] * math.log(pij[a, b] / (pi_[a] * pj_[b]))
        for a in range(pij.shape[0])
        for b in range(pij.shape[1])
        if pij[a, b] > 0
    )
    h = lambda p: -sum(v * math.log(v) for v in p if v > 0)  # noqa: E731
    denom = (h(pi_) + h(pj_)) / 2
    return f1, (mi / denom if denom > 0 else 0.0)


def ari(a, b):
    """Adjusted Rand index of two integer labelings."""
    n = len(a)
    c = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(c, (a, b), 1)
    pairs = lambda x: (x * (x - 1) / 2).sum()  # noqa: E731
    s, sa, sb, t = pairs(c), pairs(c.sum(1)), pairs(c.sum(0)), n * (n - 1) / 2
    expected, top = sa * sb / t, (sa + sb) / 2
    return (s - expected) / (top - expected) if top != expected else 0.0


def train_dir(run: Path) -> Path:
    return run / "train" if (run / "train" / "crop_predictions.csv").exists() else run


def run_images(run: Path):
    """(image keys, truth, head prediction, mean unit trained token per image)."""
    d = train_dir(run)
    crops = rows(d / "crop_predictions.csv")
    tok = read_tokens(d / "class_tokens.safetensors")
    assert len(tok) == len(crops), (d, len(tok), len(crops))
    tok = unit(tok)
    by_image = OrderedDict()
    for i, r in enumerate(crops):
        by_image.setdefault(norm_key(r["image"]), []).append(i)
    preds = {norm_key(r["image"]): r for r in rows(d / "predictions.csv")}
    keys = list(by_image)
    truth = [preds[k]["true_class"] for k in keys]
    head = [preds[k]["predicted_cluster"] for k in keys]
    feats = unit(np.stack([tok[ix].mean(0) for ix in by_image.values()]))
    return keys, truth, head, feats


def pooled(dir_: Path):
    x = unit(read_tokens(dir_ / "pooled_features.safetensors"))
    keys = [norm_key(k) for k in image_keys(rows(dir_ / "predictions.csv"))]
    assert len(keys) == len(x), (dir_, len(keys), len(x))
    return dict(zip(keys, x))


def refine(x, start, iters):
    """Lloyd iterations on `x` from the partition `start` (the heads' answer): each cluster's
    centroid, then every image to its nearest centroid, `iters` times or until nothing moves."""
    labels = sorted(set(start))
    a = np.array([labels.index(v) for v in start])
    for _ in range(iters):
        c = np.stack([x[a == j].mean(0) if (a == j).any() else np.full(x.shape[1], np.inf)
                      for j in range(len(labels))])
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        na = np.where(np.isfinite(d), d, np.inf).argmin(1)
        if (na == a).all():
            break
        a = na
    return a


def study(name, pooled_dir, runs):
    pool = pooled(Path(pooled_dir))
    scores = {}
    for s, run in enumerate(runs):
        keys, truth, head, trained = run_images(Path(run))
        missing = [k for k in keys if k not in pool]
        if missing:
            sys.exit(f"{name}: {len(missing)} images have no pooled feature, e.g. {missing[0]}")
        p = np.stack([pool[k] for k in keys])
        k = len(set(truth))
        rng = np.random.default_rng(1000 + s)
        variants = {"head": head}
        variants["trained"] = kmeans(trained, k, rng)[0]
        variants["pooled"] = kmeans(p, k, rng)[0]
        variants["refined"] = refine(trained, head, REFINE_ITERS)
        variants["refined 1"] = refine(trained, head, 1)
        for w in WEIGHTS:
            x = np.hstack([math.sqrt(w) * trained, math.sqrt(1 - w) * p])
            variants[f"fused {w}"] = kmeans(x, k, rng)[0]
        # An unsupervised choice: the candidate partition that agrees most (mean ARI) with the
        # others, the consensus medoid.
        cands = {v: np.unique(np.asarray(pr), return_inverse=True)[1] for v, pr in variants.items()}
        agree = {v: np.mean([ari(cands[v], cands[u]) for u in cands if u != v]) for v in cands}
        variants["consensus"] = cands[max(agree, key=agree.get)]
        for v, pred in variants.items():
            scores.setdefault(v, []).append(f1_nmi(truth, list(pred)))
    return scores


def fmt(vals):
    a = np.array(vals)
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.3f} ± {sd:.3f}"


def protocol_args(argv, doc, pooled):
    """[(protocol, pooled dir or None, [run, ...])] from `PROTOCOL=[POOLED_DIR:]RUN1,RUN2,...`
    arguments (the pooled dir when `pooled`); the usage `doc` when there are none."""
    if not argv:
        sys.exit(doc)
    out = []
    for arg in argv:
        name, _, rest = arg.partition("=")
        pooled_dir, runs = rest.partition(":")[::2] if pooled else (None, rest)
        if not name or not runs:
            form = "POOLED_DIR:RUN1,RUN2,..." if pooled else "RUN1,RUN2,..."
            sys.exit(f"{arg}: expected PROTOCOL={form}")
        out.append((name, pooled_dir, runs.split(",")))
    return out


def main(argv):
    table = OrderedDict()
    for name, pooled_dir, runs in protocol_args(argv, __doc__, pooled=True):
        table[name] = study(name, pooled_dir, runs)
    variants = list(next(iter(table.values())))
    print("| variant | " + " | ".join(table) + " | mean F1 |")
    print("|---|" + "---|" * (len(table) + 1))
    for v in variants:
        cells, means = [], []
        for name in table:
            s = table[name][v]
            f1s, nmis = [x[0] for x in s], [x[1] for x in s]
            means.append(np.mean(f1s))
            cells.append(f"{fmt(f1s)}<br>NMI {fmt(nmis)}")
        print(f"| {v} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
