# shellcheck shell=bash
# Concurrent `train` runs of one runner all append their row to <exp_root>/<runner>/metrics.csv,
# and `train` rewrites that file whole (read, add a row, rename): two runs that end at the same
# moment can lose one row. After all runs have ended, metrics_table_fill puts back the rows that
# are missing, from each run folder's metrics.json (its image-level NMI / ARI / F1).
#
#   source scripts/lib/metrics_table.sh
#   skip=$(metrics_table_lines TABLE)           # before the runs
#   ... runs ...
#   metrics_table_fill TABLE RUNNER_DIR "$skip" CATEGORY...
#
# or, by hand after a Slurm array (rows of the whole file count; needs python3):
#   bash scripts/lib/metrics_table.sh outputs/mvtec_musc_crop/metrics.csv outputs/mvtec_musc_crop 0 bottle cable ...

# Lines in TABLE now (0 when it does not exist).
metrics_table_lines() {
  if [ -f "$1" ]; then wc -l <"$1" | tr -d ' '; else echo 0; fi
}

# metrics_table_fill TABLE RUNNER_DIR SKIP CATEGORY...: for each CATEGORY with image-level scores in
# RUNNER_DIR/<category>/metrics.json but no row in TABLE after its first SKIP lines, appends one.
metrics_table_fill() {
  local table=$1 runner_dir=$2 skip=$3
  shift 3
  [ "$#" -gt 0 ] || return 0
  if ! command -v python3 >/dev/null; then
    echo "metrics: python3 not found: not checking $table for rows lost to concurrent runs" >&2
    return 0
  fi
  python3 - "$table" "$runner_dir" "$skip" "$@" <<'PY'
import csv, json, os, sys
from decimal import Decimal

table, runner_dir, skip, cats = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def rust_f64(x):
    # The way Rust prints an f64 (as `train` writes it): shortest digits, no exponent.
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return format(Decimal(repr(x)), "f")

lines = []
if os.path.exists(table):
    with open(table, newline="") as f:
        lines = f.read().splitlines()
present = {row[0] for row in csv.reader(lines[skip:]) if row and row[0] != "category"}
rows = []
for cat in cats:
    if cat in present:
        continue
    path = os.path.join(runner_dir, cat, "metrics.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        continue  # the run failed or wrote no metrics: nothing to restore
    img = doc.get("image_level")
    if not isinstance(img, dict):
        continue  # no labels: train writes no row either
    rows.append([doc.get("category", cat)] + [rust_f64(float(img[k])) for k in ("NMI", "ARI", "F1")])
if rows:
    new = not lines
    ends_open = False
    if not new:
        with open(table, "rb") as f:
            ends_open = not f.read().endswith(b"\n")
    with open(table, "a", newline="") as f:
        if ends_open:
            f.write("\n")
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(["category", "NMI", "ARI", "F1"])
        w.writerows(rows)
    for r in rows:
        print(f"metrics: {table} lacked the row of {r[0]} (lost to a concurrent write): restored from {runner_dir}/{r[0]}/metrics.json")
PY
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if [ "$#" -lt 4 ]; then
    echo "usage: $0 TABLE RUNNER_DIR SKIP_LINES CATEGORY..." >&2
    exit 2
  fi
  metrics_table_fill "$@"
fi
