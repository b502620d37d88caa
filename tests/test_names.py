"""The names table in the docs is generated from the constants the code uses."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tracedpool._telemetry import names as N

ROOT = Path(__file__).resolve().parent.parent
NAMES = ROOT / "tracedpool" / "_telemetry" / "names.py"


def test_docs_names_table_is_current() -> None:
    """docs/names.md matches what `make docs` generates from tracedpool/_telemetry/names.py."""
    on_disk = (ROOT / "docs" / "names.md").read_text(encoding="utf-8")
    assert on_disk == N.render_markdown(), "docs/names.md is stale: run `make docs`"


def test_six_stage_spans_and_task_span_are_exact() -> None:
    """Span names are exactly the issue's constants."""
    assert N.STAGE_SPANS == (
        "tracedpool.submit",
        "tracedpool.enqueue",
        "tracedpool.feeder-serialize",
        "tracedpool.worker-run",
        "tracedpool.sendback",
        "tracedpool.manager-wake",
    )
    assert N.SPAN_TASK == "tracedpool.task"


def test_no_name_is_spelled_outside_the_names_module() -> None:
    """Other modules import the names; none spells a tracedpool.* name literally."""
    pattern = re.compile(
        r"[\"']tracedpool\.(task|submit|enqueue|feeder-serialize|worker-run|"
        r"sendback|manager-wake|pool|fault|broken|worker|wake|payload|result|map)\b"
    )
    for path in (ROOT / "tracedpool").rglob("*.py"):
        if path == NAMES:
            continue
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            assert not pattern.search(line), (
                f"{path.name}:{line_no}: use tracedpool._telemetry.names"
            )


def _registered_constants() -> list[str]:
    """The names of _names' constants that go into the docs table."""
    tree = ast.parse(NAMES.read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id in ("_reg", "_metric")
        ):
            out.append(node.target.id)
    return out


def test_every_documented_name_is_used_by_the_package() -> None:
    """Each name in the docs table is read or emitted by some module of the package: a
    documented name the code never uses (or a tests-only one) fails here."""
    sources = {
        str(path): path.read_text(encoding="utf-8")
        for path in (ROOT / "tracedpool").rglob("*.py")
        if path != NAMES
    }
    unused = [
        name
        for name in _registered_constants()
        if not any(re.search(rf"\b{name}\b", text) for text in sources.values())
    ]
    assert not unused, f"documented in tracedpool/_telemetry/names.py but never used: {unused}"


def test_exception_attribute_keys_are_not_spelled_outside_the_names_module() -> None:
    """OpenTelemetry's exception.* keys come from tracedpool._telemetry.names too."""
    pattern = re.compile(r"[\"']exception\.(type|message|stacktrace|escaped)[\"']")
    for path in (ROOT / "tracedpool").rglob("*.py"):
        if path == NAMES:
            continue
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), (
                f"{path.name}:{line_no}: use tracedpool._telemetry.names"
            )
