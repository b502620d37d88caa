"""A program that exits with work in flight, for tests/test_exit.py.

Run as ``python exit_app.py MODE START_METHOD FACTS_FILE``. It sets up tracing with
``tracedpool.configure()`` (the embedded trace file: the test points
``TRACEDPOOL_TRACE_FILE`` at its temporary directory), starts a traced pool, puts work in
flight, writes the pids and start times of every process it started to FACTS_FILE, and
exits without shutting the pool down. MODE:

``normal``          falls off the end of the script while tasks run;
``sysexit``         ``sys.exit(3)`` from the main thread while tasks run;
``stopped-report``  one worker is SIGSTOPped; stall detector on (1 s), stall_action="report";
``stopped-break``   the same with stall_action='break'.

The stall report directory is ``TRACEDPOOL_TEST_REPORT_DIR``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from typing import Any

import psutil
from faults import sleep_then, stop_self_later

import tracedpool


def _states(pids: list[int]) -> list[str]:
    out: list[str] = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).status())
        except psutil.Error:
            continue  # already gone (the stall detector may have killed it)
    return out


def main(mode: str, start_method: str, facts_file: str) -> None:
    tracedpool.configure(service_name="exit-app")
    options: dict[str, Any] = {"stall_timeout": None}
    if mode.startswith("stopped-"):
        options = {
            "stall_timeout": 1.0,
            "stall_action": mode.split("-", 1)[1],
            "stall_report_dir": os.environ["TRACEDPOOL_TEST_REPORT_DIR"],
        }
    pool = tracedpool.TracedProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context(start_method), **options
    )
    first = pool.submit(sleep_then, "started", 0.05)
    if mode.startswith("stopped-"):
        pool.submit(stop_self_later, 0.1)
    futures = [pool.submit(sleep_then, i, 0.1) for i in range(10)]
    assert first.result(timeout=60) == "started"
    deadline = time.monotonic() + 30
    while len(pool._processes or {}) < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    if mode.startswith("stopped-"):
        # The stopped worker is what the exit must get past: wait until it is stopped.
        while time.monotonic() < deadline:
            if psutil.STATUS_STOPPED in _states(list(pool._processes)):  # type: ignore[attr-defined]
                break
            time.sleep(0.02)
    me = psutil.Process()
    facts = {
        "parent": os.getpid(),
        "workers": list(pool._processes),  # type: ignore[attr-defined]
        "children": [
            {"pid": p.pid, "create_time": p.create_time(), "name": p.name()}
            for p in me.children(recursive=True)
        ],
        "pending": sum(not f.done() for f in futures),
    }
    with open(facts_file + ".tmp", "w") as f:
        json.dump(facts, f)
    os.replace(facts_file + ".tmp", facts_file)
    print("EXITING", mode, flush=True)
    if mode == "sysexit":
        sys.exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:4])
