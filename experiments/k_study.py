#!/usr/bin/env python3
"""Which criterion estimates the number of defect types (`--num-classes auto`) best? An offline study.

    .venv/bin/python experiments/k_study.py NAME=DIR [NAME=DIR ...] [--true NAME=K ...] [--seeds 0,1,2]
                                            [--criteria eigengap,gap,...]
    .venv/bin/python experiments/k_study.py soft/mtd_fitted=/work/kstudy/mtd_fitted ... 2> run.log
    .venv/bin/python experiments/k_study.py --table-from run.log     # the tables again, from the log

NAME is FEATURES/PROTOCOL (e.g. soft/mtd_fitted); the leave-one-protocol-out check groups by FEATURES.

Each DIR is a `baseline --num-classes auto` output: class_tokens.safetensors (the novel crops'
L2-normalised pretrained class tokens, in crop_predictions.csv order) and crop_predictions.csv (the
crop's image and its true class). The true K is the number of distinct true classes unless --true
gives it. Every criterion scores K = 2..10 (the product's --max-classes default) on two feature
levels: the crops, and the images (the mean of an image's crop tokens, L2-normalised again).

No constant below was fitted to these sets; each is the cited paper's default or a Monte Carlo
count (more only reduces noise), or follows from the K range:

- eigengap: the product's criterion until 2026-12-06 (`training.k_criterion: eigengap`; the default
  now averages three graphs' gaps, experiments/k_subsets.py): symmetric kNN graph with
  k = round(sqrt n) (cosine = Euclidean on unit vectors), normalised Laplacian, K at the largest
  lambda_K - lambda_{K-1} (0-based, ascending).
- gap: the gap statistic (Tibshirani, Walther & Hastie 2001): W_K the k-means within-cluster sum of
  squares on the unit vectors, B = 20 reference sets uniform in the box of the data's principal
  axes (their method (b); 3 k-means restarts per reference set, to bound the time); K = the smallest K with Gap(K) >= Gap(K+1) - s_{K+1} (their 1-SE
  rule, over K = 1..10, a choice of 1 reported as 2, the smallest K the product allows).
- gapmax: the same gaps, K = argmax over 2..10 (a common variant; shown because the 1-SE rule
  often stops at 1 in high dimension).
- ps: prediction strength (Tibshirani & Walther 2005): random halves, k-means on each, the test
  half's co-membership kept by the training centroids, min over test clusters; mean over 10 splits;
  K = the largest K with ps >= 0.8 (their threshold: "0.8 to 0.9"), else 2.
- stab: stability (Lange, Roth, Braun & Buhmann 2004): random halves A, B; k-means on each; A's
  labels against B's nearest-centroid prediction on A, disagreement minimised over label
  permutations (Hungarian); divided by the same for random labellings with K classes; 20 splits;
  K = argmin.
- pac: consensus clustering (Monti et al. 2003) with the proportion of ambiguous clustering
  (Senbabaoglu, Michailidis & Li 2014): 20 subsamples of 80 % (Monti's default), the consensus
  matrix of co-clustering over pairs sampled together, PAC = share of pairs with consensus in
  (0.1, 0.9) (their thresholds); K = argmin.
- bic: a Gaussian mixture with full covariances on the first max_classes - 1 = 9 principal
  components (K <= 10 cluster means span at most 9 dimensions, so the between-cluster structure
  of every candidate fits in them), EM from the k-means fit, reg 1e-6 on the diagonal
  (scikit-learn's numerical default); K = argmin BIC.

Two more, added after the first table had been seen (so not blind to it), run only when --criteria
names them, each with its own random generator:
- gapg: the gap statistic with a Gaussian reference of the data's covariance (a single-cluster null,
  as in SigClust, Liu et al. 2008) instead of the box, same 1-SE rule.
- gmeans: G-means (Hamerly & Elkan 2003): split each cluster while its points projected on the
  line between its two k-means children fail the Anderson-Darling normality test at their
  alpha = 1e-4 (critical value 1.8692); capped at 10.

The table adds two constant guesses (const2, const4: always 2, always 4) to show what the +-1
target grants without looking at the data. The leave-one-protocol-out lines redo the only choice
made while looking at results (crop or image level per criterion, and the best criterion x level
pair) on four protocols of a feature set and score it on the fifth.

k-means everywhere: k-means++ seeding, 10 restarts (the product's), at most 300 Lloyd iterations.
Randomised criteria are run for each --seeds value; the table shows the first seed's K and, when
another seed chose differently, all of them. Standard library + numpy.
"""
import csv
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

KMIN, KMAX = 2, 10
B_GAP, SPLITS, SUBSAMPLES, SUBFRAC = 20, 10, 20, 0.8
PS_THRESHOLD, PAC_LO, PAC_HI = 0.8, 0.1, 0.9
N_INIT, MAX_ITER = 10, 300


# ---------------------------------------------------------------- data

def read_tokens(f: Path, name="class_tokens"):
    """The `name` tensor of a safetensors file (an 8-byte little-endian header length, a
    JSON header, the raw data), read directly so that no safetensors package is needed."""
    import json
    import struct
    raw = f.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8: 8 + hlen])[name]
    dtype = {"F32": np.float32, "F64": np.float64, "F16": np.float16}[meta["dtype"]]
    a, b = meta["data_offsets"]
    return np.frombuffer(raw[8 + hlen + a: 8 + hlen + b], dtype=dtype).reshape(meta["shape"]).astype(np.float64)


def load(d: Path):
    x = read_tokens(d / "class_tokens.safetensors")
    rows = list(csv.DictReader(open(d / "crop_predictions.csv")))
    assert len(rows) == len(x), (d, len(rows), len(x))
    crop_y = [r["true_class"] for r in rows]
    images = OrderedDict()
    for i, r in enumerate(rows):
        images.setdefault(r["image"], []).append(i)
    xi = np.stack([x[ix].mean(0) for ix in images.values()])
    yi = [crop_y[ix[0]] for ix in images.values()]
    return unit(x), crop_y, unit(xi), yi


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- k-means

def sqdist(x, c):
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :], 0)


def kmeans(x, k, rng, n_init=N_INIT):
    best = None
    n = len(x)
    for _ in range(n_init):
        c = [x[rng.integers(n)]]
        d = sqdist(x, np.array(c))[:, 0]
        for _ in range(1, k):
            p = d / d.sum() if d.sum() > 0 else np.full(n, 1 / n)
            c.append(x[rng.choice(n, p=p)])
            d = np.minimum(d, sqdist(x, c[-1][None])[:, 0])
        c = np.array(c)
        a = None
        for _ in range(MAX_ITER):
            dd = sqdist(x, c)
            na = dd.argmin(1)
            if a is not None and (na == a).all():
                break
            a = na
            for j in range(k):
                m = a == j
                if m.any():
                    c[j] = x[m].mean(0)
        inertia = sqdist(x, c)[np.arange(n), a].sum()
        if best is None or inertia < best[2]:
            best = (a, c.copy(), inertia)
    return best


# ---------------------------------------------------------------- criteria

def eigengap(x, _rng):
    n = len(x)
    nn = int(np.clip(round(np.sqrt(n)), 1, n - 1))
    d = sqdist(x, x)
    np.fill_diagonal(d, np.inf)
    a = np.zeros((n, n))
    idx = np.argsort(d, axis=1, kind="stable")[:, :nn]
    a[np.repeat(np.arange(n), nn), idx.ravel()] = 1
    a = np.maximum(a, a.T)
    deg = a.sum(1)
    s = 1 / np.sqrt(deg)
    lap = np.eye(n) - s[:, None] * a * s[None, :]
    ev = np.linalg.eigvalsh(lap)
    top = min(KMAX, n - 1)
    gaps = {k: ev[k] - ev[k - 1] for k in range(KMIN, top + 1)}
    return max(gaps, key=lambda k: (gaps[k], -k)), gaps


def gap_stats(x, rng, reference="box"):
    """Gap(K) and s_K for K = 1..KMAX+1. reference "box": uniform in the box of the principal
    axes (Tibshirani et al.'s (b)); "gauss": a Gaussian with the data's covariance (the null of a
    single Gaussian cluster, as in SigClust, Liu et al. 2008), which in high dimension does not
    spread the reference over the many low-variance axes as a box does."""
    mu = x.mean(0)
    xc = x - mu
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    z = xc @ vt.T
    lo, hi = z.min(0), z.max(0)
    sd = sv / np.sqrt(max(len(x) - 1, 1))
    ks = range(1, KMAX + 2)
    logw = {k: np.log(kmeans(x, k, rng)[2]) for k in ks}
    ref = {k: [] for k in ks}
    for _ in range(B_GAP):
        if reference == "box":
            r = rng.uniform(lo, hi, size=z.shape) @ vt + mu
        else:
            r = (rng.standard_normal(z.shape) * sd) @ vt + mu
        for k in ks:
            ref[k].append(np.log(kmeans(r, k, rng, n_init=3)[2]))
    gap = {k: np.mean(ref[k]) - logw[k] for k in ks}
    s = {k: np.std(ref[k]) * np.sqrt(1 + 1 / B_GAP) for k in ks}
    return gap, s


def gap_rule(gap, s):
    for k in range(1, KMAX + 1):
        if gap[k] >= gap[k + 1] - s[k + 1]:
            return max(k, KMIN), k
    return KMAX, KMAX


def nearest(x, c):
    return sqdist(x, c).argmin(1)


def prediction_strength(x, rng):
    n = len(x)
    ps = {k: [] for k in range(KMIN, KMAX + 1)}
    for _ in range(SPLITS):
        perm = rng.permutation(n)
        te, tr = x[perm[: n // 2]], x[perm[n // 2:]]
        for k in ps:
            at, _, _ = kmeans(te, k, rng)
            _, ctr, _ = kmeans(tr, k, rng)
            pred = nearest(te, ctr)
            worst = 1.0
            for j in range(k):
                m = np.flatnonzero(at == j)
                if len(m) < 2:
                    continue
                p = pred[m]
                same = (p[:, None] == p[None, :]).sum() - len(m)
                worst = min(worst, same / (len(m) * (len(m) - 1)))
            ps[k].append(worst)
    ps = {k: float(np.mean(v)) for k, v in ps.items()}
    ok = [k for k, v in ps.items() if v >= PS_THRESHOLD]
    return (max(ok) if ok else KMIN), ps


def hungarian_disagreement(a, b, k):
    """Smallest share of points whose labels differ over permutations of b's labels."""
    from itertools import permutations
    conf = np.zeros((k, k))
    np.add.at(conf, (a, b), 1)
    if k <= 7:
        best = max(sum(conf[i, p[i]] for i in range(k)) for p in permutations(range(k)))
    else:
        best = assignment_max(conf)
    return 1 - best / len(a)


def assignment_max(conf):
    """Maximum-weight perfect matching of a square matrix (Hungarian, O(k^3))."""
    cost = conf.max() - conf
    n = len(cost)
    u, v, p, way = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1, int), np.zeros(n + 1, int)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = np.full(n + 1, np.inf), np.zeros(n + 1, bool)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], np.inf, 0
            for j in range(1, n + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    return sum(conf[p[j] - 1, j - 1] for j in range(1, n + 1))


def stability(x, rng):
    n = len(x)
    st = {}
    for k in range(KMIN, KMAX + 1):
        d, r = [], []
        for _ in range(SPLITS * 2):
            perm = rng.permutation(n)
            a, b = x[perm[: n // 2]], x[perm[n // 2: 2 * (n // 2)]]
            la, _, _ = kmeans(a, k, rng)
            _, cb, _ = kmeans(b, k, rng)
            d.append(hungarian_disagreement(la, nearest(a, cb), k))
            r.append(hungarian_disagreement(rng.integers(k, size=len(a)), rng.integers(k, size=len(a)), k))
        st[k] = float(np.mean(d) / np.mean(r))
    return min(st, key=lambda k: (st[k], k)), st


def pac(x, rng):
    n = len(x)
    m = int(round(SUBFRAC * n))
    out = {}
    for k in range(KMIN, KMAX + 1):
        together = np.zeros((n, n))
        sampled = np.zeros((n, n))
        for _ in range(SUBSAMPLES):
            idx = rng.choice(n, m, replace=False)
            a, _, _ = kmeans(x[idx], k, rng)
            sampled[np.ix_(idx, idx)] += 1
            together[np.ix_(idx, idx)] += a[:, None] == a[None, :]
        iu = np.triu_indices(n, 1)
        s = sampled[iu]
        c = together[iu][s > 0] / s[s > 0]
        out[k] = float(((c > PAC_LO) & (c < PAC_HI)).mean())
    return min(out, key=lambda k: (out[k], k)), out


def gmm_bic(x, rng):
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    z = xc @ vt[: KMAX - 1].T
    n, d = z.shape
    out = {}
    for k in range(KMIN, KMAX + 1):
        a, _, _ = kmeans(z, k, rng)
        resp = np.eye(k)[a]
        ll_old = -np.inf
        for _ in range(500):
            nk = resp.sum(0) + 1e-12
            w = nk / n
            mu = resp.T @ z / nk[:, None]
            logp = np.empty((n, k))
            for j in range(k):
                diff = z - mu[j]
                cov = (resp[:, j, None] * diff).T @ diff / nk[j] + 1e-6 * np.eye(d)
                sign, logdet = np.linalg.slogdet(cov)
                sol = np.linalg.solve(cov, diff.T).T
                logp[:, j] = np.log(w[j]) - 0.5 * (d * np.log(2 * np.pi) + logdet + (diff * sol).sum(1))
            mx = logp.max(1, keepdims=True)
            lse = mx[:, 0] + np.log(np.exp(logp - mx).sum(1))
            ll = lse.sum()
            resp = np.exp(logp - lse[:, None])
            if ll - ll_old < 1e-6 * abs(ll):
                break
            ll_old = ll
        params = k * (d + d * (d + 1) / 2) + (k - 1)
        out[k] = float(-2 * ll + params * np.log(n))
    return min(out, key=lambda k: (out[k], k)), out


def anderson_darling(z):
    """The A*^2 statistic of normality with estimated mean and variance (Stephens 1974)."""
    from math import erf, sqrt
    z = np.sort((z - z.mean()) / max(z.std(ddof=1), 1e-12))
    n = len(z)
    cdf = np.clip([0.5 * (1 + erf(v / sqrt(2))) for v in z], 1e-12, 1 - 1e-12)
    i = np.arange(1, n + 1)
    a2 = -n - np.mean((2 * i - 1) * (np.log(cdf) + np.log(1 - cdf[::-1])))
    return a2 * (1 + 4 / n - 25 / n ** 2)


def gmeans(x, rng):
    """G-means (Hamerly & Elkan 2003): split a cluster in two while the projection of its points on
    the line between the two children's centres fails the Anderson-Darling normality test at
    alpha = 1e-4 (their choice; critical value 1.8692); K = the clusters when none splits, capped
    at KMAX (a split past it stops the search)."""
    crit = 1.8692
    k = 1
    while True:
        a = np.zeros(len(x), int) if k == 1 else kmeans(x, k, rng)[0]
        splits = 0
        for j in range(k):
            m = x[a == j]
            if len(m) < 8:
                continue
            _, cc, _ = kmeans(m, 2, rng, n_init=3)
            v = cc[0] - cc[1]
            splits += int(anderson_darling(m @ v / max(v @ v, 1e-12)) > crit)
        if splits == 0:
            return max(k, KMIN), {}
        if k + splits > KMAX:
            return KMAX, {}
        k += splits


MAIN = ["eigengap", "gap", "gapmax", "ps", "stab", "pac", "bic"]
# Tried after the first table (so not blind to it), off unless --criteria names them.
EXTRA = ["gapg", "gmeans"]
CRITERIA = list(MAIN)  # the ones run and tabled (--criteria)


def run_all(x, seed, criteria):
    """The chosen K and the scores per K of each criterion. Those of MAIN share one generator in
    MAIN's order (the recorded runs ran all of them); each extra has its own."""
    rng = np.random.default_rng(seed)
    res = {}
    if "eigengap" in criteria:
        res["eigengap"] = eigengap(x, rng)
    if "gap" in criteria or "gapmax" in criteria:
        g, s = gap_stats(x, rng)
        res["gap"] = (gap_rule(g, s)[0], {k: (g[k], s[k]) for k in g})
        res["gapmax"] = (max(range(KMIN, KMAX + 1), key=lambda k: g[k]), g)
    for c, f in (("ps", prediction_strength), ("stab", stability), ("pac", pac), ("bic", gmm_bic)):
        if c in criteria:
            res[c] = f(x, rng)
    if "gapg" in criteria:
        g, s = gap_stats(x, np.random.default_rng([seed, 1]), reference="gauss")
        res["gapg"] = (gap_rule(g, s)[0], {k: (g[k], s[k]) for k in g})
    if "gmeans" in criteria:
        res["gmeans"] = gmeans(x, np.random.default_rng([seed, 2]))
    return res


def main(argv):
    sets, truth, seeds = [], {}, [0]
    it = iter(argv)
    for a in it:
        if a == "--table-from":
            table_from(Path(next(it)))
            return
        if a == "--true":
            name, k = next(it).split("=")
            truth[name] = int(k)
        elif a == "--seeds":
            seeds = [int(s) for s in next(it).split(",")]
        elif a == "--criteria":
            CRITERIA[:] = next(it).split(",")
            unknown = [c for c in CRITERIA if c not in MAIN + EXTRA]
            if unknown:
                sys.exit(f"--criteria: unknown {unknown}; known: {MAIN + EXTRA}")
        else:
            name, d = a.split("=", 1)
            sets.append((name, Path(d)))
    table = {}  # (name, level) -> {criterion: [K per seed]}
    details = {}
    for name, d in sets:
        xc, yc, xi, yi = load(d)
        true_k = truth.get(name, len(set(yc)))
        for level, x in (("crop", xc), ("image", xi)):
            row = {c: [] for c in CRITERIA}
            for seed in seeds:
                res = run_all(x, seed, CRITERIA)
                for c in CRITERIA:
                    row[c].append(res[c][0])
                details[(name, level, seed)] = res
            table[(name, level)] = (true_k, len(x), row)
            print(f"# {name} {level}: n={len(x)} true K={true_k} "
                  + " ".join(f"{c}={row[c]}" for c in CRITERIA), file=sys.stderr, flush=True)
    print_table(table, seeds)
    lopo(table)
    print_scores(details)


def table_from(log: Path):
    """The tables from the progress lines ("# NAME LEVEL: n=.. true K=.. crit=[..] ...") of a run."""
    import ast
    import re
    table, seeds = {}, None
    for line in log.read_text().splitlines():
        m = re.match(r"# (\S+) (\S+): n=(\d+) true K=(\d+) (.*)", line)
        if not m:
            continue
        row = {c: ast.literal_eval(v) for c, v in re.findall(r"(\w+)=(\[[^]]*\])", m.group(5))}
        CRITERIA[:] = list(row)
        table[(m.group(1), m.group(2))] = (int(m.group(4)), int(m.group(3)), row)
        seeds = seeds or len(next(iter(row.values())))
    print_table(table, list(range(seeds or 0)))
    lopo(table)


def lopo(table):
    """Leave one protocol out, per feature set: the one choice made here (crop or image level, and
    among all criterion x level pairs) picked on the other protocols by their count within +-1
    (ties: crops, then the order of CRITERIA), then scored on the held-out protocol."""
    ok = lambda c, lvl, name: all(abs(k - table[(name, lvl)][0]) <= 1 for k in table[(name, lvl)][2][c])
    groups = {}
    for (name, _lvl) in table:
        groups.setdefault(name.split("/")[0], []).append(name)
    print("\nleave-one-protocol-out (the level, or the criterion and level, chosen on the others)")
    for g, names in groups.items():
        names = sorted(set(names))
        if not all((n, l) in table for n in names for l in ("crop", "image")):
            continue
        per = {c: 0 for c in CRITERIA}
        anyc = 0
        for held in names:
            rest = [n for n in names if n != held]
            score = lambda c, l: sum(ok(c, l, n) for n in rest)
            for c in CRITERIA:
                lvl = max(("crop", "image"), key=lambda l: score(c, l))
                per[c] += ok(c, lvl, held)
            c, lvl = max(((c, l) for c in CRITERIA for l in ("crop", "image")), key=lambda p: score(*p))
            anyc += ok(c, lvl, held)
        print(f"  {g:<8}" + "".join(f"{c}:{per[c]}/{len(names)}  " for c in CRITERIA)
              + f"best pair:{anyc}/{len(names)}")


def fmt(ks):
    return str(ks[0]) if len(set(ks)) == 1 else "/".join(map(str, ks))


def print_table(table, seeds):
    """The chosen K per set and level, then per feature set (the part of NAME before "/") how
    many protocols each criterion put within +-1 of the true K with every seed. The const columns
    are constant guesses, no criterion: what the +-1 target on these sets grants without data."""
    consts = (2, 4)
    print(f"chosen K (K = {KMIN}..{KMAX}; seeds {seeds}; a/b/c: the seeds disagree; constN: always N)")
    print(f"{'set':<26}{'level':<7}{'n':>5}{'true':>5}" + "".join(f"{c:>9}" for c in CRITERIA)
          + "".join(f"{'const%d' % k:>8}" for k in consts))
    hits = {}
    for (name, level), (tk, n, row) in table.items():
        print(f"{name:<26}{level:<7}{n:>5}{tk:>5}" + "".join(f"{fmt(row[c]):>9}" for c in CRITERIA)
              + "".join(f"{k:>8}" for k in consts))
        h = hits.setdefault((name.split("/")[0], level), {c: 0 for c in CRITERIA + list(consts)})
        for c in CRITERIA:
            h[c] += all(abs(k - tk) <= 1 for k in row[c])
        for k in consts:
            h[k] += abs(k - tk) <= 1
        h["n"] = h.get("n", 0) + 1
    for (g, level), h in hits.items():
        print(f"{'within +-1: ' + g:<26}{level:<7}{'':>10}"
              + "".join(f"{'%d/%d' % (h[c], h['n']):>9}" for c in CRITERIA)
              + "".join(f"{'%d/%d' % (h[k], h['n']):>8}" for k in consts))


def print_scores(details):
    print("\nscores per K (first seed)")
    for (name, level, seed), res in details.items():
        if seed != min(s for (n2, l2, s) in details if n2 == name and l2 == level):
            continue
        print(f"## {name} {level}")
        for c, (_k, sc) in res.items():
            if not sc or c == "gapmax":
                continue
            if isinstance(next(iter(sc.values())), tuple):
                print(f"  {c:<9}" + " ".join(f"{k}:{v[0]:.3f}+-{v[1]:.3f}" for k, v in sorted(sc.items())))
            else:
                print(f"  {c:<9}" + " ".join(f"{k}:{v:.3f}" for k, v in sorted(sc.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
