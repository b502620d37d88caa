"""Every use of CPython-private names lives here, and nowhere else in the package.

``concurrent.futures.process`` keeps its machinery in private classes whose details change
between (and within) minor versions. This module feature-probes what it needs once, at
import, citing the CPython change each branch follows, and exposes three hooks to the
rest of tracedpool:

* ``TracedCallQueue``: the call queue's class, swapped in on the instance (never
  constructed: ``_SafeQueue.__init__``'s signature changed within 3.12.x and 3.13.x,
  gh-125451). Gives the enqueue moment, feeder pickling faults, and in the worker the
  call item's unpickling.
* ``TracedResultQueue``: the result queue's class, swapped likewise. In the worker it
  attaches stage timings to the result item and locates sendback pickling faults.
* ``TracedManagerThread``: the manager thread, a subclass started by our own
  ``_start_executor_manager_thread``. Gives manager wakes, result delivery, broken-pool
  forensics, and the fixes for gh-116685 and gh-136655.

Each hook hands plain facts to an ``observer`` (the pool's ``observer.PoolState``) and
never raises: an exception escaping a manager or feeder hook would kill that thread and
hang every pending future. ``PoolObserver`` lists everything the hooks call or touch on
it, and nothing else.
"""

from __future__ import annotations

import concurrent.futures.process as _cfp
import inspect
import io
import logging
import multiprocessing.queues as _mpq
import os
import pickle
import pickletools
import select
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from typing import Any, Protocol

from .._worker import wire as _wire
from .._worker.wire import _Task

time_ns = time.time_ns

#: The stdlib's own words for a broken pool, which submit() raises (3.10 to 3.15).
_STDLIB_BROKEN_ON_SUBMIT = (
    "A child process terminated abruptly, the process pool is not usable anymore"
)

# -- feature probes ------------------------------------------------------------------------
_REQUIRED = (
    "_ExecutorManagerThread",
    "_SafeQueue",
    "_CallItem",
    "_ResultItem",
    "_WorkItem",
    "_RemoteTraceback",
    "_process_chunk",
    "_threads_wakeups",
)
_MANAGER_METHODS = (
    "wait_result_broken_or_wakeup",
    "process_result_item",
    "terminate_broken",
    "flag_executor_shutting_down",
    "add_call_item_to_queue",
)

#: True when every internal the stage hooks rely on is present (3.10 to 3.15
#: as read in 2026). On an unknown layout tracedpool degrades to what the public API
#: shows (submit, completion, worker-side timings) and warns once.
HOOKS_AVAILABLE: bool = all(hasattr(_cfp, n) for n in _REQUIRED) and all(
    hasattr(getattr(_cfp, "_ExecutorManagerThread", object), m) for m in _MANAGER_METHODS
)

#: bpo-44733 (3.11) added ``max_tasks_per_child`` and ``_ResultItem.exit_pid``.
HAS_MAX_TASKS_PER_CHILD: bool = (
    "max_tasks_per_child" in inspect.signature(_cfp.ProcessPoolExecutor.__init__).parameters
)

#: GH-140900 (main, 3.15) replaces dead or retired workers from the manager thread with
#: ``_replace_dead_worker``; the gh-115634 and gh-119592 workarounds must then stand down.
HAS_REPLACE_DEAD_WORKER: bool = hasattr(
    getattr(_cfp, "_ExecutorManagerThread", object), "_replace_dead_worker"
)

#: gh-152967 (3.14.10+): the manager fails the futures with its own sentence when the
#: pool cannot go on (the executor was collected, a forced shutdown, a replacement worker
#: that could not start), passed as ``terminate_broken(cause, bpe_message)``.
TERMINATE_TAKES_MESSAGE: bool = HOOKS_AVAILABLE and (
    "bpe_message" in inspect.signature(_cfp._ExecutorManagerThread.terminate_broken).parameters
)


def _names_used(func: Any) -> set[str]:
    """The global and attribute names *func*'s code reads, nested code included."""
    names: set[str] = set()
    stack = [getattr(func, "__code__", None)]
    while stack:  # with its comprehensions' code (nested before 3.12, PEP 709)
        code = stack.pop()
        if code is not None:
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return names


#: gh-139462 (3.15): with no known cause, the stdlib's BrokenProcessPool has a cause
#: listing every worker that exited with a nonzero code.
LISTS_EXIT_CODES: bool = HOOKS_AVAILABLE and "exitcode" in _names_used(
    getattr(_cfp._ExecutorManagerThread, "_terminate_broken", None)
)

#: 3.14: ``terminate_workers()`` and ``kill_workers()`` signal every worker through
#: ``_force_shutdown(operation)`` and leave the pool broken.
HAS_FORCE_SHUTDOWN: bool = HOOKS_AVAILABLE and hasattr(_cfp.ProcessPoolExecutor, "_force_shutdown")
#: The operations it accepts, and the signal each sends.
FORCE_SHUTDOWN_SIGNALS = {"terminate": "SIGTERM", "kill": "SIGKILL"}


def exit_code_listing(exits: list[tuple[int, int | None]]) -> str | None:
    """What 3.15's stdlib puts in the cause of a break with no known cause, from
    (pid, exit code) of the workers that ended; None where it puts nothing."""
    if not LISTS_EXIT_CODES:
        return None
    lines = [
        f"Process {pid} terminated abruptly with exit code {code}"
        for pid, code in exits
        if code is not None and code != 0
    ]
    return "\n".join(lines) if lines else None


#: gh-125451 (3.12.0-3.12.7, 3.13.0): the manager holds ``shutdown_lock`` while it joins
#: the feeder thread (``_join_executor_internals``), and the feeder's error path takes the
#: same lock to wake the manager: a pickling error during shutdown deadlocks both. Fixed
#: upstream by giving ``_ThreadWakeup`` its own lock, which also dropped ``shutdown_lock``
#: from ``_SafeQueue``; its presence there marks the affected versions.
FEEDER_LOCK_ORDER_HAZARD: bool = (
    HOOKS_AVAILABLE
    and "shutdown_lock" in inspect.signature(_cfp._SafeQueue.__init__).parameters
    and hasattr(_cfp._ExecutorManagerThread, "_join_executor_internals")
)

if HOOKS_AVAILABLE:
    _CallItem: Any = _cfp._CallItem
    _ResultItem: Any = _cfp._ResultItem
    _process_chunk: Any = _cfp._process_chunk
    _ManagerBase: Any = _cfp._ExecutorManagerThread
    _SafeQueueBase: Any = _cfp._SafeQueue
    RemoteTraceback: Any = _cfp._RemoteTraceback
else:  # pragma: no cover - only on an unknown future layout
    _CallItem = _ResultItem = _process_chunk = None
    _ManagerBase = threading.Thread
    _SafeQueueBase = _mpq.Queue

    class RemoteTraceback(Exception):  # type: ignore[no-redef]
        def __init__(self, tb: str) -> None:
            self.tb = tb

        def __str__(self) -> str:
            return str(self.tb)


def _probe_fast_wait() -> tuple[bool, bool]:
    """Whether the manager's wait can be served by a persistent poll set: (usable, clear
    under ``shutdown_lock``).

    The stdlib's ``wait_result_broken_or_wakeup`` (identical in 3.10 to 3.15 but for the
    lock) builds a new selector over the result pipe, the wakeup pipe and every worker's
    sentinel on every wake, and another one to drain the wakeup pipe: ~60 of the ~200
    Python calls the manager spends per task. ``TracedManagerThread._poll_wait`` keeps
    one ``select.poll`` set for as long as the worker set is unchanged and gives the
    same answers. 3.10 clears the wakeup pipe under ``shutdown_lock``; gh-105829
    (3.11.5+, 3.12.0+) dropped the lock there, and so do we where the stdlib has.
    """
    if not HOOKS_AVAILABLE or not hasattr(select, "poll"):
        return False, False
    names = _names_used(_ManagerBase.wait_result_broken_or_wakeup)
    expected = {"result_queue", "_reader", "thread_wakeup", "processes", "sentinel", "clear"}
    return expected <= names, "shutdown_lock" in names


FAST_WAIT, _WAIT_CLEARS_UNDER_LOCK = _probe_fast_wait()

#: gh-94777: a worker that dies while the feeder writes a call leaves the feeder blocked
#: for ever, and terminate_broken's join of it with it. 3.11.x closes the parent's copy
#: of the call queue's read end in terminate_broken; 3.12+ closes it through
#: ``Queue._terminate_broken`` (gh-107219); 3.10 does neither, so tracedpool
#: does it there.
TERMINATE_CLOSES_CALL_READER: bool = HOOKS_AVAILABLE and bool(
    {"_reader", "_terminate_broken"}
    & set(getattr(getattr(_ManagerBase.terminate_broken, "__code__", None), "co_names", ()))
)


def remote_traceback(text: str) -> BaseException:
    """The stdlib's carrier for a traceback text, used as an exception's ``__cause__``."""
    return RemoteTraceback(f"\n'''\n{text}'''")  # type: ignore[no-any-return]


def map_user_function(fn: Any) -> Any:
    """For ``map()``'s ``partial(_process_chunk, user_fn)``, the user's function; else None."""
    func = getattr(fn, "func", None)
    if func is not None and func is _process_chunk:
        args = fn.args
        return args[0] if args else None
    return None


def interpreter_shutting_down() -> bool:
    return bool(getattr(_cfp, "_global_shutdown", False))


WORKER = _wire.WORKER


class PoolObserver(Protocol):
    """The pool's state, as the hooks here see it: what they report, what they read.

    Implemented by ``tracedpool._pool.observer.PoolState``. Every method is called from a
    hook that must not fail its thread, and each such call is guarded: a method that
    raises is reported through ``internal_error`` by the hook.
    """

    # Read on the manager thread at every wake (the cheap untraced path).
    tracing: bool  # a sink exists and the pool's own trace is sampled
    wakes: int  # manager wakes so far; upkeep runs every 64th
    last_buf: Any  # the last raw result message, kept to locate an unpicklable one
    completed: int  # futures completed: progress, for the stall detector
    # Set by the stall detector to break the pool; read by the manager's wait.
    stall_break: tuple[str, str | None] | None
    # Set by the hooks.
    manager: Any  # the pool's TracedManagerThread, once it starts
    breaking: bool  # the manager started failing a broken pool's futures
    # Read at the executor level.
    hooked: bool  # the queue hooks are in place (install_queue_hooks succeeded)
    result_queue: Any  # the stdlib's result queue, kept past shutdown(wait=False)

    @property
    def break_ready(self) -> threading.Event:
        """Set once a breakage's inventory (or its failure) is known."""
        ...

    def internal_error(self, where: str, rec: Any = None) -> None:
        """A hook's call into the observer raised: log once, never raise; ``rec``, the
        sampled task's record it was for, if any (its span then says so)."""

    # Installed on the queues before the first submit.
    def wrap_send_bytes(self, send: Callable[..., Any]) -> Callable[..., Any]: ...
    def wrap_recv_bytes(self, recv: Callable[..., Any]) -> Callable[..., Any]: ...

    # Feeder thread.
    def on_feeder_error(self, e: BaseException, call_item: Any) -> None: ...

    # Manager thread.
    def on_enqueue(self, rec: Any, work_id: int) -> None: ...
    def on_wait_start(self, t0: int) -> None: ...
    def on_wake(
        self,
        t0: int,
        t1: int,
        result_item: Any,
        is_broken: bool,
        cause: Any,
        manager: TracedManagerThread,
    ) -> tuple[int, BaseException] | None:
        """Returns (work id, exception) to deliver in place of an unpicklable result."""
        ...

    def on_result(self, task: _Task, meta: list[Any], exc: BaseException | None) -> None: ...
    def on_broken(
        self,
        manager: TracedManagerThread,
        cause: Any,
        stdlib_message: str | None = None,
        enqueue_failed: bool = False,
    ) -> dict[int, BaseException]:
        """The exception each pending future of a broken pool fails with, by work id.
        ``enqueue_failed``: ``cause`` is the error from putting a call on the call queue,
        not from reading a result."""
        ...

    def on_manager_start(self) -> None:
        """First thing on the manager thread: a fork pool's first workers exist."""
        ...

    def on_manager_exit(self) -> None: ...

    # Caller's thread (3.14+).
    def on_force_shutdown(
        self, operation: str, signal_name: str, pids: tuple[int, ...], pending: frozenset[int]
    ) -> None: ...


# -- call queue ----------------------------------------------------------------------------
class TracedCallQueue(_SafeQueueBase):  # type: ignore[misc]
    """The call queue's class, swapped onto the stdlib instance (never constructed).

    Parent side: ``put`` on the manager thread marks the enqueue stage;
    ``_on_queue_feeder_error`` on the feeder thread locates pickling faults. Worker side
    (the class travels with the queue to every worker): ``get`` locates a call item
    that fails to unpickle and reports it before the worker dies as the stdlib makes it.
    """

    # Class-level defaults: under spawn the worker's copy is rebuilt by __setstate__,
    # which restores only the stdlib's own state.
    _tp_observer: PoolObserver | None = None
    _tp_buf: Any = None

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        # Manager thread. Only a sampled task (wrapped in _Task) has stages to time.
        if obj is not None and type(obj.fn) is _Task:
            rec = obj.fn.rec
            observer = self._tp_observer
            if rec is not None and observer is not None:
                rec.work_id = obj.work_id  # exact, whatever submit() could tell
                rec.t_enqueue = time_ns()
                try:
                    observer.on_enqueue(rec, obj.work_id)
                except BaseException:  # a hook must never fail the manager thread
                    observer.internal_error("enqueue", rec)
        super().put(obj, block, timeout)

    def _on_queue_feeder_error(self, e: BaseException, obj: Any) -> None:
        # Pickling failed, so no send clears the item being fed: clear it here, or the
        # next call sent (an unsampled one) is timed on the failed task's record, and
        # the failed call stays reachable from this thread until then.
        _wire.clear_feeder_task()
        observer = self._tp_observer
        if observer is not None and isinstance(obj, _CallItem):
            try:
                observer.on_feeder_error(e, obj)
            except BaseException:
                observer.internal_error("feeder-error")
        try:
            if observer is not None and isinstance(obj, _CallItem) and FEEDER_LOCK_ORDER_HAZARD:
                self._fail_item_without_deadlock(e, obj)
            else:
                super()._on_queue_feeder_error(e, obj)
        except BaseException as raised:
            # Failing the future runs its done-callbacks on this feeder thread; one that
            # raises a BaseException would end the feeder, and every later task of the
            # pool would wait for ever (3.10 to 3.15). Log it and keep feeding.
            _callback_raised(raised, "feeder")

    def _fail_item_without_deadlock(self, e: BaseException, obj: Any) -> None:
        """The stdlib's feeder-error steps, minus the gh-125451 deadlock: never wait for
        ``shutdown_lock`` while the manager holds it to join this very thread (it needs
        no wake-up then: it is already shutting down)."""
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        e.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
        work_item = self.pending_work_items.pop(obj.work_id, None)
        lock = self.shutdown_lock
        manager = getattr(self._tp_observer, "manager", None)
        while True:
            if lock.acquire(timeout=0.05):
                try:
                    if not getattr(self.thread_wakeup, "_closed", False):
                        self.thread_wakeup.wakeup()
                finally:
                    lock.release()
                break
            if manager is None or getattr(manager, "_tp_joining", False):
                break
        if work_item is not None:
            work_item.future.set_exception(e)

    def _start_thread(self) -> None:
        super()._start_thread()
        thread = self._thread
        if thread is not None and self._tp_observer is not None:
            _remember_feeder(thread, self, thread._target, thread._args)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # Worker side. The stdlib unpickles the call item inside Queue.get, outside any
        # try: a failure kills the worker with no word to the parent. Keep the raw bytes
        # (a reference, no copy) so a failure can be located and reported first.
        recv: Any = self._recv_bytes  # type: ignore[has-type]
        if not getattr(recv, "_tp_wrapped", False):
            self._recv_bytes = _keep_last_buffer(self, recv)
        self._tp_buf = None
        try:
            obj = super().get(block, timeout)
        except BaseException as e:
            buf = self._tp_buf
            self._tp_buf = None
            if buf is not None:
                _wire.report_worker_unpickle_failure(WORKER.status_fd, buf, e, failing_opcode)
            raise
        self._tp_buf = None
        if obj is not None:
            _wire.record_start(obj.work_id)
        return obj


_FEEDERS: weakref.WeakKeyDictionary[threading.Thread, tuple[Any, Any, Any, int]] = (
    weakref.WeakKeyDictionary()
)


def _remember_feeder(thread: threading.Thread, queue: Any, target: Any, args: Any) -> None:
    """Keep what restarting a feeder needs. Thread.run() deletes its target and args when
    it ends, before the excepthook runs. Nothing kept here may hold the queue or the
    thread strongly: the entry must die with the thread, as the stdlib's objects do."""
    onerror = next((i for i, a in enumerate(args) if getattr(a, "__self__", None) is queue), -1)
    kept = tuple(None if i == onerror else a for i, a in enumerate(args))
    _FEEDERS[thread] = (weakref.ref(queue), target, kept, onerror)


_previous_excepthook: Any = None
_guard_lock = threading.Lock()


def install_feeder_guard() -> None:
    """Keep a call-queue feeder alive when pickling raises a non-``Exception``.

    ``Queue._feed`` catches only ``Exception``: an argument whose ``__reduce__`` raises
    ``SystemExit`` (or any other ``BaseException``) ends the feeder thread silently, and
    every later task of the pool waits for ever. ``threading.excepthook`` still sees the
    dying thread, with its thread-locals: fail that one task with a ``PicklingError``
    naming the part, release the queue slot as ``_feed`` does for an ``Exception``, and
    start a new feeder on the same buffer. Other threads go to the previous hook.
    """
    global _previous_excepthook
    with _guard_lock:
        if _previous_excepthook is not None:
            return
        _previous_excepthook = threading.excepthook
        threading.excepthook = _feeder_excepthook


def _feeder_excepthook(args: Any) -> None:
    entry = _FEEDERS.pop(args.thread, None) if args.thread is not None else None
    if entry is None:
        _previous_excepthook(args)
        return
    queue_ref, target, kept, onerror = entry
    queue = queue_ref()
    if queue is None:
        _previous_excepthook(args)
        return
    targs = tuple(queue._on_queue_feeder_error if i == onerror else a for i, a in enumerate(kept))
    try:
        _recover_feeder(queue, target, targs, args.exc_value, args.exc_traceback)
    except BaseException:
        # The recovery itself failed: say so (once per pool, with its traceback), then
        # let the previous hook report the feeder's death as it would without us.
        observer = queue._tp_observer
        if observer is not None:
            observer.internal_error("feeder-recover")
        _previous_excepthook(args)


def _recover_feeder(
    queue: Any, target: Any, targs: Any, exc: BaseException | None, tb: Any
) -> None:
    _wire.clear_feeder_task()
    call_item = _item_being_fed(tb)
    if call_item is not None and exc is not None:
        target_name, typename = _wire.probe_parts(call_item.fn, call_item.args, call_item.kwargs)
        err = pickle.PicklingError(
            f"Could not pickle {target_name} ({typename}): pickling it raised "
            f"{type(exc).__name__}({exc}), which would have killed the pool's feeder thread"
        )
        # Without its traceback: the dead feeder's frames would keep the queue alive for
        # as long as the caller keeps this exception.
        err.__context__ = exc.with_traceback(None)
        # What _feed does for an Exception: free the queue slot, then report the item.
        queue._sem.release()
        queue._on_queue_feeder_error(err, call_item)
    feeder = threading.Thread(target=target, args=targs, name="QueueFeederThread", daemon=True)
    _remember_feeder(feeder, queue, target, targs)
    feeder.start()
    queue._thread = feeder


def _item_being_fed(tb: Any) -> Any:
    """The call item the dead feeder was pickling: ``obj`` in ``Queue._feed``'s frame,
    which the traceback keeps alive."""
    feed_code = getattr(getattr(_mpq.Queue, "_feed", None), "__code__", None)
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is feed_code:
            obj = frame.f_locals.get("obj")
            return obj if isinstance(obj, _CallItem) else None
        tb = tb.tb_next
    return None


def _keep_last_buffer(queue: TracedCallQueue, recv: Callable[..., Any]) -> Callable[..., Any]:
    def recv_bytes(*args: Any) -> Any:
        buf = recv(*args)
        queue._tp_buf = buf
        WORKER.last_recv_ns = time_ns()
        return buf

    recv_bytes._tp_wrapped = True  # type: ignore[attr-defined]
    return recv_bytes


# -- result queue --------------------------------------------------------------------------
class TracedResultQueue(_mpq.SimpleQueue):  # type: ignore[type-arg]
    """The result queue's class, swapped onto the stdlib instance.

    Worker side only: attaches the task's stage timings (and worker-side spans) to the
    ``_ResultItem`` as an extra attribute the stdlib ignores, and, when pickling the
    result or exception fails, says which one and for which task before the stdlib's
    own fallback sends the pickling error instead (the stdlib outcome is kept).
    """

    def put(self, obj: Any) -> None:
        is_item = type(obj) is _ResultItem
        if is_item:
            meta = WORKER.pending_meta
            if meta is not None:
                meta[_wire.M_SEND0] = time_ns()
                obj.tracedpool = meta
        try:
            super().put(obj)
        except BaseException as e:
            if is_item:
                target = "exception" if obj.exception is not None else "result"
                failed = obj.exception if obj.exception is not None else obj.result
                failed = getattr(failed, "exc", failed)  # unwrap _ExceptionWithTraceback
                _wire.annotate_fault(e, "sendback", target, type(failed), obj.work_id)
                obj.__dict__.pop("tracedpool", None)
            raise
        if is_item:
            WORKER.pending_meta = None
            # Between tasks nothing runs for a work item: a record logged now (a
            # finalizer, another thread's timer) must not carry the last task's id.
            WORKER.current_work_id = -1
            if WORKER.logs_unsent:  # the task's dropped log records: say so now, not
                WORKER.logs_flush()  # when this worker next starts a task (maybe never)


# -- installing the hooks on an executor ---------------------------------------------------
def install_queue_hooks(executor: Any, observer: PoolObserver) -> bool:
    """Swap the queue classes on a freshly constructed executor; False if not possible."""
    if not HOOKS_AVAILABLE:
        return False
    call_queue = executor._call_queue
    result_queue = executor._result_queue
    if type(call_queue) is not _SafeQueueBase or type(result_queue) is not _mpq.SimpleQueue:
        return False
    call_queue.__class__ = TracedCallQueue
    call_queue._tp_observer = observer
    result_queue.__class__ = TracedResultQueue
    # Queue._start_thread binds _send_bytes into the feeder at the first put, so the
    # wrapper must be in place before any submit.
    call_queue._send_bytes = observer.wrap_send_bytes(call_queue._send_bytes)
    reader: Any = result_queue._reader  # type: ignore[attr-defined]
    reader._recv_bytes = observer.wrap_recv_bytes(reader._recv_bytes)
    return True


def next_work_id(executor: Any) -> int:
    """The work id the stdlib will give the next submitted item."""
    return int(executor._queue_count)


def snapshot_items(shared: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """The items of a dict other threads change (submit() adds pending work items, the
    manager removes them). ``list(d.items())`` can raise "dictionary changed size during
    iteration": each item tuple it builds may start a garbage collection, whose
    finalizers run Python code and so can hand the GIL to another thread. Seen under
    chaos as a RuntimeError escaping submit(). Retry; the race is rare."""
    for _ in range(16):
        try:
            return list(shared.items())
        except RuntimeError:
            continue
    return list(shared.copy().items())


def confirm_work_id(executor: Any, predicted: int, fn: Any) -> int | None:
    """The work id ``fn`` really got (another thread may have submitted meanwhile), or
    None once its item has left the pending dict: then the manager has already put it
    on the call queue (``TracedCallQueue.put`` records the exact id), or dropped it
    cancelled. Returning the prediction there gave two tasks one id when 16 threads
    submitted at once (seen on 3.15)."""
    items = executor._pending_work_items
    item = items.get(predicted)
    if item is not None and item.fn is fn:
        return predicted
    for work_id, work_item in snapshot_items(items):
        if work_item.fn is fn:
            return int(work_id)
    return None


def future_outcome(future: Any) -> tuple[str, BaseException | None, Any]:
    """(outcome, exception, result) of a done future, without taking its lock again
    (it runs in the future's own done-callback, where the state is final)."""
    state = future._state
    if state in ("CANCELLED", "CANCELLED_AND_NOTIFIED"):
        return "cancelled", None, None
    exc = future._exception
    if exc is not None:
        return "exception", exc, None
    return "result", None, future._result


def remove_reader_hook(result_queue: Any) -> None:
    """Drop the result reader's instance-level hook once the manager is done reading: it
    refers to the reader's own bound method, a cycle only the GC would free."""
    reader = getattr(result_queue, "_reader", None)
    if reader is not None:
        reader.__dict__.pop("_recv_bytes", None)


def shutdown_requested(executor: Any) -> bool:
    return bool(executor._shutdown_thread)


def feeder_backlog(executor: Any) -> int:
    call_queue = executor._call_queue
    buffer = getattr(call_queue, "_buffer", None) if call_queue is not None else None
    return len(buffer) if buffer is not None else 0


def start_method(executor: Any) -> str:
    ctx = getattr(executor, "_mp_context", None)
    return str(ctx.get_start_method()) if ctx is not None else "?"


def feeder_thread(executor: Any) -> threading.Thread | None:
    call_queue = executor._call_queue
    return getattr(call_queue, "_thread", None) if call_queue is not None else None


def pending_count(executor: Any) -> int:
    return len(executor._pending_work_items)


def result_queue(executor: Any) -> Any:
    """The pool's result queue (None once ``shutdown()`` has dropped it)."""
    return executor._result_queue


def max_workers(executor: Any) -> int | None:
    value = getattr(executor, "_max_workers", None)
    return value if isinstance(value, int) else None


def task_name(fn: Any) -> str:
    """The name of a pending work item's callable: the user's function for a sampled task
    (``_Task``) and for ``map()``'s chunks, as a span or a report names it."""
    if type(fn) is _Task:
        fn = fn.fn
    user = map_user_function(fn)
    return _wire.qualname(user if user is not None else fn)


# -- the owner's pools, in a forked worker ---------------------------------------------------
def forget_owner_pools() -> None:
    """In a new worker: empty its copy of the stdlib's registry of live pools
    (``_threads_wakeups``).

    A forked worker inherits the owner's registry, and at its exit ``_python_exit`` (run
    by ``threading._shutdown``, which ends every worker) wakes each pool listed there: a
    write into the owner's pipe under the wake-up's lock (3.12.8+, 3.13.1+, 3.14+:
    gh-125451). If another of the owner's threads held that lock at the fork (a submit
    to another pool, or its teardown), the worker's copy of it is never released: the
    worker never exits, and the shutdown that joins it waits for ever. A worker has no
    pool of the owner's to wake; pools its own tasks create register later, and are
    kept. A spawned worker's registry is empty already."""
    registry = getattr(_cfp, "_threads_wakeups", None)
    if registry is not None:
        registry.clear()


# -- the fork server's alive pipe, in a worker ------------------------------------------------
def release_forkserver_alive_fd() -> None:
    """In a worker the fork server started: close its copy of the fork server's "alive"
    pipe (write end), so that the fork server exits as soon as the owner does.

    ``ForkServer.connect_to_new_process`` sends the owner's ``_forkserver_alive_fd`` to
    every child, and ``_serve_one`` stores it in the child's ``_forkserver`` (3.4 to
    3.13 as read; 3.14 by reading). The fork server exits at EOF on that pipe, so while
    any worker holds the write end it outlives the owner, and so does the
    parent-death signal of every worker it forked: a stopped worker kept the fork
    server, and itself, alive for ever. The child never uses the descriptor: its
    ``_forkserver_pid`` is None, so ``ensure_running()`` starts a fork server of its own
    and overwrites it. Probed, not assumed: only a write-only pipe is closed."""
    import stat
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if not isinstance(fd, int) or getattr(server, "_forkserver_pid", 0) is not None:
        return  # not a fork server's child, or this process runs the fork server
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
            return
        os.close(fd)
    except OSError:
        return
    server._forkserver_alive_fd = None  # type: ignore[union-attr]


# -- locating a call that failed to unpickle, in a worker -----------------------------------
def failing_opcode(data: bytes) -> int | None:
    """Replay ``data`` through the pure-Python unpickler (``pickle._Unpickler``, whose
    ``dispatch`` table maps each opcode to its method); the index of the opcode that
    raised, or None if it loads. The worker's fault locator
    (``tracedpool._worker.wire.locate_call_failure``) maps that index to a part of the
    call; it gets this function from ``TracedCallQueue.get``, so that ``wire`` needs no
    private name of its own."""
    unpickler = pickle._Unpickler(io.BytesIO(data))
    count = [0]

    def counting(fn: Any) -> Any:
        def run(self: Any) -> Any:
            count[0] += 1
            return fn(self)

        return run

    table = pickle._Unpickler.dispatch
    unpickler.dispatch = {k: counting(f) for k, f in table.items()}  # type: ignore[misc]
    try:
        unpickler.load()
    except BaseException:  # whatever the original load raised: this is the opcode
        return count[0] - 1
    return None


# -- locating a result that failed to unpickle ---------------------------------------------
def locate_result_in_message(buf: Any) -> tuple[int | None, str]:
    """Read, without executing it, which work id and which part a result message held.

    A ``_ResultItem`` pickles as its ``__dict__``: ``work_id`` first, then
    ``exception`` and ``result``. ``pickletools.genops`` walks the opcodes only, so a
    message whose unpickling raised can still be attributed safely.
    """
    work_id: int | None = None
    target = "result"
    expect: str | None = None
    try:
        data = buf.getvalue() if hasattr(buf, "getvalue") else bytes(buf)
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if expect is not None:
                if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    continue
                if expect == "work_id" and isinstance(arg, int) and work_id is None:
                    work_id = arg
                elif expect == "exception":
                    target = "result" if name == "NONE" else "exception"
                    break
                expect = None
            if isinstance(arg, str) and arg in ("work_id", "exception") and "UNICODE" in name:
                expect = arg
    except (ValueError, TypeError):
        pass  # a message cut short or not a pickle: what was read so far is the answer
    return work_id, target


# -- the manager thread --------------------------------------------------------------------
def _callback_raised(e: BaseException, thread: str = "manager") -> None:
    logging.getLogger("concurrent.futures").error(
        "a done-callback raised %s on the process pool's %s thread; ignored, as the "
        "stdlib ignores an Exception there (it would have stopped that thread and left "
        "every other future of the pool pending for ever)",
        type(e).__name__,
        thread,
        exc_info=(type(e), e, e.__traceback__),
    )


class TracedManagerThread(_ManagerBase):  # type: ignore[misc]
    """The stdlib manager thread with observation points and two stdlib fixes."""

    #: It joins (or kills) every worker it started before it ends, so a worker it starts
    #: may die with it (PR_SET_PDEATHSIG follows the forking thread; tracedpool._worker.lifeline).
    _tp_outlives_workers = True

    def __init__(self, executor: Any, observer: PoolObserver) -> None:
        super().__init__(executor)
        self._tp_observer: PoolObserver = observer
        self._tp_joining = False
        observer.manager = self

    def run(self) -> None:
        try:
            self._tp_observer.on_manager_start()
        except BaseException:
            self._tp_observer.internal_error("manager-start")
        try:
            super().run()
        finally:
            try:
                self._tp_observer.on_manager_exit()
            except BaseException:
                self._tp_observer.internal_error("manager-exit")

    _tp_poll: Any = None
    _tp_poll_key: Any = None
    _tp_poll_fds: tuple[int, int] = (-1, -1)

    def _poll_wait(self) -> Any:
        """The stdlib's wait (see ``_probe_fast_wait``), on a persistent poll set."""
        result_reader = self.result_queue._reader
        wakeup = self.thread_wakeup
        processes = self.processes
        if wakeup._closed or processes is None:
            return super().wait_result_broken_or_wakeup()  # the stdlib's own checks
        key = tuple(processes.items())
        if key != self._tp_poll_key:
            # The worker set changed (started, retired or reaped): rebuild the set, so
            # a closed sentinel's number is never polled after it is reused.
            poll = select.poll()
            fds = (result_reader.fileno(), wakeup._reader.fileno())
            for fd in fds:
                poll.register(fd, select.POLLIN)
            for _pid, process in key:  # the snapshot: submit() may be adding workers
                poll.register(process.sentinel, select.POLLIN)
            self._tp_poll, self._tp_poll_key, self._tp_poll_fds = poll, key, fds
        result_fd, wakeup_fd = self._tp_poll_fds
        # As selectors.PollSelector reads them: any event but POLLOUT alone is "ready".
        ready = [fd for fd, _event in self._tp_poll.poll()]
        cause = None
        is_broken = True
        result_item = None
        if result_fd in ready:
            try:
                result_item = result_reader.recv()
                is_broken = False
            except BaseException as e:
                cause = traceback.format_exception(type(e), e, e.__traceback__)
        elif wakeup_fd in ready:
            is_broken = False
        if wakeup_fd in ready:
            # The stdlib drains the wakeup pipe after every wake; draining only when it
            # was readable spares a selector per result. A wakeup written meanwhile is
            # then seen by the next poll: one more loop turn, nothing lost.
            if _WAIT_CLEARS_UNDER_LOCK:
                with self.shutdown_lock:
                    wakeup.clear()
            else:
                wakeup.clear()
        return result_item, is_broken, cause

    def _stdlib_wait(self) -> Any:
        if FAST_WAIT:
            try:
                return self._poll_wait()
            except (OSError, ValueError, AttributeError, RuntimeError):
                # A closed pipe, a shape we do not know, or the worker dict changing
                # under a garbage collection: nothing was read yet, the stdlib decides.
                pass
        return super().wait_result_broken_or_wakeup()

    def wait_result_broken_or_wakeup(self) -> Any:
        observer = self._tp_observer
        if not observer.tracing and (observer.wakes + 1) & 63:
            # The common untraced wake: count it, and forget the last raw result (kept
            # only to attribute a result that fails to unpickle). Every 64th wake takes
            # the full path below, where the observer does its periodic upkeep.
            result_item, is_broken, cause = self._stdlib_wait()
            if not is_broken:
                observer.wakes += 1
                observer.last_buf = None
                if result_item is None and observer.stall_break is not None:
                    return None, True, None  # see below
                return result_item, is_broken, cause
            t0 = t1 = 0
        else:
            t0 = time_ns()
            observer.on_wait_start(t0)
            result_item, is_broken, cause = self._stdlib_wait()
            t1 = time_ns()
        try:
            replaced = observer.on_wake(t0, t1, result_item, is_broken, cause, self)
        except BaseException:
            observer.internal_error("manager-wake")
            replaced = None
        if replaced is not None:
            # The observer rescued a result that failed to unpickle (opt-in): only its
            # own future fails, as a result item carrying the error.
            work_id, exc = replaced
            return _ResultItem(work_id, exception=exc), False, None
        if result_item is None and not is_broken and observer.stall_break is not None:
            # The stall detector decided to break the pool (stall_action="break") and
            # woke this thread: take the stdlib's broken-pool path, which fails every
            # pending future and terminates the workers.
            return None, True, None
        return result_item, is_broken, cause

    def process_result_item(self, result_item: Any) -> None:
        self._tp_observer.completed += 1  # progress, for the stall detector
        meta = getattr(result_item, "__dict__", {}).pop("tracedpool", None)
        if meta is not None:  # only a sampled task's result carries stage timings
            work_item = self.pending_work_items.get(result_item.work_id)
            if work_item is not None and type(work_item.fn) is _Task:
                try:
                    self._tp_observer.on_result(work_item.fn, meta, result_item.exception)
                except BaseException:
                    self._tp_observer.internal_error("result", work_item.fn.rec)
        try:
            super().process_result_item(result_item)
        except BaseException as e:
            # Completing a future runs its done-callbacks here. Future._invoke_callbacks
            # logs an Exception and goes on, but a BaseException (SystemExit,
            # KeyboardInterrupt, ... raised by a callback) ends the manager thread, and
            # every other future of the pool waits for ever (3.10 to 3.15). Log it as
            # the stdlib logs the others, and go on.
            _callback_raised(e)

    def flag_executor_shutting_down(self) -> None:
        # cancel_futures: cancel() runs done-callbacks here too. One raising a
        # BaseException stops the stdlib's loop half-way; cancelling again is safe (an
        # already cancelled future returns True without calling anything), so finish
        # it. Bounded: each retry has cancelled at least one more future.
        for _ in range(10_000):
            try:
                self._tp_flag_executor_shutting_down()
                return
            except BaseException as e:
                _callback_raised(e)

    def join_executor_internals(self, *args: Any, **kwargs: Any) -> None:
        self._tp_joining = True  # see TracedCallQueue._fail_item_without_deadlock
        super().join_executor_internals(*args, **kwargs)

    def terminate_broken(self, cause: Any, *args: Any, **kwargs: Any) -> None:
        self._tp_joining = True
        self._tp_observer.breaking = True
        self._tp_refuse_new_work()
        # gh-152967 (3.14.10+): the stdlib's own sentence for why the pool cannot go on.
        message = args[0] if args else kwargs.get("bpe_message")
        # gh-109047 (3.12+): when handing a call to the call queue raises (on 3.12, at
        # interpreter exit, the feeder thread cannot start), the stdlib breaks the pool from
        # the except block around add_call_item_to_queue, and from no other except block;
        # the other breaks come from a failed result read. (3.11's manager thread dies.)
        enqueue_failed = sys.exception() is not None
        try:
            failures = self._tp_observer.on_broken(
                self, cause, message if isinstance(message, str) else None, enqueue_failed
            )
        except BaseException:
            self._tp_observer.internal_error("broken")
            failures = None
        finally:
            self._tp_observer.break_ready.set()
        if failures:
            # Each future gets its own exception naming its part in the breakage; the
            # stdlib then finds nothing left to fail (and shares one exception, which
            # cannot say which task ran where).
            pending = self.pending_work_items
            for work_id, work_item in snapshot_items(pending):
                exc = failures.get(work_id)
                if exc is None:
                    continue
                try:
                    work_item.future.set_exception(exc)
                except InvalidStateError:  # cancelled meanwhile
                    pass
                except BaseException as raised:  # from a done-callback
                    _callback_raised(raised)
                pending.pop(work_id, None)
        self._tp_end_stopped_workers()
        if not TERMINATE_CLOSES_CALL_READER:
            # gh-94777: the feeder may be blocked writing a call no worker will read,
            # and the parent's own copy of the pipe's read end keeps the write from
            # failing, so the stdlib's join of the feeder below waits for ever. The
            # parent never reads the call queue: closing its copy turns the blocked
            # write into EPIPE, which the feeder handles.
            reader = getattr(self.call_queue, "_reader", None)
            if reader is not None:
                try:
                    reader.close()
                except OSError:
                    pass  # already closed by the stdlib: nothing is left to unblock
        super().terminate_broken(cause, *args, **kwargs)

    def _tp_end_stopped_workers(self) -> None:
        """SIGTERM and then SIGCONT every worker still alive in a broken pool.

        The stdlib ends the survivors with SIGTERM and joins them with no timeout (3.10 to
        3.14). A stopped worker (SIGSTOP, a job-control stop) keeps that SIGTERM pending
        until it is continued, so shutdown() and the interpreter's exit hung for as long
        as it stayed stopped; seen under chaos. SIGCONT delivers the pending SIGTERM: the
        worker ends as the stdlib meant it to. Its futures have already failed.
        """
        for process in list((self.processes or {}).values()):
            try:
                if process.exitcode is None:  # not reaped, so the pid is still ours
                    process.terminate()
                    os.kill(process.pid, signal.SIGCONT)
            except (OSError, ValueError):
                pass  # gone meanwhile (ProcessLookupError), or its handle already closed

    def _tp_refuse_new_work(self) -> None:
        """Mark the executor broken, under the lock submit() checks the mark under, before
        the observer takes the inventory of the futures this breakage fails.

        The stdlib marks it itself, but later: after tracedpool's inventory, and without
        the lock in 3.10 and 3.11 (3.12 moved ``terminate_broken``'s body into
        ``_terminate_broken`` and runs it under ``shutdown_lock``). A submit() landing in
        between got a future failed with the stdlib's anonymous BrokenProcessPool, seen
        under chaos for tens of futures per breakage; in 3.10 and 3.11 a submit() racing
        the stdlib's own loop could even add its item after the loop cleared the dict,
        leaving that future pending for ever. Holding the lock while marking means every
        submit() either has added its item (the inventory sees it) or will raise.
        """
        executor = self.executor_reference()
        lock = getattr(self, "shutdown_lock", None)
        if executor is None or lock is None:
            return
        # Bounded: a submit() holding the lock is quick; never wait for ever here (the
        # stdlib then marks the executor itself, as before).
        if not lock.acquire(timeout=5.0):
            return
        try:
            if not executor._broken:
                executor._broken = _STDLIB_BROKEN_ON_SUBMIT
            executor._shutdown_thread = True
        finally:
            lock.release()

    def _tp_flag_executor_shutting_down(self) -> None:
        executor = self.executor_reference()
        original = executor._pending_work_items if executor is not None else None
        before: Any = self.pending_work_items  # type: ignore[has-type]
        super().flag_executor_shutting_down()
        after: Any = self.pending_work_items  # type: ignore[has-type]
        if after is before:
            return
        # Read before the fold below, which empties ``before`` of these very items
        # (``before`` is the executor's dict): notifying after it found none to notify.
        cancelled = [w.future for w in before.values() if w.future.cancelled()]
        # gh-116685: with cancel_futures the stdlib rebinds the manager's dict, while
        # _SafeQueue._on_queue_feeder_error keeps popping from the executor's original
        # one; a task whose pickling fails then stays pending here for ever and
        # shutdown(wait=True) hangs. Fold the survivors back into the shared dict.
        if original is not None and original is not after:
            for work_id in [k for k in original if k not in after]:
                original.pop(work_id, None)
            self.pending_work_items = original
        # gh-136655: cancel() moved the futures to CANCELLED without notifying waiters,
        # so as_completed() and wait() never return. Notify them.
        for future in cancelled:
            try:
                future.set_running_or_notify_cancel()
            except RuntimeError:
                pass  # "Future in unexpected state": another thread notified it meanwhile

    # -- read-only views for forensics --------------------------------------------------------
    def pending_items(self) -> list[tuple[int, Any]]:
        return snapshot_items(self.pending_work_items)

    def worker_processes(self) -> dict[int, Any]:
        return dict(self.processes) if self.processes is not None else {}

    def pending_item(self, work_id: int) -> Any:
        return self.pending_work_items.get(work_id)


def _alive(process: Any) -> bool:
    try:
        return bool(process.is_alive())
    except ValueError:  # closed
        return False


def wake_manager(executor: Any) -> None:
    """Wake the pool's manager thread from its wait (as submit() does)."""
    wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
    if wakeup is not None and not getattr(wakeup, "_closed", False):
        wakeup.wakeup()


def unblock_result_read(
    result_queue: Any, still_blocked: Callable[[], bool], seconds: float
) -> int:
    """Complete the result message the manager thread is stuck reading, with zero bytes.

    A worker killed while writing a large result leaves a truncated message in the result
    pipe; the manager reads its announced length and waits for the rest for ever (the
    parent holds a write end, so EOF never comes). Only the parent can write now (the
    caller has killed every worker first), so filling the pipe with zeros completes the
    read; the message then fails to unpickle and the stdlib takes its broken-pool path.
    The write end is made non-blocking (the workers sharing its file description are
    dead): this thread stops as soon as the manager has left the read, or after
    ``seconds``. Returns the bytes written."""
    writer = getattr(result_queue, "_writer", None)
    if writer is None:
        return 0
    fd = writer.fileno()
    os.set_blocking(fd, False)
    chunk = bytes(65536)
    written = 0
    deadline = time.monotonic() + seconds
    while still_blocked() and time.monotonic() < deadline:
        try:
            written += os.write(fd, chunk)
        except BlockingIOError:
            time.sleep(0.01)  # the manager is draining the pipe
    return written


class InternalsMixin(_cfp.ProcessPoolExecutor):
    """The executor-level overrides of private methods, kept at this boundary."""

    _tp_state: PoolObserver | None = None

    def _start_executor_manager_thread(self) -> None:
        if self._executor_manager_thread is not None:
            return  # every submit asks; the stdlib's own method does nothing then either
        state = self._tp_state
        if state is None or not state.hooked:
            super()._start_executor_manager_thread()
            return
        # The stdlib's own steps (identical in 3.10 to 3.15), building our
        # manager class instead of the stdlib's.
        if not self._safe_to_dynamically_spawn_children:
            self._launch_processes()
        manager = TracedManagerThread(self, state)
        manager.start()
        self._executor_manager_thread = manager
        _cfp._threads_wakeups[manager] = self._executor_manager_thread_wakeup

    if HAS_FORCE_SHUTDOWN:  # only where the stdlib has it, so hasattr() answers alike

        def _force_shutdown(self, operation: str) -> Any:
            """terminate_workers() / kill_workers() (3.14+): note who is signalled and which
            tasks may be lost, then let the stdlib do it."""
            state = self._tp_state
            known = isinstance(operation, str)
            signal_name = FORCE_SHUTDOWN_SIGNALS.get(operation) if known else None
            if state is not None and signal_name is not None:
                processes = dict(self._processes or {})
                pids = tuple(pid for pid, p in processes.items() if _alive(p))
                items = snapshot_items(self._pending_work_items)
                pending = frozenset(work_id for work_id, _ in items)
                try:
                    state.on_force_shutdown(operation, signal_name, pids, pending)
                except Exception:
                    state.internal_error("force-shutdown")
            return super()._force_shutdown(operation)  # type: ignore[misc]

    def _adjust_process_count(self) -> None:
        if (
            HAS_MAX_TASKS_PER_CHILD
            and not HAS_REPLACE_DEAD_WORKER
            and isinstance(threading.current_thread(), TracedManagerThread)
        ):
            # Called from the manager thread only to replace a worker that retired at
            # max_tasks_per_child. gh-115634: the idle semaphore counts completions, not
            # idle workers, so the stdlib may skip the replacement and strand the
            # backlog for ever. gh-119592/gh-132969: after shutdown(wait=False) the
            # executor's references are None and the stdlib raises TypeError in the
            # manager. Replace the worker here whenever there is room.
            self._replace_retired_worker()
            return
        super()._adjust_process_count()

    def _replace_retired_worker(self) -> None:
        manager = threading.current_thread()
        processes = manager.processes  # type: ignore[attr-defined]
        if processes is None or len(processes) >= self._max_workers:  # type: ignore[attr-defined]
            return
        if self._processes is not None:
            self._spawn_process()  # type: ignore[attr-defined]
            return
        # shutdown(wait=False) cleared the executor's references, but work is still
        # pending: restore them for the duration of one spawn, from the manager's own.
        saved = (self._call_queue, self._result_queue)
        try:
            self._processes = processes
            self._call_queue = manager.call_queue
            self._result_queue = self._tp_state.result_queue
            self._spawn_process()
        finally:
            self._processes = None
            self._call_queue, self._result_queue = saved
