"""What the stall detector costs and how fast it answers.

    python benchmarks/stall.py            # default parameters (~2.5 minutes)
    python benchmarks/stall.py --quick    # smoke run (~25 seconds)

Three measurements, each on real worker processes:

* **detection latency**: a worker burning CPU is SIGSTOPped by this script in the middle
  of its task (the stall starts at that known moment); the time until ``on_stall``
  receives the written report, minus ``stall_timeout``, is the overshoot. The issue's
  bound is ``stall_timeout + 1 s``. Any timeout of 3 s or more checks every 0.75 s.
* **snapshot time** for the parent plus N workers (default 8), all blocked in a task:
  the report's ``snapshot_seconds`` (stack snapshots of every worker, in parallel, plus
  the parent's own frames), with py-spy and with the unprivileged fallback
  (``TRACEDPOOL_PY_SPY=off``). Target: within 2 s.
* **the watcher's idle cost**: CPU time of the watcher thread (from /proc, by its native
  thread id) over a window, as a percentage of one core, for an idle pool (nothing
  pending) and for a pool with one long CPU-bound task running, at the default timeout (60 s: one
  check every 5 s) and at a 1 s timeout (one check every 0.25 s, the busiest setting
  anyone would use). The whole parent process's CPU over the same window is shown too.
  Target: under 0.5% of one core.

Medians and extremes are printed as a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tests"):  # tracedpool, and the tests' fault injectors
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psutil  # noqa: E402
from faults import busy as busy_task  # noqa: E402
from faults import sleep_then  # noqa: E402

from tracedpool import TracedProcessPoolExecutor  # noqa: E402
from tracedpool._telemetry import names as N  # noqa: E402
from tracedpool.testing import square  # noqa: E402


def _running_pid(pool: Any, deadline: float) -> int:
    while time.monotonic() < deadline:
        running = pool.stats()["running"]
        if running:
            return int(next(iter(running)))
        time.sleep(0.01)
    raise RuntimeError("the task never started")


def detection_latency(timeout: float, rounds: int, report_dir: Path) -> list[float]:
    """Seconds from SIGSTOP to the report in on_stall, minus the timeout, per round."""
    overshoots = []
    for _ in range(rounds):
        got = threading.Event()
        seen: list[float] = []

        def on_stall(_report: dict[str, Any], seen: list[float] = seen, got: Any = got) -> None:
            seen.append(time.monotonic())
            got.set()

        pool = TracedProcessPoolExecutor(
            1,
            stall_timeout=timeout,
            stall_report_dir=report_dir,
            on_stall=on_stall,
            stall_action="break",
        )
        try:
            # A task burning CPU: progress until the moment it is stopped, so the stall
            # starts exactly at the SIGSTOP.
            future = pool.submit(busy_task, 120)
            pid = _running_pid(pool, time.monotonic() + 30)
            time.sleep(timeout / 2)
            t_stop = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            if not got.wait(timeout + 30):
                raise RuntimeError("no stall report")
            overshoots.append(seen[0] - t_stop - timeout)
            future.exception(timeout=30)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return overshoots


def snapshot_seconds(workers: int, rounds: int, report_dir: Path, py_spy: bool) -> list[float]:
    """The report's snapshot_seconds with every worker blocked in a task."""
    saved = os.environ.get(N.ENV_PY_SPY)
    if not py_spy:
        os.environ[N.ENV_PY_SPY] = "off"
    out = []
    try:
        for _ in range(rounds):
            reports: list[dict[str, Any]] = []
            got = threading.Event()

            def on_stall(report: dict[str, Any], reports: Any = reports, got: Any = got) -> None:
                reports.append(report)
                got.set()

            pool = TracedProcessPoolExecutor(
                workers,
                stall_timeout=1.0,
                stall_report_dir=report_dir,
                on_stall=on_stall,
                stall_action="break",
            )
            try:
                futures = [pool.submit(sleep_then, i, 60) for i in range(workers)]
                if not got.wait(60):
                    raise RuntimeError("no stall report")
                report = reports[0]
                methods = {p["stack_method"] for p in report["processes"] if p["role"] == "worker"}
                expected = "py-spy" if py_spy else "faulthandler signal dump"
                if not all(m.startswith(expected) for m in methods) or len(report["processes"]) != (
                    workers + 1
                ):
                    raise RuntimeError(f"unexpected snapshot methods: {methods}")
                out.append(float(report["snapshot_seconds"]))
                for f in futures:
                    f.exception(timeout=30)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if saved is None:
            os.environ.pop(N.ENV_PY_SPY, None)
        else:
            os.environ[N.ENV_PY_SPY] = saved
    return out


def _thread_cpu(native_id: int) -> float:
    """Seconds of CPU the thread used: /proc's schedstat (nanoseconds) where it exists,
    else psutil's clock-tick counts (10 ms resolution)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    for t in psutil.Process().threads():
        if t.id == native_id:
            return float(t.user_time + t.system_time)
    raise RuntimeError("watcher thread not found")


def watcher_cpu(
    timeout: float, busy: bool, window: float, report_dir: Path, workers: int = 1
) -> tuple[float, float]:
    """(watcher thread CPU, whole parent process CPU) as % of one core over ``window``.
    With one worker its task burns CPU (slow, never a stall, so the watcher keeps
    checking); with more, they sleep (a 60 s timeout leaves that unreported)."""
    pool = TracedProcessPoolExecutor(workers, stall_timeout=timeout, stall_report_dir=report_dir)
    try:
        assert pool.submit(square, 2).result(timeout=60) == 4  # the watcher exists now
        watcher = pool._tp_state.watcher  # type: ignore[attr-defined]
        thread = watcher._thread
        assert thread is not None and thread.native_id is not None
        futures = []
        if busy and workers == 1:
            futures.append(pool.submit(busy_task, window + 5))
        elif busy:
            futures += [pool.submit(sleep_then, i, window + 5) for i in range(workers)]
        time.sleep(0.5)  # settle: the worker started, the watcher is in its steady state
        if watcher.stalls:
            raise RuntimeError("a report during the measurement")
        proc = psutil.Process()
        t0, w0, p0 = time.monotonic(), _thread_cpu(thread.native_id), proc.cpu_times()
        time.sleep(window)
        t1, w1, p1 = time.monotonic(), _thread_cpu(thread.native_id), proc.cpu_times()
        if watcher.stalls:
            raise RuntimeError("a report during the measurement")
        elapsed = t1 - t0
        process = (p1.user + p1.system) - (p0.user + p0.system)
        for future in futures:
            future.cancel()
        return 100 * (w1 - w0) / elapsed, 100 * process / elapsed
    finally:
        for p in list((pool._processes or {}).values()):  # type: ignore[attr-defined]
            p.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _fmt(values: list[float], unit: str = "s", digits: int = 3) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} {unit} (min {min(values):.{digits}f}, max {max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, short windows")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement")
    parser.add_argument("--workers", type=int, default=8, help="workers in the snapshot test")
    parser.add_argument("--window", type=float, default=None, help="CPU window, seconds")
    args = parser.parse_args(argv)
    logging.getLogger("tracedpool").setLevel(logging.ERROR)  # the reports are expected
    rounds = args.rounds or (2 if args.quick else 5)
    window = args.window or (3.0 if args.quick else 30.0)

    report_dir = Path(tempfile.mkdtemp(prefix="tracedpool-stall-bench-"))
    rows: list[tuple[str, str, str]] = []
    lat = detection_latency(1.0, rounds, report_dir)
    rows.append(
        (
            "detection overshoot past stall_timeout=1 s (SIGSTOP to report written)",
            _fmt(lat),
            "≤ 1 s " + ("✓" if max(lat) <= 1.0 else "✗"),
        )
    )
    lat2 = detection_latency(4.0, max(1, rounds // 2), report_dir)
    rows.append(
        (
            "detection overshoot past stall_timeout=4 s",
            _fmt(lat2),
            "≤ 1 s " + ("✓" if max(lat2) <= 1.0 else "✗"),
        )
    )
    for py_spy in (True, False):
        snap = snapshot_seconds(args.workers, rounds, report_dir, py_spy)
        label = "py-spy" if py_spy else "fallback (faulthandler signal dump)"
        rows.append(
            (
                f"snapshot, parent + {args.workers} workers, {label}",
                _fmt(snap),
                "≤ 2 s " + ("✓" if max(snap) <= 2.0 else "✗"),
            )
        )
    for timeout, busy, workers in (
        (60.0, False, 1),
        (60.0, True, 1),
        (60.0, True, args.workers),
        (1.0, False, 1),
        (1.0, True, 1),
    ):
        w, p = watcher_cpu(timeout, busy, window, report_dir, workers)
        what = "idle, nothing pending"
        if busy:
            what = (
                "one long CPU-bound task running"
                if workers == 1
                else f"{workers} workers each running a long task"
            )
        rows.append(
            (
                f"watcher thread CPU, stall_timeout={timeout:g} s, {what}, {window:g} s window",
                f"{w:.3f}% of a core (whole parent process: {p:.3f}%)",
                "< 0.5% " + ("✓" if w < 0.5 else "✗"),
            )
        )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
        f"{platform.platform()}; Python {platform.python_version()}; load average {load:.2f}"
    )
    print(f"- command: python benchmarks/stall.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print()
    print("| measurement | median (min, max) | target |")
    print("|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    for path in report_dir.iterdir():
        path.unlink()
    report_dir.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
