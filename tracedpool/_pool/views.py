"""The pool as its readers see it: the stall watcher, the metrics' gauges, ``stats()``.

``PoolViews`` answers from the pool's state without ever blocking the manager thread:
pending and running tasks, worker pids, the threads' roles, the facts a stall report
opens with. It also carries out the watcher's few commands (mark slow tasks, mark a
stall on the stuck tasks' spans, break the pool). It holds the state weakly: the state
owns it, and a watcher or a metric reader never keeps a dropped pool alive.

Readers: ``tracedpool._diagnosis.stall.Watcher`` and its heartbeat, and
``tracedpool._telemetry.metrics`` (``live_counts``), on their own threads; ``stats()``
(``stats_facts``) on the caller's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from time import time_ns
from typing import Any, Protocol

from .._diagnosis.forensics import BreakInfo
from .._diagnosis.stall import StallConfig, Watcher, parent_threads, process_state
from .._telemetry.poolspans import StallMark
from .._worker.wire import StatusReader
from . import cpython as _cpython
from .logs import LogListener


class ViewedState(Protocol):
    """The pool's state as the views read it (``tracedpool._pool.observer.PoolState``)."""

    pool_id: str
    name: str | None
    emitter: Any
    metrics: Any
    completed: int
    manager: Any
    break_info: BreakInfo | None
    stall_break: tuple[str, str | None] | None
    stall_killed: frozenset[int]
    executor_ref: weakref.ref[Any]
    logs: LogListener | None
    status: StatusReader
    sink: Any
    pool_trace: tuple[int, int, int, Any] | None
    result_queue: Any
    stall_config: StallConfig | None
    watcher: Watcher | None

    def internal_error(self, where: str, rec: Any = None) -> None: ...


class PoolViews:
    """Read-only views of one pool, and the stall watcher's commands to it."""

    def __init__(self, state: ViewedState) -> None:
        self._st: ViewedState = weakref.proxy(state)

    # -- the facts the watcher and the metric reader read or set ----------------------------
    @property
    def pool_id(self) -> str:
        return self._st.pool_id

    @property
    def name(self) -> str | None:
        return self._st.name

    @property
    def emitter(self) -> Any:
        return self._st.emitter

    @property
    def logs(self) -> LogListener | None:
        """The pool's worker-log reader, or None when capture is off."""
        return self._st.logs

    @property
    def log_level(self) -> str | None:
        """The lowest level workers send to the parent's logging, by name; None when
        the pool does not capture worker logs (its heartbeat says so to the doctor)."""
        logs = self._st.logs
        return None if logs is None else logging.getLevelName(logs.level)

    @property
    def metrics(self) -> Any:
        return self._st.metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        self._st.metrics = value

    @property
    def completed(self) -> int:
        return self._st.completed

    @property
    def manager(self) -> Any:
        return self._st.manager

    @property
    def break_info(self) -> Any:
        return self._st.break_info

    @property
    def stall_break(self) -> tuple[str, str | None] | None:
        return self._st.stall_break

    @stall_break.setter
    def stall_break(self, value: tuple[str, str | None] | None) -> None:
        self._st.stall_break = value

    @property
    def stall_killed(self) -> frozenset[int]:
        return self._st.stall_killed

    @stall_killed.setter
    def stall_killed(self, value: frozenset[int]) -> None:
        self._st.stall_killed = value

    def internal_error(self, where: str, rec: Any = None) -> None:
        self._st.internal_error(where, rec)

    # -- the metrics' view (the metric reader's thread) -------------------------------------------
    def live_counts(self) -> tuple[int, int, int] | None:
        """(tasks not yet started on a worker, tasks running on one, live workers)."""
        st = self._st
        executor = st.executor_ref()
        if executor is None:
            return None
        manager = st.manager
        in_flight = _cpython.pending_count(executor)
        running = 0
        live = 0
        if manager is not None:
            st.status.drain()
            processes = manager.worker_processes()
            pending = dict(manager.pending_items())
            running = sum(
                1
                for pid, (work_id, _t) in list(st.status.started.items())
                if work_id in pending and pid in processes
            )
            for process in processes.values():
                try:
                    live += process.exitcode is None
                except ValueError:
                    pass  # its handle is closed: not live
        return max(0, in_flight - running), running, live

    # -- the stall detector's view --------------------------------------------------------------
    def pending(self) -> int:
        st = self._st
        executor = st.executor_ref()
        if executor is not None:
            return _cpython.pending_count(executor)
        # The executor was dropped without shutdown() (it went out of scope, or the
        # program is exiting): the manager thread still runs what was submitted, and
        # interpreter exit waits for it, so a stall there still needs detecting.
        manager = st.manager
        if manager is not None and manager.is_alive():
            return len(manager.pending_items())
        return 0

    def worker_pids(self) -> list[int]:
        st = self._st
        manager = st.manager
        return list(manager.worker_processes()) if manager is not None else []

    def thread_roles(self) -> dict[int, str]:
        st = self._st
        roles: dict[int, str] = {threading.main_thread().ident or 0: "main"}
        executor = st.executor_ref()
        feeder = _cpython.feeder_thread(executor) if executor is not None else None
        for thread, role in (
            (st.manager, "manager"),
            (feeder, "feeder"),
            (st.emitter.thread, "emitter"),
            (st.watcher._thread if st.watcher else None, "stall-watcher"),
        ):
            if thread is not None and thread.ident is not None:
                roles[thread.ident] = role
        return roles

    def stats_facts(self) -> tuple[list[tuple[str, str, int | None, float | None]], int]:
        """What ``stats()`` reports, without psutil: the pending tasks as (id, function,
        worker pid or None, seconds running or None), and the live workers (a worker
        process that has not exited). Cheap enough to poll: ``stall_facts`` also asks the
        OS about every process, which ``stats()`` does not need (issue 13)."""
        st = self._st
        manager = st.manager
        if manager is None:
            return [], 0
        st.status.drain()
        started = {w: (pid, t) for pid, (w, t) in st.status.started.items()}
        now = time_ns()
        tasks: list[tuple[str, str, int | None, float | None]] = []
        for work_id, item in manager.pending_items():
            begun = started.get(work_id)
            tasks.append(
                (
                    f"{st.pool_id}:{work_id}",
                    _cpython.task_name(item.fn),
                    begun[0] if begun else None,
                    round((now - begun[1]) / 1e9, 3) if begun else None,
                )
            )
        live = 0
        for process in manager.worker_processes().values():
            try:
                live += process.exitcode is None
            except ValueError:
                pass  # its handle is closed: not live
        return tasks, live

    def stall_facts(self) -> dict[str, Any]:
        """The pool as the stall report describes it (no stacks of workers yet; each
        worker's last log records when the pool captures them)."""
        st = self._st
        manager = st.manager
        executor = st.executor_ref()
        st.status.drain()
        started = {w: (pid, t) for pid, (w, t) in st.status.started.items()}
        now = time_ns()
        tasks = []
        for work_id, item in manager.pending_items() if manager is not None else []:
            begun = started.get(work_id)
            stage = (
                "worker-run" if begun else ("call-queue" if item.future.running() else "pending")
            )
            tasks.append(
                {
                    "id": f"{st.pool_id}:{work_id}",
                    "function": _cpython.task_name(item.fn),
                    "stage": stage,
                    "worker_pid": begun[0] if begun else None,
                    "age_seconds": round((now - begun[1]) / 1e9, 3) if begun else None,
                }
            )
        workers = [_process_facts(pid, "worker") for pid in self.worker_pids()]
        logs = st.logs
        if logs is not None:  # what each worker logged last: often why it is stuck
            for w in workers:
                w["recent_logs"] = logs.recent_records(w["pid"])
        parent = _process_facts(os.getpid(), "parent")
        parent["threads"] = parent_threads(self.thread_roles())
        parent["stack_method"] = "sys._current_frames (in-process)"
        feeder = _cpython.feeder_thread(executor) if executor is not None else None
        config = st.stall_config
        return {
            "pool": {
                "id": st.pool_id,
                "name": st.name,
                "pid": os.getpid(),
                "max_workers": _cpython.max_workers(executor) if executor is not None else None,
                "start_method": _cpython.start_method(executor) if executor is not None else "?",
                "stall_timeout": config.timeout if config else None,
                "stall_action": config.action if config else None,
                "python": sys.version.split()[0],
            },
            "tasks": tasks,
            "parent": parent,
            "workers": workers,
            "manager_alive": manager is not None and manager.is_alive(),
            "feeder_alive": feeder is None or feeder.is_alive(),
            "feeder_backlog": _cpython.feeder_backlog(executor) if executor is not None else 0,
        }

    def note_slow_tasks(self, pids: list[int], threshold: float) -> None:
        """Tasks running longer than ``threshold`` seconds on these workers, which are
        still using CPU: slow, not stuck. Their spans get one slow-task event."""
        st = self._st
        manager = st.manager
        if manager is None or st.sink is None:
            return  # only sampled tasks have a span to carry the event
        st.status.drain()
        now = time_ns()
        for pid in pids:
            begun = st.status.started.get(pid)
            if begun is None or (now - begun[1]) / 1e9 < threshold:
                continue
            item = manager.pending_item(begun[0])
            rec = getattr(item.fn, "rec", None) if item is not None else None
            if rec is not None and rec.slow is None:
                rec.slow = (now, round((now - begun[1]) / 1e9, 3), pid)

    def break_for_stall(self, diagnosis: str, report_path: str | None) -> None:
        """Make the manager take the broken-pool path: every pending future fails with
        PoolStalledError. Called by the watcher after it killed the stuck workers."""
        st = self._st
        st.stall_break = (diagnosis, report_path)
        executor = st.executor_ref()
        if executor is not None:
            _cpython.wake_manager(executor)

    def unblock_manager_read(self, seconds: float) -> int:
        """The manager is stuck reading a truncated result: complete it (see
        _cpython.unblock_result_read); the read then fails and the pool breaks."""
        st = self._st
        result_queue = st.result_queue
        manager = st.manager
        if result_queue is None or manager is None:
            return 0
        return _cpython.unblock_result_read(
            result_queue, lambda: manager.is_alive() and st.break_info is None, seconds
        )

    def on_stall_detected(self, report: dict[str, Any]) -> None:
        """Mark the stuck tasks' records (their spans carry the stall when they end) and
        emit a short tracedpool.stall span linked to them."""
        st = self._st
        manager = st.manager
        stamp = (time_ns(), report["diagnosis"], report.get("report_path"))
        stuck = []
        for _work_id, item in manager.pending_items() if manager is not None else []:
            rec = getattr(item.fn, "rec", None)
            if rec is not None:
                rec.stall = stamp
                stuck.append(rec)
        if st.metrics is not None:
            st.metrics.stall(report["kind"], self)
        if st.sink is not None and st.pool_trace is not None:
            st.emitter.push(StallMark(stamp, report["kind"], stuck), urgent=True)
            if st.emitter.thread is None:
                st.emitter.start()


def _process_facts(pid: int, role: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"pid": pid, "role": role}
    try:
        import psutil

        proc = psutil.Process(pid)
        with proc.oneshot():
            facts["status"] = process_state(proc.status())
            cpu = proc.cpu_times()
            facts["cpu_seconds"] = round(cpu.user + cpu.system, 3)
            facts["rss_bytes"] = proc.memory_info().rss
    except Exception as e:
        facts["status"] = "dead" if type(e).__name__ == "NoSuchProcess" else f"unknown ({e})"
    return facts
