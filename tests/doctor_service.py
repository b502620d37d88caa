"""A small service for `tracedpool doctor --pid` tests: it runs a process pool in a given
state, prints ``ready <worker pids...>`` and waits to be killed.

    python tests/doctor_service.py {stopped,deadlock,idle,busy} [traced|stdlib] [method]
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def stop_self() -> int:
    """The worker stops itself, as a debugger or a frozen container would."""
    os.kill(os.getpid(), signal.SIGSTOP)
    return os.getpid()


def deadlock() -> None:
    """A worker deadlocked on a lock it already holds: no CPU, no I/O, for ever."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def spin() -> None:
    while True:
        pass


def noop() -> int:
    return os.getpid()


def main() -> None:
    mode = sys.argv[1]
    kind = sys.argv[2] if len(sys.argv) > 2 else "stdlib"
    method = sys.argv[3] if len(sys.argv) > 3 else "fork"
    context = multiprocessing.get_context(method)
    pool: Any
    if kind == "traced":
        from tracedpool import TracedProcessPoolExecutor

        pool = TracedProcessPoolExecutor(2, context, stall_timeout=None)
    else:
        pool = ProcessPoolExecutor(2, context)
    for f in [pool.submit(noop) for _ in range(4)]:
        f.result(timeout=60)
    task = {"stopped": stop_self, "deadlock": deadlock, "busy": spin, "idle": None}[mode]
    if task is not None:
        pool.submit(task)
    time.sleep(0.5)  # let the task reach its worker
    pids = sorted(pool._processes)  # type: ignore[attr-defined]
    print("ready", *pids, flush=True)
    time.sleep(300)  # the test kills this process (and the workers) long before


if __name__ == "__main__":
    main()
