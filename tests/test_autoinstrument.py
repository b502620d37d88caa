"""End to end: ``opentelemetry-instrument`` on an unmodified app traces its stdlib pool
through tracedpool's entry point, once per task and stage, under fork, spawn and
forkserver (where auto-instrumentation runs again in every worker)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tracedpool._telemetry import names as N

APP = Path(__file__).parent / "apps" / "plain_pool_app.py"
LOGGING_APP = Path(__file__).parent / "apps" / "logging_pool_app.py"
TASKS = 6


def _instrument_command() -> str | None:
    if not any(
        ep.name == N.INSTRUMENTOR_NAME for ep in entry_points(group="opentelemetry_instrumentor")
    ):
        return None
    local = Path(sys.executable).parent / "opentelemetry-instrument"
    return str(local) if local.exists() else shutil.which("opentelemetry-instrument")


COMMAND = _instrument_command()
needs_command = pytest.mark.skipif(
    COMMAND is None,
    reason="needs tracedpool installed with its entry point and opentelemetry-distro "
    "(pip install -e '.[test]')",
)


def _run(start_method: str, app: Path = APP, **env: str) -> tuple[list[dict[str, Any]], str]:
    """Run the app under opentelemetry-instrument; the spans the console exporters of
    every process printed, and stderr."""
    assert COMMAND is not None
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    full_env.update(
        OTEL_SERVICE_NAME="plain-app",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        TRACEDPOOL_STALL_TIMEOUT="none",
        PYTHONPATH="",
    )
    full_env.update(env)
    proc = subprocess.run(
        [COMMAND, sys.executable, str(app), start_method, str(TASKS)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"RESULTS {[x * x for x in range(TASKS)]}" in proc.stderr
    decoder = json.JSONDecoder()
    spans, text, i = [], proc.stdout, 0
    while True:
        i = text.find("{", i)
        if i < 0:
            break
        span, i = decoder.raw_decode(text, i)
        spans.append(span)
    return spans, proc.stderr


@needs_command
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_opentelemetry_instrument_traces_an_unmodified_app_once(start_method: str) -> None:
    """Every task has exactly one span of each stage and one of its own inner span, all
    in one trace under its task span; nothing is exported twice by a worker."""
    spans, stderr = _run(start_method)
    ids = [s["context"]["span_id"] for s in spans]
    assert len(ids) == len(set(ids)), "a span was exported twice"
    tasks = [s for s in spans if s["name"] == N.SPAN_TASK]
    assert len(tasks) == TASKS, stderr
    by_task: dict[str, collections.Counter[str]] = {}
    task_span_ids = {s["context"]["span_id"]: s["attributes"][N.ATTR_TASK_ID] for s in tasks}
    worker_runs = {}
    for s in spans:
        tid = s["attributes"].get(N.ATTR_TASK_ID)
        if tid is not None:
            by_task.setdefault(tid, collections.Counter())[s["name"]] += 1
            if s["name"] == N.SPAN_WORKER_RUN:
                worker_runs[s["context"]["span_id"]] = tid
                assert s["parent_id"] in task_span_ids
    expected = {
        N.SPAN_TASK: 1,
        N.SPAN_SUBMIT: 1,
        N.SPAN_ENQUEUE: 1,
        N.SPAN_FEEDER_SERIALIZE: 1,
        N.SPAN_WORKER_RUN: 1,
        N.SPAN_SENDBACK: 1,
    }
    assert len(by_task) == TASKS
    for tid, counts in by_task.items():
        assert dict(counts) == expected, tid
    inner = [s for s in spans if s["name"] == "app.inner"]
    assert len(inner) == TASKS
    assert sorted(worker_runs[s["parent_id"]] for s in inner) == sorted(by_task)
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"plain-app"}


@needs_command
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_opentelemetry_instrument_captures_worker_logs(start_method: str) -> None:
    """An unmodified app's task warnings reach its parent's handler once each, with the
    task id and the trace of that task's spans; no worker writes one itself."""
    spans, stderr = _run(start_method, LOGGING_APP)
    lines = [line for line in stderr.splitlines() if line.startswith("LOG ")]
    assert len(lines) == TASKS, stderr
    run_traces = {
        s["attributes"][N.ATTR_TASK_ID]: s["context"]["trace_id"].removeprefix("0x")
        for s in spans
        if s["name"] == N.SPAN_WORKER_RUN
    }
    pids = set()
    for x in range(TASKS):
        (line,) = [line for line in lines if line.endswith(f" working on {x}")]
        fields = dict(f.split("=", 1) for f in line.split()[2:5])
        assert fields["task"] in run_traces, line
        assert fields["trace"] == run_traces[fields["task"]], line
        pids.add(fields["pid"])
    assert str(os.getpid()) not in pids


@needs_command
def test_disabled_by_its_entry_point_name() -> None:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tracedpool leaves the pool untraced (and
    working): no tracedpool span at all."""
    spans, _ = _run("fork", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=N.INSTRUMENTOR_NAME)
    assert not [s for s in spans if s["name"].startswith("tracedpool.")]


@needs_command
def test_a_bad_variable_is_logged_and_the_app_still_runs() -> None:
    """A bad TRACEDPOOL_* variable never stops the app: logged, pools untraced."""
    spans, stderr = _run("fork", TRACEDPOOL_STALL_ACTION="explode")
    assert "not instrumenting ProcessPoolExecutor" in stderr
    assert not [s for s in spans if s["name"].startswith("tracedpool.")]


def test_instrumentor_api_in_process(recorder: Any, caplog: Any) -> None:
    """TracedPoolInstrumentor().instrument(tracer_provider=...) traces stdlib pools,
    ignores keywords it does not know, and uninstrument() restores the stdlib."""
    pytest.importorskip("opentelemetry.instrumentation.instrumentor")
    import concurrent.futures.process as cfp
    import multiprocessing

    from tracedpool import TracedProcessPoolExecutor, is_instrumented
    from tracedpool.instrumentation import TracedPoolInstrumentor
    from tracedpool.testing import square

    original = cfp.ProcessPoolExecutor.__dict__["__init__"]
    provider, exporter = recorder
    instrumentor = TracedPoolInstrumentor()
    assert instrumentor.instrumentation_dependencies() == ()
    instrumentor.instrument(tracer_provider=provider, some_distro_option=1, stall_timeout=None)
    try:
        assert is_instrumented()
        ctx = multiprocessing.get_context("fork")
        with cfp.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            assert isinstance(pool, TracedProcessPoolExecutor)
            assert pool.submit(square, 6).result(timeout=60) == 36
        assert [s.name for s in exporter.get_finished_spans()].count(N.SPAN_TASK) == 1
    finally:
        instrumentor.uninstrument()
    assert not is_instrumented()
    assert cfp.ProcessPoolExecutor.__dict__["__init__"] is original
