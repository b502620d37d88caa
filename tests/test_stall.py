"""The stall detector: real stuck workers and threads, a report, and no false alarms."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from faults import busy, sleep_then, stop_self_later

from tracedpool import PoolStalledError, TracedProcessPoolExecutor
from tracedpool._telemetry import names as N
from tracedpool.testing import square, wait_for

TIMEOUT = 1.0


@pytest.mark.breaks_pool
def test_stopped_worker_is_reported_then_broken(
    make_pool: Any, tmp_path: Path, recorder: Any
) -> None:
    """A SIGSTOPped worker: one report naming the pid, private files, a stall span; with
    stall_action='break' the future fails with PoolStalledError instead of hanging."""
    provider, exporter = recorder
    reports: list[dict[str, Any]] = []
    pool = make_pool(
        2,
        tracer_provider=provider,
        stall_timeout=TIMEOUT,
        stall_report_dir=tmp_path / "reports",
        on_stall=reports.append,
        stall_action="break",
    )
    future = pool.submit(stop_self_later, 0.2)
    with pytest.raises(PoolStalledError) as info:
        future.result(timeout=60)
    assert len(reports) == 1
    report = reports[0]
    assert report["kind"] == "worker-stopped"
    stopped_pid = report["stuck_pids"][0]
    assert f"worker pid {stopped_pid} is stopped" in report["diagnosis"]
    assert report["diagnosis"] in str(info.value) and info.value.report_path
    path = Path(report["report_path"])
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == "tracedpool.stall-report/1"
    assert {"diagnosis", "detected_at", "stall_seconds", "pool", "tasks", "processes"} <= set(
        on_disk
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.with_suffix(".txt").exists()
    roles = {p["role"] for p in on_disk["processes"]}
    assert roles == {"parent", "worker"}
    parent = next(p for p in on_disk["processes"] if p["role"] == "parent")
    assert {"manager", "main"} <= {t["role"] for t in parent["threads"]}
    task = on_disk["tasks"][0]
    assert task["function"] == "faults.stop_self_later"
    assert task["worker_pid"] == stopped_pid and task["stage"] == "worker-run"
    pool.shutdown(wait=True)  # never hangs on the stopped (now killed) worker
    spans = exporter.get_finished_spans()
    (stall_span,) = [s for s in spans if s.name == N.SPAN_STALL]
    assert stall_span.attributes[N.ATTR_STALL_KIND] == "worker-stopped"
    task_span = next(s for s in spans if s.name == N.SPAN_TASK)
    assert [e.name for e in task_span.events if e.name == N.EVENT_STALL] == [N.EVENT_STALL]
    assert {link.context.span_id for link in stall_span.links} == {task_span.context.span_id}


def test_blocked_worker_is_diagnosed_with_its_frame(make_pool: Any, tmp_path: Path) -> None:
    """A worker alive with no CPU progress (a long sleep): reported with its stack."""
    reports: list[dict[str, Any]] = []
    pool = make_pool(1, stall_timeout=TIMEOUT, stall_report_dir=tmp_path, on_stall=reports.append)
    future = pool.submit(sleep_then, "late", 4 * TIMEOUT)
    assert future.result(timeout=60) == "late"  # report only: the task is left alone
    assert len(reports) == 1
    report = reports[0]
    assert report["kind"] == "worker-blocked"
    assert "sleep_then" in report["diagnosis"]
    worker = next(p for p in report["processes"] if p["role"] == "worker")
    assert worker["threads"], worker["stack_method"]
    assert pool.stats()["stalls_reported"] == 1


def test_done_callback_blocking_the_manager_is_diagnosed(make_pool: Any, tmp_path: Path) -> None:
    """A done-callback that blocks runs on the manager thread: named as the culprit."""
    reports: list[dict[str, Any]] = []
    pool = make_pool(1, stall_timeout=TIMEOUT, stall_report_dir=tmp_path, on_stall=reports.append)
    release = threading.Event()

    def blocking_callback(_future: Any) -> None:
        release.wait(30)

    first = pool.submit(sleep_then, 4, 0.3)  # still running when the callback is added
    first.add_done_callback(blocking_callback)
    second = pool.submit(square, 3)
    assert wait_for(lambda: reports)
    release.set()
    assert second.result(timeout=60) == 9
    assert reports[0]["kind"] == "manager-blocked-callback"
    assert "blocking_callback" in reports[0]["diagnosis"]


def test_busy_task_is_slow_not_stuck(make_pool: Any, tmp_path: Path, recorder: Any) -> None:
    """A task burning CPU for 3x the timeout is not a stall (its span gets one slow-task
    event instead), and an idle pool is not either."""
    provider, exporter = recorder
    reports: list[dict[str, Any]] = []
    pool = make_pool(
        1,
        tracer_provider=provider,
        stall_timeout=TIMEOUT,
        stall_report_dir=tmp_path,
        on_stall=reports.append,
    )
    assert pool.submit(busy, 3 * TIMEOUT).result(timeout=60) > 0
    quick = pool.submit(square, 4)
    assert quick.result(timeout=60) == 16
    time.sleep(2 * TIMEOUT)  # idle, nothing pending
    assert reports == []
    assert pool.stats()["pending"] == 0
    assert list(tmp_path.iterdir()) == []
    pool.shutdown(wait=True)
    tasks = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    slow = {
        s.attributes[N.ATTR_TASK_ID]: [e for e in s.events if e.name == N.EVENT_SLOW_TASK]
        for s in tasks
    }
    busy_id, quick_id = sorted(slow)  # task ids are the pool id and a rising work id
    (event,) = slow[busy_id]
    assert TIMEOUT <= event.attributes[N.ATTR_SLOW_TASK_SECONDS] < 3 * TIMEOUT
    assert event.attributes[N.ATTR_WORKER_PID] > 0
    assert slow[quick_id] == []
    assert not [s for s in exporter.get_finished_spans() if s.name == N.SPAN_STALL]


def test_unwritable_report_dir_keeps_the_pool_working(
    make_pool: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A report directory that cannot be written: the pool works, the report is logged."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    reports: list[dict[str, Any]] = []
    pool = make_pool(
        1, stall_timeout=TIMEOUT, stall_report_dir=blocker / "sub", on_stall=reports.append
    )
    with caplog.at_level("WARNING", logger="tracedpool"):
        assert pool.submit(sleep_then, 1, 3 * TIMEOUT).result(timeout=60) == 1
    assert reports and reports[0]["report_path"] is None
    assert any("could not write the stall report" in r.getMessage() for r in caplog.records)


def test_symlink_report_dir_is_refused(make_pool: Any, tmp_path: Path) -> None:
    """A symlink planted as the report directory is not followed."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "reports"
    link.symlink_to(target)
    reports: list[dict[str, Any]] = []
    pool = make_pool(1, stall_timeout=TIMEOUT, stall_report_dir=link, on_stall=reports.append)
    assert pool.submit(sleep_then, 1, 3 * TIMEOUT).result(timeout=60) == 1
    assert reports and reports[0]["report_path"] is None
    assert list(target.iterdir()) == []


def test_stats_shows_running_tasks_per_worker(make_pool: Any) -> None:
    """stats(): pending and running tasks per worker pid, with ids and ages."""
    pool = make_pool(1, stall_timeout=None)
    future = pool.submit(sleep_then, 1, 1.0)
    assert wait_for(lambda: pool.stats()["running"])
    stats = pool.stats()
    ((pid, tasks),) = stats["running"].items()
    assert tasks[0]["id"].startswith(pool.pool_id) and tasks[0]["age_seconds"] >= 0
    assert stats["pending"] == 1 and stats["live_workers"] == 1
    assert future.result(timeout=60) == 1
    assert pid in pool._processes  # type: ignore[attr-defined]


def test_stats_asks_the_os_nothing(make_pool: Any, monkeypatch: Any) -> None:
    """stats() is cheap enough to poll: it never builds the stall report's process facts
    (psutil, for every worker); a stall report still does."""
    from tracedpool._pool import views

    def refuse(pid: int, role: str) -> Any:
        raise AssertionError("stats() asked psutil")

    pool = make_pool(2, stall_timeout=None)
    assert pool.submit(sleep_then, 1, 0.0).result(timeout=60) == 1
    monkeypatch.setattr(views, "_process_facts", refuse)
    stats = pool.stats()
    # Under fork every worker starts with the first task; under spawn and forkserver
    # (3.14's default) the stdlib starts them as work needs them.
    live = [p for p in pool._processes.values() if p.exitcode is None]  # type: ignore[attr-defined]
    assert stats["live_workers"] == len(live) >= 1 and stats["pending"] == 0
    assert stats["span_records_dropped"] == 0
    assert stats["task_records_dropped"] == stats["wake_records_dropped"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"stall_timeout": 0}, "stall_timeout must be greater than 0"),
        ({"stall_timeout": "soon"}, "stall_timeout must be a number"),
        ({"stall_action": "panic"}, "stall_action must be one of"),
        ({"on_stall": 3}, "on_stall must be a callable"),
        ({"stall_report_dir": 3}, "stall_report_dir must be a path"),
    ],
)
def test_bad_stall_options_raise(kwargs: dict[str, Any], error: str) -> None:
    """Bad stall options raise at construction, naming the rule."""
    with pytest.raises((TypeError, ValueError), match=error):
        TracedProcessPoolExecutor(1, **kwargs)


def test_stall_timeout_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACEDPOOL_STALL_TIMEOUT sets the default; 'none' disables; junk is an error."""
    monkeypatch.setenv("TRACEDPOOL_STALL_TIMEOUT", "none")
    with TracedProcessPoolExecutor(1) as pool:
        assert pool._tp_state.watcher is None  # type: ignore[attr-defined]
    monkeypatch.setenv("TRACEDPOOL_STALL_TIMEOUT", "12.5")
    with TracedProcessPoolExecutor(1) as pool:
        assert pool._tp_state.watcher.timeout == 12.5  # type: ignore[attr-defined]
    monkeypatch.setenv("TRACEDPOOL_STALL_TIMEOUT", "later")
    with pytest.raises(ValueError, match="TRACEDPOOL_STALL_TIMEOUT"):
        TracedProcessPoolExecutor(1)


def test_snapshots_fall_back_without_py_spy(
    make_pool: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With py-spy turned off (TRACEDPOOL_PY_SPY=off), workers' stacks come from the
    faulthandler dump each worker installed at start, and the report says so; still one
    report per episode."""
    monkeypatch.setenv(N.ENV_PY_SPY, "off")
    reports: list[dict[str, Any]] = []
    pool = make_pool(1, stall_timeout=TIMEOUT, stall_report_dir=tmp_path, on_stall=reports.append)
    assert pool.submit(sleep_then, 1, 4 * TIMEOUT).result(timeout=60) == 1
    assert len(reports) == 1
    worker = next(p for p in reports[0]["processes"] if p["role"] == "worker")
    assert worker["stack_method"].startswith("faulthandler signal dump")
    frames = [f["function"] for t in worker["threads"] for f in t["frames"]]
    assert "sleep_then" in frames
    assert "sleep_then" in reports[0]["diagnosis"]


def test_report_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the newest KEEP_REPORTS reports (JSON and text) are kept."""
    from tracedpool._diagnosis import stall as _stall

    monkeypatch.setattr(_stall, "KEEP_REPORTS", 3)
    report = {"schema": _stall.SCHEMA, "diagnosis": "d", "pool": {"id": "p"}, "processes": []}
    paths = [_stall.write_report(report, tmp_path) for _ in range(5)]
    assert sorted(tmp_path.glob("*.json")) == sorted(paths[-3:])
    assert len(list(tmp_path.glob("*.txt"))) == 3


def test_a_worker_held_by_a_debugger_is_reported_as_stopped(make_pool: Any, tmp_path: Path) -> None:
    """A worker in ptrace's tracing-stop (a debugger attached) is "worker-stopped", as
    `doctor --pid` calls it, not a worker merely blocked; detached, its task completes."""
    import ctypes
    import os

    import psutil
    from faults import getpid

    reports: list[dict[str, Any]] = []
    pool = make_pool(
        1, stall_timeout=TIMEOUT, stall_report_dir=tmp_path / "r", on_stall=reports.append
    )
    pid = pool.submit(getpid).result(timeout=60)
    future = pool.submit(sleep_then, "done", 2.0)
    libc = ctypes.CDLL(None, use_errno=True)
    ptrace = libc.ptrace
    ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        pytest.skip(f"ptrace not permitted here: {os.strerror(ctypes.get_errno())}")
    try:
        assert wait_for(lambda: psutil.Process(pid).status() == "tracing-stop", 10)
        assert wait_for(lambda: reports, 30)
    finally:
        ptrace(17, pid, None, None)  # PTRACE_DETACH, from the attaching thread
    assert reports[0]["kind"] == "worker-stopped", reports[0]["diagnosis"]
    worker = next(p for p in reports[0]["processes"] if p["role"] == "worker")
    assert worker["status"] == "stopped"
    assert future.result(timeout=60) == "done"
