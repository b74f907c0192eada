#!/usr/bin/env python3
"""Checks that the top-level modules of src/ import each other only downwards.

Every `crate::X` path outside test code (in `use` lines, grouped `use crate::{..}`
imports and inline paths alike) is an arrow from the module it appears in to module X.
An arrow must point to a lower layer than its source; two modules of one layer never
import each other, so the graph has no cycle by construction. A top-level module that
no layer names fails the check too: a new module must choose its floor.

Prints the module graph (each module, its layer and what it imports) and exits 1 on an
arrow against the layers, with the files that hold it.

    python3 scripts/check_layers.py            # the graph, and the verdict
    python3 scripts/check_layers.py --quiet    # the verdict only
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

# From the top down. The ground floor imports nothing above it.
LAYERS: list[tuple[str, list[str]]] = [
    ("listener", ["server"]),
    ("protocol front end", ["protocol"]),
    ("request context", ["broker"]),
    ("coordinators and background work", ["txn", "background"]),
    ("produce, fetch, groups", ["produce", "fetch", "group"]),
    ("metadata", ["metadata"]),
    ("storage", ["storage"]),
    ("ground: configuration", ["config"]),
    ("ground: primitives", ["cli", "tls", "security", "telemetry", "topic_config"]),
    ("ground: basics", ["record", "clock", "reload", "failpoint"]),
]

ROOT = Path(__file__).resolve().parents[1]


def strip_code(text: str) -> str:
    """The text with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not text[i - 1].isalnum() and text[i - 1] != "_"):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_test_items(code: str) -> str:
    """Drops every item under `#[cfg(test)]` (a block or a single declaration)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < i:
            continue
        out.append(code[i:m.start()])
        j = m.end()
        # the item ends at its matching closing brace, or at the first `;` before any `{`
        brace = code.find("{", j)
        semi = code.find(";", j)
        if semi >= 0 and (brace < 0 or semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    out.append(code[i:])
    return "".join(out)


def test_only_files(src: Path) -> set[Path]:
    """Files of modules declared `#[cfg(test)] mod name;` (with or without #[path])."""
    found = set()
    for f in src.rglob("*.rs"):
        code = strip_code(f.read_text())
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[path\s*=\s*\"\"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
            name = m.group(1)
            base = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.parent / f.stem
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.exists():
                    found.add(cand)
                    if cand.name == "mod.rs":
                        found.update(cand.parent.rglob("*.rs"))
    return found


def edges(src: Path) -> dict[str, dict[str, set[str]]]:
    """module -> imported module -> the files (relative to src/) that import it."""
    skip = test_only_files(src)
    graph: dict[str, dict[str, set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        if f in skip or rel.parts[0] in ("main.rs", "lib.rs") or rel.parts[0] == "bin":
            continue
        top = rel.parts[0].removesuffix(".rs")
        graph.setdefault(top, collections.defaultdict(set))
        code = without_test_items(strip_code(f.read_text()))
        names = set(re.findall(r"\bcrate::(\w+)", code))
        for group in re.findall(r"\bcrate::\{([^;]*?)\}\s*;", code, re.S):
            # the first name of each top-level item of the group
            depth, item = 0, ""
            for ch in group + ",":
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    if m := re.match(r"\s*(\w+)", item):
                        names.add(m.group(1))
                    item = ""
                else:
                    item += ch
        for name in names - {top, "self"}:
            graph[top][name].add(str(rel))
    return graph


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--quiet", action="store_true", help="print only what is wrong")
    args = ap.parse_args()
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    graph = edges(args.src)
    wrong, unplaced = [], sorted(m for m in graph if m not in rank)
    for source in sorted(graph, key=lambda m: (rank.get(m, -1), m)):
        targets = graph[source]
        if not args.quiet:
            layer = LAYERS[rank[source]][0] if source in rank else "NO LAYER"
            print(f"{source} ({layer})")
        for target in sorted(targets, key=lambda m: (rank.get(m, 99), m)):
            ok = source in rank and target in rank and rank[target] > rank[source]
            if not args.quiet:
                print(f"  -> {target}{'' if ok else '   AGAINST THE LAYERS'}")
            if not ok:
                wrong.append((source, target, sorted(targets[target])))
    cycles = strongly_connected(graph)
    if not args.quiet:
        print(f"\n{len(graph)} modules, {sum(len(t) for t in graph.values())} arrows, "
              f"{len(wrong)} against the layers, {len(cycles)} cycles")
    for m in unplaced:
        print(f"error: src/{m} is in no layer: add it to LAYERS in scripts/check_layers.py", file=sys.stderr)
    for source, target, files in wrong:
        print(f"error: {source} imports {target} ({', '.join(files)}): that points up or sideways; "
              f"move the shared part down or pass it in", file=sys.stderr)
    for cycle in cycles:
        print(f"error: import cycle: {' -> '.join(cycle)}", file=sys.stderr)
    return 1 if wrong or unplaced or cycles else 0


def strongly_connected(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The cycles of the graph (Tarjan's strongly connected components of size > 1)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
