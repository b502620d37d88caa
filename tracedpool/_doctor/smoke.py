"""The ``smoke`` checks: a real traced pool of one worker, end to end. A task
round-trips (the first with the worker's start-up, then the median of 20), an
unpicklable argument is located at its stage and argument, and, with the SDK
installed, the task span and its stages reach an in-memory provider
(``tracedpool.testing.recording_provider``, the public helper users test with).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import threading
import time
from typing import Any

from .._telemetry import names as N
from .result import BUG_FIX, Check, Options
from .telemetry import dist_version


def _echo(value: Any) -> Any:
    return value


def _round_trip(pool: Any, value: int, timeout: float) -> None:
    # Not an assert: under `python -O` the task would never be submitted at all.
    got = pool.submit(_echo, value).result(timeout=timeout)
    if got != value:
        raise RuntimeError(f"a task returned {got!r} instead of {value!r}")


def smoke_checks(opts: Options) -> list[Check]:
    from .._errors import pickling_fault
    from .._pool.executor import TracedProcessPoolExecutor

    have_sdk = dist_version("opentelemetry-sdk") is not None
    provider = exporter = None
    if have_sdk:
        from ..testing import recording_provider

        provider, exporter = recording_provider()
    context = multiprocessing.get_context(opts.start_method) if opts.start_method else None
    method = (context or multiprocessing.get_context()).get_start_method()
    checks: list[Check] = []
    pool = TracedProcessPoolExecutor(
        1, context, tracer_provider=provider, name="doctor", stall_timeout=None
    )
    clean = False
    try:
        t0 = time.perf_counter()
        first = pool.submit(_echo, 1).result(timeout=opts.timeout)
        first_s = time.perf_counter() - t0
        laps = []
        for i in range(20):
            t = time.perf_counter()
            _round_trip(pool, i, opts.timeout)
            laps.append(time.perf_counter() - t)
        median = statistics.median(laps)
        checks.append(
            Check(
                "smoke.round-trip",
                "ok" if first == 1 else "fail",
                f"a task round-trips in {median * 1000:.2f} ms (median of 20; the first, "
                f"with the worker's start-up under {method}: {first_s * 1000:.0f} ms)",
                data={
                    "start_method": method,
                    "first_seconds": round(first_s, 6),
                    "median_seconds": round(median, 6),
                    "max_seconds": round(max(laps), 6),
                    "samples": len(laps),
                },
            )
        )
        located: tuple[str, str, str, int] | None = None
        try:
            pool.submit(_echo, threading.Lock()).result(timeout=opts.timeout)
        except TypeError as e:
            located = pickling_fault(e)
        except Exception as e:  # anything else is the finding: a fail below
            located = ("unexpected", type(e).__name__, str(e), -1)
        if located is not None and located[:2] == ("feeder-serialize", "args[0]"):
            checks.append(
                Check(
                    "smoke.fault-located",
                    "ok",
                    f"an unpicklable argument is located: {located[1]} ({located[2]}) at "
                    f"stage {located[0]}",
                    data={"stage": located[0], "target": located[1], "type": located[2]},
                )
            )
        else:
            checks.append(
                Check(
                    "smoke.fault-located",
                    "fail",
                    f"an unpicklable argument was not located (got {located!r})",
                    BUG_FIX,
                )
            )
        _round_trip(pool, 2, opts.timeout)
        clean = True
    except Exception as e:  # whatever stopped the pool is the finding
        checks.append(
            Check(
                "smoke.round-trip",
                "fail",
                f"a traced pool could not run a task: {type(e).__name__}: {e}",
                "run `tracedpool doctor --json` and read the limits and python checks",
                {"start_method": method},
            )
        )
    finally:
        if not clean:  # a hung worker must not hang the doctor's exit
            for wpid in pool._tp_state.views.worker_pids():
                with contextlib.suppress(OSError):
                    os.kill(wpid, signal.SIGKILL)
        pool.shutdown(wait=clean, cancel_futures=True)
    if exporter is None:
        checks.append(Check("smoke.spans", "skip", "opentelemetry-sdk is not installed"))
    else:
        names = {s.name for s in exporter.get_finished_spans()}
        expected = {N.SPAN_TASK, *N.STAGE_SPANS[:5]}
        missing = sorted(expected - names)
        count = len(exporter.get_finished_spans())
        checks.append(
            Check(
                "smoke.spans",
                "ok" if not missing else "fail",
                f"{count} spans reached the provider: the task span and its five stages"
                if not missing
                else f"spans missing from the provider: {', '.join(missing)}",
                None if not missing else "report this as a tracedpool bug",
                {"spans": count, "names": sorted(names)},
            )
        )
    return checks
