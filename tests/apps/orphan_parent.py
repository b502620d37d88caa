"""A pool's owner for tests/test_orphans.py: starts a traced pool, puts its workers in
the state the test asks for, prints their pids as one JSON line, then waits to be
SIGKILLed.

usage: orphan_parent.py START_METHOD SCENARIO [plain]

Scenarios (two workers each):
  idle      both idle, waiting on the call queue
  busy      one in a 300 s sleep, one idle
  spin      one in a 300 s pure-Python loop, one idle
  native    one holding the GIL in native code (a long ``sum``), one idle
  stopped   one busy and one idle, both SIGSTOPped
  thread    the workers started by submit() from a thread that has since exited, both
            SIGSTOPped (3.11 to 3.13 start workers in the submitting thread)
  thread-busy     started so, one in a 300 s sleep, one idle, neither stopped
  thread-native   started so, one holding the GIL in native code, one idle
  lone-native     one worker only, started so, holding the GIL in native code: nothing
                  can end it before the GIL is released (the case the doctor reports)
``plain`` makes it a stdlib ProcessPoolExecutor, the control.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tracedpool import TracedProcessPoolExecutor


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_long() -> None:
    time.sleep(300)


def spin_long() -> None:
    end = time.monotonic() + 300
    while time.monotonic() < end:
        pass


def native_long() -> int:
    return sum(range(10**11))  # one C call: the GIL is not released until it returns


LONG = {
    "busy": sleep_long,
    "spin": spin_long,
    "native": native_long,
    "stopped": sleep_long,
    "thread-busy": sleep_long,
    "thread-native": native_long,
    "lone-native": native_long,
}


def start_workers(pool: Any) -> list[int]:
    """Every worker, each having run a task (so each is started, initialized, idle)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < pool._max_workers and time.monotonic() < deadline:
        futures = [pool.submit(pid_after, 0.3) for _ in range(2)]
        seen.update(f.result(timeout=60) for f in futures)
    return sorted(seen)


def main() -> None:
    method, scenario = sys.argv[1], sys.argv[2]
    plain = len(sys.argv) > 3 and sys.argv[3] == "plain"
    ctx = multiprocessing.get_context(method)
    cls = ProcessPoolExecutor if plain else TracedProcessPoolExecutor
    pool = cls(max_workers=1 if scenario == "lone-native" else 2, mp_context=ctx)
    if scenario.startswith(("thread", "lone")):
        out: list[list[int]] = []
        submitter = threading.Thread(target=lambda: out.append(start_workers(pool)))
        submitter.start()
        submitter.join()
        # join() returns before the OS thread is gone; its end sends the workers their
        # parent-death signal (SIGCONT here), which must come before the SIGSTOP below.
        time.sleep(0.5)
        pids = out[0]
    else:
        pids = start_workers(pool)
    if scenario in LONG:
        pool.submit(LONG[scenario])
        time.sleep(0.5)  # let a worker take it
    if scenario in ("stopped", "thread"):
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
    print(json.dumps({"owner": os.getpid(), "workers": pids}), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
