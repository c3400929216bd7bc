"""Offline checks on the trained runs of the quality benchmark (issue 25, 2026-12-04; results in
docs/results.md, "Issue 25: the crops' patch grid"). Each reads, per protocol, the runs
`OUT/<protocol>/seed*_view1000` (their `train/`: predictions, crop predictions, the checkpoint's
heads and `class_tokens.safetensors`) and, for `pcs` and `validity`, the pooled detector features
of `baseline --method pooled` in `POOLED/<protocol>`:

    .venv/bin/python experiments/representation_checks.py heads OUT
    .venv/bin/python experiments/representation_checks.py pcs OUT POOLED
    .venv/bin/python experiments/representation_checks.py validity OUT POOLED

heads     the chosen head's answer recomputed from the class tokens (checks the reading), the four
          heads' mean, Sinkhorn-balanced image assignments and a prior correction
pcs       k-means / one refinement step / fusion after removing the top 0-3 principal components
validity  per run: silhouettes of each view, ARIs between the views' partitions and the heads'

Standard library + numpy; the rest comes from fusion_study.py and k_study.py beside this file.
"""
import json
import math
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import ari, f1_nmi, norm_key, pooled, refine, rows, run_images  # noqa: E402
from k_study import kmeans, read_tokens, unit  # noqa: E402

PROTOCOLS = ["mtd_fitted", "tire_fitted", "mtd_zeroshot", "mtd_oracle", "sd900_zeroshot"]


def runs_of(out, prot):
    return sorted(Path(out, prot).glob("seed*_view1000"))


def tensors(path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        out = {}
        for k in names:
            a, b = head[k]["data_offsets"]
            f.seek(8 + n + a)
            out[k] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(head[k]["shape"])
    return out


def head_logits(run):
    """Every head's logits [H, crops, classes] from the stored class tokens and the weight-normed
    last layers, with the crops grouped per image."""
    d = Path(run) / "train"
    meta = json.load(open(d / "checkpoint.json"))
    h = meta["config"]["models"]["n_head"]
    names = [f"model.projector.last_layer.{i}.weight_{x}" for i in range(h) for x in "gv"]
    w = tensors(d / "checkpoint.safetensors", names)
    tok = unit(read_tokens(d / "class_tokens.safetensors"))
    logits = []
    for i in range(h):
        v, g = w[f"model.projector.last_layer.{i}.weight_v"], w[f"model.projector.last_layer.{i}.weight_g"]
        logits.append(tok @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T)
    crops = rows(d / "crop_predictions.csv")
    groups = OrderedDict()
    for i, r in enumerate(crops):
        groups.setdefault(norm_key(r["image"]), []).append(i)
    preds = {norm_key(r["image"]): r for r in rows(d / "predictions.csv")}
    truth = [preds[k]["true_class"] for k in groups]
    return np.stack(logits), len(meta["base_classes"]), meta["chosen_head"], list(groups.values()), truth


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def image_probs(logits, nb, groups, t=0.1):
    # Equal crop weights: 95 % of MTD's images have one crop; the product weights by mask area.
    p = softmax(logits[:, nb:] / t)
    return np.stack([p[g].mean(0) for g in groups])


def sinkhorn(p, iters=3):
    q = p / p.sum()
    n, k = q.shape
    for _ in range(iters):
        q = q / q.sum(0, keepdims=True) / k
        q = q / q.sum(1, keepdims=True) / n
    return q


def heads(out):
    for prot in PROTOCOLS:
        res = {}
        for run in runs_of(out, prot):
            lg, nb, ch, groups, truth = head_logits(run)
            f = lambda a: f1_nmi(truth, list(a))[0]  # noqa: E731
            p = image_probs(lg[ch], nb, groups)
            v = {"head": f(p.argmax(1)),
                 "mean of heads": f(np.mean([image_probs(x, nb, groups) for x in lg], 0).argmax(1))}
            for t in (0.1, 0.05, 0.02):
                v[f"sinkhorn T={t}"] = f(sinkhorn(image_probs(lg[ch], nb, groups, t)).argmax(1))
            for a in (0.5, 1.0):
                v[f"prior^{a}"] = f((p / p.mean(0) ** a).argmax(1))
            for k, x in v.items():
                res.setdefault(k, []).append(x)
        print(prot, " ".join(f"{k}={np.mean(x):.3f}" for k, x in res.items()), flush=True)


def without_top(x, m):
    x = x - x.mean(0)
    if m:
        vt = np.linalg.svd(x, full_matrices=False)[2][:m]
        x = x - (x @ vt.T) @ vt
    return unit(x)


def pcs(out, pooled_root):
    for prot in PROTOCOLS:
        pool = pooled(Path(pooled_root, prot))
        res = {}
        for s, run in enumerate(runs_of(out, prot)):
            keys, truth, head, tr = run_images(run)
            p = np.stack([pool[k] for k in keys])
            k = len(set(truth))
            rng = np.random.default_rng(1000 + s)
            f = lambda a: f1_nmi(truth, list(a))[0]  # noqa: E731
            for m in range(4):
                t2, p2 = without_top(tr, m), without_top(p, m)
                res.setdefault(f"trained -{m}", []).append(f(kmeans(t2, k, rng)[0]))
                res.setdefault(f"refined 1 -{m}", []).append(f(refine(t2, head, 1)))
                res.setdefault(f"pooled -{m}", []).append(f(kmeans(p2, k, rng)[0]))
                for w in (0.5, 0.25):
                    x = np.hstack([math.sqrt(w) * t2, math.sqrt(1 - w) * p2])
                    res.setdefault(f"fused {w} -{m}", []).append(f(kmeans(x, k, rng)[0]))
        print(prot, " ".join(f"{k}={np.mean(x):.3f}" for k, x in res.items()), flush=True)


def silhouette(x, a):
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    s = []
    for i in range(len(x)):
        own = a == a[i]
        if own.sum() <= 1:
            s.append(0.0)
            continue
        ai = d[i, own].sum() / (own.sum() - 1)
        bi = min(d[i, a == j].mean() for j in np.unique(a) if j != a[i])
        s.append((bi - ai) / max(ai, bi))
    return float(np.mean(s))


def validity(out, pooled_root):
    for prot in PROTOCOLS:
        pool = pooled(Path(pooled_root, prot))
        for s, run in enumerate(runs_of(out, prot)):
            keys, truth, head, tr = run_images(run)
            p = np.stack([pool[k] for k in keys])
            k = len(set(truth))
            rng = np.random.default_rng(1000 + s)
            h = np.unique(head, return_inverse=True)[1]
            kt, kp = kmeans(tr, k, rng)[0], kmeans(p, k, rng)[0]
            print(f"{prot} {run.name}: silhouette pooled {silhouette(p, kp):.3f} trained "
                  f"{silhouette(tr, kt):.3f} heads-in-trained {silhouette(tr, h):.3f}; ARI "
                  f"pooled~trained {ari(kp, kt):.3f} pooled~heads {ari(kp, h):.3f} "
                  f"trained~heads {ari(kt, h):.3f}", flush=True)


def main(argv):
    if len(argv) < 2 or argv[0] not in ("heads", "pcs", "validity") or (argv[0] != "heads" and len(argv) < 3):
        sys.exit(__doc__)
    if argv[0] == "heads":
        heads(argv[1])
    else:
        {"pcs": pcs, "validity": validity}[argv[0]](argv[1], argv[2])


if __name__ == "__main__":
    main(sys.argv[1:])
