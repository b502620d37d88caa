"""benchmarks/logs.py, a short run: every arm reports, nothing is dropped within the
default bounds, and tasks that log nothing cost the log reader no call and leave the
parent's calls per task as they were. Timing is reported, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_logs_benchmark_runs_and_capture_adds_no_call_per_task(tmp_path: Path) -> None:
    """Both measures run; the log reader makes no call while tasks log nothing, and the
    calls per task with capture on stay within the run-to-run spread of capture off."""
    out = tmp_path / "logs.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    env["PYTHONFAULTHANDLER"] = "1"
    script = str(ROOT / "benchmarks" / "logs.py")
    proc = subprocess.run(
        [sys.executable, script, "--rounds", "2", "-n", "1000", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| stdlib recipe |" in proc.stdout and "| tracedpool A/A |" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["cost"]["dropped"] == 0
    assert set(figures["cost"]["arms"]) == {"tracedpool", "tracedpool A/A", "stdlib recipe"}
    before = figures["calls"]["none"]["per_task"]
    after = figures["calls"]["default"]["per_task"]
    assert after.get("log reader", 0) == 0  # strict: it sleeps in poll() the whole time
    # The totals move by a call or two from run to run (how results batch into manager
    # wakes, the garbage collector), with capture on or off alike.
    assert abs(sum(after.values()) - sum(before.values())) <= 3, (before, after)
