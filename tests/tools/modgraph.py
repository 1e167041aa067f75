#!/usr/bin/env python3
"""The module graph of a crate: which module uses which, the import cycles, the largest files.

Usage: tests/tools/modgraph.py [CRATE_SRC_DIR ...]   (default: gateway/src history/src protocol/src)
       tests/tools/modgraph.py --check gateway/src   (exit 1 when there is an import cycle)

A module is a file under src/ (`broker/redis.rs` is `broker::redis`; `mod.rs` and `lib.rs` name
their folder). An edge A -> B is any `crate::B...` path written in A (use declarations and inline
paths, `super::` resolved), outside `#[cfg(test)]` modules. Cycles are reported between modules of
the same depth as written and between top-level modules (where `broker::redis -> node` and
`node -> broker` make the cycle `broker <-> node`).
"""

import os
import re
import sys

ROOTS = ["gateway/src", "history/src", "protocol/src"]
PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    """Drop `#[cfg(test)] mod x { ... }` blocks (brace matched) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def resolve(mod, kind, segs, known):
    base = list(mod) if kind == "super" else []
    if kind == "super":
        base = base[:-1]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    full = base + segs
    # the longest prefix that is a module
    for n in range(len(full), 0, -1):
        if tuple(full[:n]) in known:
            return tuple(full[:n])
    return None


def graph(src):
    files = []
    for d, _, names in os.walk(src):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    mods = {module_of(src, f): f for f in files}
    known = set(mods)
    edges = {}
    for mod, f in mods.items():
        text = strip_tests(open(f, encoding="utf-8").read())
        targets = set()
        for m in PATH_RE.finditer(text):
            segs = [s for s in m.group(2).split("::") if s]
            t = resolve(mod, m.group(1), segs, known)
            if t is not None:
                targets.add(t)
        for m in USE_GROUP_RE.finditer(text):  # use crate::{a::X, b};
            for item in re.split(r",(?![^{]*\})", m.group(1)):
                segs = [s for s in re.split(r"::|\{", item.strip()) if s and s.isidentifier()]
                t = resolve((), "crate", segs, known) if segs else None
                if t is not None:
                    targets.add(t)
        targets.discard(mod)
        targets.discard(())
        edges[mod] = targets
    return mods, edges


def sccs(nodes, edges):
    """Tarjan: the strongly connected components with more than one node."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main(argv):
    check = "--check" in argv
    roots = [a for a in argv if not a.startswith("--")] or ROOTS
    cyclic = False
    for src in roots:
        mods, edges = graph(src)
        top = {}
        for a, ts in edges.items():
            for b in ts:
                if a and b and a[0] != b[0]:
                    top.setdefault((a[0],), set()).add((b[0],))
        print(f"## {src}: {len(mods)} modules")
        for a in sorted(edges):
            if edges[a]:
                print(f"  {name(a)} -> {', '.join(sorted(name(b) for b in edges[a]))}")
        fine = sccs(mods, edges)
        coarse = sccs({(m[0],) for m in mods if m}, top)
        for c in fine:
            print(f"  CYCLE (modules): {' <-> '.join(name(m) for m in c)}")
        for c in coarse:
            print(f"  CYCLE (top-level modules): {' <-> '.join(name(m) for m in c)}")
        if not fine and not coarse:
            print("  no import cycle")
        cyclic |= bool(fine or coarse)
        sizes = sorted(((sum(1 for _ in open(f, encoding="utf-8")), f) for f in mods.values()), reverse=True)
        print("  largest files: " + ", ".join(f"{os.path.relpath(f, src)} {n}" for n, f in sizes[:6]))
    return 1 if check and cyclic else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
