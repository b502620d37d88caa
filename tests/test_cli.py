"""The ``tracedpool`` command, run for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tracedpool._diagnosis.stall import SCHEMA, write_report


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracedpool", *args], capture_output=True, text=True, timeout=60
    )


def _report() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "worker-stopped",
        "diagnosis": "worker pid 42 is stopped",
        "detected_at": "2026-11-25T00:00:00+00:00",
        "stall_seconds": 61.0,
        "pool": {"id": "abcd1234", "name": "p", "max_workers": 2},
        "tasks": [
            {
                "id": "abcd1234:3",
                "function": "m.f",
                "stage": "worker-run",
                "worker_pid": 42,
                "age_seconds": 70.0,
            }
        ],
        "processes": [{"pid": 42, "role": "worker", "status": "stopped", "threads": []}],
    }


def test_report_renders_text_and_json(tmp_path: Path) -> None:
    """`tracedpool report PATH` prints the report for a human; --json as JSON."""
    path = write_report(_report(), tmp_path / "r")
    text = _run("report", str(path))
    assert text.returncode == 0, text.stderr
    assert "diagnosis: worker pid 42 is stopped" in text.stdout
    assert "abcd1234:3" in text.stdout
    as_json = _run("report", str(path.with_suffix(".txt")), "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["kind"] == "worker-stopped"


def test_report_bad_input_exits_2(tmp_path: Path) -> None:
    """Missing files, non-JSON and foreign JSON are clear errors with exit code 2."""
    missing = _run("report", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    assert _run("report", str(junk)).returncode == 2
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"schema": "other"}')
    out = _run("report", str(foreign))
    assert out.returncode == 2 and "not a tracedpool stall report" in out.stderr
    assert _run("frobnicate").returncode == 2
    assert _run().returncode == 2


def test_report_turns_binary_deep_and_misshapen_files_into_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    """A binary file, JSON nested too deeply to parse, a directory, and a file with the
    report's schema but not its shape each end in one line on stderr and exit 2 (as
    `tracedpool timeline` does for its files), never in a traceback."""
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)) * 4)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    misshapen = tmp_path / "misshapen.json"
    misshapen.write_text(json.dumps({"schema": SCHEMA, "processes": 5, "tasks": 3}))
    for path, why in [
        (binary, "not UTF-8 text"),
        (deep, "nested too deeply"),
        (tmp_path, "cannot read"),
        (misshapen, "does not have a report's shape"),
    ]:
        for extra in ((), ("--json",)) if path is not misshapen else ((),):
            out = _run("report", str(path), *extra)
            assert out.returncode == 2, (path, out.stderr)
            assert out.stderr.count("\n") == 1 and why in out.stderr, out.stderr
            assert "Traceback" not in out.stderr


def test_timeline_turns_binary_and_deep_files_into_one_line_and_exit_2(tmp_path: Path) -> None:
    """The same files given to `tracedpool timeline`: one line, exit 2."""
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    for path in (binary, deep):
        out = _run("timeline", str(path), "-o", str(tmp_path / "t.html"))
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "not an OTLP/JSON trace export" in out.stderr
