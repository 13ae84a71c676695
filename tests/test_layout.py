"""The layout of src/: no import cycle between our modules, and no file too long to read at once.

The import graph is drawn from the source (``ast``), not by importing it: every ``import`` and
``from ... import`` of a module under src/atbptt or src/hydra_plugins that names another of
them is an edge, at the top of a file or inside a function alike (a function-level import is
still a dependency, only a later one); imports under ``if TYPE_CHECKING:`` are not (they never
run). Importing ``a.b.c`` also runs the ``__init__`` of every package above it that the
importer is not itself inside, so those are edges too (``from .data.corpus import X`` in
``atbptt.limits`` runs ``atbptt/data/__init__.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Set

SRC = Path(__file__).resolve().parents[1] / "src"
ROOTS = ("atbptt", "hydra_plugins")
MAX_LINES = 300
# Files over the limit; each entry is a to-do, not a licence.
LONG_FILES_TO_SPLIT: Set[str] = set()


def module_files() -> Dict[str, Path]:
    """Dotted module name -> file, for every module under the roots."""
    found = {}
    for root in ROOTS:
        for path in sorted((SRC / root).rglob("*.py")):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(nodes: Iterable[ast.AST]) -> Iterator[ast.stmt]:
    """Every import statement in or below ``nodes``, skipping the bodies of
    ``if TYPE_CHECKING:`` (their ``else:`` counts)."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)
        else:
            yield from _imports(ast.iter_child_nodes(node))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _targets(importer: str, is_package: bool, stmt: ast.stmt, modules: Set[str]) -> Set[str]:
    """The modules of ours that ``stmt`` in ``importer`` makes Python execute."""
    named: List[str] = []
    if isinstance(stmt, ast.Import):
        named = [alias.name for alias in stmt.names]
    else:
        assert isinstance(stmt, ast.ImportFrom)
        if stmt.level:
            base_parts = importer.split(".")
            if not is_package:
                base_parts = base_parts[:-1]
            base_parts = base_parts[:len(base_parts) - (stmt.level - 1)]
            base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
        else:
            base = stmt.module or ""
        named = [base]
        # ``from pkg import name``: name may be a submodule of pkg
        named += [f"{base}.{alias.name}" for alias in stmt.names
                  if f"{base}.{alias.name}" in modules]
    targets = set()
    for name in named:
        if name.split(".")[0] not in ROOTS:
            continue
        parts = name.split(".")
        for end in range(1, len(parts) + 1):  # the module and the packages above it
            candidate = ".".join(parts[:end])
            if candidate in modules and not _inside(importer, candidate):
                targets.add(candidate)
    return targets


def import_graph() -> Dict[str, Set[str]]:
    files = module_files()
    modules = set(files)
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        for stmt in _imports(tree.body):
            edges |= _targets(name, is_package, stmt, modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, colouring)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_graph_sees_the_packages():
    graph = import_graph()
    assert "atbptt.data" in graph and "hydra_plugins.atbptt_launcher" in graph
    assert "atbptt.data.streams" in graph["atbptt.data"]  # the package re-exports it
    assert "atbptt.launcher" in graph["hydra_plugins.atbptt_launcher.joblib_launcher"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_type_checking_imports_do_not_count():
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n"
            "    import b\ndef f():\n    import c\n")
    names = [alias.name for stmt in _imports(ast.parse(code).body) for alias in stmt.names]
    assert names == ["TYPE_CHECKING", "b", "c"]


def test_cycle_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_long_files():
    long = {}
    for path in sorted(SRC.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        key = path.relative_to(SRC).as_posix()
        if lines > MAX_LINES and key not in LONG_FILES_TO_SPLIT:
            long[key] = lines
    assert not long, f"files over {MAX_LINES} lines (split them): {long}"
