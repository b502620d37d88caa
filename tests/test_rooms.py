"""The package's rooms say what they hold: each subpackage's docstring lists exactly its
modules, and docs/rationale.md's architecture section names every module of the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tracedpool"
# A bullet naming one module, or two: "- ``emit``: ..." / "- ``jsonl`` and ``otlpjson``: ...".
BULLET = re.compile(r"^- ``(\w+)``(?: and ``(\w+)``)?:", re.M)


def rooms() -> list[Path]:
    return sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


def modules_of(room: Path) -> set[str]:
    return {p.stem for p in room.glob("*.py") if p.name != "__init__.py"}


def test_every_room_docstring_lists_exactly_its_modules() -> None:
    assert rooms(), "no subpackage found: the test is looking in the wrong place"
    for room in rooms():
        doc = ast.get_docstring(ast.parse((room / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"{room.name}/__init__.py has no docstring"
        listed = {name for pair in BULLET.findall(doc) for name in pair if name}
        assert listed == modules_of(room), (
            f"{room.name}: docstring lists {sorted(listed)}, "
            f"the room holds {sorted(modules_of(room))}"
        )


def _architecture_section() -> str:
    text = (ROOT / "docs" / "rationale.md").read_text(encoding="utf-8")
    match = re.search(r"^## Architecture\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "docs/rationale.md has no '## Architecture' section"
    return match.group(1)


def test_the_architecture_section_matches_the_tree() -> None:
    section = _architecture_section()
    named = set(re.findall(r"\b(_\w+)/(\w+)\.py\b", section))
    tree = {(room.name, module) for room in rooms() for module in modules_of(room)}
    assert tree - named == set(), f"modules the architecture section omits: {tree - named}"
    assert named - tree == set(), f"modules it names that do not exist: {named - tree}"


def test_the_checks_see_a_missing_module() -> None:
    """The checks themselves: a bullet list missing a module is caught."""
    listed = {n for pair in BULLET.findall("- ``a``: x\n- ``b`` and ``c``: y\n") for n in pair}
    assert listed - {""} == {"a", "b", "c"}
    assert {"a", "b", "c", "d"} - (listed - {""}) == {"d"}


# What each room may import from outside itself (docs/rationale.md, "Architecture"): a
# room, or one module of a room. The shared leaves import nothing of the package.
LEAVES = {"_errors", "_threads", "_jsonfile", "_version"}
MAY_IMPORT: dict[str, set[str]] = {
    "_pool": {"_worker", "_telemetry", "_diagnosis", *LEAVES},
    "_worker": {"_telemetry.otel", "_diagnosis.stall", *LEAVES},
    "_telemetry": {"_pool.cpython", "_worker.wire", "_diagnosis.forensics", *LEAVES},
    "_diagnosis": {"_telemetry.names", *LEAVES},
    "_doctor": {"_pool", "_worker", "_telemetry", "_diagnosis", "testing", *LEAVES},
    "_timeline": {"_telemetry.otlpjson", "_telemetry.names", *LEAVES},
    "_cli": {"_doctor", "_timeline", "_diagnosis", "_telemetry.otlpjson", *LEAVES},
    **{leaf: set() for leaf in LEAVES},
}


def test_each_room_imports_only_what_the_architecture_allows() -> None:
    import test_import_graph

    broken = []
    for module, deps in test_import_graph.import_graph().items():
        parts = module.split(".")[1:]  # without "tracedpool"
        if not parts or parts[0] not in MAY_IMPORT:
            continue  # the public modules may import any room's entry point
        room = parts[0]
        for dep in deps:
            dparts = dep.split(".")[1:]
            if not dparts or dparts[0] == room:
                continue
            if dparts[0] not in MAY_IMPORT[room] and ".".join(dparts[:2]) not in MAY_IMPORT[room]:
                broken.append(f"{module} imports {dep}")
    assert not broken, "imports the architecture does not allow:\n" + "\n".join(sorted(broken))
