"""Do the trained heads leave defect types out, and does a balanced assignment of the images bring
them back? An offline study (issue 25).

On tire every seed of `discover`'s default answered with 2 of its 3 clusters (the third empty):
the heads' image probabilities lean to one cluster and the argmax never picks the weakest. This
script recomputes each run's image probabilities from its trained class tokens and its checkpoint's
chosen head (the product's sub-image and region-merging rules: novel softmax at 0.1, crops merged
by softmax(sqrt(mask pixels) / T)), checks that their argmax gives back the run's own answer, and
scores assignments that shift every cluster's log-probability by one offset b_j:

  argmax     b = 0 (the run's answer)
  balanced   b from Sinkhorn's column scaling, so that the soft assignments softmax_j(log p_ij + b_j)
             sum to n / K per cluster (equal cluster sizes as the prior, as the training's own
             mean-entropy term and UNO's Sinkhorn pseudo-labels assume)
  half       b / 2: halfway to the balanced prior in log space

    .venv/bin/python experiments/balance_study.py PROTOCOL=RUN1,RUN2,RUN3 ...

RUN is a discover run folder (its train/ and binarize/ are read). Standard library + numpy;
safetensors read by k_study.read_tokens-style parsing.
"""
import csv
import json
import math
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import f1_nmi, fmt, protocol_args  # noqa: E402
from k_study import read_tokens  # noqa: E402

LOGIT_TEMP = 0.1
SINKHORN_ITERS = 200


def tensors(path: Path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name in names:
            h = header[name]
            assert h["dtype"] == "F32", h
            a, b = h["data_offsets"]
            f.seek(base + a)
            out[name] = np.frombuffer(f.read(b - a), dtype="<f4").reshape(h["shape"])
        meta = json.loads(header["__metadata__"]["anomalyncd"])
    return out, meta


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def image_probs(run: Path):
    t = run / "train"
    crops = list(csv.DictReader(open(t / "crop_predictions.csv")))
    imgs = list(csv.DictReader(open(t / "predictions.csv")))
    tok = read_tokens(t / "class_tokens.safetensors")
    _, meta = tensors(t / "checkpoint.safetensors", [])
    h = meta["chosen_head"]
    w, _ = tensors(t / "checkpoint.safetensors", [f"model.projector.last_layer.{h}.weight_g",
                                                  f"model.projector.last_layer.{h}.weight_v"])
    g = w[f"model.projector.last_layer.{h}.weight_g"]
    v = w[f"model.projector.last_layer.{h}.weight_v"]
    weight = g * v / np.linalg.norm(v, axis=1, keepdims=True)
    nb = len(meta["base_classes"])
    xn = tok / np.maximum(np.linalg.norm(tok, axis=1, keepdims=True), 1e-12)
    logits = xn @ weight.T
    probs = softmax(logits[:, nb:] / LOGIT_TEMP)
    temp = meta["merge_temperature"]
    masks = run / "binarize" / "crops" / "masks"
    by_image = OrderedDict()
    for i, r in enumerate(crops):
        by_image.setdefault(r["image"], []).append(i)
    keys, out = [], []
    for k, ix in by_image.items():
        if len(ix) == 1:
            out.append(probs[ix[0]])
        else:
            px = np.array([(np.asarray(Image.open(masks / crops[i]["crop"]).convert("L")) == 255).sum()
                           for i in ix], dtype=float)
            wts = softmax(np.sqrt(px) / temp)
            out.append((wts[:, None] * probs[ix]).sum(0))
        keys.append(k)
    pred = {r["image"]: r for r in imgs}
    truth = [pred[k]["true_class"] for k in keys]
    answer = [int(pred[k]["predicted_cluster"]) for k in keys]
    return np.array(out), truth, answer


def balance_offsets(p, iters=SINKHORN_ITERS):
    """b with sum_i softmax_j(log p_ij + b_j) = n / K for every j (Sinkhorn's column scaling)."""
    n, k = p.shape
    lp = np.log(np.maximum(p, 1e-300))
    b = np.zeros(k)
    for _ in range(iters):
        q = softmax(lp + b, axis=1)
        b += math.log(n / k) - np.log(np.maximum(q.sum(0), 1e-300))
    return b


def main(argv):
    table = OrderedDict()
    for name, _, runs in protocol_args(argv, __doc__, pooled=False):
        rows = {}
        for run in runs:
            p, truth, answer = image_probs(Path(run))
            lp = np.log(np.maximum(p, 1e-300))
            am = lp.argmax(1)
            agree = (am == np.array(answer)).mean()
            b = balance_offsets(p)
            variants = {"argmax": am, "balanced": (lp + b).argmax(1), "half": (lp + b / 2).argmax(1)}
            for v, a in variants.items():
                f1, nmi = f1_nmi(truth, list(a))
                sizes = sorted(np.bincount(a, minlength=p.shape[1]).tolist(), reverse=True)
                rows.setdefault(v, []).append((f1, nmi, sizes))
            print(f"{name} {run}: argmax reproduces the run's answer on {agree:.1%} of images; "
                  f"b = {np.round(b - b.mean(), 2).tolist()}", file=sys.stderr)
        table[name] = rows
    print("| variant | " + " | ".join(table) + " | mean F1 |")
    print("|---|" + "---|" * (len(table) + 1))
    for v in ("argmax", "balanced", "half"):
        cells, means = [], []
        for name, rows in table.items():
            f1 = np.array([r[0] for r in rows[v]])
            nmi = np.array([r[1] for r in rows[v]])
            means.append(f1.mean())
            sizes = " ".join("/".join(map(str, r[2])) for r in rows[v])
            cells.append(f"{fmt(f1)}<br>NMI {nmi.mean():.3f}<br>{sizes}")
        print(f"| {v} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
