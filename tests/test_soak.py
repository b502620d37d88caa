"""The soak and exporter-outage benchmarks, shortened for CI, with the same assertions.

Each runs benchmarks/soak.py or benchmarks/outage.py in a fresh interpreter (a clean
count of threads, descriptors and objects; its own SDK) and checks both the script's
verdict and the figures it wrote. Timing is reported by the scripts, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, args: list[str], tmp_path: Path, timeout: float) -> dict[str, Any]:
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    print(proc.stdout)
    assert out.exists(), f"{script} wrote no result (exit {proc.returncode}):\n{proc.stderr}"
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["returncode"] = proc.returncode
    doc["stderr"] = proc.stderr
    return doc


def test_soak_every_future_resolves_and_nothing_is_left(tmp_path: Path) -> None:
    """20,000 always-on traced tasks in windows of 2,000: all resolve; RSS growth from 10%
    to the end < 50 MB; fds and threads back to their starting counts; no executor,
    future, task record or span object left once the pool is gone."""
    # --timeout: the script dumps its stacks and exits before this test's own timeout.
    doc = _run(
        "soak.py", ["--tasks", "20000", "--window", "2000", "--timeout", "90"], tmp_path, 100
    )
    r = doc["result"]
    assert r["failures"] == [], r["failures"]
    assert doc["returncode"] == 0, doc["stderr"]
    assert r["tasks"] == 20000 and r["unresolved"] == 0 and r["wrong_results"] == 0
    assert r["rss_growth_mb"] < 50
    assert r["holdings_diff"] == [] and r["provider_holdings_diff"] == []
    assert r["leftovers"] == {} and r["weakrefs_alive"] == []
    assert r["spans_exported"] > 0
    assert r["shutdown_seconds"] < 10  # the emitter is joined for at most 2 s
    ours = [w for w in r["warnings"] if w["logger"] == "tracedpool"]
    assert all(w["count"] == 1 for w in ours), ours


def test_exporter_outage_never_fails_tasks_and_recovers(tmp_path: Path) -> None:
    """The real OTLP/HTTP exporter against a refused port, a server that never answers and
    one that comes back half-way: every task succeeds, memory stays bounded, tracedpool
    warns at most once per kind, pool.shutdown() stays short, spans arrive after the
    recovery (including spans of tasks submitted after it)."""
    doc = _run("outage.py", ["--quick", "--timeout", "90"], tmp_path, 100)
    results = {r["scenario"]: r for r in doc["results"]}
    assert set(results) == {"refused", "blackhole", "recovery"}
    for name, r in results.items():
        assert r["failures"] == [], (name, r["failures"])
        assert r["wrong"] == 0, name
        assert r["rss_growth_mb"] < 50, name
        assert r["pool_shutdown_s"] < 10, name
        assert all(e["count"] == 1 for e in r["logs"] if e["logger"] == "tracedpool"), name
    recovery = results["recovery"]
    assert recovery["received_spans"] > 0 and recovery["received_after_recovery"] > 0
    assert recovery["max_work_id_received"] >= recovery["first_work_id_after_recovery"]
    assert doc["returncode"] == 0, doc["stderr"]
