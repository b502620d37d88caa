"""``TracedProcessPoolExecutor``: the stdlib process pool, observed at every stage.

The data flow, with the six stages (S1-S6), where tracedpool watches them, and the module
that does it (``[observer]`` is ``tracedpool._pool.observer.PoolState``, the hooks'
observer; ``[cpython]`` the hooks themselves)::

    caller thread                 manager thread                feeder thread
    ---------------               ----------------              ---------------
    submit(fn, *a) --S1 submit--> work id queue
      samples once (caller ctx);    |
      a sampled call -> _Task       v
      + TaskRecord [emit]         add_call_item_to_queue
                                  TracedCallQueue.put [cpython] ---S2 enqueue---> buffer
                                    -> on_enqueue [observer]                    |
                                                          _Task.__reduce__ (pickling
                                                          starts) .. send_bytes wrapper
                                                          [observer] --S3 feeder-serialize-+
                                                                                   |
    worker process  <------------------------- call pipe -------------------------+
      TracedCallQueue.get (unpickle; a failure is located and reported) [cpython, wire]
      _Task.__call__ ---S4 worker-run--- fn(*a); task code's own spans are collected
      TracedResultQueue.put ---S5 sendback--- result item + stage timings [cpython]
                                   |
    result pipe  <-----------------+  (recv_bytes wrapper [observer])
                                  wait_result_broken_or_wakeup ---S6 manager-wake--->
                                    -> on_wait_start, on_wake [observer]: WakeRecord
                                  process_result_item -> on_result [observer]
                                    -> future done -> TaskRecord (its done-callback)
                                  terminate_broken -> on_broken [observer]
                                    -> take_inventory [breakage]: BreakInfo, and the
                                       exception each pending future fails with
                                                                         |
    emitter thread [emit]  <---------------------------------------------+
      PoolState.emit [observer]: the task span and its stage spans (emit.task_specs),
      manager wakes (emit.wake_spec), the pool and stall spans ([poolspans]), handed
      to the span sink [otel]

    status pipe (workers -> parent) [wire]: "work item N started on pid P", "work item N
    failed to unpickle", "the initializer failed"; drained every 64 manager wakes and at
    breakage, for forensics.

    log pipe (workers -> parent) [_worker.logs -> _pool.logs]: each log record as it is
    logged, one atomic frame; a reader thread of its own re-emits it in the parent's
    logging (a sampled task's records also ride in its result, as worker-run events).

    stall watcher thread [tracedpool._diagnosis.stall]: reads the pool through PoolViews
    [views]; while work is pending, compares futures completed and each worker's CPU and
    I/O counters; on a stall it snapshots every stack, writes a report, and marks the
    stuck tasks (a StallMark for the emitter [poolspans]). The metric reader's gauges
    read the same views.

A task that is not sampled (or any task with no SDK) travels unwrapped, exactly as the
stdlib sends it; only a sampled task is wrapped in _Task.

This module holds the executor class users construct: it validates the options, builds
the pool's ``PoolState`` and composes the rest (the hooks, the stall watcher, metrics).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from time import time_ns
from typing import Any

from .._diagnosis.forensics import BreakInfo
from .._diagnosis.stall import _DEFAULT as _STALL_DEFAULT
from .._diagnosis.stall import StallConfig, Watcher
from .._telemetry import metrics as _metrics
from .._telemetry import names as N
from .._telemetry.emit import TaskRecord, _bounded_repr
from .._telemetry.otel import Sink
from .._worker.lifeline import StartedBy
from .._worker.wire import StatusReader, _Task, qualname, worker_init
from . import breakage as _breakage
from . import cpython as _cpython
from .logs import LogListener
from .observer import PoolState, close_status

log = logging.getLogger("tracedpool")

_degraded_warned = False
_UNSET: Any = object()  # log_level not given: TRACEDPOOL_LOG_LEVEL, else WARNING


def _log_level(value: Any) -> int | None:
    """``log_level=`` (or ``TRACEDPOOL_LOG_LEVEL``) as a level number, or None for off."""
    if value is _UNSET:
        value = os.environ.get(N.ENV_LOG_LEVEL) or "WARNING"
        if value.strip().lower() in ("off", "none", "false", "no"):
            return None
        value = int(value) if value.strip().isdigit() else value.strip().upper()
        where = N.ENV_LOG_LEVEL
    else:
        where = "log_level"
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        raise TypeError("log_level must be a logging level (int or name), None or False")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        level = logging.getLevelNamesMapping().get(value.upper())
        if level is not None:
            return level
        raise ValueError(f"{where} must be a logging level name or number, not {value!r}")
    raise TypeError("log_level must be a logging level (int or name), None or False")


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


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
    log_level
        The lowest level of the records that workers send to the parent's ``logging``
        (default ``logging.WARNING``; env ``TRACEDPOOL_LOG_LEVEL``): each arrives under
        its logger's name with ``tracedpool_task_id``, ``tracedpool_worker_pid``,
        ``tracedpool_trace_id`` and ``tracedpool_span_id``, and a traced task's records
        are events on its ``worker-run`` span. The handlers a worker starts with are
        removed (the parent writes instead); those the ``initializer`` adds are kept.
        None or False: no capture, worker logging stays as the stdlib leaves it.
    """

    # Set in __init__ before anything reads it; the hooks see it as a PoolObserver.
    _tp_state: PoolState

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
        log_level: Any = _UNSET,
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
        level = _log_level(log_level)

        reader, writer = multiprocessing.Pipe(duplex=False)
        logs_pipe = multiprocessing.Pipe(duplex=False) if level is not None else None
        try:
            # StartedBy judges, in the thread that starts each worker, whether the
            # worker may die with that thread (tracedpool._worker.lifeline).
            options = {
                "dump_handler": stall.timeout is not None,
                "lifeline": StartedBy(),
                "forkserver_child": _cpython.release_forkserver_alive_fd,
                "forget_pools": _cpython.forget_owner_pools,
                "logs": (logs_pipe[1], level, os.getpid()) if logs_pipe is not None else None,
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
            for conn in logs_pipe or ():
                conn.close()
            raise
        state = PoolState(
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
        if logs_pipe is not None and level is not None:
            state.logs = LogListener(logs_pipe[0], logs_pipe[1], state.pool_id, level)
        state.stall_config = stall
        state.meter_provider_arg = meter_provider
        state.metrics = _metrics.metrics_for(meter_provider)
        if state.metrics is not None:
            # register(), not pools.add(): its finalizer keeps a collected pool's dropped
            # count, so the cumulative spans.dropped counter never goes down.
            state.metrics.register(state.views)
        state.hooked = _cpython.install_queue_hooks(self, state)
        if stall.timeout is not None and state.hooked:
            state.watcher = Watcher(state.views, stall, _cpython.interpreter_shutting_down)
        if state.hooked:
            _cpython.install_feeder_guard()
        else:
            _warn_degraded()
        weakref.finalize(self, close_status, state.status, writer)
        if state.logs is not None:
            weakref.finalize(self, _stop_idle_logs, state)

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
            raise _breakage.on_submit(st, e) from None
        watcher = st.watcher
        if watcher is not None and watcher.idle:
            _wake_watcher(watcher)
        return future

    def _submit_traced(
        self, st: PoolState, sink: Sink, sampled: Any, fn: Any, args: Any, kwargs: Any
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
            raise _breakage.on_submit(st, e) from None
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
        result_queue = _cpython.result_queue(self)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        st = self._tp_state
        if st.manager is None and result_queue is not None:
            # The manager never started (or has already finished): nothing else will
            # drop the reader's hook.
            _cpython.remove_reader_hook(result_queue)
            st.result_queue = None
            close_status(st.status, st.status_writer)  # no worker is left to write
            if st.logs is not None:
                st.logs.stop(timeout=2.0)
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
        and dropped (``span_records_dropped``: finished tasks' records,
        ``task_records_dropped``, plus manager wakes', ``wake_records_dropped``), workers'
        log records re-emitted here and dropped on the way (``log_records``,
        ``log_records_dropped``), stalls reported. Cheap: it reads the pool's own state
        and asks the OS nothing."""
        st = self._tp_state
        tasks, live = st.views.stats_facts()
        running: dict[int, list[dict[str, Any]]] = {}
        for task_id, function, pid, age in tasks:
            if pid is not None:
                running.setdefault(pid, []).append(
                    {"id": task_id, "function": function, "age_seconds": age}
                )
        watcher = st.watcher
        emitter = st.emitter
        return {
            "pool_id": st.pool_id,
            "pending": len(tasks),
            "running": running,
            "live_workers": live,
            "seconds_since_progress": (
                round(time.monotonic() - watcher.last_progress, 3)
                if watcher is not None and not watcher.idle
                else 0.0
            ),
            "span_backlog": emitter.waiting,
            "span_records_dropped": emitter.dropped,
            "task_records_dropped": emitter.dropped_tasks,
            "wake_records_dropped": emitter.dropped_wakes,
            "log_records": st.logs.received if st.logs is not None else 0,
            "log_records_dropped": st.logs.dropped if st.logs is not None else 0,
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


def _wake_watcher(watcher: Watcher) -> None:
    """Work is pending: start the stall watcher (after the first submit, so that under
    fork it never exists when workers are forked) or wake it from its idle sleep."""
    if watcher.started:
        watcher.wake()
    else:
        watcher.idle = False
        watcher.start()


def _stop_idle_logs(state: PoolState) -> None:
    """The executor is gone: close its log pipe unless a manager still runs its work
    (the manager then stops the reader at its exit)."""
    if state.manager is None and state.logs is not None:
        state.logs.stop(timeout=0)


def _warn_degraded() -> None:
    global _degraded_warned
    if not _degraded_warned:
        _degraded_warned = True
        log.warning(
            "tracedpool: this Python's concurrent.futures internals are not the ones "
            "tracedpool knows; only submit, completion and worker-side stages are traced "
            "and faults are located less precisely. The pool itself is unaffected."
        )
