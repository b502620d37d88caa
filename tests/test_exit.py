"""Interpreter exit with work in flight: the program exits, bounded, and leaves no
worker process behind (checked by pid and start time after it is gone)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tracedpool._telemetry import names as N
from tracedpool._telemetry.otlpjson import read_spans

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "exit_app.py"
START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]


def _env_without_telemetry() -> dict[str, str]:
    """This environment without any OTEL_ or TRACEDPOOL_ variable, for a child program
    whose telemetry each test sets itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}


class ExitRun:
    """One run of tests/apps/exit_app.py; remembers every process it started."""

    def __init__(self, tmp_path: Path, mode: str, start_method: str) -> None:
        self.tmp = tmp_path
        self.facts_file = tmp_path / "facts.json"
        self.trace_file = tmp_path / "traces" / "traces.jsonl"
        self.report_dir = tmp_path / "reports"
        env = _env_without_telemetry()
        env.update(
            PYTHONPATH=os.pathsep.join(
                (str(ROOT), str(ROOT / "tests"))
            ),  # tracedpool, and tests/faults.py
            TRACEDPOOL_TRACE_FILE=str(self.trace_file),
            TRACEDPOOL_TEST_REPORT_DIR=str(self.report_dir),
            XDG_STATE_HOME=str(tmp_path / "state"),
            PYTHONFAULTHANDLER="1",
        )
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), mode, start_method, str(self.facts_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.facts: dict[str, Any] = {}

    def wait_for_facts(self, seconds: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while not self.facts_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                out, err = (
                    self.proc.communicate(timeout=30) if self.proc.poll() is not None else ("", "")
                )
                raise AssertionError(f"the app wrote no facts:\n{out}\n{err}")
            time.sleep(0.02)
        self.facts = json.loads(self.facts_file.read_text())
        return self.facts

    def finish(self, seconds: float) -> tuple[int, float, str]:
        """(exit status, seconds since start, stderr); fails if it does not exit in time."""
        try:
            _out, err = self.proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: the stacks, into stderr
            try:
                _out, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the program did not exit within {seconds} s:\n{err}") from None
        return self.proc.returncode, time.monotonic() - self.t0, err

    def alive(self) -> list[psutil.Process]:
        """The processes it started that still exist (not counting zombies, which are
        dead and only wait for whoever now owns them to reap them)."""
        out = []
        for child in self.facts.get("children", []):
            try:
                p = psutil.Process(child["pid"])
                if abs(p.create_time() - child["create_time"]) > 0.5:
                    continue  # the pid was reused: not ours
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def orphans(self, grace: float = 10.0) -> list[psutil.Process]:
        deadline = time.monotonic() + grace
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        for p in self.alive():
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture
def run_app(tmp_path: Path) -> Iterator[Any]:
    runs: list[ExitRun] = []

    def start(mode: str, start_method: str = "fork") -> ExitRun:
        run = ExitRun(tmp_path, mode, start_method)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


def _task_spans(run: ExitRun) -> list[dict[str, Any]]:
    return [s for s in read_spans(run.trace_file) if s["name"] == N.SPAN_TASK]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_falling_off_the_end_with_tasks_pending_exits_cleanly(
    run_app: Any, start_method: str
) -> None:
    """The script ends with 10 tasks pending and no shutdown(): interpreter exit runs them
    (as the stdlib does), exits 0, no worker is left, and their spans reach the file."""
    run = run_app("normal", start_method)
    facts = run.wait_for_facts()
    assert facts["pending"] > 0 and len(facts["workers"]) == 2
    status, seconds, err = run.finish(60)
    assert status == 0, err
    assert run.orphans() == []
    assert len(_task_spans(run)) == 11, "spans of the tasks finished during exit were lost"
    assert "Traceback" not in err, err
    print(f"{start_method}: exited {seconds:.1f} s after start")


def test_sys_exit_from_the_main_thread_while_tasks_run(run_app: Any) -> None:
    """sys.exit(3) with tasks running: exit status 3, bounded, no worker left."""
    run = run_app("sysexit")
    assert run.wait_for_facts()["pending"] > 0
    status, _seconds, err = run.finish(60)
    assert status == 3, err
    assert run.orphans() == []
    assert "Traceback" not in err, err


def test_stopped_worker_with_stall_action_break_does_not_hold_exit(run_app: Any) -> None:
    """A SIGSTOPped worker at exit (the pool dropped without shutdown): the stall detector
    still sees the pending task, reports it, kills the stopped worker; the program exits."""
    run = run_app("stopped-break")
    run.wait_for_facts()
    status, _seconds, err = run.finish(60)
    assert status == 0, err
    assert run.orphans() == []
    reports = sorted(run.report_dir.glob("stall-*.json"))
    assert len(reports) == 1, err
    report = json.loads(reports[0].read_text())
    assert report["kind"] == "worker-stopped"
    assert report["stuck_pids"][0] in run.facts["workers"]


def test_stopped_worker_with_stall_action_report_is_broken_at_exit(run_app: Any) -> None:
    """With stall_action='report' and the pool out of scope: exit would wait for the
    stopped worker's task for ever, so the stall is reported, the pool broken (logged),
    and the program exits with no worker left."""
    run = run_app("stopped-report")
    run.wait_for_facts()
    status, _seconds, err = run.finish(60)
    assert status == 0, err
    assert run.orphans() == []
    (report_path,) = run.report_dir.glob("stall-*.json")
    report = json.loads(report_path.read_text())
    assert report["kind"] == "worker-stopped"
    assert report["stuck_pids"][0] in run.facts["workers"]
    assert "the interpreter is exiting while pool" in err


def test_slow_task_without_cpu_is_waited_for_at_exit(tmp_path: Path) -> None:
    """A task that only sleeps past stall_timeout looks stalled (no CPU, no I/O) but may
    be healthy: at exit under stall_action="report" it is reported and waited for, as
    the stdlib waits, never killed (its result would be lost)."""
    script = tmp_path / "slow_at_exit.py"
    script.write_text(
        "import sys, time\n"
        "import tracedpool\n"
        "from faults import sleep_then\n"
        "if __name__ == '__main__':  # spawn and forkserver import this module\n"
        "    pool = tracedpool.TracedProcessPoolExecutor(\n"
        "        1, stall_timeout=1.0, stall_report_dir=sys.argv[1]\n"
        "    )\n"
        "    future = pool.submit(sleep_then, 'done', 3.0)\n"
        "    future.add_done_callback(\n"
        "        lambda f: print('future:', f.exception() or f.result(), flush=True)\n"
        "    )\n"
        "    time.sleep(0.2)  # then exit without shutdown(), the task still sleeping\n"
    )
    env = _env_without_telemetry()
    env.update(
        PYTHONPATH=os.pathsep.join((str(ROOT), str(ROOT / "tests"))),
        TRACEDPOOL_HEARTBEAT_DIR="none",
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "reports")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "future: done" in out.stdout, (out.stdout, out.stderr)
    assert list((tmp_path / "reports").glob("stall-*.json")), "the stall was reported"


_ENQUEUE_SCRIPT = """
import os, sys, threading
import tracedpool

def report(future):
    error = future.exception()
    print("reason:", getattr(error, "reason", None) if error else "none", flush=True)
    print("message:", error, flush=True)

if __name__ == "__main__":  # spawn and forkserver import this module
    pool = tracedpool.TracedProcessPoolExecutor(1)
    # The manager thread cannot hand the task to the call queue (whose first put starts
    # the feeder thread) until interpreter exit has begun: this thread holds the queue's
    # lock, and a threading-exit hook, which runs before the pool's own, lets go of it.
    lock = pool._call_queue._notempty
    lock.acquire()
    threading._register_atexit(lock.release)
    pool.submit(os.getpid).add_done_callback(report)
"""


_THREAD_AT_EXIT_PROBE = """
import threading
def start():
    try:
        threading.Thread(target=int).start()
        print("started")
    except RuntimeError:
        print("refused")
threading._register_atexit(start)
"""


def test_program_ending_before_the_feeder_started_says_why(tmp_path: Path) -> None:
    """The program ends right after submit(), before the thread that feeds the workers
    has started. Where threads cannot start at interpreter exit (3.12; 3.13 allows them
    again until the threads are joined), the stdlib breaks the pool (gh-109047):
    tracedpool names that reason and the error, not a failed result read. Elsewhere
    the thread starts and the task runs, as on the stdlib."""
    probe = subprocess.run(
        [sys.executable, "-c", _THREAD_AT_EXIT_PROBE], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    assert probe in ("started", "refused")
    script = tmp_path / "enqueue_at_exit.py"
    script.write_text(_ENQUEUE_SCRIPT)
    env = _env_without_telemetry()
    env.update(PYTHONPATH=str(ROOT), TRACEDPOOL_HEARTBEAT_DIR="none")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    if probe == "started":
        assert "reason: none" in out.stdout, (out.stdout, out.stderr)
        return
    assert "reason: enqueue-failed" in out.stdout, (out.stdout, out.stderr)
    assert (
        "could not put a task on the call queue: RuntimeError: can't create new thread"
        in out.stdout
    ), out.stdout
    assert "result pipe" not in out.stdout


_OUTAGE_SCRIPT = """
import tracedpool
from tracedpool import TracedProcessPoolExecutor
from tracedpool.testing import square

if __name__ == "__main__":
    tracedpool.configure(service_name="outage")
    with TracedProcessPoolExecutor(2) as pool:
        assert list(pool.map(square, range(2000))) == [i * i for i in range(2000)]
    print("pool done", flush=True)
"""


@contextlib.contextmanager
def _collector(kind: str) -> Iterator[str]:
    """An OTLP endpoint on loopback where the collector is down: nothing listens
    (refused), or a socket accepts connections and never answers (black-holed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == "blackhole":
            sock.listen(64)  # the kernel completes the handshakes; nobody reads
        # refused: bound but not listening, so the port stays ours and refuses
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["refused", "blackhole"])
def test_configured_program_exits_within_the_bound_when_the_collector_is_down(
    tmp_path: Path, kind: str
) -> None:
    """configure() with the collector down: the process exits within the exit-export
    bound plus the pool's own shutdown (the SDK alone waits out its retries, ~31 s), and
    says once how many spans it could not send and which variable sets the bound."""
    script = tmp_path / "outage.py"
    script.write_text(_OUTAGE_SCRIPT)
    env = _env_without_telemetry()
    with _collector(kind) as endpoint:
        env.update(
            PYTHONPATH=str(ROOT),
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            TRACEDPOOL_EXIT_EXPORT_TIMEOUT="1",
            TRACEDPOOL_HEARTBEAT_DIR="none",
        )
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
        )
        elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pool done"
    warnings = [line for line in out.stderr.splitlines() if "still sending after" in line]
    assert len(warnings) == 1, out.stderr
    assert N.ENV_EXIT_EXPORT_TIMEOUT in warnings[0]
    assert "span(s) still queued were not sent" in warnings[0]
    # A bound against the SDK's 31 s of retries, not a speed claim: 1 s of export bound,
    # the pool's work and interpreter start-up on a loaded 2-core box.
    assert elapsed < 20, (elapsed, out.stderr[-2000:])


def test_the_exit_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/exit.py, one short run: the program exits normally and the run records
    the time past the pool's shutdown and the warning tracedpool gave."""
    out = tmp_path / "exit.json"
    env = _env_without_telemetry()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "exit.py"),
            "--setups",
            "configure",
            "--kinds",
            "refused",
            "--repeat",
            "1",
            "--n",
            "100",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| configure | refused |" in proc.stdout
    (run,) = json.loads(out.read_text())["runs"]
    assert run["returncode"] == 0 and run["after_shutdown_s"] is not None
    assert N.ENV_EXIT_EXPORT_TIMEOUT in run["said"]
