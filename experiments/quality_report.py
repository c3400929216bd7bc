#!/usr/bin/env python3
"""The quality benchmark's bookkeeping and its tables (Python 3 standard library only).

    python3 experiments/quality_report.py event OUT KEY=VALUE... KEY:=JSON...
    python3 experiments/quality_report.py report OUT

`event` appends one JSON line to OUT/bench_log.jsonl (what `quality_bench.sh` did: the bench's
start with the machine and settings, each protocol's inputs, each unit it ran, resumed or
skipped with the load before and after, the localisation steps). `KEY=VALUE` stores a string,
`KEY:=JSON` a JSON value (numbers, lists, null). `--machine` adds the commit, the dirty flag, the
CPU model and flags and /proc/loadavg.

`report` reads OUT/bench_log.jsonl and the run folders OUT/<protocol>/<unit>/ (discover.json,
train/metrics.json, train/checkpoint.json, <stage>/stage.json, binarize/scores.json), the
localisation files OUT/<protocol>/maps_eval.json (`anomalyncd maps-eval --out`) and
OUT/<protocol>/crops_vs_gt.txt (`experiments/crops_vs_gt.py`'s output), and writes OUT/results.md
(a headline table and one table per protocol) and OUT/results.json. Every field that a version of
the binary may lack (found.auto_k, found.training_free, found.timing, found.cache) is optional.
"""
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

LOG = "bench_log.jsonl"
STAGES = ("base", "maps", "binarize", "train")
# The CPU flags that decide the precision `auto` resolves to and the speed of the bf16 paths.
CPU_FLAGS = ("avx2", "avx512_bf16", "amx_bf16")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- small readers


def load_json(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


def read_bytes(p):
    try:
        return Path(p).read_bytes()
    except OSError:
        return None


def git_state():
    """(commit, dirty) of the repository, or (None, None) outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout
        return head, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def cpu_info():
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "flags": {f: (f in flags) if flags else None for f in CPU_FLAGS}}


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def mean_sd(values):
    """Mean and sample sd (None with fewer than two values) of the non-None values."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ms(mean, sd, digits=3):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{mean:.{digits}f}"


def pct(x):
    return "–" if x is None else f"{100 * x:.1f} %"


def secs(x):
    if x is None:
        return "–"
    x = float(x)
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


# ---------------------------------------------------------------- event


def parse_kv(items):
    out = {}
    for it in items:
        if ":=" in it and it.index(":=") < it.index("=") + 1:
            k, v = it.split(":=", 1)
            try:
                out[k] = json.loads(v)
            except ValueError:
                sys.exit(f"quality_report: {k}:= takes JSON, got {v!r}")
        elif "=" in it:
            k, v = it.split("=", 1)
            out[k] = v
        else:
            sys.exit(f"quality_report: expected KEY=VALUE or KEY:=JSON, got {it!r}")
    return out


def cmd_event(args):
    machine = "--machine" in args
    args = [a for a in args if a != "--machine"]
    if not args:
        sys.exit(__doc__)
    out, items = Path(args[0]), args[1:]
    rec = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if machine:
        commit, dirty = git_state()
        rec.update(commit=commit, dirty=dirty, cpu=cpu_info(), loadavg=loadavg())
    rec.update(parse_kv(items))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def read_events(out):
    events = []
    try:
        lines = (out / LOG).read_text().splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line cut by an interruption
    return events


# ---------------------------------------------------------------- one run folder


def precision_resolved(run):
    """What discover's logs say `models.precision` resolved to (the first line naming it)."""
    for log in (run / "log.txt", run / "train" / "log.txt"):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if re.search(r"precision|bf16|bfloat16", line, re.I):
                return line.split("]", 1)[-1].strip()[:200]
    return None


def unit_result(run):
    """What one discover run folder holds; None before its discover.json exists."""
    d = load_json(run / "discover.json")
    if d is None:
        return None
    found = d.get("found") or {}
    scores = found.get("scores")
    r = {
        "run": str(run),
        "num_clusters": found.get("num_clusters"),
        "cluster_sizes": found.get("cluster_sizes"),
        "nmi": scores[0] if scores else None,
        "ari": scores[1] if scores else None,
        "f1": scores[2] if scores else None,
        "auto_k": found.get("auto_k"),
        "training_free": found.get("training_free"),
        "timing": found.get("timing"),
        "cache": found.get("cache"),
        "discover_seconds": d.get("seconds"),
        "discover_stages": d.get("stages"),
    }
    # Image-level recall per type, after the Hungarian matching of clusters to types.
    m = load_json(run / "train" / "metrics.json") or {}
    per_class = (m.get("image_level") or {}).get("per_class") or []
    r["recall"] = {c["class"]: c["recall"] for c in per_class if c.get("support")}
    r["support"] = {c["class"]: c["support"] for c in per_class if c.get("support")}
    # Seconds per stage as each stage recorded it when it ran (a stage skipped by --resume
    # keeps the seconds of the run that did it).
    r["stage_seconds"] = {}
    for s in STAGES:
        rec = load_json(run / s / "stage.json")
        if rec is not None:
            r["stage_seconds"][s] = rec.get("seconds")
    ck = load_json(run / "train" / "checkpoint.json") or {}
    cfg = ck.get("config") or {}
    r["precision"] = (cfg.get("models") or {}).get("precision")
    r["epochs"] = (cfg.get("training") or {}).get("epochs")
    r["seed"] = (cfg.get("experiment") or {}).get("seed")
    r["view_seed"] = (cfg.get("training") or {}).get("view_seed")
    r["precision_log"] = precision_resolved(run)
    r["detector_precision"] = (load_json(run / "maps" / "detect.json") or {}).get("precision")
    return r


MEBIN_LINE = re.compile(
    r"IoU\(binary mask, ground truth\) mean (?P<mean>[-0-9.naN]+), median (?P<median>[-0-9.naN]+); "
    r"no stable interval \(empty mask\) (?P<empty>\d+); crops touching a defect (?P<touch>\d+) of (?P<crops>\d+)")


def mebin_iou(path):
    """MEBin's masks against the ground truth, from `experiments/crops_vs_gt.py`'s first line."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = MEBIN_LINE.search(text)
    if not m:
        return None

    def num(s):
        try:
            return float(s)
        except ValueError:
            return None
    return {"mask_iou_mean": num(m["mean"]), "mask_iou_median": num(m["median"]),
            "no_interval": int(m["empty"]), "crops_touching": int(m["touch"]),
            "crops": int(m["crops"])}


def localisation(proto_dir):
    me = load_json(proto_dir / "maps_eval.json")
    out = {"maps_eval": None, "mebin": mebin_iou(proto_dir / "crops_vs_gt.txt")}
    if me:
        def row(t):
            mb = t.get("mebin") or {}
            return {"type": t.get("type"), "maps": t.get("maps"),
                    "argmax_in_defect": t.get("argmax_in_defect_rate"),
                    "mean_best_iou": t.get("mean_best_iou"),
                    "crops_touching": mb.get("crops_touching_rate"),
                    "images_touching": mb.get("images_touching_rate"),
                    "no_interval": mb.get("no_interval"),
                    "pixel_auroc": t.get("pixel_auroc"), "aupro": t.get("aupro")}
        out["maps_eval"] = {"overall": row(me.get("overall") or {}),
                            "types": [row(t) for t in me.get("types") or []]}
    return out


# ---------------------------------------------------------------- report


def protocol_summary(out, name, pev, unit_events, loc_events):
    pdir = out / name
    units = pev.get("units") or []
    res = {"protocol": name, "k": pev.get("k"), "command": pev.get("command"),
           "images": pev.get("images"), "normal": pev.get("normal"),
           "anomaly_maps": pev.get("anomaly_maps"), "ground_truth": pev.get("ground_truth"),
           "view_seed": pev.get("view_seed"), "units": []}
    first_scores = None
    for u in units:
        run = pdir / u["unit"]
        r = unit_result(run)
        evs = [e for e in unit_events if e.get("unit") == u["unit"]]
        runs = [{k: e.get(k) for k in ("action", "rc", "load_start", "load_end", "start", "end",
                                       "wall_s", "threads", "commit", "dirty")}
                for e in evs if e.get("action") != "skipped"]
        entry = {"unit": u["unit"], "role": u["role"], "seed": u["seed"],
                 "view_seed": u.get("view_seed"), "done": r is not None,
                 "result": r, "invocations": runs,
                 "wall_s": sum(x.get("wall_s") or 0 for x in runs) or None}
        scores = read_bytes(run / "binarize" / "scores.json")
        if first_scores is None:
            first_scores = scores
            entry["crops_identical_to_first"] = None
        else:
            entry["crops_identical_to_first"] = (
                None if scores is None or first_scores is None else scores == first_scores)
        res["units"].append(entry)

    later = [u["crops_identical_to_first"] for u in res["units"][1:] if u["done"]]
    res["crops_identical"] = all(later) if later and None not in later else None
    seeds = [u for u in res["units"] if u["role"] == "seed" and u["done"]]
    agg = {}
    for key in ("nmi", "ari", "f1"):
        vals = [u["result"][key] for u in seeds]
        m, sd = mean_sd(vals)
        agg[key] = {"mean": m, "sd": sd, "values": vals}
    res["aggregate"] = agg
    f1s = [v for v in agg["f1"]["values"] if v is not None]
    res["f1_range"] = [min(f1s), max(f1s)] if f1s else None
    types = sorted({t for u in seeds for t in u["result"]["recall"]})
    res["recall"] = {t: dict(zip(("mean", "sd"), mean_sd([u["result"]["recall"].get(t) for u in seeds])),
                             values=[u["result"]["recall"].get(t) for u in seeds]) for t in types}
    res["types"] = types
    vc = [u for u in res["units"] if u["role"] == "view_check" and u["done"]]
    res["view_check"] = None
    if vc and vc[0]["result"]["f1"] is not None:
        f1 = vc[0]["result"]["f1"]
        res["view_check"] = {"unit": vc[0]["unit"], "seed": vc[0]["seed"],
                             "view_seed": vc[0]["view_seed"], "nmi": vc[0]["result"]["nmi"],
                             "ari": vc[0]["result"]["ari"], "f1": f1,
                             "inside_seed_range": (res["f1_range"][0] <= f1 <= res["f1_range"][1])
                             if res["f1_range"] else None,
                             "seed_f1_mean": agg["f1"]["mean"], "seed_f1_sd": agg["f1"]["sd"]}
    done = [u for u in res["units"] if u["done"]]
    # The bench's own `auto` run (quality_bench.sh's auto_k) when there is one: what `auto`
    # chooses. Else what the runs, given K, say `auto` would choose (none under `soft`).
    k = (load_json(pdir / "auto_k.json") or {}).get("auto_k")
    res["auto_k"] = [k] if k is not None else sorted(
        {u["result"]["auto_k"] for u in done if u["result"]["auto_k"] is not None})
    # Training-free: k-means on the pretrained class tokens with the true K, per run from discover
    # (found.training_free; its k-means is seeded by the run's seed), else once from the bench's
    # own `baseline --method kmeans` run when the binary has no such field.
    tfs = [u["result"]["training_free"] for u in seeds if u["result"]["training_free"]]
    res["training_free"] = None
    if tfs:
        res["training_free"] = {"source": "discover (found.training_free)", "values": tfs}
        for i, key in enumerate(("nmi", "ari", "f1")):
            m, sd = mean_sd([t[i] for t in tfs])
            res["training_free"][key], res["training_free"][key + "_sd"] = m, sd
    else:
        bm = load_json(pdir / "baseline" / "metrics.json") or {}
        il = bm.get("image_level")
        if il:
            res["training_free"] = {"source": "baseline --method kmeans", "nmi": il.get("NMI"),
                                    "ari": il.get("ARI"), "f1": il.get("F1"), "nmi_sd": None,
                                    "ari_sd": None, "f1_sd": None,
                                    "values": [[il.get("NMI"), il.get("ARI"), il.get("F1")]]}
    res["localisation"] = localisation(pdir)
    res["localisation"]["notes"] = [e.get("note") for e in loc_events if e.get("note")]
    precisions = sorted({str(u["result"]["precision"]) for u in done if u["result"]["precision"]})
    res["precision"] = precisions
    res["detector_precision"] = next((u["result"]["detector_precision"] for u in done
                                      if u["result"]["detector_precision"]), None)
    res["precision_log"] = next((u["result"]["precision_log"] for u in done
                                 if u["result"]["precision_log"]), None)
    # Wall: the maps are computed once (by the first unit), every unit trains.
    res["wall_s"] = sum(u["wall_s"] or 0 for u in res["units"]) or None
    return res


def headline_row(p):
    a = p["aggregate"]
    n = len(a["f1"]["values"])
    vc = p["view_check"]
    vc_txt = "–"
    if vc:
        vc_txt = f"{vc['f1']:.3f} ({'inside' if vc['inside_seed_range'] else 'outside'})"
    loc = p["localisation"]
    me = (loc["maps_eval"] or {}).get("overall") or {}
    mb = loc["mebin"] or {}
    tf = p["training_free"]
    rng = p["f1_range"]
    return [p["protocol"], fmt(p["k"]), ", ".join(map(str, p["auto_k"])) or "–", str(n),
            fmt_ms(a["nmi"]["mean"], a["nmi"]["sd"]), fmt_ms(a["ari"]["mean"], a["ari"]["sd"]),
            fmt_ms(a["f1"]["mean"], a["f1"]["sd"]),
            f"{rng[0]:.3f}–{rng[1]:.3f}" if rng else "–", vc_txt,
            fmt_ms(tf["f1"], tf["f1_sd"]) if tf else "–", pct(me.get("argmax_in_defect")),
            pct(me.get("crops_touching")), fmt(me.get("mean_best_iou")),
            fmt(mb.get("mask_iou_mean")), secs(p["wall_s"])]


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def protocol_md(p):
    out = [f"## {p['protocol']}", ""]
    if p.get("command"):
        out += ["First run: `" + p["command"] + "`", ""]
    out.append(f"True K = {fmt(p['k'])}; K that `auto` would choose: "
               f"{', '.join(map(str, p['auto_k'])) or '– (not estimated: the runs give K, and under `soft` guidance a given K makes no estimate beside it; run the bench with AUTO_K=auto or 1)'}; "
               f"view seed of the training runs: {fmt(p['view_seed'])}; precision: "
               f"{', '.join(p['precision']) or '–'}"
               + (f" (log: {p['precision_log']})" if p.get("precision_log") else "")
               + (f"; detector: {p['detector_precision']}" if p.get("detector_precision") else "")
               + "; every run on the first run's crops (binarize/scores.json byte-identical): "
               + {True: "yes", False: "**no**", None: "–"}[p["crops_identical"]] + ".")
    out.append("")
    types = p["types"]
    header = (["run", "seed", "view seed", "NMI", "ARI", "F1"] + [f"recall {t}" for t in types]
              + ["auto K", "training-free F1", "maps", "binarize", "train", "wall",
                 "load start → end", "crops = first"])
    rows = []
    for u in p["units"]:
        r = u["result"]
        if r is None:
            rows.append([u["unit"], u["seed"], fmt(u["view_seed"]), "not finished"]
                        + [""] * (len(header) - 4))
            continue
        inv = u["invocations"]
        load = "–"
        if inv and inv[0].get("load_start") and inv[-1].get("load_end"):
            load = f"{inv[0]['load_start'][0]:.2f} → {inv[-1]['load_end'][0]:.2f}"
        ss = r["stage_seconds"]
        same = u["crops_identical_to_first"]
        rows.append([u["unit"] + (" (view check)" if u["role"] == "view_check" else ""),
                     u["seed"], fmt(u["view_seed"]), fmt(r["nmi"]), fmt(r["ari"]), fmt(r["f1"])]
                    + [fmt(r["recall"].get(t)) for t in types]
                    + [fmt(r["auto_k"]), fmt(r["training_free"][2]) if r["training_free"] else "–",
                       secs(ss.get("maps")), secs(ss.get("binarize")),
                       secs(ss.get("train")), secs(u["wall_s"]), load,
                       "first" if same is None and u is p["units"][0] else
                       ("yes" if same else ("no" if same is False else "–"))])
    a = p["aggregate"]
    tf = p["training_free"]
    rows.append([f"**mean ± sd** ({len(a['f1']['values'])} seeds)", "", "",
                 fmt_ms(a["nmi"]["mean"], a["nmi"]["sd"]), fmt_ms(a["ari"]["mean"], a["ari"]["sd"]),
                 fmt_ms(a["f1"]["mean"], a["f1"]["sd"])]
                + [fmt_ms(p["recall"][t]["mean"], p["recall"][t]["sd"]) for t in types]
                + ["", fmt_ms(tf["f1"], tf["f1_sd"]) if tf else ""] + [""] * 6)
    if tf:
        rows.append([f"training-free (k-means on the pretrained class tokens, K = {fmt(p['k'])}; "
                     f"{tf['source']})", "", "", fmt_ms(tf["nmi"], tf["nmi_sd"]),
                     fmt_ms(tf["ari"], tf["ari_sd"]), fmt_ms(tf["f1"], tf["f1_sd"])]
                    + [""] * len(types) + [""] * 8)
    out += [table(header, rows), ""]
    vc = p["view_check"]
    if vc:
        rng = p["f1_range"]
        out += [f"View-seed check: seed {vc['seed']} with view seed {vc['view_seed']}: F1 "
                f"{vc['f1']:.3f}, {'inside' if vc['inside_seed_range'] else 'outside'} the "
                f"training seeds' range [{rng[0]:.3f}, {rng[1]:.3f}] (mean ± sd "
                f"{fmt_ms(vc['seed_f1_mean'], vc['seed_f1_sd'])}).", ""]
    timing = [(u["unit"], u["result"]["timing"], u["result"]["cache"]) for u in p["units"]
              if u["result"] and (u["result"]["timing"] or u["result"]["cache"])]
    if timing:
        rows = []
        for unit, t, c in timing:
            t, c = t or {}, c or {}
            rows.append([unit, secs(t.get("estimate_s")), secs(t.get("cache_s", c.get("seconds"))),
                         secs(t.get("train_s")), secs(t.get("eval_s")),
                         fmt(c.get("bytes")), {True: "yes", False: "no"}.get(c.get("reused"), "–")])
        out += ["Train stage:", "", table(["run", "K estimate", "token cache", "training",
                                             "evaluation", "cache bytes", "cache reused"], rows), ""]
    loc = p["localisation"]
    if loc["maps_eval"]:
        rows = [[t["type"], t["maps"], pct(t["argmax_in_defect"]), fmt(t["mean_best_iou"]),
                 pct(t["crops_touching"]), pct(t["images_touching"]), fmt(t["no_interval"]),
                 fmt(t["pixel_auroc"]), fmt(t["aupro"])]
                for t in loc["maps_eval"]["types"] + [loc["maps_eval"]["overall"]]]
        out += ["Localisation of the maps (`anomalyncd maps-eval`):", "",
                table(["type", "maps", "argmax in defect", "best IoU", "crops touching",
                       "images touching", "no interval", "pixel AUROC", "AUPRO"], rows), ""]
    if loc["mebin"]:
        mb = loc["mebin"]
        out += [f"MEBin's masks against the ground truth (`experiments/crops_vs_gt.py`): mask IoU mean "
                f"{fmt(mb['mask_iou_mean'])}, median {fmt(mb['mask_iou_median'])}; no stable interval "
                f"{mb['no_interval']}; crops touching a defect {mb['crops_touching']} of {mb['crops']}.", ""]
    for note in loc.get("notes") or []:
        out += [f"Note: {note}", ""]
    return "\n".join(out)


def cmd_report(args):
    if len(args) != 1:
        sys.exit(__doc__)
    out = Path(args[0])
    events = read_events(out)
    starts = [e for e in events if e.get("event") == "start"]
    start = starts[-1] if starts else {}
    commit, dirty = git_state()
    protocols = {}
    for e in events:
        if e.get("event") == "protocol":
            protocols[e["protocol"]] = e  # the latest inputs of each protocol
    order = [p for p in (start.get("protocols") or "").split() if p in protocols]
    order += [p for p in protocols if p not in order]
    summaries = []
    for name in order:
        ue = [e for e in events if e.get("event") == "unit" and e.get("protocol") == name]
        le = [e for e in events if e.get("event") == "localisation" and e.get("protocol") == name]
        summaries.append(protocol_summary(out, name, protocols[name], ue, le))
    cpu = start.get("cpu") or cpu_info()
    unit_events = [e for e in events if e.get("event") == "unit"]
    doc = {
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit, "dirty": dirty,
        "bench_start": {k: start.get(k) for k in ("time", "commit", "dirty", "loadavg")},
        "cpu": cpu,
        "settings": start.get("settings"),
        "threads": (start.get("settings") or {}).get("threads"),
        "precision": sorted({x for p in summaries for x in p["precision"]}),
        "protocols": {p["protocol"]: p for p in summaries},
        "runs": [{k: e.get(k) for k in ("protocol", "unit", "action", "rc", "start", "end", "wall_s",
                                        "load_start", "load_end", "threads", "commit", "dirty")}
                 for e in unit_events],
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(out / "results.json")

    flags = ", ".join(f"{k} {'yes' if v else ('no' if v is False else '?')}"
                      for k, v in (cpu.get("flags") or {}).items())
    s = start.get("settings") or {}
    md = ["# Quality benchmark", "",
          f"Written by `experiments/quality_bench.sh` ({doc['generated']}). Commit "
          f"`{(commit or '?')[:12]}`{' (dirty tree)' if dirty else ''}; CPU {cpu.get('model') or '?'} "
          f"({cpu.get('cores')} cores; {flags}); threads {s.get('threads') or 'auto'}; precision "
          f"{', '.join(doc['precision']) or '–'}; mode {s.get('mode') or '?'}; epochs "
          f"{s.get('epochs') or 'config default'}; extra settings `{s.get('extra_set') or 'none'}`"
          + (f", extra flags `{s['extra_args']}`" if s.get("extra_args") else "")
          + (f", config `{s['config']}`" if s.get("config") else "") + ".", "",
          "Image-level NMI / ARI / F1 (Hungarian-matched micro F1) as mean ± sample sd over the "
          "training seeds; the view check trains the first seed on another bank of augmented "
          "views; training-free: k-means on the pretrained class tokens of the same crops with "
          "the true K (under `inference.assign: spectral`, the images then clustered by "
          "spectral clustering of their pretrained features, as the runs' are by their trained "
          "ones); localisation: `maps-eval` overall and MEBin's mask IoU.", "",
          table(["protocol", "K", "auto K", "seeds", "NMI", "ARI", "F1", "F1 range",
                 "view check F1", "training-free F1", "argmax in defect", "crops touching",
                 "best IoU", "MEBin mask IoU", "wall"], [headline_row(p) for p in summaries]), ""]
    for p in summaries:
        md.append(protocol_md(p))
    tmp = out / "results.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(out / "results.md")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("event", "report"):
        sys.exit(__doc__)
    {"event": cmd_event, "report": cmd_report}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
