"""What went wrong? Every fault and every stall tracedpool knows, triggered on purpose.

Each case runs in a fresh pool, under a root span of its own (``case <name>``), so that
each is one trace in Jaeger and one group of bars on the timeline page. One line per
case says what was done and what the caller got: the exception and what tracedpool
located (which argument, which stage, which worker, which signal), or the stall
detector's diagnosis and the path of its report. The cases:

* pickling faults at every stage: the call cannot be pickled in the parent's feeder
  thread (the function, an argument, a keyword argument), cannot be rebuilt in the
  worker, the result or exception cannot be pickled in the worker (send-back), or cannot
  be rebuilt in the parent;
* broken pools: a worker SIGKILLed (as by the OOM killer), a segfault, ``os._exit``, a
  failing initializer;
* stalls, each detected after ``--stall-timeout`` seconds (1 s here; 60 s by default):
  a stopped worker, a worker blocked on a lock, a done-callback blocking the manager
  thread, a worker killed while sending a large result, a lock inherited across fork, a
  worker stuck before its task while the feeder waits, workers gone unnoticed, and a dead
  feeder thread. ``stall_action="break"`` fails the stuck futures with
  ``PoolStalledError`` instead of letting them wait for ever, so nothing here hangs;
* one where the worker's log says why: the task logs what it is about to wait for, then
  waits; the stall report carries the stuck worker's last records beside its stack.

The fault injectors are the ones tracedpool's own tests use, from ``tests/faults.py``
in this checkout (they are not installed with the package). The workers' own
tracebacks (printed by the standard library) go to stderr; add
``2>/dev/null`` to see only the summary lines.

Run it from a checkout (after ``make demo`` created ``.venv``)::

    .venv/bin/python examples/what_went_wrong.py            # every case, ~20 s
    .venv/bin/python examples/what_went_wrong.py --list     # the cases
    .venv/bin/python examples/what_went_wrong.py --only sigkill --only worker-stopped

``tracedpool.configure()`` sets up tracing from the standard OTEL_* variables. With none
set, spans go to the embedded default (a local OTLP/JSON-lines file, printed at start;
``$TRACEDPOOL_TRACE_FILE`` moves it) and the script ends by writing this run's timeline
page. To see the cases in Jaeger, start it (``collectors/README.md``) and run with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` (needs ``tracedpool[otlp]``).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

import tracedpool
from tracedpool import PoolStalledError, TracedProcessPoolExecutor
from tracedpool._timeline.page import TimelineError, write_timeline
from tracedpool.testing import square

# The fault injectors live with the tests, not in the package; the workers find them by
# module name too (spawn and forkserver start with this sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import faults

tracer = trace.get_tracer("examples.what_went_wrong")

RESULT_TIMEOUT = 30.0  # no wait in this script is unbounded
SERVICE = "tracedpool-what-went-wrong"


@dataclass(frozen=True)
class Options:
    stall_timeout: float
    report_dir: Path | None
    mp_context: Any


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # "pickling", "broken" or "stall"
    what: str  # what the case does, for the printed line
    run: Callable[[Options], tuple[str, bool]]  # -> (what the caller got, as expected?)


def summarize(e: BaseException) -> str:
    """The exception's type and the part of its message that says what happened."""
    text = (str(e).splitlines() or [""])[0]
    # A broken pool's message starts with the stdlib's sentence; tracedpool's facts
    # follow "[tracedpool]", then advice. Keep the facts: their first sentence.
    if "[tracedpool] " in text:
        text = text.split("[tracedpool] ", 1)[1].split(". ", 1)[0]
    fault = tracedpool.pickling_fault(e)  # also a note on the exception, on 3.11+
    return f"{type(e).__name__}: {text}" + (f" [{fault}]" if fault else "")


def fresh_pool(opts: Options, **kwargs: Any) -> TracedProcessPoolExecutor:
    """One worker, and a stall detector that breaks instead of waiting for ever."""
    kwargs.setdefault("mp_context", opts.mp_context)
    return TracedProcessPoolExecutor(
        max_workers=1,
        stall_timeout=opts.stall_timeout,
        stall_action="break",
        stall_report_dir=opts.report_dir,
        **kwargs,
    )


# -- pickling faults and broken pools: the tests' fault table ---------------------------

WHAT = {
    "lambda-fn": "submit a lambda (only importable functions pickle)",
    "lock-args0": "pass an object holding a threading.Lock as args[0]",
    "error-args1": "pass an args[1] whose __reduce__ raises",
    "lock-kwargs": "pass an object holding a lock as key=",
    "sysexit-args1": "pass an args[1] that raises SystemExit when pickled",
    "unpickle-args1": "pass an args[1] that pickles but cannot be rebuilt in the worker",
    "unpickle-kwargs": "pass a bad= that pickles but cannot be rebuilt in the worker",
    "unpickle-fn": "submit a callable that cannot be rebuilt in the worker",
    "exit-unpickle-args0": "pass an args[0] whose unpickling raises SystemExit",
    "sendback-result": "return a threading.Lock from the task",
    "sendback-exception": "raise an exception that holds a lock",
    "result-unpickle": "return an object that cannot be rebuilt in the parent",
    "exception-unpickle": "raise an exception whose __init__ takes other arguments",
    "sigkill": "the worker is SIGKILLed, as by the OOM killer",
    "segfault": "native code segfaults in the worker",
    "exit-code": "the task calls os._exit(3)",
}


def fault_case(case: faults.FaultCase) -> Case:
    def run(opts: Options) -> tuple[str, bool]:
        with fresh_pool(opts) as pool:
            future = pool.submit(case.fn, *case.args, **case.kwargs)
            try:
                future.result(timeout=RESULT_TIMEOUT)
            except Exception as e:
                got, ok = summarize(e), isinstance(e, case.exception)
            else:
                return "no error at all", False
            if case.breaks_pool:
                return f"{got}; the pool is broken", ok
            # A located pickling fault fails one future; the pool goes on.
            healthy = pool.submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9
            return f"{got}; the pool still works", ok and healthy

    group = "broken" if case.stage == "worker-run" else "pickling"
    return Case(case.name, group, WHAT.get(case.name, case.stage), run)


def initializer_fails(opts: Options) -> tuple[str, bool]:
    with fresh_pool(opts, initializer=faults.failing_initializer) as pool:
        try:
            pool.submit(square, 3).result(timeout=RESULT_TIMEOUT)
        except Exception as e:
            return f"{summarize(e)}; the pool is broken", isinstance(
                e, tracedpool.TracedBrokenProcessPool
            )
    return "no error at all", False


# -- stalls: each detected, diagnosed, reported, then broken -----------------------------


def stalled(reports: list[dict[str, Any]], kind: str, e: BaseException | None) -> tuple[str, bool]:
    """What the caller and the stall detector said, and whether it is the expected kind."""
    if not reports:
        return (summarize(e) if e else "no stall detected"), False
    report = reports[-1]
    said = (
        f"[{report['kind']}] after {report['stall_seconds']:.1f} s: {report['diagnosis']}; "
        f"report {report.get('report_path')}"
    )
    if e is not None:
        said = f"{type(e).__name__} {said}"
    return said, report["kind"] == kind and (e is None or isinstance(e, PoolStalledError))


def expect_stall(future: Any) -> BaseException | None:
    try:
        future.result(timeout=RESULT_TIMEOUT)
    except Exception as e:
        return e
    return None


def worker_stopped(opts: Options) -> tuple[str, bool]:
    reports: list[dict[str, Any]] = []
    with fresh_pool(opts, on_stall=reports.append) as pool:
        e = expect_stall(pool.submit(faults.stop_self_later, 0.2))
    return stalled(reports, "worker-stopped", e)


def relock() -> None:
    """A task that takes a non-reentrant lock it already holds (say, through a callback
    that locks the same resource): it waits for itself for ever."""
    lock = threading.Lock()
    with lock:
        lock.acquire()


def worker_blocked_on_lock(opts: Options) -> tuple[str, bool]:
    reports: list[dict[str, Any]] = []
    with fresh_pool(opts, on_stall=reports.append) as pool:
        e = expect_stall(pool.submit(relock))
    return stalled(reports, "worker-blocked", e)


def manager_blocked_in_callback(opts: Options) -> tuple[str, bool]:
    """A done-callback runs on the pool's manager thread: while it blocks, no result is
    delivered. Killing workers cannot free it, so the stall is reported, not broken; the
    report releases the callback here, as fixing the callback would."""
    reports: list[dict[str, Any]] = []
    release = threading.Event()

    def on_stall(report: dict[str, Any]) -> None:
        reports.append(report)
        release.set()

    def blocking_callback(_future: Any) -> None:
        release.wait(RESULT_TIMEOUT)

    with fresh_pool(opts, on_stall=on_stall) as pool:
        first = pool.submit(faults.sleep_then, 1, 0.3)  # still running when hooked
        first.add_done_callback(blocking_callback)
        second = pool.submit(square, 3)
        late = second.result(timeout=RESULT_TIMEOUT)
    said, ok = stalled(reports, "manager-blocked-callback", None)
    return f"reported, not broken: {said}; once the callback returned, got {late}", ok and late == 9


def killed_while_sending(opts: Options) -> tuple[str, bool]:
    """The worker dies half-way through writing a large result: the manager thread waits
    for the rest of the message for ever (the stdlib hangs here)."""
    reports: list[dict[str, Any]] = []
    release = threading.Event()
    with fresh_pool(opts, on_stall=reports.append) as pool:
        first = pool.submit(faults.sleep_then, 1, 0.3)
        # Hold the manager in a done-callback so that it does not read: the worker's
        # write of the 8 MiB result then blocks with part of it in the pipe.
        first.add_done_callback(lambda _f: release.wait(RESULT_TIMEOUT))
        big = pool.submit(faults.big_result, 8 * 2**20)
        try:
            pid = wait_running(pool, "big_result")
            time.sleep(0.3)  # the pipe (64 KiB) fills at once; the write then blocks
            os.kill(pid, signal.SIGKILL)
        finally:
            release.set()
        e = expect_stall(big)
    return stalled(reports, "manager-blocked-read", e)


def wait_running(pool: TracedProcessPoolExecutor, function: str) -> int:
    """The pid of the worker running ``function`` (from the pool's live view)."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while time.monotonic() < deadline:
        for pid, tasks in pool.stats()["running"].items():
            if any(t["function"].endswith(function) for t in tasks):
                return int(pid)
        time.sleep(0.02)
    raise TimeoutError(f"{function} never started")


def inherited_lock(opts: Options) -> tuple[str, bool]:
    """A thread of the parent holds a lock while the workers are forked: each worker gets
    the lock locked, and no thread of its own will ever release it."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return "skipped: needs the fork start method", True
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with faults.INHERITED_LOCK:
            held.set()
            release.wait(RESULT_TIMEOUT)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    reports: list[dict[str, Any]] = []
    try:
        held.wait(RESULT_TIMEOUT)
        fork = multiprocessing.get_context("fork")
        with fresh_pool(opts, on_stall=reports.append, mp_context=fork) as pool:
            e = expect_stall(pool.submit(faults.take_inherited_lock))
    finally:
        release.set()
        thread.join(RESULT_TIMEOUT)
    return stalled(reports, "worker-blocked", e)


def feeder_blocked(opts: Options) -> tuple[str, bool]:
    """The worker is stuck rebuilding one call (a slow ``__reduce__``), so the feeder
    thread blocks writing the next, large one: no task ever starts."""
    reports: list[dict[str, Any]] = []
    with fresh_pool(opts, on_stall=reports.append) as pool:
        stuck = pool.submit(faults.identity, faults.SlowToUnpickle(RESULT_TIMEOUT))
        large = pool.submit(faults.identity, bytes(4 * 2**20))
        expect_stall(stuck)
        e = expect_stall(large)
    return stalled(reports, "feeder-blocked", e)


def workers_gone(opts: Options) -> tuple[str, bool]:
    """The worker exits, but a child it forked keeps the pipe the parent watches for its
    death open: the stdlib never notices, and waits for ever. Under forkserver (3.14's
    default) the fork server reports the exit itself, so this case runs under fork."""
    reports: list[dict[str, Any]] = []
    context = opts.mp_context
    if context.get_start_method() == "forkserver":
        context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        pid_file = Path(tmp) / "child.pid"
        try:
            with fresh_pool(opts, on_stall=reports.append, mp_context=context) as pool:
                e = expect_stall(pool.submit(faults.exit_leaving_child, str(pid_file), 60))
        finally:
            if pid_file.exists():  # the worker's child is ours to clean up
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
    return stalled(reports, "no-workers", e)


def feeder_dead(opts: Options) -> tuple[str, bool]:
    """An application replaced ``threading.excepthook`` (bypassing tracedpool's feeder
    guard, which otherwise turns this into a located PicklingError, see sysexit-args1);
    then an argument raises SystemExit while pickled, and the feeder thread dies."""
    reports: list[dict[str, Any]] = []
    previous = threading.excepthook
    with fresh_pool(opts, on_stall=reports.append) as pool:
        pool.submit(square, 2).result(timeout=RESULT_TIMEOUT)  # the feeder runs
        threading.excepthook = lambda args: None
        try:
            doomed = pool.submit(faults.identity, faults.ExitAtPickle())
            later = pool.submit(square, 3)
            expect_stall(doomed)
            e = expect_stall(later)
        finally:
            threading.excepthook = previous
    return stalled(reports, "feeder-dead", e)


def wait_for_ledger(path: str) -> None:
    """A task that says what it waits for, then waits: another process holds the file
    lock (here, the parent). The stack shows *where* it waits; its log says *why*."""
    log = logging.getLogger("examples.ledger")
    with open(path, "a") as f:
        log.warning("waiting for the ledger lock on %s (nightly reconcile holds it)", path)
        fcntl.flock(f, fcntl.LOCK_EX)


def log_says_why(opts: Options) -> tuple[str, bool]:
    """Worker logs reach the parent (WARNING and above by default) and the stall report:
    the stuck worker's last record names what it waits for."""
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ledger.lock")
        with open(path, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # the other job, holding the lock
            with fresh_pool(opts, on_stall=reports.append) as pool:
                e = expect_stall(pool.submit(wait_for_ledger, path))
    said, ok = stalled(reports, "worker-blocked", e)
    last = [
        r["message"]
        for p in (reports[-1]["processes"] if reports else [])
        for r in p.get("recent_logs") or []
    ]
    if not last:
        return f"{said}; no log record in the report", False
    return f"{said}; the worker's last log: {last[-1]!r}", ok and "ledger lock" in last[-1]


def all_cases() -> list[Case]:
    return [
        *(fault_case(c) for c in faults.fault_table()),
        Case("initializer", "broken", "the pool's initializer raises", initializer_fails),
        Case("worker-stopped", "stall", "the worker gets SIGSTOP", worker_stopped),
        Case(
            "worker-blocked", "stall", "the task re-takes a lock it holds", worker_blocked_on_lock
        ),
        Case(
            "manager-callback",
            "stall",
            "a done-callback blocks the manager thread",
            manager_blocked_in_callback,
        ),
        Case(
            "killed-while-sending",
            "stall",
            "the worker is killed while sending an 8 MiB result",
            killed_while_sending,
        ),
        Case(
            "inherited-lock",
            "stall",
            "the worker is forked while a parent thread holds a lock the task takes",
            inherited_lock,
        ),
        Case(
            "feeder-blocked",
            "stall",
            "the worker is stuck unpickling a call; a large call waits behind it",
            feeder_blocked,
        ),
        Case(
            "workers-gone",
            "stall",
            "the worker exits leaving a child that holds its pipe",
            workers_gone,
        ),
        Case(
            "feeder-dead",
            "stall",
            "threading.excepthook replaced, then SystemExit while pickling",
            feeder_dead,
        ),
        Case(
            "log-says-why",
            "stall",
            "the task logs what it waits for, then waits on a file lock",
            log_says_why,
        ),
    ]


# -- running them -------------------------------------------------------------------------


def run_case(case: Case, opts: Options) -> bool:
    before = set(multiprocessing.active_children())
    t0 = time.monotonic()
    with tracer.start_as_current_span(
        f"case {case.name}", attributes={"example.case": case.name, "example.group": case.group}
    ):
        try:
            got, ok = case.run(opts)
        except Exception as e:  # the case itself went wrong: say so, go on with the rest
            got, ok = f"the case failed: {summarize(e)}", False
    if not ok:
        # Whatever this case left running must not hold up the next one or the exit.
        for proc in set(multiprocessing.active_children()) - before:
            proc.kill()
    mark = "" if ok else "UNEXPECTED: "
    print(f"{case.name:<20} {case.what} -> {mark}{got} ({time.monotonic() - t0:.1f} s)", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    cases = all_cases()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--only", action="append", metavar="CASE", help="run only CASE (repeatable)"
    )
    parser.add_argument("--stall-timeout", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--report-dir", type=Path, help="where stall reports go")
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
    parser.add_argument(
        "--timeline", type=Path, default=Path("what-went-wrong.html"), help="the page to write"
    )
    args = parser.parse_args(argv)
    if args.list:
        for c in cases:
            print(f"{c.name:<20} {c.group:<9} {c.what}")
        return 0
    if args.only:
        unknown = set(args.only) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; see --list")
        cases = [c for c in cases if c.name in args.only]

    started = time.time_ns()
    setup = tracedpool.configure(service_name=SERVICE)
    print(setup.describe())
    opts = Options(
        args.stall_timeout,
        args.report_dir,
        multiprocessing.get_context(args.start_method),
    )
    method = opts.mp_context.get_start_method()
    print(f"{len(cases)} case(s), each in a fresh pool (start method {method})\n")
    failed = [c.name for c in cases if not run_case(c, opts)]

    flush = getattr(setup.provider, "force_flush", None)
    if flush is not None:
        flush()
    print()
    if setup.trace_file is not None:
        page = args.timeline.resolve()
        try:
            result = write_timeline(setup.trace_file, page, since_ns=started)
            print(
                f"Timeline of this run ({result.tasks} tasks, {result.faults} faults, "
                f"{result.stalls} stalls): {page.as_uri()}"
            )
        except TimelineError as e:
            print(f"(no timeline page: {e})")
        print(f"The spans are OTLP/JSON lines in {setup.trace_file}.")
    print(
        "To see each case as a trace in Jaeger, start Jaeger (collectors/README.md), then:\n"
        "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 "
        ".venv/bin/python examples/what_went_wrong.py\n"
        f"and open http://localhost:16686, service {SERVICE}, operation 'case <name>'."
    )
    if failed:
        print(f"\n{len(failed)} case(s) did not go as described: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
