"""The reasons the stdlib itself gives for a broken pool (3.14+), kept first, and
``terminate_workers()`` / ``kill_workers()`` observed, under every start method that
the stdlib case allows.

Each test runs where the running Python has the feature (tracedpool's own probes in
``_cpython``), and is skipped, saying which CPython change it needs, elsewhere."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import resource
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracedpool import TracedBrokenProcessPool, TracedProcessPoolExecutor
from tracedpool._pool import cpython as _cpython
from tracedpool._telemetry import names as N
from tracedpool.testing import recording_provider, spans_by_task, wait_for

needs_message = pytest.mark.skipif(
    not _cpython.TERMINATE_TAKES_MESSAGE,
    reason="the stdlib's own break messages arrived in 3.14.10 (gh-152967)",
)
needs_force = pytest.mark.skipif(
    not _cpython.HAS_FORCE_SHUTDOWN, reason="terminate_workers()/kill_workers() are 3.14+"
)
# max_tasks_per_child is refused under fork.
REPLACING = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


def wait_for_file(path: str, seconds: float = 60) -> str:
    """A task that waits (bounded) until the test creates *path*, then returns it."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return path


def _retiring_pool(start: str, gate: Path, provider: Any) -> tuple[Any, list[Any]]:
    """One worker that retires after each task, busy in the first of three tasks."""
    pool = TracedProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context(start),
        max_tasks_per_child=1,
        tracer_provider=provider,
        stall_timeout=None,
    )
    futures = [pool.submit(wait_for_file, str(gate)) for _ in range(3)]
    return pool, futures


def _task_spans(exporter: Any, count: int) -> dict[str, list[Any]]:
    def task_spans() -> dict[str, list[Any]]:
        return {
            tid: spans
            for tid, spans in spans_by_task(exporter.get_finished_spans()).items()
            if any(s.name == N.SPAN_TASK for s in spans)
        }

    assert wait_for(lambda: len(task_spans()) >= count, 30), task_spans()
    return task_spans()


def _broken_event(spans: list[Any]) -> dict[str, Any]:
    task = next(s for s in spans if s.name == N.SPAN_TASK)
    events = [e for e in task.events if e.name == N.EVENT_POOL_BROKEN]
    assert len(events) == 1, [e.name for e in task.events]
    return dict(events[0].attributes)


@needs_message
@pytest.mark.parametrize("start", REPLACING)
def test_collected_executor_keeps_the_stdlib_sentence(start: str, tmp_path: Path) -> None:
    """The executor collected with work pending after its last worker retired: the
    stdlib's "garbage collected" sentence leads, and the reason is executor-collected."""
    provider, exporter = recording_provider()
    gate = tmp_path / "gate"
    pool, futures = _retiring_pool(start, gate, provider)
    manager = pool._executor_manager_thread  # type: ignore[attr-defined]
    ref = weakref.ref(pool)
    del pool
    assert wait_for(lambda: gc.collect() >= 0 and ref() is None, 30), "pool not collected"
    gate.touch()
    try:
        assert futures[0].result(timeout=60) == str(gate)
        for future in futures[1:]:
            with pytest.raises(TracedBrokenProcessPool) as info:
                future.result(timeout=60)
            message = str(info.value)
            assert message.startswith("The ProcessPoolExecutor was garbage collected"), message
            assert info.value.reason == "executor-collected"
            assert "[tracedpool]" in message and "Keep a reference" in message
        spans = _task_spans(exporter, 3)
        reasons = sorted(
            _broken_event(s)[N.ATTR_BROKEN_REASON]
            for s in spans.values()
            if any(e.name == N.EVENT_POOL_BROKEN for t in s for e in t.events)
        )
        assert reasons == ["executor-collected", "executor-collected"]
    finally:
        manager.join(timeout=30)


@contextlib.contextmanager
def no_new_descriptors() -> Iterator[None]:
    """Until exit, this process can open no file: the lowest free descriptor numbers are
    filled, and RLIMIT_NOFILE is lowered to just above them. Real, and process-wide."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            held.append(fd)
            if all(n in held or _is_open(n) for n in range(fd + 1)):
                break  # no hole below: the next open would take fd + 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (held[-1] + 1, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in held:
            os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@needs_message
@pytest.mark.parametrize("start", REPLACING)
def test_replacement_that_cannot_start_keeps_the_stdlib_sentence(
    start: str, tmp_path: Path
) -> None:
    """A replacement worker that cannot start (here: the process may open no more files)
    breaks the pool with the stdlib's "could not be started", the error as the cause."""
    provider, exporter = recording_provider()
    gate = tmp_path / "gate"
    ready = tmp_path / "ready"
    ready.touch()
    pool, futures = _retiring_pool(start, gate, provider)
    try:
        assert wait_for(futures[0].running, 30)
        with no_new_descriptors():
            ready.rename(gate)  # opens nothing
            assert wait_for(futures[1].done, 60)
        assert futures[0].result(timeout=60) == str(gate)
        for future in futures[1:]:
            with pytest.raises(TracedBrokenProcessPool) as info:
                future.result(timeout=60)
            message = str(info.value)
            assert message.startswith("A replacement worker process could not be started")
            assert info.value.reason == "replacement-failed"
            assert "Too many open files" in str(info.value.__cause__)
            assert "result pipe" not in message and "No dead worker" not in message
    finally:
        pool.shutdown(wait=True)
    spans = _task_spans(exporter, 3)
    broken = [
        s for s in spans.values() if any(e.name == N.EVENT_POOL_BROKEN for t in s for e in t.events)
    ]
    assert [_broken_event(s)[N.ATTR_BROKEN_REASON] for s in broken] == ["replacement-failed"] * 2


@pytest.mark.skipif(
    not _cpython.LISTS_EXIT_CODES, reason="the exit-code listing is 3.15's (gh-139462)"
)
def test_exit_code_listing_is_kept(start_method: str) -> None:
    """3.15 lists the nonzero exit codes of the workers as the cause: still there."""
    with TracedProcessPoolExecutor(1, mp_context=multiprocessing.get_context(start_method)) as pool:
        future = pool.submit(os._exit, 99)
        with pytest.raises(TracedBrokenProcessPool) as info:
            future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, _cpython.RemoteTraceback)
    assert "terminated abruptly with exit code 99" in str(cause), str(cause)
    assert info.value.exitcode == 99


@needs_force
@pytest.mark.parametrize("operation", ["terminate", "kill"])
def test_force_shutdown_is_an_event_on_every_lost_task(
    operation: str, start_method: str, tmp_path: Path
) -> None:
    """terminate_workers()/kill_workers(): each task it leaves unfinished, running or
    queued, ends with a workers-signalled event naming the workers and the lost tasks;
    the running task's break says forced-shutdown, not an OOM kill."""
    provider, exporter = recording_provider()
    gate = tmp_path / "never"
    pool = TracedProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context(start_method),
        tracer_provider=provider,
        stall_timeout=None,
    )
    running = pool.submit(wait_for_file, str(gate))
    queued = [pool.submit(wait_for_file, str(gate)) for _ in range(2)]
    assert wait_for(running.running, 30)
    pids = tuple(pool._processes)  # type: ignore[attr-defined]
    getattr(pool, f"{operation}_workers")()
    with pytest.raises(TracedBrokenProcessPool) as info:
        running.result(timeout=60)
    signal_name = {"terminate": "SIGTERM", "kill": "SIGKILL"}[operation]
    assert info.value.reason == "forced-shutdown", str(info.value)
    assert info.value.oom_suspected is False
    assert f"{operation}_workers() sent {signal_name}" in str(info.value)
    for future in queued:
        assert wait_for(future.done, 30)
        assert future.cancelled() or isinstance(future.exception(), TracedBrokenProcessPool)
    pool.shutdown(wait=True)

    spans = _task_spans(exporter, 3)
    assert len(spans) == 3
    lost = tuple(sorted(spans))
    for tid, task_spans in spans.items():
        task = next(s for s in task_spans if s.name == N.SPAN_TASK)
        events = [e for e in task.events if e.name == N.EVENT_WORKERS_SIGNALLED]
        assert len(events) == 1, (tid, [e.name for e in task.events])
        attrs = dict(events[0].attributes)
        assert attrs[N.ATTR_FORCED_OPERATION] == operation
        assert attrs[N.ATTR_WORKER_SIGNAL] == signal_name
        assert tuple(attrs[N.ATTR_FORCED_PIDS]) == pids
        assert tuple(sorted(attrs[N.ATTR_BROKEN_LOST])) == lost
        assert task.end_time >= events[0].timestamp


@needs_force
def test_force_shutdown_of_an_idle_pool_records_nothing(start_method: str) -> None:
    """No task lost, no event: finished tasks' spans are untouched."""
    provider, exporter = recording_provider()
    pool = TracedProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context(start_method), tracer_provider=provider
    )
    assert pool.submit(abs, -3).result(timeout=60) == 3
    pool.kill_workers()
    pool.shutdown(wait=True)
    spans = _task_spans(exporter, 1)
    (task_spans,) = spans.values()
    assert [e.name for s in task_spans for e in s.events] == []
