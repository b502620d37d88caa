"""The stdlib-suite runner (tools/stdlib_suite/runner.py) survives tests that replace sys
streams: a real runner process runs a small unittest module whose first test leaves
``sys.stderr`` an ``io.StringIO``, as CPython 3.10's and 3.11's test_deadlock can
(gh-109832)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "tools" / "stdlib_suite" / "runner.py"

CASES = """
import io
import sys
import unittest


class ProcessPoolStreamsTest(unittest.TestCase):
    def test_a_leaves_stderr_replaced(self):
        sys.stderr = io.StringIO()

    def test_b_runs_next_with_a_real_stderr(self):
        self.assertGreaterEqual(sys.stderr.fileno(), 0)
"""


def test_runner_restores_a_replaced_stderr_and_runs_on(tmp_path: Path) -> None:
    """A test that leaves sys.stderr without a file descriptor neither kills the runner
    silently (faulthandler's default file is sys.stderr) nor hides the rest of the run."""
    pytest.importorskip("test.support")  # CPython's test package; some distributions drop it
    (tmp_path / "streams_cases.py").write_text(CASES, encoding="utf-8")
    results = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "--results",
            str(results),
            "--module",
            "streams_cases",
            "--expect-executor",
            "ProcessPoolExecutor",
            "--test-timeout",
            "60",
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    events = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    ends = {e["id"].rsplit(".", 1)[1]: e for e in events if e["event"] == "end"}
    assert done.returncode == 0, done.stderr
    assert events[-1]["event"] == "done"
    assert ends["test_a_leaves_stderr_replaced"]["outcome"] == "pass"
    assert ends["test_a_leaves_stderr_replaced"]["env_changed"] is True
    assert ends["test_b_runs_next_with_a_real_stderr"]["outcome"] == "pass"
    assert "sys.stderr was modified by" in done.stderr
