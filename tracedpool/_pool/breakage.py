"""Breakage analysis: why a pool broke, and the exception each of its futures fails with.

Called on the manager thread when the stdlib is about to declare the pool broken
(``take_inventory``) or a result failed to unpickle (``rescue``), on the caller's thread
when ``submit()`` meets a broken pool (``on_submit``), and on the emitter thread for a
lost task's span attributes (``span_attrs``, ``forced_attrs``). The facts come from
``tracedpool._diagnosis.forensics`` (dead workers, OOM kills) and from the manager's own
view of the pending work; the result is a ``BreakInfo`` kept on the pool's state.

It lives in the pool room, not next to forensics, because it reads the manager thread's
work items and locates faults in the stdlib's result messages (``cpython``).
"""

from __future__ import annotations

import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from .._diagnosis.forensics import (
    BreakInfo,
    ForcedShutdown,
    RssSampler,
    reap_dead_workers,
    role_of,
    stdlib_reason,
    summary,
)
from .._errors import PoolStalledError, ResultUnpicklingError, TracedBrokenProcessPool
from .._telemetry import metrics as _metrics
from .._telemetry import names as N
from .._worker.wire import StatusReader, annotate_fault
from . import cpython as _cpython

_STDLIB_BROKEN = (
    "A process in the process pool was terminated abruptly while the future was running or pending."
)


class BreakageFacts(Protocol):
    """The pool's state, as breakage analysis reads and writes it
    (``tracedpool._pool.observer.PoolState``)."""

    pool_id: str
    status: StatusReader
    oom_before: Any
    rss: RssSampler
    forced: ForcedShutdown | None
    stall_killed: frozenset[int]
    stall_break: tuple[str, str | None] | None
    last_buf: Any
    last_read_t: int
    last_read_n: int
    metrics: _metrics.PoolMetrics | None
    break_info: BreakInfo | None
    breaking: bool
    broken_excs: weakref.WeakSet[BaseException]

    @property
    def break_ready(self) -> Any: ...


def rescue(st: BreakageFacts, manager: Any, cause: Any) -> tuple[int, BaseException] | None:
    """A result message failed to unpickle (``rescue_unpicklable_results``): the work id
    and the exception to fail only its future with, or None if it cannot be attributed."""
    work_id, target = _cpython.locate_result_in_message(st.last_buf)
    st.last_buf = None
    items = dict(manager.pending_items())
    work_item = items.get(work_id) if work_id is not None else None
    if work_id is None or work_item is None:
        return None
    task = work_item.fn
    text = "".join(cause)
    last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    exc = ResultUnpicklingError(
        f"The {target} of task {st.pool_id}:{work_id} ({_cpython.task_name(task)}) could "
        f"not be unpickled in the parent: {last}. Only this future fails "
        "(rescue_unpicklable_results)."
    )
    exc.__cause__ = _cpython.remote_traceback(text)
    annotate_fault(exc, "result-unpickle", target, "", work_id)
    if st.metrics is not None:
        st.metrics.fault("result-unpickle", st)
    rec = getattr(task, "rec", None)
    if rec is not None:
        rec.fault = ("result-unpickle", target, "")
        rec.t_read = st.last_read_t
        rec.result_bytes = st.last_read_n
    return work_id, exc


def forced_attrs(forced: ForcedShutdown | None, pool_id: str) -> dict[str, Any]:
    """The workers-signalled event's attributes: who was signalled, and which tasks lost."""
    if forced is None:
        return {}
    return {
        N.ATTR_FORCED_OPERATION: forced.operation,
        N.ATTR_WORKER_SIGNAL: forced.signal,
        N.ATTR_FORCED_PIDS: forced.pids,
        N.ATTR_BROKEN_LOST: tuple(f"{pool_id}:{w}" for w in sorted(forced.pending)),
    }


def take_inventory(
    st: BreakageFacts,
    manager: Any,
    cause: Any,
    stdlib_message: str | None = None,
    enqueue_failed: bool = False,
) -> dict[int, BaseException]:
    """The pool is broken: take the inventory (dead workers, the cause, the tasks lost and
    where each ran), keep it as ``st.break_info``, and build the exception each pending
    future fails with, by work id."""
    processes = manager.worker_processes()
    if st.stall_killed:
        # The stall detector's break wakes this thread right after its SIGKILLs; the
        # workers may not have ended yet. Wait (bounded) so the report names them.
        for pid, process in processes.items():
            if pid in st.stall_killed:
                try:
                    process.join(timeout=1.0)
                except (ValueError, AssertionError, OSError):
                    pass  # closed or reaped already: nothing to wait for
    dead = reap_dead_workers(processes, st.oom_before, st.rss)
    st.status.drain()
    tasks = dict(manager.pending_items())  # work id -> work item
    running_on = {
        work_id: pid for pid, (work_id, _t) in st.status.started.items() if work_id in tasks
    }
    info = BreakInfo(reason="unknown", dead=dead, running_on=running_on, lost=sorted(tasks))
    info.forced = st.forced
    if st.forced is not None:
        for d in dead:  # killed on purpose, not by the OOM killer
            if d.pid in st.forced.pids:
                d.oom_suspected = False
    dead_pids = {d.pid for d in dead}
    faults = [f for f in st.status.faults if f.get("work_id") in tasks]
    if stdlib_message is not None:
        # The stdlib knows why (3.14+): its sentence leads, its reason is ours; a
        # cause is then the error that stopped a replacement worker from starting.
        info.stdlib_message = stdlib_message
        info.reason = stdlib_reason(stdlib_message)
        if cause is not None:
            info.cause_text = "".join(cause)
    elif cause is not None and enqueue_failed:
        info.reason = "enqueue-failed"
        info.cause_text = "".join(cause)
    elif cause is not None:
        text = "".join(cause)
        info.cause_text = text
        work_id, target = _cpython.locate_result_in_message(st.last_buf)
        if work_id is not None and work_id in tasks:
            info.reason = "result-unpickle-failed"
            info.culprits.add(work_id)
            last = text.strip().splitlines()[-1] if text.strip() else ""
            exc_type, _, message = last.partition(": ")
            info.fault = {
                "work_id": work_id,
                "stage": "result-unpickle",
                "target": target,
                "exc_type": exc_type,
                "message": message,
                "pid": None,
            }
            rec = getattr(tasks[work_id].fn, "rec", None)
            if rec is not None:
                rec.t_read = st.last_read_t
                rec.result_bytes = st.last_read_n
        else:
            info.reason = "result-read-failed"
    elif st.status.init_failures:
        info.reason = "initializer-failed"
        info.init_failure = st.status.init_failures[-1]
    elif faults:
        info.reason = "worker-unpickle-failed"
        info.fault = faults[-1]
        info.culprits.add(info.fault["work_id"])
    elif dead:
        info.reason = "worker-died"
    if info.reason in ("worker-died", "worker-unpickle-failed"):
        info.culprits.update(w for w, pid in running_on.items() if pid in dead_pids)
    if st.forced is not None and info.reason in ("worker-died", "unknown"):
        info.reason = "forced-shutdown"
    if st.stall_break is not None:
        info.reason = "stalled"
    if cause is None and info.cause_text is None:
        # gh-139462 (3.15): the stdlib lists the workers' nonzero exit codes as the
        # cause; keep that where the stdlib gives it.
        info.cause_text = _cpython.exit_code_listing([(d.pid, d.exitcode) for d in dead])
    st.last_buf = None
    info.task_ids = {w: f"{st.pool_id}:{w}" for w in tasks}
    info.names = {w: _cpython.task_name(item.fn) for w, item in tasks.items()}
    st.break_info = info
    if st.metrics is not None:
        st.metrics.pool_broken(info.reason, st)
        if info.fault is not None and info.fault.get("stage") != "feeder-serialize":
            st.metrics.fault(info.fault.get("stage") or "worker-unpickle", st)

    text = summary(info)
    failures: dict[int, BaseException] = {}
    for work_id in tasks:
        role = role_of(info, work_id)
        worker = info.dead_worker(running_on.get(work_id)) or info.primary()
        own = {
            "culprit": "this task caused it or ran on that worker",
            "bystander": f"this task was running on worker pid {running_on.get(work_id)}",
            "queued": "this task had not started",
        }[role]
        stalled = st.stall_break
        error_type = PoolStalledError if stalled is not None else TracedBrokenProcessPool
        prefix = (
            f"{_STDLIB_BROKEN} [tracedpool] The stall detector broke the pool: "
            f"{stalled[0]} (report: {stalled[1]})."
            if stalled is not None
            else f"{info.stdlib_message or _STDLIB_BROKEN} {text}"
        )
        exc = error_type(
            f"{prefix} Task {info.task_ids[work_id]} ({info.names[work_id]}): {own}.",
            diagnosis=stalled[0] if stalled is not None else None,
            report_path=stalled[1] if stalled is not None else None,
            reason=info.reason,
            worker_pid=worker.pid if worker else None,
            exitcode=worker.exitcode if worker else None,
            signal=worker.signal if worker else None,
            oom_suspected=worker.oom_suspected if worker else False,
            task_id=info.task_ids[work_id],
            task_role=role,
            lost_tasks=[info.task_ids[w] for w in info.lost],
            fault=info.fault or info.init_failure,
        )
        if info.cause_text is not None:
            exc.__cause__ = _cpython.remote_traceback(info.cause_text)
        elif info.fault is not None and info.fault.get("traceback"):
            exc.__cause__ = _cpython.remote_traceback(info.fault["traceback"])
        elif info.init_failure is not None and info.init_failure.get("traceback"):
            exc.__cause__ = _cpython.remote_traceback(info.init_failure["traceback"])
        st.broken_excs.add(exc)
        failures[work_id] = exc
    return failures


def on_submit(st: BreakageFacts, e: BrokenProcessPool) -> BrokenProcessPool:
    """What ``submit()`` raises on a broken pool: the stdlib's error with the inventory."""
    info = st.break_info
    if info is None and st.breaking:
        # The manager refused new work before it finished taking the inventory of
        # the breakage; the facts are moments away.
        st.break_ready.wait(5.0)
        info = st.break_info
    if info is None:
        return e
    d = info.primary()
    return TracedBrokenProcessPool(
        f"{e} {summary(info)}",
        reason=info.reason,
        worker_pid=d.pid if d else None,
        exitcode=d.exitcode if d else None,
        signal=d.signal if d else None,
        oom_suspected=d.oom_suspected if d else False,
        lost_tasks=[info.task_ids.get(w, str(w)) for w in info.lost],
        fault=info.fault or info.init_failure,
    )


def span_attrs(info: BreakInfo | None, work_id: int) -> dict[str, Any]:
    """The pool-broken event's attributes on the span of task ``work_id``."""
    if info is None:
        return {}
    pid = info.running_on.get(work_id)
    worker = info.dead_worker(pid) or info.primary()
    attrs: dict[str, Any] = {
        N.ATTR_BROKEN_REASON: info.reason,
        N.ATTR_BROKEN_ROLE: role_of(info, work_id),
        N.ATTR_BROKEN_LOST: tuple(info.task_ids.get(w, str(w)) for w in info.lost),
    }
    if worker is not None:
        attrs[N.ATTR_WORKER_PID] = worker.pid
        if worker.exitcode is not None:
            attrs[N.ATTR_WORKER_EXITCODE] = worker.exitcode
        if worker.signal is not None:
            attrs[N.ATTR_WORKER_SIGNAL] = worker.signal
            attrs[N.ATTR_WORKER_OOM] = worker.oom_suspected
        if worker.last_rss is not None:
            attrs[N.ATTR_WORKER_LAST_RSS] = worker.last_rss
    elif info.fault and info.fault.get("pid"):
        attrs[N.ATTR_WORKER_PID] = info.fault["pid"]
    return attrs
