"""Tasks and initializers that log, for tests/test_worker_logs.py (importable by workers
under every start method)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

LOGGER = "logtasks"
log = logging.getLogger(LOGGER)


def info_and_warning(x: int) -> int:
    log.info("info from task %d", x)
    log.warning("warning from task %d", x)
    return x


def log_exception() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed in %s", "task")


def log_then_die() -> None:
    log.warning("about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)


def flood(n: int) -> int:
    for i in range(n):
        log.warning("flood record %d", i)
    return n


def from_a_thread() -> None:
    log.warning("from the task's thread")
    thread = threading.Thread(target=log.warning, args=("from another thread",))
    thread.start()
    thread.join()


def init_logs(text: str) -> None:
    log.warning("initializer says %s", text)


class _Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not picklable")

    def __str__(self) -> str:
        return "an-unpicklable-arg"


def unpicklable_arg() -> None:
    log.warning("formatted in the worker: %s", _Unpicklable())


class LogsWhenUnpickled:
    """An argument that logs while the worker unpickles it: after the previous task
    ended and before its own task starts."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_log_unpickled, ())


def _log_unpickled() -> LogsWhenUnpickled:
    log.warning("unpickled between tasks")
    return LogsWhenUnpickled.__new__(LogsWhenUnpickled)


def identity(x: object) -> object:
    return type(x).__name__


def warn_then_sleep(seconds: float) -> str:
    """A task that says what it waits for, then waits (a stall, for the detector)."""
    log.warning("waiting for the ledger lock held by job %d", 42)
    time.sleep(seconds)
    return "late"


ISOLATED = "logtasks.isolated"


def log_isolated() -> None:
    """Logs on a logger the parent set ``propagate = False`` on, with its own handler."""
    logging.getLogger(ISOLATED).warning("from a logger that does not propagate")


def init_basic_config(path: str) -> None:
    """An initializer configuring the worker's logging the usual way: basicConfig."""
    logging.basicConfig(level=logging.INFO, filename=path, format="%(levelname)s %(message)s")
    log.info("initializer configured logging")
