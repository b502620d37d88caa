"""The pool's state and the hooks' observer: what the hooks report becomes records here.

``PoolState`` implements ``cpython.PoolObserver``. On the feeder thread it times the
write of a sampled task's call (``wrap_send_bytes``) and locates pickling faults; on the
manager thread it notes the enqueue, each wake and its reason, each result's stage
timings, and a broken pool (handing the analysis to ``breakage``). A sampled task's
``TaskRecord`` and each manager wake's ``WakeRecord`` go to the pool's emitter thread,
which calls back ``emit``: task spans are built in ``tracedpool._telemetry.emit``, the
pool's own spans in ``tracedpool._telemetry.poolspans``.

Everything the hooks call per task (``on_enqueue``, the send/recv wrappers, ``on_wake``,
``on_result``) is a plain method or closure here, reading plain attributes: no call is
added on the way to another module on that path.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from time import time_ns
from typing import Any

from opentelemetry import trace

from .._diagnosis.forensics import BreakInfo, ForcedShutdown, RssSampler, cgroup_oom_kills
from .._diagnosis.stall import StallConfig, Watcher
from .._telemetry import metrics as _metrics
from .._telemetry import names as N
from .._telemetry.emit import Emitter, TaskRecord, WakeRecord, task_specs, wake_spec
from .._telemetry.otel import Sink, resolve_sink
from .._telemetry.poolspans import POOL_END, StallMark, pool_spec, stall_spec
from .._telemetry.sdk import global_provider_unset
from .._worker.wire import StatusReader, annotate_fault, probe_parts
from . import breakage as _breakage
from . import cpython as _cpython
from .logs import LogListener
from .views import PoolViews

log = logging.getLogger("tracedpool")

_UNSET: Any = object()


class PoolState:
    """One pool's facts, and the hooks' observer (``cpython.PoolObserver``): what the
    hooks report becomes task and wake records here. Breakage analysis
    (``breakage``), the readers' views (``views``) and the pool's own spans
    (``tracedpool._telemetry.poolspans``) live in their own modules and work on these
    facts."""

    def __init__(
        self,
        executor: Any,
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
        self.result_queue: Any = _cpython.result_queue(executor)
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
        self.last_read_t = 0
        self.last_read_n = -1
        self._feeder_error = False
        self._internal_warned = False
        self.broken_excs: weakref.WeakSet[BaseException] = weakref.WeakSet()  # see is_broken_exc
        self.metrics: _metrics.PoolMetrics | None = None
        self.meter_provider_arg: Any = None
        self.metrics_dropped_seen = 0
        self.start_method = _cpython.start_method(executor)  # once: fork, spawn, forkserver
        self.logs: LogListener | None = None  # workers' log records (tracedpool._pool.logs)
        self.views = PoolViews(self)  # what the stall watcher and the metrics read

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
                self.last_read_t = time_ns()
                try:
                    self.last_read_n = buf.getbuffer().nbytes  # Connection gives a BytesIO
                except (AttributeError, ValueError, BufferError):
                    self.last_read_n = -1  # not a BytesIO after all: the size is unknown
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
                replaced = _breakage.rescue(self, manager, cause)
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

    def on_result(self, task: Any, meta: Any, exc: Any) -> None:
        rec = getattr(task, "rec", None)
        if rec is None:
            return
        rec.meta = meta
        rec.t_read = self.last_read_t
        rec.result_bytes = self.last_read_n
        w = self._wake
        if w is not None:
            w.served.append(rec)

    def on_force_shutdown(
        self, operation: str, signal_name: str, pids: tuple[int, ...], pending: frozenset[int]
    ) -> None:
        """terminate_workers() / kill_workers() was called: the tasks not done by now are
        lost by intent, and their spans say so."""
        self.forced = ForcedShutdown(operation, signal_name, pids, pending, time_ns())

    def on_broken(
        self,
        manager: Any,
        cause: Any,
        stdlib_message: str | None = None,
        enqueue_failed: bool = False,
    ) -> dict[int, BaseException]:
        if self.logs is not None:
            # What the workers logged before the break is handled first (bounded: the
            # reader may be inside a slow handler of the parent's).
            self.logs.drain(timeout=1.0)
        return _breakage.take_inventory(self, manager, cause, stdlib_message, enqueue_failed)

    def on_manager_start(self) -> None:
        # The stdlib forks a fork pool's first workers before it starts the manager
        # thread: no tracedpool thread exists while they are forked. Not at the first
        # wake: an untraced pool takes the hooked wake path only every 64th wake, and a
        # task that logs then hangs is exactly when its records are wanted.
        if self.logs is not None:
            self.logs.start()

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
        close_status(self.status, self.status_writer)
        if self.logs is not None:
            self.logs.stop(timeout=2.0)  # the workers are joined: all they wrote is read
        if (
            self.sink is not None
            and self.pool_trace is not None
            and self.emitter.thread is not None
        ):
            self.emitter.push(POOL_END)
        self.emitter.finish(timeout=0)

    # -- what task_specs reads of a breakage (emitter thread) ------------------------------------
    def is_broken_exc(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is one this pool's breakage failed a future with."""
        return exc is not None and exc in self.broken_excs

    def broken_attrs(self, work_id: int) -> dict[str, Any]:
        return _breakage.span_attrs(self.break_info, work_id)

    def forced_attrs(self) -> dict[str, Any]:
        return _breakage.forced_attrs(self.forced, self.pool_id)

    # -- emitter thread ------------------------------------------------------------------------
    def emit(self, item: Any) -> None:
        """Build one queued item's spans and hand them to the sink (the emitter's callback)."""
        sink = self.sink
        if sink is None:
            return
        if type(item) is TaskRecord:
            metrics = self.metrics
            if metrics is None and self.meter_provider_arg is None:
                metrics = _metrics.late_metrics(self.views)
            if metrics is not None:
                try:
                    metrics.record_task(item, self)
                except Exception:
                    self.internal_error("metrics", item)
            try:
                if sink.emit_task(item, self):
                    return
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
        elif type(item) is StallMark:
            pt = self.pool_trace
            if pt is not None:
                spec = stall_spec(item, sink.new_span_id(), pt[1], self.pool_id)
                sink.emit(pt[0], pt[2], pt[3], None, [spec])
        elif item is POOL_END:
            pt = self.pool_trace
            if pt is None:
                return
            executor = self.executor_ref()
            spec = pool_spec(
                pt[1],
                self.t_created,
                self.pool_id,
                self.parent_pid,
                self.name,
                self.start_method,
                _cpython.max_workers(executor) if executor is not None else None,
            )
            sink.emit(pt[0], pt[2], pt[3], None, [spec])


def close_status(status: StatusReader, writer: Any) -> None:
    status.close(writer)
