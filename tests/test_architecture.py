"""The package layout's import rules (docs/design.md, "Architecture"), checked on
every import statement of ``registry``, ``generator`` and ``api``, those inside
functions included:

- layers import downwards only: ``api`` -> ``generator`` -> ``registry``;
- inside ``generator``, each stage imports only the stages below it (``RULES``):
  ``hypernet`` is pure maths over ``registry`` types, ``serve`` never imports
  ``fit``, and only ``api`` (and ``bench``) import ``transfer``;
- no module imports itself back through others: the module graph has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "generator", "api")

# what each part may import from the project (itself always); the longest matching
# prefix of a module's name decides which rule is its own
RULES: dict[str, set[str]] = {
    "registry": set(),
    "generator.tasks": {"registry"},
    "generator.zoo": {"registry", "generator.tasks"},
    "generator.hypernet": {"registry"},
    "generator.experts": {"registry", "generator.tasks", "generator.zoo", "generator.hypernet"},
    "generator.fit": {
        "registry", "generator.tasks", "generator.zoo", "generator.hypernet", "generator.experts",
    },
    "generator.adapt": {"registry", "generator.tasks", "generator.zoo"},
    "generator.serve": {
        "registry", "generator.tasks", "generator.hypernet", "generator.experts", "generator.adapt",
    },
    "generator.transfer": {"registry", "generator.tasks", "generator.zoo"},
    "generator.quality": {
        "registry", "generator.tasks", "generator.zoo", "generator.hypernet",
        "generator.experts", "generator.fit", "generator.adapt", "generator.serve",
    },
    "generator.sandbox": {
        "registry", "generator.tasks", "generator.zoo", "generator.hypernet", "generator.fit",
    },
    "generator": {"registry"},  # the package's own __init__: registry first (its OpenMP spin)
    "api": {"registry", "generator"},
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from a import b``
    counts as importing ``a.b`` when that is a module, else ``a``)."""
    modules = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def rule_of(name: str) -> str:
    return max((r for r in RULES if name == r or name.startswith(r + ".")), key=len)


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        own = rule_of(src)
        for dst in sorted(targets):
            theirs = rule_of(dst)
            allowed = theirs == own or any(
                theirs == a or theirs.startswith(a + ".") for a in RULES[own]
            )
            if not allowed:
                out.append(
                    f"{src} imports {dst} ({own} may import {sorted(RULES[own]) or 'nothing'})"
                )
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_layout_is_the_documented_one() -> None:
    modules = project_modules()
    for stage in ("tasks", "zoo", "hypernet", "fit", "adapt", "serve", "transfer"):
        assert f"generator.{stage}" in modules, f"generator/{stage}/ is missing"
    assert "generator.experts" in modules
    unruled = [m for m in modules if not any(m == r or m.startswith(r + ".") for r in RULES)]
    assert not unruled, f"modules no rule covers: {unruled}"


def test_imports_follow_the_layering_rules() -> None:
    broken = violations(project_graph())
    assert not broken, "\n".join(broken)


def test_no_import_cycles() -> None:
    found = cycles(project_graph())
    assert not found, f"import cycles: {found}"


def test_the_checks_catch_a_broken_rule_and_a_cycle() -> None:
    graph = {
        "generator.serve.generate": {"generator.fit.train"},  # serve may not import fit
        "generator.fit.train": {"generator.fit.sg"},
        "generator.fit.sg": {"generator.fit.train"},  # a cycle
        "generator.tasks.task": {"registry.errors"},
    }
    assert violations(graph) == [
        "generator.serve.generate imports generator.fit.train (generator.serve may import "
        "['generator.adapt', 'generator.experts', 'generator.hypernet', 'generator.tasks', "
        "'registry'])"
    ]
    assert cycles(graph) == [["generator.fit.sg", "generator.fit.train"]]
    assert violations({"registry.service": {"generator.experts"}})
    assert violations({"generator.zoo.build": {"generator.transfer.source"}})


@pytest.mark.parametrize("package", [*PACKAGES, "bench", "migrations"])
def test_no_module_is_over_500_lines(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"modules over 500 lines (split them by concept): {long}"
