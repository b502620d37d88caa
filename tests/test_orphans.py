"""No worker outlives its pool's owner: the owner (a real separate process,
tests/apps/orphan_parent.py) is SIGKILLed, as the OOM killer does, and every worker must
be gone within 5 s, under each start method, idle, busy, stopped or holding the GIL.
Every process a test starts is SIGKILLed in a ``finally`` if it is still there."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tracedpool import TracedProcessPoolExecutor
from tracedpool._worker import lifeline as _lifeline

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the guarantee is made on Linux"
)

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "orphan_parent.py"
START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
GRACE = 5.0  # seconds the workers have to go once their owner is killed


class Owner:
    """One run of the owner app; remembers its workers so that none can leak."""

    def __init__(self, method: str, scenario: str, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
        env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), method, scenario, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.workers: list[psutil.Process] = []
        self.stderr = ""

    def started(self, timeout: float = 60.0) -> dict[str, Any]:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            raise AssertionError(f"the owner printed nothing in {timeout:g} s")
        facts: dict[str, Any] = json.loads(line[0])
        self.workers = [psutil.Process(pid) for pid in facts["workers"]]
        return facts

    def kill_and_wait(self) -> tuple[list[psutil.Process], float]:
        """SIGKILL the owner; the workers still alive after GRACE s, and how long the
        last one took to go."""
        self.proc.kill()
        t0 = time.monotonic()
        self.proc.wait(10)
        alive = self.workers
        while alive and time.monotonic() - t0 < GRACE:
            time.sleep(0.02)
            alive = [p for p in alive if _alive(p)]
        return alive, time.monotonic() - t0

    def cleanup(self) -> None:
        for p in self.workers:
            if _alive(p):
                p.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                if stream is self.proc.stderr:
                    self.stderr = stream.read()
                stream.close()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def owner() -> Iterator[Any]:
    made: list[Owner] = []

    def make(method: str, scenario: str, *extra: str) -> Owner:
        run = Owner(method, scenario, *extra)
        made.append(run)
        return run

    yield make
    for run in made:
        run.cleanup()


SCENARIOS = ["idle", "busy", "spin", "native", "stopped", "thread", "thread-native"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", START_METHODS)
def test_no_worker_outlives_its_killed_owner(owner: Any, method: str, scenario: str) -> None:
    """SIGKILL the owner: every worker is gone within 5 s."""
    run = owner(method, scenario)
    facts = run.started()
    assert len(run.workers) == 2
    if scenario in ("stopped", "thread"):
        # SIGSTOP takes effect when each worker is next scheduled: wait for it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(p.status() == psutil.STATUS_STOPPED for p in run.workers):
                break
            time.sleep(0.02)
        assert [p.status() for p in run.workers] == [psutil.STATUS_STOPPED] * 2
    alive, took = run.kill_and_wait()
    assert not alive, (
        f"{method}/{scenario}: workers {[p.pid for p in alive]} outlived owner "
        f"{facts['owner']} by {GRACE:g} s"
    )
    print(f"{method}/{scenario}: workers gone {took * 1000:.0f} ms after the owner's SIGKILL")


@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "forkserver"])
def test_worker_logs_a_last_line_when_its_watcher_ends_it(owner: Any, method: str) -> None:
    """Where the watcher thread ends the worker (started from a thread that has exited,
    so the kernel's parent-death signal is SIGCONT), its last line reaches stderr."""
    run = owner(method, "thread")
    facts = run.started()
    alive, _ = run.kill_and_wait()
    assert not alive
    run.cleanup()
    lines = [
        line
        for line in run.stderr.splitlines()
        if f"its pool's owner (pid {facts['owner']}) is gone" in line
    ]
    # Each worker logs its own end, unless another watcher ended it first as a stuck
    # sibling, naming it: every worker is accounted for.
    pids = {p.pid for p in run.workers}
    named = {int(line.split("worker ")[1].split(":")[0]) for line in lines}
    for line in run.stderr.splitlines():
        if "ending stuck sibling worker(s) " in line:
            named |= {int(p) for p in line.split("worker(s) ")[1].split(", ")}
    assert lines and named == pids, run.stderr
    assert not [line for line in lines if "work item" in line]  # both were idle


def test_last_line_names_the_running_work_item(owner: Any) -> None:
    """A busy worker's last line names the work item it was running."""
    run = owner("spawn", "thread-busy")
    run.started()
    alive, _ = run.kill_and_wait()
    assert not alive
    run.cleanup()
    assert any("was running" in line for line in run.stderr.splitlines()), run.stderr


def _submit_from_thread(pool: TracedProcessPoolExecutor) -> list[int]:
    out: list[list[int]] = []

    def submit() -> None:
        futures = [pool.submit(_pid_after, 0.3) for _ in range(2)]
        out.append(sorted({f.result(timeout=60) for f in futures}))

    t = threading.Thread(target=submit)
    t.start()
    t.join(60)
    return out[0]


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_started_from_an_exited_thread_survives(method: str) -> None:
    """Workers started by submit() from a thread that then exits keep serving (their
    parent-death signal follows the forking thread, so it must not be SIGKILL there)."""
    pool = TracedProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context(method))
    try:
        pids = _submit_from_thread(pool)
        time.sleep(0.5)  # the thread is gone; a wrong death signal would have struck
        assert all(psutil.pid_exists(p) for p in pids)
        results = {pool.submit(_pid_after, 0.05).result(timeout=30) for _ in range(8)}
        assert results <= set(pids) | set(pool._processes)  # type: ignore[attr-defined]
        assert all(p.is_alive() for p in pool._processes.values())  # type: ignore[attr-defined]
    finally:
        procs = list(pool._processes.values())  # type: ignore[attr-defined]
        pool.shutdown(wait=True, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is new in 3.11")
@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "fork"])
def test_replacement_workers_are_tied_and_keep_serving(method: str) -> None:
    """max_tasks_per_child replaces workers from the manager thread; the pool keeps
    working, and each replacement carries the owner's watcher thread."""
    pool = TracedProcessPoolExecutor(
        max_workers=2, mp_context=multiprocessing.get_context(method), max_tasks_per_child=1
    )
    try:
        pids = {pool.submit(_pid_after, 0.01).result(timeout=30) for _ in range(6)}
        assert len(pids) >= 3  # workers were replaced
        marker = f"{_lifeline.THREAD_PREFIX}{os.getpid()}"
        for proc in list(pool._processes.values()):  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20  # a replacement may still be starting
            while marker not in _thread_names(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker in _thread_names(proc.pid)
    finally:
        pool.shutdown(wait=True)


def _thread_names(pid: int) -> list[str]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return out


def test_scan_reports_workers_with_a_dead_owner(tmp_path: Path) -> None:
    """A process whose tpowner thread names a pid that is not its parent (nor its
    grandparent) is an orphan; the same process under its real owner is not."""
    code = (
        "import threading, time, sys\n"
        "t = threading.Thread(target=time.sleep, args=(60,), name=sys.argv[1], daemon=True)\n"
        "t.start()\n"
        "from tracedpool._worker.lifeline import _prctl, _PR_SET_NAME\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    # _prctl names only the calling thread; name the sleeper from inside it instead.
    code = code.replace(
        "target=time.sleep, args=(60,)",
        "target=lambda: (__import__('tracedpool._worker.lifeline')._worker.lifeline._prctl(15, "
        "sys.argv[1].encode()), time.sleep(60))",
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ghost = _free_pid()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"{_lifeline.THREAD_PREFIX}{owner_pid}"],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for owner_pid in (os.getpid(), ghost)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        t0 = time.monotonic()
        found = {o.pid: o for o in _lifeline.scan_orphans()}
        took = time.monotonic() - t0
        assert procs[0].pid not in found  # its owner is its parent: healthy
        assert procs[1].pid in found
        assert found[procs[1].pid].owner == ghost
        assert took < 1.0, f"the scan took {took:.3f} s"
        assert [o.pid for o in _lifeline.scan_orphans(owner=ghost)] == [procs[1].pid]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


def _free_pid() -> int:
    """A pid no process has now (the highest in use, plus a large step)."""
    pid = max(psutil.pids()) + 1000
    while psutil.pid_exists(pid):
        pid += 1
    return pid


def test_started_by_judges_the_starting_thread() -> None:
    """The main thread and a traced manager thread outlive their workers; any other
    thread does not (its exit would fire a SIGKILL parent-death signal)."""
    import pickle

    marker = _lifeline.StartedBy()
    assert pickle.loads(pickle.dumps(marker)).outlives_worker() is True
    assert marker.outlives_worker() is True
    seen: list[bool] = []

    class Manager(threading.Thread):
        _tp_outlives_workers = True

    for cls in (threading.Thread, Manager):
        t = cls(target=lambda: seen.append(pickle.loads(pickle.dumps(marker)).outlives_worker()))
        t.start()
        t.join()
    assert seen == [False, True]


def test_doctor_finds_a_traced_worker_its_owner_left_behind(owner: Any, tmp_path: Path) -> None:
    """The one case that can outlive its owner (a lone worker, started from a thread
    that has exited, holding the GIL in native code) is found by ``doctor --probe``
    from /proc alone, and by the command (exit 0: a warning)."""
    from tracedpool._doctor.probe import probe

    run = owner("spawn", "lone-native")
    facts = run.started()
    (worker,) = run.workers
    alive, _ = run.kill_and_wait()
    assert alive == [worker], "expected the GIL-holding worker to outlive its owner"
    result = probe(tmp_path)
    (check,) = [c for c in result.checks if c.id == "probe.orphans"]
    assert (
        check.status == "warn" and f"pid {worker.pid} (owner pid {facts['owner']}" in check.finding
    )
    assert worker.pid in [o["pid"] for o in check.data["orphans"]]
    assert check.seconds < 1.0
    assert result.exit_code == 0
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracedpool",
            "doctor",
            "--probe",
            "--heartbeat-dir",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert worker.pid in [
        o["pid"] for c in doc["checks"] if c["id"] == "probe.orphans" for o in c["data"]["orphans"]
    ]
    from tracedpool._diagnosis.stall import py_spy_path

    if py_spy_path() is None:
        return
    # --pid lists it too, whatever process is inspected (the orphan's owner is gone).
    from tracedpool._doctor.inspect import inspect_pid

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        checks = {c.id: c for c in inspect_pid(sleeper.pid, sample=0.2).checks}
        listed = {o["pid"]: o for o in checks["pid.orphans"].data["orphans"]}
        assert listed[worker.pid]["owner_pid"] == facts["owner"]
        assert checks["pid.orphans"].status == "warn"
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_owner_gone_believes_only_proc_and_the_parent() -> None:
    """A wake of the watcher ends the worker only when the owner is really gone: its
    pid missing, a zombie, or held by a process that started at another time (so a
    closed or reused descriptor number cannot end a healthy worker)."""
    me, parent = os.getpid(), os.getppid()
    fields = _lifeline._stat(me)
    assert fields is not None
    ticks = _lifeline._ticks(fields)
    assert ticks is not None
    assert not _lifeline._owner_gone(me, parent, ticks)
    assert _lifeline._owner_gone(me, parent, ticks + 1)  # the pid was reused
    assert _lifeline._owner_gone(_free_pid(), parent, ticks)  # exited and reaped
    assert _lifeline._owner_gone(me, parent + 1, ticks)  # our parent changed
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        zfields = _lifeline._stat(zombie.pid)
        assert zfields is not None
        assert _lifeline._owner_gone(zombie.pid, parent, _lifeline._ticks(zfields))
    finally:
        zombie.wait(10)
