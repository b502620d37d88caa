"""Exceptions tracedpool raises. Each subclasses the stdlib exception a drop-in user's
``except`` clause already catches."""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class TracedBrokenProcessPool(BrokenProcessPool):
    """A ``BrokenProcessPool`` that says what broke the pool.

    The message starts with the stdlib's own sentence and adds the worker pid, its exit
    code or signal, the tasks lost and what to try next. The same facts are attributes.
    """

    reason: str
    worker_pid: int | None
    exitcode: int | None
    signal: str | None
    oom_suspected: bool
    task_id: str | None
    task_role: str | None
    lost_tasks: tuple[str, ...]
    fault: dict[str, Any] | None

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.reason = facts.get("reason", "unknown")
        self.worker_pid = facts.get("worker_pid")
        self.exitcode = facts.get("exitcode")
        self.signal = facts.get("signal")
        self.oom_suspected = bool(facts.get("oom_suspected", False))
        self.task_id = facts.get("task_id")
        self.task_role = facts.get("task_role")
        self.lost_tasks = tuple(facts.get("lost_tasks", ()))
        self.fault = facts.get("fault")


class PoolStalledError(TracedBrokenProcessPool):
    """The stall detector broke the pool (``stall_action="break"``) instead of letting its
    futures wait for ever. Carries the diagnosis and the stall report's path."""

    diagnosis: str
    report_path: str | None

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.diagnosis = facts.get("diagnosis", "")
        self.report_path = facts.get("report_path")


class ResultUnpicklingError(pickle.UnpicklingError):
    """A task's result or exception could not be unpickled in the parent.

    Raised only with ``rescue_unpicklable_results=True``: the stdlib breaks the whole
    pool instead. The unpickling traceback is the ``__cause__``.
    """
