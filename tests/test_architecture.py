"""The project's import graph, read from the source with ``ast`` (module- AND function-level imports):
no import cycle among the modules of ``marginnce_loss``, ``marginnce_kit`` and ``benchmarks``, and the layers
point one way -- the package imports nothing from the kit, and the kit's data layer
(``marginnce_kit.data``) imports nothing from the kit above it (only its foundation modules)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("marginnce_loss", "marginnce_kit", "benchmarks")

#: Kit modules below everything else: they import nothing from ``marginnce_kit`` outside this set.
FOUNDATION = frozenset({"marginnce_kit._checks", "marginnce_kit.io", "marginnce_kit.layout", "marginnce_kit.cli", "marginnce_kit.protocol"})

#: Known edges of files under redesign elsewhere (the studies' modules), each a (importer, imported)
#: pair the second pass removes; every entry must still exist (a stale entry fails the test).
KNOWN_EDGES: frozenset[tuple[str, str]] = frozenset()


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``if TYPE_CHECKING:`` blocks excepted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in modules else module)
    found = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.c` of a name inside a module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {v: {w for w in ws if (v, w) not in KNOWN_EDGES} for v, ws in graph.items()}


def test_the_walk_sees_every_import(tmp_path: Path) -> None:
    """Module-level, function-level, relative and ``from package import submodule`` imports are all
    edges; ``if TYPE_CHECKING:`` imports are not; a cycle through a function-level import is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                              "def g():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import b\n")
    modules = {"pkg": pkg / "__init__.py", **{f"pkg.{m}": pkg / f"{m}.py" for m in "abcd"}}
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    real = _graph()
    assert "marginnce_kit.training.loop" in real["marginnce_kit.train"]
    assert "marginnce_kit.protocol" in real["marginnce_kit.data.box_stats"]  # a function-level import


def test_known_edges_still_exist() -> None:
    graph = _graph()
    stale = sorted(e for e in KNOWN_EDGES if e[1] not in graph.get(e[0], set()))
    assert not stale, f"allow-listed import edges that no longer exist (drop them from KNOWN_EDGES): {stale}"


def test_no_import_cycles() -> None:
    cycles = _cycles(_without_known(_graph()))
    assert not cycles, f"import cycles (module- or function-level imports): {cycles}"


def test_the_package_imports_nothing_from_the_kit() -> None:
    graph = _graph()
    bad = sorted((v, w) for v, ws in graph.items() if v.startswith("marginnce_loss")
                 for w in ws if not w.startswith("marginnce_loss"))
    assert not bad, f"marginnce_loss imports from the kit or the benchmarks: {bad}"


def test_layers_point_down() -> None:
    graph = _without_known(_graph())
    kit = [v for v in graph if v.startswith("marginnce_kit")]
    upward = sorted(
        (v, w) for v in kit if v.startswith("marginnce_kit.data") for w in graph[v]
        if w.startswith("marginnce_kit") and not w.startswith("marginnce_kit.data") and w not in FOUNDATION)
    assert not upward, f"marginnce_kit.data imports from the kit above it: {upward}"
    base = sorted((v, w) for v in FOUNDATION for w in graph[v] if w.startswith("marginnce_kit") and w not in FOUNDATION)
    assert not base, f"foundation modules import from the kit above them: {base}"
