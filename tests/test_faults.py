"""The fault table, under fork, spawn and forkserver: each fault gives the stdlib's
exception type, located (stage and target) in the exception and as span events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faults import FaultCase, fault_table

import tracedpool
from tracedpool import TracedBrokenProcessPool
from tracedpool._telemetry import names as N
from tracedpool.testing import assert_pool_healthy, spans_by_task

TESTS = Path(__file__).resolve().parent  # where faults.py is

CASES = fault_table()


def _event_with(spans: list[Any], event_name: str, attrs: dict[str, Any]) -> tuple[Any, Any]:
    for span in spans:
        for event in span.events:
            if event.name == event_name and all(
                event.attributes.get(k) == v for k, v in attrs.items()
            ):
                return span, event
    shown = [(s.name, e.name, dict(e.attributes)) for s in spans for e in s.events]
    raise AssertionError(f"no {event_name!r} event with {attrs}; events: {shown}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_located_in_exception_and_spans(
    case: FaultCase,
    start_method: str,
    make_pool: Any,
    recorder: Any,
    request: pytest.FixtureRequest,
) -> None:
    """Each fault raises the stdlib's exception type and names its stage and target."""
    if case.breaks_pool:
        request.applymarker(pytest.mark.breaks_pool)
    provider, exporter = recorder
    pool = make_pool(2, start=start_method, tracer_provider=provider)
    future = pool.submit(case.fn, *case.args, **case.kwargs)
    with pytest.raises(case.exception) as info:
        future.result(timeout=60)
    exc = info.value

    if case.breaks_pool:
        assert isinstance(exc, TracedBrokenProcessPool)
        assert exc.reason == case.reason, str(exc)
        assert exc.task_role == "culprit", str(exc)
        if N.ATTR_WORKER_SIGNAL in case.attrs:
            assert exc.signal == case.attrs[N.ATTR_WORKER_SIGNAL]
            assert exc.worker_pid is not None and str(exc.worker_pid) in str(exc)
        if N.ATTR_WORKER_EXITCODE in case.attrs:
            assert exc.exitcode == case.attrs[N.ATTR_WORKER_EXITCODE]
        if N.ATTR_FAULT_TARGET in case.attrs:
            assert exc.fault is not None and exc.fault["target"] == case.attrs[N.ATTR_FAULT_TARGET]
            assert case.attrs[N.ATTR_FAULT_TARGET] in str(exc)
    else:
        located = getattr(exc, "__tracedpool_fault__", None)
        assert located is not None, f"fault not located on {exc!r}"
        assert (located[0], located[1]) == (
            case.attrs[N.ATTR_FAULT_STAGE],
            case.attrs[N.ATTR_FAULT_TARGET],
        )
        notes = getattr(exc, "__notes__", None)
        if hasattr(exc, "add_note"):
            assert notes and case.attrs[N.ATTR_FAULT_TARGET] in notes[-1]
        # The public accessor, on every version: the same facts and sentence.
        fault = tracedpool.pickling_fault(exc)
        assert fault is not None and (fault.stage, fault.target) == located[:2]
        if notes:
            assert notes[-1] == f"tracedpool: {fault}"

    if not case.breaks_pool:
        assert_pool_healthy(pool)
    pool.shutdown(wait=True)
    spans = spans_by_task(exporter.get_finished_spans())
    task_spans = spans[f"{pool.pool_id}:0"]
    if case.breaks_pool:
        broken_attrs = {N.ATTR_BROKEN_REASON: case.reason}
        if N.ATTR_WORKER_SIGNAL in case.attrs or N.ATTR_WORKER_EXITCODE in case.attrs:
            broken_attrs.update(case.attrs)
        span, _ = _event_with(task_spans, N.EVENT_POOL_BROKEN, broken_attrs)
        assert span.name == N.SPAN_TASK
    if N.ATTR_FAULT_STAGE in case.attrs:
        span, _ = _event_with(task_spans, N.EVENT_EXCEPTION, case.attrs)
        expected_span = {
            "feeder-serialize": N.SPAN_FEEDER_SERIALIZE,
            "worker-unpickle": N.SPAN_WORKER_RUN,
            "sendback": N.SPAN_SENDBACK,
            "result-unpickle": N.SPAN_TASK,
        }[case.attrs[N.ATTR_FAULT_STAGE]]
        assert span.name == expected_span
        assert span.status.status_code.name == "ERROR"
        # ...and no other span claims the fault for another stage.
        stages = {
            (ev.attributes or {}).get(N.ATTR_FAULT_STAGE)
            for s in task_spans
            for ev in s.events
            if ev.name == N.EVENT_EXCEPTION
        }
        assert stages - {None} == {case.attrs[N.ATTR_FAULT_STAGE]}


_CRASH_SCRIPT = """
import ctypes, multiprocessing, sys
from tracedpool import TracedProcessPoolExecutor
from faults import segfault

with TracedProcessPoolExecutor(1, mp_context=multiprocessing.get_context(sys.argv[2])) as pool:
    if sys.argv[1] == "deliberate":
        future = pool.submit(segfault)
    else:
        future = pool.submit(ctypes.string_at, 0)  # reads address 0
    print(future.exception(timeout=60).signal)
"""


@pytest.mark.parametrize("crash", ["deliberate", "genuine"])
def test_only_a_deliberate_crash_is_quiet(crash: str, start_method: str) -> None:
    """With faulthandler on in every process, the segfault injector's worker prints no
    "Fatal Python error" stacks; a worker that really crashes still prints them."""
    out = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, crash, start_method],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(TESTS)},
    )
    assert (out.returncode, out.stdout.strip()) == (0, "SIGSEGV"), out.stderr
    if crash == "deliberate":
        assert "Fatal Python error" not in out.stderr, out.stderr
    else:
        assert "Fatal Python error: Segmentation fault" in out.stderr, out.stderr
        assert "string_at" in out.stderr


def test_the_installed_package_ships_no_fault_injector() -> None:
    """tracedpool.testing offers what users need in their own tests; the injectors that
    crash, kill or stop a process live here in tests/ and nothing installed imports them."""
    import tracedpool.testing

    assert set(tracedpool.testing.__all__) == {
        "OtlpReceiver",
        "assert_pool_healthy",
        "otlp_json_line",
        "recording_provider",
        "spans_by_task",
        "square",
        "wait_for",
    }
    for name in ("segfault", "kill_self", "make_undumpable", "exit_with", "fault_table"):
        assert not hasattr(tracedpool.testing, name), name
