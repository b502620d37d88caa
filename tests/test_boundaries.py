"""Each foreign private API is read in one module: the OpenTelemetry SDK's and API's in
``tracedpool/_telemetry/sdk.py``, ``concurrent.futures.process``'s in
``tracedpool/_pool/cpython.py``. A new version that renames a private name then changes
one module, whose probes and fallbacks say what is lost.

What counts as a read, found with ``ast`` in every module of the package (code inside
functions too):

* an import of a private module or name (``from opentelemetry.metrics import _internal``);
* ``m._x`` where ``m`` is bound to a module of the foreign package (``trace._X``);
* ``obj._x``, ``getattr(obj, "_x")`` (and ``hasattr``, ``setattr``, ``delattr``) where
  ``_x`` is a private name the foreign package's own source defines and tracedpool does
  not define itself (a name both define, such as ``_lock``, cannot be told apart by
  name: the other rules still catch the reads around it).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tracedpool"

#: Modules another engineer is moving right now (issue 12) may still read foreign private
#: names while they are in flight; their new homes must not. Paths relative to the
#: package, a trailing "/" for a whole room. Empty: the split of the pool state
#: (_pool/executor.py) and of the doctor (_doctor/) are merged and read none.
IN_FLIGHT: tuple[str, ...] = ()

OTEL_BOUNDARY = "_telemetry/sdk.py"
CPYTHON_BOUNDARY = "_pool/cpython.py"

_ACCESSORS = {"getattr", "hasattr", "setattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_private_names(trees: Iterable[ast.AST]) -> set[str]:
    """Private names these modules define: functions, classes, module and class
    variables, ``self._x`` / ``cls._x`` attributes and ``__slots__`` entries."""
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                found.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                found.update(
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
    return {n for n in found if _private(n)}


def private_reads(tree: ast.AST, package: str, names: set[str]) -> Iterator[tuple[int, str]]:
    """(line, what) for each read of a private name of the foreign ``package`` (dotted,
    e.g. ``opentelemetry``); ``names`` are the private names its source defines."""
    modules: set[str] = set()  # local names bound to a module of the package
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    if any(_private(p) for p in alias.name.split(".")):
                        yield node.lineno, f"import {alias.name}"
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                # `from pkg.mod import x` or `from pkg import mod` (the package's module)
                if dotted == package or dotted.startswith(package + "."):
                    if any(_private(p) for p in dotted.split(".")):
                        yield node.lineno, f"from {node.module} import {alias.name}"
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Name) and base.id in modules:
                yield node.lineno, f"{base.id}.{node.attr}"
            elif node.attr in names:
                yield node.lineno, f".{node.attr}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ACCESSORS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value in names
        ):
            yield node.lineno, f'{node.func.id}(..., "{node.args[1].value}")'


def _package_trees() -> dict[str, ast.AST]:
    return {
        p.relative_to(PACKAGE).as_posix(): ast.parse(p.read_text(encoding="utf-8"), str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _foreign_trees(sources: Iterable[Path]) -> list[ast.AST]:
    trees: list[ast.AST] = []
    for path in sources:
        try:
            trees.append(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        except (OSError, SyntaxError, UnicodeDecodeError):  # not source we can read
            continue
    return trees


def _distribution_sources(dist: str) -> list[Path]:
    files = metadata.distribution(dist).files or []
    return [Path(str(f.locate())) for f in files if f.suffix == ".py"]


def violations(package: str, boundary: str, foreign: list[ast.AST]) -> list[str]:
    trees = _package_trees()
    own = defined_private_names(
        tree for rel, tree in trees.items() if rel not in (OTEL_BOUNDARY, CPYTHON_BOUNDARY)
    )
    names = defined_private_names(foreign) - own
    found = []
    for rel, tree in trees.items():
        if rel == boundary or rel.startswith(IN_FLIGHT):
            continue
        reads = sorted(private_reads(tree, package, names))
        found += [f"tracedpool/{rel}:{line}: {what}" for line, what in reads]
    return found


def test_only_the_sdk_module_reads_opentelemetry_private_names() -> None:
    """No module but tracedpool/_telemetry/sdk.py reads a private name of the
    OpenTelemetry API or SDK."""
    foreign = _foreign_trees(
        _distribution_sources("opentelemetry-api") + _distribution_sources("opentelemetry-sdk")
    )
    assert len(foreign) > 20, "the OpenTelemetry sources were not found"
    found = violations("opentelemetry", OTEL_BOUNDARY, foreign)
    assert not found, "OpenTelemetry private names outside sdk.py:\n" + "\n".join(found)


def test_only_the_cpython_module_reads_the_process_pools_private_names() -> None:
    """No module but tracedpool/_pool/cpython.py reads a private name of
    ``concurrent.futures.process``."""
    import concurrent.futures.process as cfp

    foreign = _foreign_trees([Path(inspect.getfile(cfp))])
    assert foreign, "concurrent/futures/process.py was not found"
    found = violations("concurrent.futures.process", CPYTHON_BOUNDARY, foreign)
    assert not found, "concurrent.futures.process private names outside cpython.py:\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from opentelemetry import trace\nx = trace._TRACER_PROVIDER\n",
            ["trace._TRACER_PROVIDER"],
        ),
        ("import opentelemetry.trace as t\ndef f():\n    return t._X\n", ["t._X"]),
        (
            "def f():\n    from opentelemetry.metrics import _internal\n",
            ["from opentelemetry.metrics import _internal"],
        ),
        ("def f(p):\n    return p._active_span_processor\n", ["._active_span_processor"]),
        (
            'def f(p):\n    return getattr(p, "_span_processors", None)\n',
            ['getattr(..., "_span_processors")'],
        ),
        ("def f(p):\n    return p._mine, self._span_processors\n", []),
        ("from opentelemetry import trace\nx = trace.get_tracer_provider()\n", []),
        ("from concurrent.futures import process as p\nx = p._CallItem\n", []),
    ],
)
def test_the_checker_finds_private_reads(source: str, expected: list[str]) -> None:
    """The checker itself: module attributes, private imports inside functions, private
    attributes by name and through getattr; public names and ``self`` are not reads."""
    names = {"_active_span_processor", "_span_processors"}
    found = [what for _line, what in private_reads(ast.parse(source), "opentelemetry", names)]
    assert found == expected


def test_a_process_module_bound_by_from_import_is_followed() -> None:
    """``from concurrent.futures import process as p`` binds the module: ``p._X`` reads."""
    source = "from concurrent.futures import process as p\nx = p._CallItem\n"
    found = [w for _l, w in private_reads(ast.parse(source), "concurrent.futures.process", set())]
    assert found == ["p._CallItem"]


def test_the_boundary_modules_exist() -> None:
    """The boundaries and the in-flight entries name real paths (a move updates them)."""
    for rel in (OTEL_BOUNDARY, CPYTHON_BOUNDARY, *IN_FLIGHT):
        assert (PACKAGE / rel).exists(), rel
