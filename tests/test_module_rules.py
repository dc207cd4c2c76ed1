"""Rules of the code's shape, checked over every module under ``buildmaster/``.

* No import cycle among buildmaster's modules, imports under ``TYPE_CHECKING`` (and inside
  functions) included: a module can be read, and tested, with only what it stands on.
* A module over :data:`MAX_LINES` lines says why at the top of its docstring (``Long:``),
  so that a long module is a choice and not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import buildmaster

ROOT = Path(buildmaster.__file__).parent
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The buildmaster modules ``name`` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` stands on the module; ``from module import
            # name`` on the module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # the module itself or, for a name from it, the module that holds it
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    # (importing ``a.b.c`` runs ``a/__init__`` first: not counted, since a package's
    # ``__init__`` that gathers its modules' public names is no cycle of meaning)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_type_checking_and_relative_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from buildmaster.master import BuilddMaster\n"
        "from . import policy\n"
    )
    fake = tmp_path / "example.py"
    fake.write_text(source)
    known = {"buildmaster.master", "buildmaster.scan", "buildmaster.scan.policy"}
    found = imports_of("buildmaster.scan.example", fake, known)
    assert found == {"buildmaster.master", "buildmaster.scan.policy"}


def test_no_import_cycle_among_buildmasters_modules() -> None:
    assert cycles(graph()) == []


def test_a_long_module_says_why_at_its_top() -> None:
    unexplained = []
    for name, path in modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "\nLong: " not in f"\n{doc}" and not any(
            line.startswith("Long: ") for line in doc.splitlines()
        ):
            unexplained.append(f"{name} ({lines} lines)")
    assert unexplained == []
