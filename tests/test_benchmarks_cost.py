"""benchmarks/cost.py --quick: the honest-cost benchmark runs, reports every row, and no
span is lost where the exporter keeps up. Timing is reported, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = ("sdk", "file", "otlp", "sampled", "no-sdk")
WORKLOADS = (
    "trivial_5k",
    "trivial_20k",
    "trivial_100k",
    "stream",
    "cpu_1ms",
    "sleep_1ms",
    "arg_1mb",
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cost") / "cost.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cost.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=ROOT,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["stdout"] = proc.stdout
    return doc


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_reports_every_mode_and_workload(quick: dict[str, Any]) -> None:
    """Every mode ran in its own process and has every workload, with its round pairs,
    targets and span accounting; the markdown table has a row for each."""
    assert list(quick["modes"]) == list(MODES)
    for mode, result in quick["modes"].items():
        assert isinstance(result, dict), (mode, result)
        assert list(result["workloads"]) == list(WORKLOADS), mode
        for key, raw in result["workloads"].items():
            s = raw["summary"]
            assert len(raw["stdlib"]) == len(raw["traced"]) == s["pairs"] >= 1, (mode, key)
            assert all(r["wrong"] == 0 and r["n"] > 0 for r in raw["stdlib"] + raw["traced"])
            assert s["ratio"] > 0 and s["stdlib_cpu_us"] > 0 and s["traced_cpu_us"] > 0
            assert s["cpu_target"] > 0 and isinstance(s["cpu_met"], bool)
            assert (s["ratio_target"] is None) == (key == "sleep_1ms"), (mode, key)
    table = [ln for ln in quick["stdout"].splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(MODES) * len(WORKLOADS)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_exports_every_span_where_the_exporter_keeps_up(
    quick: dict[str, Any],
) -> None:
    """Always-on modes: each task's six spans all reach the exporter (counted there, or
    read back from the trace file and from the receiver) inside the clock; nothing is
    dropped by the SDK's queue or tracedpool's emitter; the drop hooks were installed."""
    for mode in ("sdk", "file", "otlp"):
        result = quick["modes"][mode]
        assert result["bsp_drop_hooks"] >= 1, mode  # or "0 dropped" would prove nothing
        for key, raw in result["workloads"].items():
            for rnd, spans in zip(raw["traced"], raw["spans"], strict=True):
                expected = rnd["n"] * 6
                assert spans["expected_task_spans"] == expected, (mode, key)
                assert spans["task_spans_in_clock"] == expected, (mode, key, spans)
                assert spans["found_task_spans"] == expected, (mode, key, spans)
                assert spans["bsp_dropped"] == 0 and spans["emitter_dropped_records"] == 0
            if mode != "sdk":
                assert raw["summary"]["wake_spans"] > 0, (mode, key)
    for key, raw in quick["modes"]["sampled"]["workloads"].items():
        for spans in raw["spans"]:
            # 1%: whole tasks or nothing (6 spans each), none dropped
            assert spans["found_task_spans"] % 6 == 0, key
            assert spans["bsp_dropped"] == 0 and spans["emitter_dropped_records"] == 0
