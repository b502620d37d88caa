"""``TracedProcessPoolExecutor``: the stdlib process pool, observed at every stage.

The data flow, with the six stages (S1-S6) and where tracedpool watches them::

    caller thread                 manager thread                feeder thread
    ---------------               ----------------              ---------------
    submit(fn, *a) --S1 submit--> work id queue
      samples once (caller ctx);    |
      a sampled call -> _Task       v
                                  add_call_item_to_queue
                                  TracedCallQueue.put ---S2 enqueue---> buffer
                                                                        |
                                                          _Task.__reduce__ (pickling
                                                          starts) .. send_bytes wrapper
                                                          ---S3 feeder-serialize---+
                                                                                   |
    worker process  <------------------------- call pipe -------------------------+
      TracedCallQueue.get (unpickle; a failure is located and reported)
      _Task.__call__ ---S4 worker-run--- fn(*a); task code's own spans are collected
      TracedResultQueue.put ---S5 sendback--- result item + stage timings
                                   |
    result pipe  <-----------------+
                                  wait_result_broken_or_wakeup ---S6 manager-wake--->
                                  process_result_item -> future done -> TaskRecord
                                                                         |
    emitter thread  <----------------------------------------------------+
      builds the task span and its stage spans, hands them to the span processors

    status pipe (workers -> parent): "work item N started on pid P", "work item N failed
    to unpickle", "the initializer failed"; drained every 64 manager wakes and at
    breakage, for forensics.

    stall watcher thread: while work is pending, compares futures completed and each
    worker's CPU and I/O counters; on a stall it snapshots every stack and writes a report.

A task that is not sampled (or any task with no SDK) travels unwrapped, exactly as the
stdlib sends it; only a sampled task is wrapped in _Task.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import sys
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from time import time_ns
from typing import Any

from opentelemetry import trace

from .._diagnosis.forensics import (
    BreakInfo,
    ForcedShutdown,
    RssSampler,
    cgroup_oom_kills,
    reap_dead_workers,
    role_of,
    stdlib_reason,
    summary,
)
from .._diagnosis.stall import _DEFAULT as _STALL_DEFAULT
from .._diagnosis.stall import StallConfig, Watcher, parent_threads, process_state
from .._errors import PoolStalledError, ResultUnpicklingError, TracedBrokenProcessPool
from .._telemetry import metrics as _metrics
from .._telemetry import names as N
from .._telemetry.emit import Emitter, TaskRecord, WakeRecord, _bounded_repr, task_specs, wake_spec
from .._telemetry.otel import Sink, SpanSpec, global_provider_unset, resolve_sink
from .._worker.lifeline import StartedBy
from .._worker.wire import StatusReader, _Task, annotate_fault, probe_parts, qualname, worker_init
from . import cpython as _cpython

log = logging.getLogger("tracedpool")

_STDLIB_BROKEN = (
    "A process in the process pool was terminated abruptly while the future was running or pending."
)
_UNSET: Any = object()
_POOL_END = object()
_degraded_warned = False


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


class _PoolState:
    """Everything tracedpool keeps per pool; the hooks' observer."""

    def __init__(
        self,
        executor: TracedProcessPoolExecutor,
        provider: Any,
        name: str | None,
        record_values: bool,
        redact: Any,
        record_exception_messages: bool,
        rescue: bool,
        status: StatusReader,
        status_writer: Any,
    ) -> None:
        self.executor_ref = weakref.ref(executor)
        self.pool_id = os.urandom(4).hex()
        self.name = name
        self.provider_arg = provider
        self.record_values = record_values
        self.redact = redact
        self.record_exception_messages = record_exception_messages
        self.rescue = rescue
        self.status = status
        self.status_writer = status_writer
        self.hooked = False
        self.sink: Sink | None = None
        self.sink_final = False
        self._sink_provider: Any = _UNSET
        self.pool_trace: tuple[int, int, int, Any] | None = None
        self.emitter = Emitter(self)
        self.t_created = time_ns()
        self.parent_pid = os.getpid()
        self.manager_name = ""
        self.manager: Any = None  # the pool's TracedManagerThread, once started
        self.result_queue: Any = executor._result_queue
        self.break_info: BreakInfo | None = None
        self.forced: ForcedShutdown | None = None  # terminate_workers() / kill_workers()
        # Set by the manager as it starts failing a broken pool's futures (and refusing
        # new ones), then once break_info is known: submit() waits for it, briefly.
        self.breaking = False
        self.break_ready = threading.Event()
        self.oom_before = cgroup_oom_kills()
        self.rss = RssSampler()
        self.completed = 0  # futures completed by the manager: progress for the watcher
        self.stall_break: tuple[str, str | None] | None = None
        self.stall_killed: frozenset[int] = frozenset()  # pids the stall detector killed
        self.watcher: Watcher | None = None
        self.stall_config: StallConfig | None = None
        self._wake: WakeRecord | None = None
        self.wakes = 0
        self.tracing = False  # a sink exists and the pool's own trace is sampled
        self.last_buf: Any = None
        self._last_read_t = 0
        self._last_read_n = -1
        self._feeder_error = False
        self._internal_warned = False
        self._broken_excs: weakref.WeakSet[BaseException] = weakref.WeakSet()
        self.metrics: _metrics.PoolMetrics | None = None
        self.meter_provider_arg: Any = None
        self.metrics_dropped_seen = 0
        self.start_method = _cpython.start_method(executor)  # once: fork, spawn, forkserver

    # -- sink ----------------------------------------------------------------------------------
    def current_sink(self) -> Sink | None:
        """The sink for this submit. Once resolved for a provider that cannot change
        (one passed in, or the global one once set: it can be set only once),
        ``sink_final`` lets ``submit`` read ``sink`` directly."""
        provider = self.provider_arg
        if provider is None:
            if not global_provider_unset():
                provider = trace.get_tracer_provider()
            else:
                return None
        if provider is self._sink_provider:
            return self.sink
        sink = self._refresh_sink(provider)
        self.sink_final = True
        return sink

    def _refresh_sink(self, provider: Any) -> Sink | None:
        try:
            sink = resolve_sink(provider)
        except Exception:
            self.internal_error("sink")
            sink = None
        if sink is not None and self.pool_trace is None:
            try:
                self.pool_trace = sink.new_trace(N.SPAN_POOL)
            except Exception:
                self.internal_error("sink")
        self.sink = sink
        self._sink_provider = provider
        self.tracing = sink is not None and self.pool_trace is not None
        return sink

    def internal_error(self, where: str, rec: TaskRecord | None = None) -> None:
        """tracedpool's own instrumentation failed (``where``): log the first time, with
        the traceback; if it was for one sampled task, its span gets an event too."""
        if rec is not None and rec.internal_error is None:
            rec.internal_error = (time_ns(), where)
        if not self._internal_warned:
            self._internal_warned = True
            log.warning(
                "tracedpool: instrumentation failed in %s; the pool is unaffected and "
                "further instrumentation errors are not logged",
                where,
                exc_info=True,
            )

    # -- hooks: feeder thread --------------------------------------------------------------------
    def wrap_send_bytes(self, send: Any) -> Any:
        from .._worker.wire import clear_feeder_task, feeder_task

        def send_bytes(buf: Any) -> None:
            task = feeder_task()
            rec = task.rec if task is not None else None
            if rec is None:
                send(buf)
                return
            rec.t_ser1 = time_ns()
            rec.payload_bytes = len(buf)
            try:
                send(buf)
            finally:
                rec.t_written = time_ns()
                clear_feeder_task()

        return send_bytes

    def on_feeder_error(self, e: BaseException, call_item: Any) -> None:
        if isinstance(e, BrokenPipeError) and (self.breaking or self.stall_break is not None):
            # The pool broke and the call pipe was closed under a blocked write: not a
            # pickling fault (the item's future fails with the breakage).
            return
        self._feeder_error = True
        if self.metrics is not None:
            self.metrics.fault("feeder-serialize", self)
        target, typename = probe_parts(call_item.fn, call_item.args, call_item.kwargs)
        annotate_fault(e, "feeder-serialize", target, typename, call_item.work_id)
        rec = getattr(call_item.fn, "rec", None)
        if rec is not None:
            rec.fault = ("feeder-serialize", target, typename)
            rec.t_ser1 = time_ns()

    # -- hooks: manager thread -------------------------------------------------------------------
    def on_enqueue(self, rec: TaskRecord, work_id: int) -> None:
        rec.work_id = work_id
        w = self._wake
        if w is not None:
            w.served.append(rec)

    def wrap_recv_bytes(self, recv: Any) -> Any:
        def recv_bytes(*args: Any) -> Any:
            buf = recv(*args)
            # A reference, not a copy, kept until the message is known to unpickle: a
            # message that fails can then be attributed (see on_wake).
            self.last_buf = buf
            if self.sink is not None:  # a sampled task may be waiting for its sendback end
                self._last_read_t = time_ns()
                try:
                    self._last_read_n = buf.getbuffer().nbytes  # Connection gives a BytesIO
                except (AttributeError, ValueError, BufferError):
                    self._last_read_n = -1  # not a BytesIO after all: the size is unknown
            return buf

        return recv_bytes

    def on_wait_start(self, t0: int) -> None:
        w = self._wake
        if w is not None:
            self._wake = None
            # A submit wake that found the call queue full served nobody: not worth a span.
            # Every other reason (shutdown, a death, a read error...) is.
            if w.served or w.reason != "submit":
                w.t_end = t0
                self.emitter.push_wake(w)

    def on_wake(
        self, t0: int, t1: int, result_item: Any, is_broken: bool, cause: Any, manager: Any
    ) -> tuple[int, BaseException] | None:
        self.wakes += 1
        if not self.wakes & 63:
            # Keep the status pipe from filling (~1 record per task, 64 KiB of room), and
            # note the workers' memory for a later OOM verdict.
            self.status.drain()
            self.rss.sample(manager.worker_processes())
        replaced = None
        if result_item is not None:
            reason = "result"
        elif is_broken:
            reason = "result-read-error" if cause is not None else "worker-died"
            # Not when the stall detector broke the read itself (it completed a result
            # cut short with zeros): that is the stall, not an unpicklable result.
            if cause is not None and self.rescue and self.stall_break is None:
                replaced = self._rescue(manager, cause)
        else:
            reason = self._wakeup_reason()
        if replaced is None and not is_broken:
            self.last_buf = None
        if self.tracing:
            self._wake = WakeRecord(t1, t1 - t0, "result-unpickle-rescued" if replaced else reason)
        if not self.manager_name:
            self.manager_name = manager.name
        return replaced

    def _wakeup_reason(self) -> str:
        executor = self.executor_ref()
        if _cpython.interpreter_shutting_down():
            return "exit"
        if executor is None:
            return "collected"
        if _cpython.shutdown_requested(executor):
            return "shutdown"
        if self._feeder_error:
            self._feeder_error = False
            return "feeder-error"
        return "submit"

    def _rescue(self, manager: Any, cause: Any) -> tuple[int, BaseException] | None:
        work_id, target = _cpython.locate_result_in_message(self.last_buf)
        self.last_buf = None
        items = dict(manager.pending_items())
        work_item = items.get(work_id) if work_id is not None else None
        if work_id is None or work_item is None:
            return None
        task = work_item.fn
        text = "".join(cause)
        last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        exc = ResultUnpicklingError(
            f"The {target} of task {self.pool_id}:{work_id} ({self._task_name(task)}) could "
            f"not be unpickled in the parent: {last}. Only this future fails "
            "(rescue_unpicklable_results)."
        )
        exc.__cause__ = _cpython.remote_traceback(text)
        annotate_fault(exc, "result-unpickle", target, "", work_id)
        if self.metrics is not None:
            self.metrics.fault("result-unpickle", self)
        rec = getattr(task, "rec", None)
        if rec is not None:
            rec.fault = ("result-unpickle", target, "")
            rec.t_read = self._last_read_t
            rec.result_bytes = self._last_read_n
        return work_id, exc

    def on_result(self, task: Any, meta: Any, exc: Any) -> None:
        rec = getattr(task, "rec", None)
        if rec is None:
            return
        rec.meta = meta
        rec.t_read = self._last_read_t
        rec.result_bytes = self._last_read_n
        w = self._wake
        if w is not None:
            w.served.append(rec)

    def on_force_shutdown(
        self, operation: str, signal_name: str, pids: tuple[int, ...], pending: frozenset[int]
    ) -> None:
        """terminate_workers() / kill_workers() was called: the tasks not done by now are
        lost by intent, and their spans say so."""
        self.forced = ForcedShutdown(operation, signal_name, pids, pending, time_ns())

    def forced_attrs(self) -> dict[str, Any]:
        forced = self.forced
        if forced is None:
            return {}
        return {
            N.ATTR_FORCED_OPERATION: forced.operation,
            N.ATTR_WORKER_SIGNAL: forced.signal,
            N.ATTR_FORCED_PIDS: forced.pids,
            N.ATTR_BROKEN_LOST: tuple(f"{self.pool_id}:{w}" for w in sorted(forced.pending)),
        }

    def on_broken(
        self, manager: Any, cause: Any, stdlib_message: str | None = None
    ) -> dict[int, BaseException]:
        processes = manager.worker_processes()
        if self.stall_killed:
            # The stall detector's break wakes this thread right after its SIGKILLs; the
            # workers may not have ended yet. Wait (bounded) so the report names them.
            for pid, process in processes.items():
                if pid in self.stall_killed:
                    try:
                        process.join(timeout=1.0)
                    except (ValueError, AssertionError, OSError):
                        pass  # closed or reaped already: nothing to wait for
        dead = reap_dead_workers(processes, self.oom_before, self.rss)
        self.status.drain()
        tasks = dict(manager.pending_items())  # work id -> work item
        running_on = {
            work_id: pid for pid, (work_id, _t) in self.status.started.items() if work_id in tasks
        }
        info = BreakInfo(reason="unknown", dead=dead, running_on=running_on, lost=sorted(tasks))
        info.forced = self.forced
        if self.forced is not None:
            for d in dead:  # killed on purpose, not by the OOM killer
                if d.pid in self.forced.pids:
                    d.oom_suspected = False
        dead_pids = {d.pid for d in dead}
        faults = [f for f in self.status.faults if f.get("work_id") in tasks]
        if stdlib_message is not None:
            # The stdlib knows why (3.14+): its sentence leads, its reason is ours; a
            # cause is then the error that stopped a replacement worker from starting.
            info.stdlib_message = stdlib_message
            info.reason = stdlib_reason(stdlib_message)
            if cause is not None:
                info.cause_text = "".join(cause)
        elif cause is not None:
            text = "".join(cause)
            info.cause_text = text
            work_id, target = _cpython.locate_result_in_message(self.last_buf)
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
                    rec.t_read = self._last_read_t
                    rec.result_bytes = self._last_read_n
            else:
                info.reason = "result-read-failed"
        elif self.status.init_failures:
            info.reason = "initializer-failed"
            info.init_failure = self.status.init_failures[-1]
        elif faults:
            info.reason = "worker-unpickle-failed"
            info.fault = faults[-1]
            info.culprits.add(info.fault["work_id"])
        elif dead:
            info.reason = "worker-died"
        if info.reason in ("worker-died", "worker-unpickle-failed"):
            info.culprits.update(w for w, pid in running_on.items() if pid in dead_pids)
        if self.forced is not None and info.reason in ("worker-died", "unknown"):
            info.reason = "forced-shutdown"
        if self.stall_break is not None:
            info.reason = "stalled"
        if cause is None and info.cause_text is None:
            # gh-139462 (3.15): the stdlib lists the workers' nonzero exit codes as the
            # cause; keep that where the stdlib gives it.
            info.cause_text = _cpython.exit_code_listing([(d.pid, d.exitcode) for d in dead])
        self.last_buf = None
        info.task_ids = {w: f"{self.pool_id}:{w}" for w in tasks}
        info.names = {w: self._task_name(item.fn) for w, item in tasks.items()}
        self.break_info = info
        if self.metrics is not None:
            self.metrics.pool_broken(info.reason, self)
            if info.fault is not None and info.fault.get("stage") != "feeder-serialize":
                self.metrics.fault(info.fault.get("stage") or "worker-unpickle", self)

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
            stalled = self.stall_break
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
            self._broken_excs.add(exc)
            failures[work_id] = exc
        return failures

    def on_manager_exit(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        # No reference to the finished manager may outlive it: the stdlib keys its
        # exit-time wakeups on manager threads weakly and expects them to be freed. The
        # result queue's reader holds a hook that refers back here: drop that cycle too.
        self.manager = None
        if self.result_queue is not None:
            _cpython.remove_reader_hook(self.result_queue)
        self.result_queue = None
        self.on_wait_start(time_ns())
        try:
            self.status.drain()
        except Exception:
            self.internal_error("manager-exit")
        # The manager exits only after joining the workers, and no worker is started
        # after it: close the status pipe now, so a shut-down pool holds no descriptor
        # (as the stdlib's holds none), rather than when the executor is collected.
        _close_status(self.status, self.status_writer)
        if (
            self.sink is not None
            and self.pool_trace is not None
            and self.emitter.thread is not None
        ):
            self.emitter.push(_POOL_END)
        self.emitter.finish(timeout=0)

    # -- the metrics' view (the metric reader's thread) -------------------------------------------
    def live_counts(self) -> tuple[int, int, int] | None:
        """(tasks not yet started on a worker, tasks running on one, live workers)."""
        executor = self.executor_ref()
        if executor is None:
            return None
        manager = self.manager
        in_flight = _cpython.pending_count(executor)
        running = 0
        live = 0
        if manager is not None:
            self.status.drain()
            processes = manager.worker_processes()
            pending = dict(manager.pending_items())
            running = sum(
                1
                for pid, (work_id, _t) in list(self.status.started.items())
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
        executor = self.executor_ref()
        if executor is not None:
            return _cpython.pending_count(executor)
        # The executor was dropped without shutdown() (it went out of scope, or the
        # program is exiting): the manager thread still runs what was submitted, and
        # interpreter exit waits for it, so a stall there still needs detecting.
        manager = self.manager
        if manager is not None and manager.is_alive():
            return len(manager.pending_items())
        return 0

    def worker_pids(self) -> list[int]:
        manager = self.manager
        return list(manager.worker_processes()) if manager is not None else []

    def _thread_roles(self) -> dict[int, str]:
        roles: dict[int, str] = {threading.main_thread().ident or 0: "main"}
        executor = self.executor_ref()
        feeder = _cpython.feeder_thread(executor) if executor is not None else None
        for thread, role in (
            (self.manager, "manager"),
            (feeder, "feeder"),
            (self.emitter.thread, "emitter"),
            (self.watcher._thread if self.watcher else None, "stall-watcher"),
        ):
            if thread is not None and thread.ident is not None:
                roles[thread.ident] = role
        return roles

    def stall_facts(self) -> dict[str, Any]:
        """The pool as the stall report describes it (no stacks of workers yet)."""
        manager = self.manager
        executor = self.executor_ref()
        self.status.drain()
        started = {w: (pid, t) for pid, (w, t) in self.status.started.items()}
        now = time_ns()
        tasks = []
        for work_id, item in manager.pending_items() if manager is not None else []:
            begun = started.get(work_id)
            stage = (
                "worker-run" if begun else ("call-queue" if item.future.running() else "pending")
            )
            tasks.append(
                {
                    "id": f"{self.pool_id}:{work_id}",
                    "function": self._task_name(item.fn),
                    "stage": stage,
                    "worker_pid": begun[0] if begun else None,
                    "age_seconds": round((now - begun[1]) / 1e9, 3) if begun else None,
                }
            )
        workers = [_process_facts(pid, "worker") for pid in self.worker_pids()]
        parent = _process_facts(os.getpid(), "parent")
        parent["threads"] = parent_threads(self._thread_roles())
        parent["stack_method"] = "sys._current_frames (in-process)"
        feeder = _cpython.feeder_thread(executor) if executor is not None else None
        config = self.stall_config
        return {
            "pool": {
                "id": self.pool_id,
                "name": self.name,
                "pid": os.getpid(),
                "max_workers": getattr(executor, "_max_workers", None),
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
        manager = self.manager
        if manager is None or self.sink is None:
            return  # only sampled tasks have a span to carry the event
        self.status.drain()
        now = time_ns()
        for pid in pids:
            begun = self.status.started.get(pid)
            if begun is None or (now - begun[1]) / 1e9 < threshold:
                continue
            item = manager.pending_item(begun[0])
            rec = getattr(item.fn, "rec", None) if item is not None else None
            if rec is not None and rec.slow is None:
                rec.slow = (now, round((now - begun[1]) / 1e9, 3), pid)

    def break_for_stall(self, diagnosis: str, report_path: str | None) -> None:
        """Make the manager take the broken-pool path: every pending future fails with
        PoolStalledError. Called by the watcher after it killed the stuck workers."""
        self.stall_break = (diagnosis, report_path)
        executor = self.executor_ref()
        if executor is not None:
            _cpython.wake_manager(executor)

    def unblock_manager_read(self, seconds: float) -> int:
        """The manager is stuck reading a truncated result: complete it (see
        _cpython.unblock_result_read); the read then fails and the pool breaks."""
        result_queue = self.result_queue
        manager = self.manager
        if result_queue is None or manager is None:
            return 0
        return _cpython.unblock_result_read(
            result_queue, lambda: manager.is_alive() and self.break_info is None, seconds
        )

    def on_stall_detected(self, report: dict[str, Any]) -> None:
        """Mark the stuck tasks' records (their spans carry the stall when they end) and
        emit a short tracedpool.stall span linked to them."""
        manager = self.manager
        stamp = (time_ns(), report["diagnosis"], report.get("report_path"))
        stuck = []
        for _work_id, item in manager.pending_items() if manager is not None else []:
            rec = getattr(item.fn, "rec", None)
            if rec is not None:
                rec.stall = stamp
                stuck.append(rec)
        if self.metrics is not None:
            self.metrics.stall(report["kind"], self)
        if self.sink is not None and self.pool_trace is not None:
            self.emitter.push(("stall", stamp, report["kind"], stuck), urgent=True)
            if self.emitter.thread is None:
                self.emitter.start()

    # -- forensics for callers -------------------------------------------------------------------
    def is_broken_exc(self, exc: BaseException | None) -> bool:
        return exc is not None and exc in self._broken_excs

    def broken_on_submit(self, e: BrokenProcessPool) -> BrokenProcessPool:
        info = self.break_info
        if info is None and self.breaking:
            # The manager refused new work before it finished taking the inventory of
            # the breakage; the facts are moments away.
            self.break_ready.wait(5.0)
            info = self.break_info
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

    def broken_attrs(self, work_id: int) -> dict[str, Any]:
        info = self.break_info
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

    def _task_name(self, fn: Any) -> str:
        if type(fn) is _Task:
            fn = fn.fn
        user = _cpython.map_user_function(fn)
        return qualname(user if user is not None else fn)

    # -- emitter thread ------------------------------------------------------------------------
    def emit(self, item: Any) -> None:
        sink = self.sink
        if sink is None:
            return
        if type(item) is TaskRecord:
            metrics = self.metrics
            if metrics is None and self.meter_provider_arg is None:
                metrics = _metrics.late_metrics(self)
            if metrics is not None:
                try:
                    metrics.record_task(item, self)
                except Exception:
                    self.internal_error("metrics", item)
            try:
                specs = task_specs(item, self)
            finally:
                # The exception's traceback can reach the feeder's frame, its call item and
                # so this record again: break that cycle now rather than wait for the GC.
                item.exc = None
                item.future = None
            sink.emit(item.trace_id, item.flags, item.trace_state, item.parent, specs)
        elif type(item) is WakeRecord:
            pt = self.pool_trace
            if pt is not None:
                sink.emit(pt[0], pt[2], pt[3], None, [wake_spec(item, self)])
        elif type(item) is tuple and item[0] == "stall":
            pt = self.pool_trace
            if pt is None:
                return
            (t, diagnosis, path), kind, stuck = item[1], item[2], item[3]
            stall_attrs: dict[str, Any] = {
                N.ATTR_STALL_DIAGNOSIS: diagnosis,
                N.ATTR_STALL_KIND: kind,
                N.ATTR_POOL_ID: self.pool_id,
            }
            if path:
                stall_attrs[N.ATTR_STALL_REPORT] = path
            links = [(r.trace_id, r.span_id, r.flags) for r in stuck]
            stall_spec = SpanSpec(
                N.SPAN_STALL,
                sink.new_span_id(),
                pt[1],
                0,
                t,
                time_ns(),
                stall_attrs,
                (),
                (True, kind),
                links,
            )
            sink.emit(pt[0], pt[2], pt[3], None, [stall_spec])
        elif item is _POOL_END:
            pt = self.pool_trace
            if pt is None:
                return
            executor = self.executor_ref()
            attrs: dict[str, Any] = {
                N.ATTR_POOL_ID: self.pool_id,
                N.ATTR_PROCESS_PID: self.parent_pid,
            }
            if self.name:
                attrs[N.ATTR_POOL_NAME] = self.name
            if self.start_method:
                attrs[N.ATTR_POOL_START_METHOD] = self.start_method
            if executor is not None:
                attrs[N.ATTR_POOL_MAX_WORKERS] = executor._max_workers  # type: ignore[attr-defined]
            spec = SpanSpec(
                N.SPAN_POOL, pt[1], 0, 0, self.t_created, time_ns(), attrs, (), None, ()
            )
            sink.emit(pt[0], pt[2], pt[3], None, [spec])


class TracedProcessPoolExecutor(_cpython.InternalsMixin):
    """A drop-in ``ProcessPoolExecutor`` that traces each task's stages and locates faults.

    Takes the stdlib constructor's arguments for the running Python, plus keyword-only
    options:

    tracer_provider
        The OpenTelemetry ``TracerProvider`` to use; None (default) means the global one,
        read at each submit. With no SDK configured, tracing costs nothing.
    name
        A name for the pool, recorded on its spans.
    record_values
        Record bounded (256 characters) reprs of arguments and results on task spans.
        False by default (env ``TRACEDPOOL_RECORD_VALUES``): only types, sizes and names
        are recorded. A callable is used as the redaction hook: it receives each repr
        and returns what to record.
    record_exception_messages
        Record exception messages and stack traces in ``exception`` events, as
        OpenTelemetry instrumentations do (default True; env
        ``TRACEDPOOL_RECORD_EXCEPTION_MESSAGES``).
    rescue_unpicklable_results
        When a task's result or exception cannot be unpickled in the parent, fail only
        that future with ``ResultUnpicklingError`` instead of breaking the whole pool,
        as the stdlib does. Off by default.
    meter_provider
        The OpenTelemetry ``MeterProvider`` for the pool's metrics (docs/names.md); None
        (default) means the global one. With none set, or ``NoOpMeterProvider()``,
        metrics cost nothing.
    """

    # Set in __init__ before anything reads it; the hooks see it as a PoolObserver.
    _tp_state: _PoolState

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        tracer_provider: Any = None,
        name: str | None = None,
        record_values: Any = None,
        record_exception_messages: bool | None = None,
        rescue_unpicklable_results: bool = False,
        stall_timeout: Any = _STALL_DEFAULT,
        stall_report_dir: Any = None,
        on_stall: Any = None,
        stall_action: str = "report",
        meter_provider: Any = None,
        **kwargs: Any,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if tracer_provider is not None and not hasattr(tracer_provider, "get_tracer"):
            raise TypeError("tracer_provider must be an OpenTelemetry TracerProvider or None")
        if meter_provider is not None and not hasattr(meter_provider, "get_meter"):
            raise TypeError("meter_provider must be an OpenTelemetry MeterProvider or None")
        if not isinstance(rescue_unpicklable_results, bool):
            raise TypeError("rescue_unpicklable_results must be a bool")
        if record_values is None:
            record_values = _env_flag(N.ENV_RECORD_VALUES, False)
        redact = None
        if callable(record_values):
            redact, record_values = record_values, True
        elif not isinstance(record_values, bool):
            raise TypeError("record_values must be a bool or a redaction callable")
        if record_exception_messages is None:
            record_exception_messages = _env_flag(N.ENV_RECORD_EXCEPTION_MESSAGES, True)
        elif not isinstance(record_exception_messages, bool):
            raise TypeError("record_exception_messages must be a bool")
        stall = StallConfig.from_options(stall_timeout, stall_report_dir, on_stall, stall_action)

        reader, writer = multiprocessing.Pipe(duplex=False)
        try:
            # StartedBy judges, in the thread that starts each worker, whether the
            # worker may die with that thread (tracedpool._worker.lifeline).
            options = {
                "dump_handler": stall.timeout is not None,
                "lifeline": StartedBy(),
                "forkserver_child": _cpython.release_forkserver_alive_fd,
            }
            super().__init__(
                max_workers,
                mp_context,
                worker_init,
                (writer, initializer, initargs, options),
                **kwargs,
            )
        except BaseException:
            reader.close()
            writer.close()
            raise
        state = _PoolState(
            self,
            tracer_provider,
            name,
            record_values,
            redact,
            record_exception_messages,
            rescue_unpicklable_results,
            StatusReader(reader),
            writer,
        )
        self._tp_state = state
        state.stall_config = stall
        state.meter_provider_arg = meter_provider
        state.metrics = _metrics.metrics_for(meter_provider)
        if state.metrics is not None:
            # register(), not pools.add(): its finalizer keeps a collected pool's dropped
            # count, so the cumulative spans.dropped counter never goes down.
            state.metrics.register(state)
        state.hooked = _cpython.install_queue_hooks(self, state)
        if stall.timeout is not None and state.hooked:
            state.watcher = Watcher(state, stall, _cpython.interpreter_shutting_down)
        if state.hooked:
            _cpython.install_feeder_guard()
        else:
            _warn_degraded()
        weakref.finalize(self, _close_status, state.status, writer)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        st = self._tp_state
        sink = st.sink if st.sink_final else st.current_sink()
        if sink is not None:
            try:
                sampled = sink.sample(N.SPAN_TASK, None)
            except Exception:
                st.internal_error("sampling")
                sampled = None
            if sampled is not None:
                return self._submit_traced(st, sink, sampled, fn, args, kwargs)
        # Not traced (no SDK, or not sampled): the call travels exactly as the stdlib
        # sends it. In a traced pool's workers, task code then runs under a
        # non-recording context, so its own spans are dropped with the task.
        try:
            future = super().submit(fn, *args, **kwargs)
        except BrokenProcessPool as e:
            raise st.broken_on_submit(e) from None
        watcher = st.watcher
        if watcher is not None and watcher.idle:
            _wake_watcher(watcher)
        return future

    def _submit_traced(
        self, st: _PoolState, sink: Sink, sampled: Any, fn: Any, args: Any, kwargs: Any
    ) -> Any:
        t0 = time_ns()
        rec = TaskRecord(st, t0, sampled)
        try:
            rec.worker_span_id = sink.new_span_id()
            named = fn
            if type(fn) is functools.partial:
                mapped = _cpython.map_user_function(fn)
                if mapped is not None:
                    named = mapped
                    rec.chunksize = len(args[0]) if args else 0
            # The name, not the callable: a record waiting for its spans must not keep
            # the user's objects (a bound method's object, a closure's cells). Not
            # cached: a cache keyed by the callable kept them for the pool's life, and a
            # weakly keyed one costs as much as naming afresh (docs/rationale.md).
            rec.fname = qualname(named)
            if rec.chunksize < 0:
                rec.arg_types = tuple(map(type, args))
            rec.kwarg_names = tuple(kwargs)
            rec.submit_thread = threading.current_thread().name
            if st.record_values:
                rec.args_repr = _bounded_repr((args, kwargs), st.redact)
        except Exception:
            st.internal_error("submit", rec)
        task = _Task(fn, args, kwargs, (sampled[0], rec.worker_span_id, sampled[2]), rec)
        # The stdlib numbers work items in submit(); read the number it is about to use,
        # and confirm it below (another thread may submit in between).
        predicted = _cpython.next_work_id(self)
        try:
            future = super().submit(task)
        except BrokenProcessPool as e:
            raise st.broken_on_submit(e) from None
        rec.t_submit1 = time_ns()
        confirmed = _cpython.confirm_work_id(self, predicted, task)
        if confirmed is not None:
            rec.work_id = confirmed
        elif rec.work_id < 0:  # cancelled before it was enqueued: the best guess
            rec.work_id = predicted
        if st.record_values:
            rec.future = future
        future.add_done_callback(rec)
        if st.emitter.thread is None:
            st.emitter.start()
        watcher = st.watcher
        if watcher is not None and watcher.idle:
            _wake_watcher(watcher)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        result_queue = self._result_queue
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        st = self._tp_state
        if st.manager is None and result_queue is not None:
            # The manager never started (or has already finished): nothing else will
            # drop the reader's hook.
            _cpython.remove_reader_hook(result_queue)
            st.result_queue = None
            _close_status(st.status, st.status_writer)  # no worker is left to write
        if wait:
            # The manager has exited, so every task record is queued: hand them to the
            # processors now, but never let a stuck processor hold shutdown for long.
            st = self._tp_state
            st.emitter.finish(timeout=2.0)
            if st.watcher is not None:
                st.watcher.stop()
                st.watcher.join(timeout=2.0)

    def stats(self) -> dict[str, Any]:
        """The live view: pending and running tasks (per worker pid, with ids and ages),
        live workers, seconds since the last progress, span records waiting to be built
        (``span_backlog``: a busy pool's spans are built once it is quiet, within 1 s)
        and dropped, stalls reported."""
        st = self._tp_state
        facts = st.stall_facts() if st.manager is not None else {"tasks": [], "workers": []}
        running: dict[int, list[dict[str, Any]]] = {}
        for task in facts["tasks"]:
            if task["worker_pid"] is not None:
                running.setdefault(task["worker_pid"], []).append(
                    {
                        "id": task["id"],
                        "function": task["function"],
                        "age_seconds": task["age_seconds"],
                    }
                )
        watcher = st.watcher
        live = [w for w in facts["workers"] if w.get("status") not in ("dead", "zombie")]
        return {
            "pool_id": st.pool_id,
            "pending": len(facts["tasks"]),
            "running": running,
            "live_workers": len(live),
            "seconds_since_progress": (
                round(time.monotonic() - watcher.last_progress, 3)
                if watcher is not None and not watcher.idle
                else 0.0
            ),
            "span_backlog": st.emitter.waiting,
            "span_records_dropped": st.emitter.dropped,
            "stalls_reported": watcher.stalls if watcher is not None else 0,
            "stall_reports": list(watcher.reports) if watcher is not None else [],
        }

    @property
    def pool_id(self) -> str:
        """This pool's id, the prefix of its task ids."""
        return self._tp_state.pool_id

    @property
    def broken_info(self) -> BreakInfo | None:
        """What broke this pool, once it is broken."""
        return self._tp_state.break_info


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


def _wake_watcher(watcher: Watcher) -> None:
    """Work is pending: start the stall watcher (after the first submit, so that under
    fork it never exists when workers are forked) or wake it from its idle sleep."""
    if watcher.started:
        watcher.wake()
    else:
        watcher.idle = False
        watcher.start()


def _close_status(status: StatusReader, writer: Any) -> None:
    status.close(writer)


def _warn_degraded() -> None:
    global _degraded_warned
    if not _degraded_warned:
        _degraded_warned = True
        log.warning(
            "tracedpool: this Python's concurrent.futures internals are not the ones "
            "tracedpool knows; only submit, completion and worker-side stages are traced "
            "and faults are located less precisely. The pool itself is unaffected."
        )
