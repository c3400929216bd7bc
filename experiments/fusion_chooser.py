"""Can a run tell, without labels, whether the pooled detector features should be fused with its
trained class tokens? An offline study (issue 25: "choosing the representation per data set by a
criterion that can tell these cases apart").

fusion_study.py found that fusing helps on one kind of data (SD-900: F1 0.740 -> 0.914 at w = 0.25)
and hurts on another (tire, MTD zero-shot). This script prints, per protocol and seed, the image-level
F1 of the heads and of the fused partitions beside unsupervised signals that a run has:

  agree       ARI between the heads' answer and k-means on the pooled features alone: two
              independent views of the same images; if they agree, the pooled features carry the
              types the training found
  sil_pooled  the mean silhouette (cosine) of k-means on the pooled features
  sil_trained the same on the trained image tokens
  sil_fused   the same on the fused features (w = 0.25)

and then, for each signal and threshold, the F1 of the rule "fuse at w when the signal is at least the
threshold, else the heads", averaged over protocols, with a leave-one-protocol-out check of the
threshold choice.

    .venv/bin/python experiments/fusion_chooser.py mtd_fitted=POOLED_DIR:RUN1,RUN2,RUN3 ...

Arguments as fusion_study.py's. Standard library + numpy.
"""
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import ari, f1_nmi, pooled, protocol_args, run_images  # noqa: E402
from k_study import kmeans  # noqa: E402

WEIGHTS = (0.25, 0.5)


def silhouette(x, labels):
    """Mean silhouette with cosine distance on unit rows (1 - x.y)."""
    d = 1.0 - x @ x.T
    labs = np.unique(labels)
    if len(labs) < 2:
        return 0.0
    s = np.zeros(len(x))
    for i in range(len(x)):
        own = labels == labels[i]
        n_own = own.sum() - 1
        if n_own == 0:
            continue
        a = d[i, own].sum() / n_own
        b = min(d[i, labels == l].mean() for l in labs if l != labels[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(s.mean())


def as_int(pred):
    return np.unique(np.asarray(pred), return_inverse=True)[1]


def study(name, pooled_dir, runs):
    pool = pooled(Path(pooled_dir))
    out = []
    for s, run in enumerate(runs):
        keys, truth, head, trained = run_images(Path(run))
        p = np.stack([pool[k] for k in keys])
        k = len(set(truth))
        rng = np.random.default_rng(1000 + s)
        pk = kmeans(p, k, rng)[0]
        tk = kmeans(trained, k, rng)[0]
        row = {"seed": s, "head": f1_nmi(truth, head)[0], "pooled": f1_nmi(truth, list(pk))[0]}
        row["agree"] = ari(as_int(head), as_int(pk))
        row["agree_t"] = ari(as_int(tk), as_int(pk))
        row["sil_pooled"] = silhouette(p, as_int(pk))
        row["sil_trained"] = silhouette(trained, as_int(tk))
        row["sil_head"] = silhouette(trained, as_int(head))
        parts = {"head": as_int(head)}
        for w in WEIGHTS:
            x = np.hstack([math.sqrt(w) * trained, math.sqrt(1 - w) * p])
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            fk = kmeans(x, k, rng)[0]
            row[f"fused {w}"] = f1_nmi(truth, list(fk))[0]
            row[f"sil_fused {w}"] = silhouette(x, as_int(fk))
            row[f"agree_f {w}"] = ari(as_int(head), as_int(fk))
            parts[f"fused {w}"] = as_int(fk)
        # Each candidate partition scored in both views (the same spaces for every candidate, so
        # the scores compare): the mean of its silhouettes on the trained tokens and on the pooled
        # features.
        for n, lab in parts.items():
            row[f"two-view {n}"] = (silhouette(trained, lab) + silhouette(p, lab)) / 2
            row[f"st {n}"] = silhouette(trained, lab)
        row["two-view pick"] = max(parts, key=lambda n: row[f"two-view {n}"])
        row["trained-view pick"] = max(parts, key=lambda n: row[f"st {n}"])
        out.append(row)
    return out


SIGNALS = ("agree", "agree_t", "sil_pooled", "sil_trained", "sil_head", "sil_fused 0.25",
           "agree_f 0.25")


def rule_score(table, signal, thr, w):
    """Mean over protocols of the mean F1 over seeds of: fused w if signal >= thr else head."""
    per = {}
    for name, rows_ in table.items():
        per[name] = np.mean([r[f"fused {w}"] if r[signal] >= thr else r["head"] for r in rows_])
    return per


def main(argv):
    table = {}
    for name, pooled_dir, runs in protocol_args(argv, __doc__, pooled=True):
        table[name] = study(name, pooled_dir, runs)
    cols = ["head", "pooled"] + [f"fused {w}" for w in WEIGHTS] + list(SIGNALS) + [
        "sil_fused 0.5", "agree_f 0.5"]
    print("| protocol | seed | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, rows_ in table.items():
        for r in rows_:
            print(f"| {name} | {r['seed']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    # Rules with no threshold: each run picks the candidate partition with the best silhouette
    # (mean over both views, or on the trained tokens alone).
    for rule, prefix in (("two-view pick", "two-view "), ("trained-view pick", "st ")):
        per = {n: np.mean([r[r[rule]] for r in rs]) for n, rs in table.items()}
        print(f"\n{rule}: mean F1 {np.mean(list(per.values())):.3f}")
        for n, rs in table.items():
            scores = ["; ".join(f"{k[len(prefix):]} {r[k]:.3f}" for k in r
                                if k.startswith(prefix) and not k.endswith("pick")) for r in rs]
            print(f"  {n}: F1 {per[n]:.3f}, picks {[r[rule] for r in rs]}, silhouettes {scores}")
    base = np.mean([np.mean([r["head"] for r in rs]) for rs in table.values()])
    print(f"\nheads only: mean F1 {base:.3f}")
    for w in WEIGHTS:
        for sig in SIGNALS:
            vals = sorted({r[sig] for rs in table.values() for r in rs})
            best = None
            for thr in vals + [math.inf]:
                per = rule_score(table, sig, thr, w)
                m = np.mean(list(per.values()))
                if best is None or m > best[0]:
                    best = (m, thr, per)
            # Leave one protocol out: choose thr on the others, score on the held-out one.
            lopo = []
            for held in table:
                rest_ = {n: v for n, v in table.items() if n != held}
                cand = max(vals + [math.inf],
                           key=lambda t: np.mean(list(rule_score(rest_, sig, t, w).values())))
                lopo.append(rule_score({held: table[held]}, sig, cand, w)[held])
            per = " ".join(f"{n} {v:.3f}" for n, v in best[2].items())
            print(f"w {w} {sig:15s} best thr {best[1]:.3f}: mean {best[0]:.3f} ({per}); "
                  f"leave-one-out mean {np.mean(lopo):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
