#!/usr/bin/env python3
"""Fails when a crate's top-level modules import each other in a circle.

For every crate in the workspace (a directory with Cargo.toml and src/), each
source file belongs to a top-level module (src/foo.rs and src/foo/** are
`foo`); every `crate::bar` it names is an edge foo -> bar. Test modules
(src/**/tests.rs, src/tests/**) are left out: tests may reach anything.
Prints each strongly connected component of more than one module and exits 1
if there is any. Usage: scripts/check-module-cycles.py [ROOT]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
CRATE_REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(src: pathlib.Path, f: pathlib.Path):
    rel = f.relative_to(src).parts
    if rel[0] in ("lib.rs", "main.rs") or rel[-1] == "tests.rs" or "tests" in rel[:-1]:
        return None
    return rel[0].removesuffix(".rs")


def edges(src: pathlib.Path):
    graph = {}
    for f in sorted(src.rglob("*.rs")):
        m = module_of(src, f)
        if m is None:
            continue
        text = f.read_text()
        # Code after `#[cfg(test)]` at the top level is a test module.
        cut = re.search(r"^#\[cfg\(test\)\]", text, re.M)
        if cut:
            text = text[: cut.start()]
        refs = set(CRATE_REF.findall(text))
        for group in CRATE_GROUP.findall(text):
            refs.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        graph.setdefault(m, set()).update(r for r in refs if r != m)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


failed = False
for manifest in sorted(root.rglob("Cargo.toml")):
    src = manifest.parent / "src"
    if "target" in manifest.parts or not src.is_dir():
        continue
    for comp in cycles(edges(src)):
        failed = True
        name = manifest.parent.relative_to(root)
        print(f"{name}: modules import each other in a circle: {' <-> '.join(comp)}")
if failed:
    sys.exit(1)
print("module graph: no circles")
