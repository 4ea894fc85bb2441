"""The repository's import graph, read from the source (nothing is imported), for the architecture tests.

Every ``import`` counts, wherever it stands: module level, inside a function, under ``if TYPE_CHECKING``. A node
is a module (``echomimic_lib.jobs.animate``); a package is its ``__init__``. ``from pkg import name`` is an
arrow to ``pkg.name`` when that is a module, else to ``pkg``. Imports of anything outside the given packages
(the standard library, torch, ComfyUI) are not arrows. In a folder without ``__init__.py`` (``bench/``, scripts
that put their folder on ``sys.path``) ``import _models`` is an arrow to the sibling file.
"""
from __future__ import annotations

import ast
from pathlib import Path

LIB = "echomimic_lib"
FRONT_ENDS = (f"{LIB}.cli",)
JOBS = (f"{LIB}.jobs",)
# who may import whom between the top-level packages (nodes -> echomimic_lib <- trainer; bench uses both)
MAY_IMPORT = {LIB: {LIB}, "nodes": {"nodes", LIB}, "trainer": {"trainer", LIB}, "bench": {"bench", LIB, "trainer"}}


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_graph(root: Path, packages) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports."""
    files = {}
    for pkg in packages:
        for py in sorted((root / pkg).rglob("*.py")):
            name, is_pkg = _module_name(py, root)
            files[name] = (py, is_pkg)
    graph = {}
    for name, (py, is_pkg) in files.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        script_dir = [] if (py.parent / "__init__.py").exists() else here

        def resolve(dotted):
            for candidate in (dotted, ".".join(script_dir + [dotted]) if script_dir else None):
                parts = candidate.split(".") if candidate else []
                while parts and ".".join(parts) not in files:
                    parts.pop()
                if parts:
                    return ".".join(parts)
            return None

        targets = set()
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = resolve(node.module) or node.module
                for alias in node.names:
                    sub = f"{mod}.{alias.name}" if mod else alias.name
                    if sub in files:
                        targets.add(sub)
                    elif mod in files:
                        targets.add(mod)
        graph[name] = targets - {name, None}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (strongly connected components of 2 or more)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return sorted(found)


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The library's graph with each subpackage (``echomimic_lib.audio``) and top-level module as one node."""

    def unit(m):
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        if m.startswith(LIB + "."):
            out.setdefault(unit(m), set()).update(unit(t) for t in targets if t.startswith(LIB + ".") and unit(t) != unit(m))
    return out


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def wrong_direction(graph: dict[str, set[str]]) -> list[str]:
    """Arrows against the architecture: between top-level packages (``MAY_IMPORT``), and inside the library
    front ends (cli) -> jobs -> engine, where the engine imports neither a front end nor a job."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            top_a, top_b = a.split(".")[0], b.split(".")[0]
            if top_b not in MAY_IMPORT.get(top_a, {top_a}):
                bad.append(f"{a} -> {b}: {top_a} must not import {top_b}")
            elif top_a == top_b == LIB and not _under(a, FRONT_ENDS):
                if _under(b, FRONT_ENDS):
                    bad.append(f"{a} -> {b}: only a front end imports a front end")
                elif _under(b, JOBS) and not _under(a, JOBS):
                    bad.append(f"{a} -> {b}: the engine must not import a job")
    return bad
