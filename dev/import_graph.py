#!/usr/bin/env python3
"""The import graph of src/: which module names which (`crate::a::b`, `super::x`, `use` lists),
at the depth of modules (files and folders), and every cycle between them.

    python3 dev/import_graph.py            # edges, then cycles (exit 1 when any)
    python3 dev/import_graph.py --depth 1  # top-level modules only

A module is a file's path under src/ without `.rs` / `mod.rs` (src/mebin/job.rs -> mebin::job);
`lib.rs` and `main.rs` are the roots and are left out. Edges are drawn between modules at
--depth (default 2); a module never depends on its own parent or children (those are the same
stage's inside), only across. Tests (`#[cfg(test)]` blocks and *tests.rs files) are skipped.
"""
import argparse
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_of(path: Path) -> list:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_tests(text: str) -> str:
    # Drop `#[cfg(test)] mod x { ... }` blocks by brace matching.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    text = "".join(out)
    return re.sub(r"//[^\n]*", "", text)


def referenced(text: str, here: list, known: set) -> set:
    """Module paths named in `text` (absolute, as lists)."""
    refs = set()
    # Expand `use crate::a::{b, c::d}` one level, enough for this code base.
    for m in re.finditer(r"\b(crate|super)((?:::\w+)*)::\{([^}]*)\}", text):
        head = resolve(m.group(1), m.group(2), here)
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                refs.add(tuple(head + [p for p in item.split("::") if p and p != "self"]))
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        refs.add(tuple(resolve(m.group(1), m.group(2), here)))
    mods = set()
    for r in refs:
        # The longest prefix that is a known module.
        for k in range(len(r), 0, -1):
            if r[:k] in known:
                mods.add(r[:k])
                break
    return mods


def resolve(root: str, rest: str, here: list) -> list:
    parts = [p for p in rest.split("::") if p]
    if root == "crate":
        return parts
    base = here[:-1]
    while parts and parts[0] == "super":
        base, parts = base[:-1], parts[1:]
    return base + parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=2)
    args = ap.parse_args()
    files = [p for p in SRC.rglob("*.rs") if p.name not in ("lib.rs", "main.rs")]
    files = [p for p in files if not p.stem.endswith("tests")]
    known = {tuple(module_of(p)) for p in files}
    # Folders without mod.rs but with a `foo.rs` beside them are known through that file.
    edges = {}
    for p in sorted(files):
        here = module_of(p)
        src = tuple(here[: args.depth])
        for r in referenced(strip_tests(p.read_text()), here, known):
            dst = r[: args.depth]
            a, b = src, dst
            if a[: len(b)] == b or b[: len(a)] == a:
                continue  # the same stage's inside
            edges.setdefault("::".join(a), set()).add("::".join(b))
    for a in sorted(edges):
        print(f"{a} -> {', '.join(sorted(edges[a]))}")
    cycles = find_cycles(edges)
    print(f"\n{len(cycles)} cycles")
    for c in cycles:
        print("  " + " -> ".join(c + [c[0]]))
    sys.exit(1 if cycles else 0)


def find_cycles(edges):
    """Strongly connected components with more than one node, each shown as one cycle."""
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    nodes = set(edges) | {b for v in edges.values() for b in v}

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return sccs


if __name__ == "__main__":
    main()
