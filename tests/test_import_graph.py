"""The package's modules import one another one way: no cycle, not even one closed by an
import inside a function (those still tie the modules together, they only hide it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracedpool"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports, at any depth of its code.

    ``from . import _a`` names the module ``_a``; ``from ._a import b`` names ``_a`` (and
    ``_a.b`` if that is a module); absolute ``tracedpool.`` imports count the same."""
    tree = ast.parse(source, name)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`
            # imports pkg itself (its __init__).
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import tracedpool._a.b` depends on tracedpool._a.b: keep the longest known.
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {
        module_name(p): imports_in(
            p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py", known
        )
        for p in paths
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each as [a, b, ..., a] starting at its smallest name."""
    cycles: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                cycles.append([*path, start])
            elif dep > start and dep not in path:
                walk(start, dep, [*path, dep])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


def test_the_package_import_graph_has_no_cycle() -> None:
    """No chain of imports, top-level or inside functions, leads back to its start."""
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_finds_cycles_closed_inside_functions() -> None:
    """The checker itself: imports inside functions, relative and absolute ``tracedpool.``
    imports are all edges, and a cycle through them is found."""
    source = (
        "import tracedpool._b\n"
        "def f():\n"
        "    from . import _c\n"
        "    from ._d import thing\n"
        "    from tracedpool import _e\n"
    )
    known = {"tracedpool", *(f"tracedpool._{c}" for c in "abcde")}
    found = imports_in(source, "tracedpool._a", False, known)
    assert found == {f"tracedpool._{c}" for c in "bcde"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
