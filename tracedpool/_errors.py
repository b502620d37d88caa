"""Exceptions tracedpool raises. Each subclasses the stdlib exception a drop-in user's
``except`` clause already catches."""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple


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


class PicklingFault(NamedTuple):
    """Where a pickling fault struck: what ``pickling_fault(exc)`` returns.

    ``stage`` is ``feeder-serialize``, ``worker-unpickle``, ``sendback`` or
    ``result-unpickle``; ``target`` is ``fn``, ``args[<i>]``, ``kwargs[<name>]``,
    ``result`` or ``exception``; ``type_name`` the failing object's type (may be empty);
    ``work_id`` the pool's number for the task. ``str()`` is one readable sentence, the
    same as the note tracedpool adds to the exception on 3.11+.
    """

    stage: str
    target: str
    type_name: str
    work_id: int

    def __str__(self) -> str:
        verb = "unpickle" if self.stage.endswith("unpickle") else "pickle"
        what = f"{self.target} ({self.type_name})" if self.type_name else self.target
        return f"could not {verb} {what} at stage {self.stage}"


#: The attribute tracedpool sets on an exception whose pickling fault it located.
FAULT_ATTR = "__tracedpool_fault__"


def pickling_fault(exc: BaseException | None) -> PicklingFault | None:
    """The located pickling fault behind ``exc``, or None: on every Python version
    (exception notes, which also carry it, exist only on 3.11+)."""
    value = getattr(exc, FAULT_ATTR, None) if exc is not None else None
    if isinstance(value, tuple) and len(value) == 4:
        return PicklingFault(*value)
    return None
