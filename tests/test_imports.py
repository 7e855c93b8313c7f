"""The package has no import loop: every import counts, function-local and TYPE_CHECKING ones included.

The graph is read from the source with ``ast`` (nothing is imported), so an import hidden in a function or behind
``if TYPE_CHECKING:`` that would close a loop is found as well; a loop such imports hold is still a loop.
An edge goes to the module an import names (``from a import b``: ``a.b`` when that is a module, else ``a``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file under the package directory ``root``."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: Mapping[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imported(node: ast.Import | ast.ImportFrom, here: str, modules: Mapping[str, Path]) -> Iterator[str]:
    """The package's modules one import statement names (``from a import b`` is ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:  # ``import a.b.c``: the deepest module of the package it names
                name = name.rpartition(".")[0]
            if name:
                yield name
        return
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        anchor = here if _is_package(here, modules) else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            yield submodule
        elif base in modules:
            yield base


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (a module never counts itself)."""
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets.update(_imported(node, name, modules))
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each an import loop), sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so a deep package cannot hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def test_the_package_has_no_import_loop() -> None:
    """No two modules of ``appliance`` import each other, directly or through others."""
    loops = cycles(import_graph(ROOT / "appliance", "appliance"))
    assert not loops, "import loops (break each by moving what both need into a module of its own): " + "; ".join(
        " <-> ".join(loop) for loop in loops
    )


def test_a_loop_held_by_guards_and_local_imports_is_found(tmp_path: Path) -> None:
    """A synthetic package whose loop goes through a relative import, a TYPE_CHECKING import and an import inside a
    function is reported with exactly its members; the module outside the loop is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from .sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import C\n"
    )
    (pkg / "sub" / "c.py").write_text("def late():\n    from pkg import a\n    return a\nC = 2\n")
    (pkg / "leaf.py").write_text("import pkg.sub.c\nimport os\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.leaf"] == {"pkg.sub.c"}  # os is not the package's
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("C = 2\n")  # the function-local import removed: no loop left
    assert cycles(import_graph(pkg, "pkg")) == []


def test_self_and_two_module_loops_are_told_apart(tmp_path: Path) -> None:
    """A module importing itself is no loop; two modules importing each other are one."""
    pkg = tmp_path / "two"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("import two.x\nfrom two import y\n")
    (pkg / "y.py").write_text("from two.x import thing\n")
    assert cycles(import_graph(pkg, "two")) == [["two.x", "two.y"]]


def _guarded_package_imports(path: Path, package: str) -> Iterator[int]:
    """Lines of a ``try`` that imports the package's own modules and catches ImportError (a fallback)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {
            n.id
            for handler in node.handlers
            if handler.type is not None
            for n in ast.walk(handler.type)
            if isinstance(n, ast.Name)
        }
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        for stmt in node.body:
            for inner in ast.walk(stmt):
                if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith(package)):
                    yield inner.lineno
                if isinstance(inner, ast.Import) and any(a.name.startswith(package) for a in inner.names):
                    yield inner.lineno


def test_no_stage_falls_back_when_another_is_missing() -> None:
    """No module catches an ImportError of the package's own stages: they ship together, and a fallback would run
    without encryption, audit or the intake checks if it were ever reached."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "appliance").rglob("*.py"))
        for line in _guarded_package_imports(path, "appliance")
    ]
    assert not found, found
