"""Imports run one way: the package map of docs/architecture.md, enforced on the source itself.

Every ``import`` and ``from ... import`` in megadepth/, data_prep/ and launch/ is read with ``ast`` (imports
inside functions too: a lazy import couples packages as much as a top-level one) and mapped to its
package: ``megadepth.<sub>`` for a subpackage or top-level module of megadepth, ``data_prep``, ``launch``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("megadepth", "data_prep", "launch")
COMMON = "megadepth.common"
#: (importer, imported) pairs that must not exist: lower layers never reach up
FORBIDDEN = {
    ("megadepth.parallel", "megadepth.model"), ("megadepth.parallel", "megadepth.train"),
    ("megadepth.model", "megadepth.train"), ("megadepth.model", "launch"),
    ("megadepth.parametrize", "megadepth.parallel"), ("megadepth.parametrize", "megadepth.train"),
}  # fmt: skip
#: what data_prep may use of megadepth besides megadepth.common: the public API of megadepth.data (its
#: package namespace, where the shard writer lives), nothing of the trainer
DATA_PREP_MAY_IMPORT = {COMMON, "megadepth.data"}


def package_of(module: str) -> str | None:
    """``megadepth.train.loop`` -> ``megadepth.train``; ``data_prep.x`` -> ``data_prep``; others None."""
    parts = module.split(".")
    if parts[0] == "megadepth":
        return "megadepth" if len(parts) == 1 else f"megadepth.{parts[1]}"
    return parts[0] if parts[0] in SOURCES else None


def imports() -> list[tuple[str, str, str, str]]:
    """(importer package, imported package, imported module, file:line) for every import between
    packages."""
    found = []
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            rel = path.relative_to(ROOT)
            mine = package_of(".".join(rel.with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # "from megadepth import errors": the submodule is the thing imported
                    modules = [f"{node.module}.{a.name}" if node.module == "megadepth" else node.module
                               for a in node.names]
                else:
                    continue
                for module in modules:
                    theirs = package_of(module)
                    if theirs is not None and theirs != mine:
                        found.append((mine, theirs, module, f"{rel}:{node.lineno}"))
    return found


def test_the_import_walker_sees_real_imports() -> None:
    """The rules below are only as good as the walk: it must see the imports known to exist."""
    pairs = {(a, b) for a, b, _, _ in imports()}
    assert ("megadepth.train", "megadepth.model") in pairs and ("data_prep", COMMON) in pairs
    assert ("megadepth.cli", "data_prep") in pairs  # a lazy import inside a function counts


def test_common_is_a_leaf() -> None:
    bad = [f"{where}: {module}" for mine, _, module, where in imports() if mine == COMMON]
    assert bad == [], "megadepth.common imports nothing else of megadepth, data_prep or launch"


def test_lower_layers_never_import_higher_ones() -> None:
    bad = [f"{where}: {mine} imports {module}" for mine, theirs, module, where in imports()
           if (mine, theirs) in FORBIDDEN]
    assert bad == []


def test_data_prep_uses_only_common_and_the_shard_api() -> None:
    bad = []
    for mine, theirs, module, where in imports():
        if mine != "data_prep" or theirs in ("data_prep",):
            continue
        if theirs not in DATA_PREP_MAY_IMPORT:
            bad.append(f"{where}: {module}")
        elif theirs == "megadepth.data" and module != "megadepth.data":
            bad.append(f"{where}: {module} (import the public names from megadepth.data)")
    assert bad == []


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for mine, theirs, _, line in imports():
        graph[mine].add(theirs)
        where.setdefault((mine, theirs), line)
    cycles = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if a < b and a in graph.get(b, ()):
                cycles.append(f"{a} <-> {b} ({where[(a, b)]}; {where[(b, a)]})")
    # longer cycles: depth-first search for a back edge
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1 and len(path) - path.index(nxt) > 2:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
