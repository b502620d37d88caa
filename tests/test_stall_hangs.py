"""The hangs the stdlib never reports, each detected by the stall detector with the right
diagnosis and stacks, then broken (stall_action="break") so that nothing waits for ever:
a lock inherited across fork, a worker killed while sending a large result, a dead or
blocked feeder thread, workers gone unnoticed, interpreter exit with a stopped worker,
and snapshots without py-spy or without ptrace."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import faults
import psutil
import pytest
import unprivileged
from faults import (
    INHERITED_LOCK,
    ExitAtPickle,
    SlowToUnpickle,
    big_result,
    exit_leaving_child,
    identity,
    sleep_then,
    take_inherited_lock,
)
from unprivileged import Unprivileged

from tracedpool import PoolStalledError
from tracedpool._diagnosis.stall import wait_channel
from tracedpool.testing import square

TIMEOUT = 1.0
#: The issue's bound is stall_timeout + 1 s; the shared 2-core box can delay a thread
#: by a second more now and then.
SLACK = 1.0
ROOT = Path(__file__).resolve().parent.parent


def _stalled_pool(make_pool: Any, tmp_path: Path, reports: list[Any], **kwargs: Any) -> Any:
    return make_pool(
        1,
        stall_timeout=TIMEOUT,
        stall_report_dir=tmp_path / "reports",
        on_stall=reports.append,
        stall_action="break",
        **kwargs,
    )


def _check_report(report: dict[str, Any], kind: str) -> dict[str, Any]:
    """Detected in time, written, and rendered by `tracedpool report`."""
    assert report["kind"] == kind, report["diagnosis"]
    assert TIMEOUT <= report["stall_seconds"] <= TIMEOUT + 1 + SLACK
    path = Path(report["report_path"])
    on_disk: dict[str, Any] = json.loads(path.read_text())
    assert on_disk["diagnosis"] == report["diagnosis"]
    out = subprocess.run(
        [sys.executable, "-m", "tracedpool", "report", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert f"diagnosis: {report['diagnosis']}" in out.stdout
    return on_disk


def _frames(process: dict[str, Any], role: str | None = None) -> list[dict[str, Any]]:
    return [
        f
        for t in process.get("threads") or []
        if role is None or t.get("role") == role
        for f in t.get("frames") or []
    ]


def _worker(report: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in report["processes"] if p["role"] == "worker")


def _parent(report: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in report["processes"] if p["role"] == "parent")


@pytest.mark.breaks_pool
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_lock_inherited_across_fork_is_worker_blocked(make_pool: Any, tmp_path: Path) -> None:
    """A parent thread holds a lock while the worker is forked; the task takes it and
    blocks for ever: 'worker blocked', the acquire in its stack, then broken."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with INHERITED_LOCK:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    try:
        assert held.wait(10)
        reports: list[dict[str, Any]] = []
        pool = _stalled_pool(make_pool, tmp_path, reports, start="fork")
        future = pool.submit(take_inherited_lock)
        with pytest.raises(PoolStalledError) as info:
            future.result(timeout=60)
    finally:
        release.set()
        thread.join(10)
    (report,) = reports
    on_disk = _check_report(report, "worker-blocked")
    worker = _worker(on_disk)
    assert "take_inherited_lock" in report["diagnosis"]
    assert "INHERITED_LOCK.acquire()" in report["diagnosis"]
    assert report["stuck_pids"] == [worker["pid"]]
    if worker.get("wchan"):  # the kernel names the wait when it can
        assert "futex" in worker["wchan"] and "futex" in report["diagnosis"]
    top = next(f for f in _frames(worker) if f["function"] == "take_inherited_lock")
    assert top["code"] == "INHERITED_LOCK.acquire()"
    assert worker["stack_method"] == "py-spy"
    assert info.value.report_path == report["report_path"]
    assert pool.broken_info.reason == "stalled"


@pytest.mark.breaks_pool
def test_worker_killed_while_sending_large_result(make_pool: Any, tmp_path: Path) -> None:
    """A worker dies mid-send: the manager waits for the rest of the message for ever (the
    stdlib hangs). Reported as the manager blocked reading, naming the dead worker; the
    break completes the read so the future fails with PoolStalledError."""
    reports: list[dict[str, Any]] = []
    pool = _stalled_pool(make_pool, tmp_path, reports)
    release = threading.Event()
    first = pool.submit(sleep_then, 1, 0.3)
    # Holding the manager in a done-callback keeps it from reading: the worker's send of
    # the large result then blocks with part of it in the pipe, ready to be cut short.
    first.add_done_callback(lambda _f: release.wait(30))
    big = pool.submit(big_result, 8 * 2**20)
    try:
        deadline = time.monotonic() + 30
        pid = None
        while time.monotonic() < deadline:
            running = pool.stats()["running"]
            pid = next(iter(running), None)
            if pid is not None and any(t["function"].endswith("big_result") for t in running[pid]):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the large task never started")
        # Blocked in the write (the kernel says so where it can; else give it time).
        started = time.monotonic()
        while time.monotonic() < deadline:
            wchan = wait_channel(pid)
            if "pipe_write" in (wchan or "") or (
                wchan is None and time.monotonic() - started > 0.5
            ):
                break
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    finally:
        release.set()
    with pytest.raises(PoolStalledError):
        big.result(timeout=60)
    assert first.result(timeout=1) == 1
    # The callback may have held the manager long enough for a report of its own first.
    assert {r["kind"] for r in reports[:-1]} <= {"manager-blocked-callback"}
    report = reports[-1]
    on_disk = _check_report(report, "manager-blocked-read")
    assert f"worker pid {pid} died" in report["diagnosis"]
    manager = [f["function"] for f in _frames(_parent(on_disk), "manager")]
    assert "_recv" in manager[:3] and "wait_result_broken_or_wakeup" in manager
    assert _worker(on_disk)["status"] in ("zombie", "dead")


@pytest.mark.breaks_pool
def test_dead_feeder_thread_is_diagnosed(
    make_pool: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracedpool's feeder guard bypassed (an application replaced
    threading.excepthook), a SystemExit in pickling kills the feeder: 'feeder dead'."""
    reports: list[dict[str, Any]] = []
    pool = _stalled_pool(make_pool, tmp_path, reports)
    assert pool.submit(square, 2).result(timeout=60) == 4
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    doomed = pool.submit(identity, ExitAtPickle())
    later = pool.submit(square, 3)
    for future in (doomed, later):
        with pytest.raises(PoolStalledError):
            future.result(timeout=60)
    (report,) = reports
    on_disk = _check_report(report, "feeder-dead")
    assert "feeder thread is dead with 1 call(s) waiting" in report["diagnosis"]
    assert "feeder" not in {t["role"] for t in _parent(on_disk)["threads"]}


@pytest.mark.breaks_pool
def test_blocked_feeder_thread_is_diagnosed(make_pool: Any, tmp_path: Path) -> None:
    """The worker is stuck unpickling one call, so the feeder blocks writing the next,
    large one: 'feeder blocked', naming the worker and where it is stuck."""
    reports: list[dict[str, Any]] = []
    pool = _stalled_pool(make_pool, tmp_path, reports)
    stuck = pool.submit(identity, SlowToUnpickle(60))
    large = pool.submit(identity, bytes(4 * 2**20))
    for future in (stuck, large):
        with pytest.raises(PoolStalledError):
            future.result(timeout=60)
    (report,) = reports
    on_disk = _check_report(report, "feeder-blocked")
    worker = _worker(on_disk)
    assert f"worker pid {worker['pid']} has not started a task" in report["diagnosis"]
    assert "_sleep_on_load" in report["diagnosis"]
    feeder = [f["function"] for f in _frames(_parent(on_disk), "feeder")]
    assert "_send" in feeder[:2]
    assert {t["stage"] for t in on_disk["tasks"]} == {"call-queue"}


@pytest.mark.breaks_pool
# Under forkserver the fork server reports the worker's exit itself, so the stdlib
# notices and this hang cannot happen; under fork and spawn the death signal is a pipe
# that the worker's child inherits.
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_gone_unnoticed_is_no_live_workers(
    make_pool: Any, tmp_path: Path, start: str
) -> None:
    """A worker exits while a child it forked keeps its death signal pipe open: the
    stdlib never notices and waits for ever. 'no live workers', then broken."""
    reports: list[dict[str, Any]] = []
    pool = _stalled_pool(make_pool, tmp_path, reports, start=start)
    pid_file = tmp_path / "child.pid"
    future = pool.submit(exit_leaving_child, str(pid_file), 60)
    try:
        with pytest.raises(PoolStalledError):
            future.result(timeout=60)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    (report,) = reports
    on_disk = _check_report(report, "no-workers")
    worker = _worker(on_disk)
    assert worker["status"] == "zombie"
    assert f"worker pid(s) {worker['pid']} exited" in report["diagnosis"]


_EXIT_SCRIPT = """
import sys, time
import psutil
sys.path[:0] = [{root!r}, {tests!r}]
from tracedpool import TracedProcessPoolExecutor
from faults import stop_self_later

if __name__ == "__main__":  # spawn and forkserver (3.14's default) import this module
    pool = TracedProcessPoolExecutor(
        2, stall_timeout={timeout}, stall_report_dir=sys.argv[2], stall_action=sys.argv[1]
    )
    future = pool.submit(stop_self_later, 0.2)
    pids = [p.pid for p in pool._processes.values()]
    print(" ".join(str(p) for p in pids), flush=True)
    # Not before the task has stopped its worker: from 3.12 on, a program that ends
    # before the feeder thread has started breaks the pool instead (test_exit.py).
    deadline = time.monotonic() + 30
    while all(psutil.Process(p).status() != psutil.STATUS_STOPPED for p in pids):
        if time.monotonic() > deadline:
            sys.exit("no worker stopped within 30 s")
        time.sleep(0.01)
    # The script ends here: interpreter exit waits for the pool, whose worker is stopped.
"""


@pytest.mark.parametrize("action", ["report", "break"])
def test_interpreter_exit_with_stopped_worker_ends(tmp_path: Path, action: str) -> None:
    """A script that exits with a stopped worker ends (bounded), under either action,
    and leaves no worker behind."""
    script = tmp_path / "exit_stopped.py"
    script.write_text(
        _EXIT_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), timeout=TIMEOUT)
    )
    reports = tmp_path / "reports"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script), action, str(reports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
    elapsed = time.monotonic() - t0
    pids = [int(p) for p in out.split()]
    assert pids, err
    assert proc.returncode == 0, err
    assert elapsed < 30
    assert len(list(reports.glob("stall-*.json"))) == 1
    assert "stalled: worker pid" in err
    if action == "report":
        assert "the interpreter is exiting while pool" in err
    for pid in pids:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass


_NOBODY_SCRIPT = """
import json, sys
from tracedpool import TracedProcessPoolExecutor
from faults import make_undumpable, sleep_then

if __name__ == "__main__":  # spawn and forkserver (3.14's default) import this module
    reports = []
    pool = TracedProcessPoolExecutor(
        1,
        initializer=make_undumpable if sys.argv[1] == "undumpable" else None,
        stall_timeout={timeout},
        stall_report_dir=sys.argv[2],
        on_stall=reports.append,
    )
    assert pool.submit(sleep_then, 1, {sleep}).result(timeout=60) == 1
    pool.shutdown()
    print(json.dumps(reports))
"""


@pytest.mark.parametrize("worker", ["undumpable", "plain"])
def test_snapshots_as_unprivileged_user(worker: str, nobody: Unprivileged) -> None:
    """Run as nobody (no CAP_SYS_PTRACE): a worker that refuses ptrace is snapshotted by
    the faulthandler fallback; either way each stack says which method produced it."""
    work = Path(tempfile.mkdtemp(dir=nobody.home))
    try:
        os.chmod(work, 0o755)
        script = work / "nobody.py"
        script.write_text(_NOBODY_SCRIPT.format(timeout=TIMEOUT, sleep=4 * TIMEOUT))
        shutil.copy(faults.__file__, work / "faults.py")  # beside the script: on its path
        reports_dir = work / "reports"
        reports_dir.mkdir()
        os.chown(reports_dir, unprivileged.NOBODY, unprivileged.NOBODY)
        out = subprocess.run(
            [*nobody.argv, str(script), worker, str(reports_dir)],
            capture_output=True, text=True, timeout=120, cwd=work, env=nobody.env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        (report,) = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert report["kind"] == "worker-blocked"
    assert _parent(report)["stack_method"] == "sys._current_frames (in-process)"
    method = _worker(report)["stack_method"]
    if worker == "undumpable":
        assert method.startswith("faulthandler signal dump (py-spy refused"), method
    else:
        assert method == "py-spy" or method.startswith("faulthandler signal dump"), method
    assert "sleep_then" in [f["function"] for f in _frames(_worker(report))]
    assert "sleep_then" in report["diagnosis"]
