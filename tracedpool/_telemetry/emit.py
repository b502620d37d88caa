"""The emitter thread: the only place tracedpool calls into span processors.

The manager and feeder threads must never call the SDK (a slow processor there would
stall every future), so the hooks only fill in timestamps on a ``TaskRecord`` and the
done-callback queues it here. One emitter thread per pool drains the queue and turns each
record into span specs for the pool's sink. It starts after the pool's first submit (so
under fork it never exists when workers are forked), sleeps on an event when idle (no
polling) and finishes when the manager thread exits. Any failure inside a sink is
logged once and swallowed.

Span building is background work that shares the parent's GIL with the pool's own
threads, so it steps aside while the manager thread is busy (``Emitter._step_aside``): a
burst of tasks runs at the pool's speed and its spans are built when it is over, within
``DEFER_SECONDS`` and ``CATCH_UP_BACKLOG`` records. Under sustained load those bounds make
it build spans alongside the pool, handing the GIL back after each record while the
manager thread keeps waking (``Emitter._drain``); once the pool is quiet it builds
without those hand-overs, which cost wall time even when nobody takes the GIL.
"""

from __future__ import annotations

import atexit
import logging
import threading
import traceback
import weakref
from collections import deque
from time import monotonic, sleep, time_ns
from typing import Any

from .._diagnosis.forensics import role_of
from .._errors import pickling_fault
from .._pool.cpython import future_outcome
from .._threads import start_daemon
from .._worker.wire import M_LOGS, M_PID, M_RECV, M_RUN0, M_RUN1, M_SEND0, M_SPANS, qualname
from . import names as N
from .otel import EventSpec, SpanSpec

log = logging.getLogger("tracedpool")

INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = range(5)
# Builds a SpanSpec from a tuple of its fields in one C call (see SpanSpec).
_new = tuple.__new__
_MAX_REPR = 256
#: Records (finished tasks and manager wakes) waiting for the emitter before new ones
#: are dropped: bounds memory when span processors are slower than the pool.
MAX_BACKLOG = 16384
#: Past this backlog the emitter is losing ground: it yields the GIL only every
#: ``CATCH_UP_MASK + 1`` records instead of after each (see Emitter._drain).
CATCH_UP_BACKLOG = MAX_BACKLOG // 2
CATCH_UP_MASK = 15
#: The longest a finished task's spans wait for the pool to go quiet before they are
#: built anyway (the SDK's batch processor then adds its own delay, 5 s by default).
DEFER_SECONDS = 1.0
#: The pool is quiet once its manager thread has slept through this long.
DEFER_TICK = 0.02
#: Manager wakes ride along with task records; this many waiting wake an idle emitter.
WAKE_BATCH = 64
#: Back-to-back manager wakes queued together are built as one span, a run (see
#: ``next_wake``): each wake after the first came after a wait shorter than this ...
WAKE_RUN_GAP_NS = 1_000_000
#: ... for the same reason, one of these (the busy pool's own; rarer reasons, such as a
#: worker's death or shutdown, keep a span each) ...
WAKE_RUN_REASONS = frozenset({"result", "submit"})
#: ... and the run links at most this many tasks (the SDK's default link limit).
WAKE_RUN_LINKS = 128
#: Spans a task record may add to a batch processor's queue (its task span and five
#: stage spans, the wake spans built alongside, a margin): the emitter builds records
#: only while the fullest queue has room for them (Emitter._room).
SPANS_PER_RECORD = 8
#: The emitter waits for a full batch queue to drain rather than overflow it, as long
#: as the exporter makes progress; a queue that frees nothing for this long is left to
#: drop spans (the SDK counts them), so that a stuck exporter costs memory no longer
#: than the emitter's own bounded backlog.
STALLED_QUEUE_SECONDS = 1.0
#: While waiting, how often the queue is looked at.
ROOM_POLL = 0.002
#: While waiting, after how long without progress the queue's exporter is woken.
NUDGE_SECONDS = 0.05
_PLENTY = 1 << 30


class TaskRecord:
    """Stage timestamps of one sampled task; filled in by the hooks, read by the emitter.

    Class-level defaults keep ``__init__`` short: most fields stay at their default for
    most tasks, and this object is built once per sampled task on the caller's thread.

    It holds the task's name, argument types and sizes, never its callable, arguments or
    result. Until its spans are built it also holds a failed task's exception and, with
    ``record_values``, the future (for the result's repr); the emitter drops both then.
    """

    work_id = -1
    worker_span_id = 0
    fname = ""  # the callable's name: the record never holds the callable itself
    t_submit1 = t_enqueue = t_ser0 = t_ser1 = t_written = t_read = t_done = 0
    payload_bytes = result_bytes = -1
    meta: list[Any] | None = None
    outcome = ""
    exc: BaseException | None = None
    fault: tuple[str, str, str] | None = None
    chunksize = -1
    arg_types: tuple[type, ...] = ()
    kwarg_names: tuple[str, ...] = ()
    result_type: type | None = None
    args_repr: str | None = None
    future: Any = None
    submit_thread = ""
    stall: tuple[int, str, str | None] | None = None  # (t_ns, diagnosis, report path)
    slow: tuple[int, float, int] | None = None  # (t_ns, seconds running, worker pid)
    internal_error: tuple[int, str] | None = None  # (t_ns, where): the first for this task

    def __init__(self, state: Any, t0: int, sampled: tuple[Any, ...]) -> None:
        self.state = state
        self.t_submit0 = t0
        self.trace_id, self.span_id, self.flags, self.trace_state, self.parent = sampled

    def __call__(self, future: Any) -> None:
        """The future's done-callback, on whichever thread completed it."""
        self.t_done = time_ns()
        try:
            self.outcome, self.exc, result = future_outcome(future)
            if self.outcome == "result":
                self.result_type = type(result)
        except BaseException:
            self.outcome = "unknown"
            self.state.internal_error("result", self)
        self.state.emitter.push(self)


class WakeRecord:
    __slots__ = ("count", "idle_ns", "reason", "served", "t_end", "t_ready")

    def __init__(self, t_ready: int, idle_ns: int, reason: str) -> None:
        self.t_ready = t_ready
        self.idle_ns = idle_ns
        self.reason = reason
        self.t_end = 0
        self.served: list[TaskRecord] = []
        self.count = 1  # wakes this record covers (``next_wake`` merges runs)


def next_wake(wakes: deque[WakeRecord]) -> WakeRecord:
    """Take the first queued wake, with the wakes queued right behind it merged in while
    they make one run: the same busy reason (``WAKE_RUN_REASONS``), each after a wait
    under ``WAKE_RUN_GAP_NS``, at most ``WAKE_RUN_LINKS`` tasks served in all.

    A busy pool's manager wakes about once per task, and a span per wake was one of
    seven spans per trivial task (issue 13); a run keeps the start, end, reason and
    links, and ``count`` says how many wakes it covers. Only wakes already queued are
    merged, so a wake is never held back waiting for the next one: a quiet pool's
    wakes, and those built as they come, still get a span each.
    """
    w = wakes.popleft()
    if w.reason not in WAKE_RUN_REASONS:
        return w
    served = w.served
    while wakes:
        after = wakes[0]
        if (
            after.reason != w.reason
            or after.idle_ns >= WAKE_RUN_GAP_NS
            or len(served) + len(after.served) > WAKE_RUN_LINKS
        ):
            break
        wakes.popleft()
        served += after.served
        w.t_end = after.t_end
        w.count += 1
    if w.count > 1:
        # A task enqueued by one wake of the run and read back by another: link it once.
        w.served = list(dict.fromkeys(served))
    return w


_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()
_atexit_registered = False
_atexit_lock = threading.Lock()


def _flush_at_exit() -> None:
    # Registered after the SDK's provider (LIFO), so pending spans reach its processors
    # before the provider's own exit-time shutdown flushes them.
    for emitter in list(_emitters):
        emitter.finish(timeout=2.0)


class Emitter:
    def __init__(self, state: Any) -> None:
        self._state = weakref.proxy(state)
        self._queue: deque[Any] = deque()
        self._wakes: deque[WakeRecord] = deque()
        self._event = threading.Event()
        self._idle = False
        self._urgent = False
        self._stopping = False
        self.thread: threading.Thread | None = None  # started by the first traced submit
        self._lock = threading.Lock()
        self._warned = False
        self._warned_drop = False
        self._warned_room = False
        self._warned_wake_drop = False
        self._queue_stalled = False  # the exporter stopped draining: no more waiting
        #: Times the emitter waited for a batch processor's queue to drain.
        self.queue_waits = 0
        self.emitted = 0
        #: Records dropped at the backlog limit: finished tasks (and the pool's other
        #: pushed records, such as stall marks), and manager wakes, counted apart.
        self.dropped_tasks = 0
        self.dropped_wakes = 0

    @property
    def dropped(self) -> int:
        """Every record dropped at the backlog limit (the ``tracedpool.spans.dropped``
        counter): ``dropped_tasks + dropped_wakes``."""
        return self.dropped_tasks + self.dropped_wakes

    def push(self, item: Any, urgent: bool = False) -> None:
        """Queue a record; ``urgent`` ones (a stall) are built without stepping aside."""
        queue = self._queue
        if len(queue) >= MAX_BACKLOG:
            # The processors cannot keep up: drop rather than grow without bound, and say
            # so once. (Telemetry never holds the pool back or eats its memory.)
            self.dropped_tasks += 1
            if not self._warned_drop:
                self._warned_drop = True
                log.warning(
                    "tracedpool: span building is %d finished tasks behind; dropping "
                    "their spans (a task span and its stage spans each) until it catches "
                    'up (pool %s; the count is pool.stats()["task_records_dropped"])',
                    MAX_BACKLOG,
                    self._state.pool_id,
                )
            return
        queue.append(item)
        if urgent:
            self._urgent = True
            self._event.set()
        elif self._idle:
            self._idle = False
            self._event.set()

    def push_wake(self, wake: WakeRecord) -> None:
        """Queue a manager wake. It does not wake the emitter by itself: the task records
        that its wake served do, and the wakes are built alongside them."""
        wakes = self._wakes
        if len(wakes) >= MAX_BACKLOG:
            self.dropped_wakes += 1
            if not self._warned_wake_drop:
                self._warned_wake_drop = True
                log.warning(
                    "tracedpool: span building is %d manager wakes behind; dropping "
                    "manager-wake spans until it catches up (pool %s; the count is "
                    'pool.stats()["wake_records_dropped"])',
                    MAX_BACKLOG,
                    self._state.pool_id,
                )
            return
        wakes.append(wake)
        if self._idle and len(wakes) >= WAKE_BATCH:
            self._idle = False
            self._event.set()

    def start(self) -> None:
        global _atexit_registered
        with self._lock:
            if self.thread is not None or self._stopping:
                return
            name = f"tracedpool-emitter-{self._state.pool_id}"
            thread = start_daemon(self._run, name, "this pool's spans are dropped")
            if thread is None:
                self._stopping = True
                return
            self.thread = thread
        _emitters.add(self)
        with _atexit_lock:
            if not _atexit_registered:
                atexit.register(_flush_at_exit)
                _atexit_registered = True

    def finish(self, timeout: float | None = None) -> None:
        """Emit what is queued, then stop; waits at most ``timeout`` seconds."""
        self._stopping = True
        self._event.set()
        thread = self.thread
        if thread is None:
            self._drain(-1)  # never started (no traced submit reached it): nothing queued
            self._flush_sink()
            return
        if thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        queue, wakes, event = self._queue, self._wakes, self._event
        while True:
            self._drain(self._step_aside())
            if queue:
                continue  # the pool got busy again: step aside
            self._flush_sink()
            self._idle = True
            if queue or len(wakes) >= WAKE_BATCH:
                self._idle = False
                continue
            if self._stopping:
                self._drain(-1)
                self._flush_sink()
                return
            # A few wakes may be left (the last ones of a burst): build them within
            # DEFER_SECONDS even if no task follows.
            if not event.wait(DEFER_SECONDS if wakes else None):
                self._idle = False
                self._drain(-1)
                continue
            event.clear()
            self._idle = False

    def _pool_activity(self) -> int:
        """The manager thread's wake count: it moves whenever the pool's threads work."""
        try:
            return int(self._state.wakes)
        except ReferenceError:
            return -1

    def _step_aside(self) -> int:
        """Wait while the pool is busy, and return how many queued records must be built
        before stepping aside again (-1: all of them).

        Building a task's spans takes the GIL from the pool's manager and feeder
        threads, which then hand work to the workers late (docs/performance.md). So the
        emitter waits until the manager thread has slept through a whole DEFER_TICK: a
        burst is over, or the tasks in flight run long and leave the GIL free. Waiting
        is bounded by DEFER_SECONDS, by CATCH_UP_BACKLOG records (past it the pool is
        outrunning span building, and waiting longer would only drop spans), and by
        shutdown or an urgent record.
        """
        queue, event = self._queue, self._event
        deadline = monotonic() + DEFER_SECONDS
        seen = self._pool_activity()
        while True:
            if self._stopping or self._urgent:
                self._urgent = False
                return -1
            if len(queue) >= CATCH_UP_BACKLOG or monotonic() >= deadline:
                return len(queue)
            event.wait(DEFER_TICK)
            event.clear()
            now = self._pool_activity()
            if now == seen:
                return 0
            seen = now

    @property
    def waiting(self) -> int:
        """Records queued and not yet built."""
        return len(self._queue) + len(self._wakes)

    def _drain(self, forced: int) -> None:
        """Build the queued records: the first ``forced`` ones come what may (-1: all of
        them); after those, stop as soon as the pool is busy again."""
        queue, wakes, emit = self._queue, self._wakes, self._emit_one
        built = 0
        fits = 0  # records the span processors' queues surely have room for
        seen = self._pool_activity()
        while queue or wakes:
            if fits <= 0:
                fits = self._room()
            fits -= 1
            if wakes and not emit(next_wake(wakes)):  # one span: no turn of its own
                return
            try:
                item = queue.popleft()
            except IndexError:
                continue
            if not emit(item):
                return
            built += 1
            if self._stopping:
                # The pool has no more work: build at the catch-up pace.
                if not built & CATCH_UP_MASK:
                    sleep(0)
                continue
            # Past CATCH_UP_BACKLOG the pool is outrunning span building: under
            # sustained overload a turn per record was too small a share (a
            # million-task soak at ~8,500 tasks/s dropped 58% of task records), so the
            # emitter looks up only every CATCH_UP_MASK + 1 records. Every span is then
            # kept and the pool runs at the rate it can sustain with always-on tracing.
            catching_up = len(queue) >= CATCH_UP_BACKLOG
            if catching_up and built & CATCH_UP_MASK:
                continue
            try:
                now = self._state.wakes
            except ReferenceError:
                return
            if now == seen:
                # The pool's threads did not run since the last look: nobody is owed
                # the GIL, so keep it. (A sleep(0) after every record cost ~70 us of
                # wall time each in timer slack even on a quiet pool: 1.4 s for 20,000
                # records, issue 13.)
                continue
            seen = now
            # The manager woke: the pool is busy, and span building is background work.
            # Step aside (the records owed are built), or hand the GIL to the pool's
            # own threads (feeder, manager, callers) for a moment.
            if not catching_up and 0 <= forced <= built:
                return
            sleep(0)

    def _room(self) -> int:
        """How many records the sink's batch queue has room for, waiting first (on this
        thread, never the pool's) while it is near full and its exporter drains it.

        The SDK's ``BatchSpanProcessor`` drops what does not fit in its queue (2,048
        spans by default), even with an exporter fast enough to keep up: the emitter
        builds in bursts, after stepping aside. So it waits here until the queue has
        room for a batch again. Only an exporter that frees nothing for
        STALLED_QUEUE_SECONDS is given up on: then the queue drops (the SDK counts
        those), and the emitter's own backlog drops at MAX_BACKLOG (counted in
        ``task_records_dropped``), so memory stays bounded.
        """
        room: tuple[int, int] | None
        free: int
        size: int
        try:
            sink = self._state.sink
            room = sink.room() if sink is not None else None
        except ReferenceError:
            return _PLENTY
        except Exception:  # a sink that cannot say: never wait on it
            self._room_unknown()
            return _PLENTY
        if room is None:
            return _PLENTY
        free, size = room
        resume = min(512, size // 4) or 1  # a default export batch, or a quarter
        if free >= resume:
            self._queue_stalled = False
            return free // SPANS_PER_RECORD
        if self._queue_stalled:  # given up on until it has room again: build, let it drop
            return max(free // SPANS_PER_RECORD, 1)
        self.queue_waits += 1
        now = monotonic()
        deadline, nudge_at = now + STALLED_QUEUE_SECONDS, now + NUDGE_SECONDS
        while free < resume:
            sleep(ROOM_POLL)
            try:
                room = sink.room()
            except Exception:
                self._room_unknown()
                return _PLENTY
            if room is None:
                return _PLENTY
            now = monotonic()
            if room[0] > free:
                deadline = now + STALLED_QUEUE_SECONDS  # it drains: keep waiting
                nudge_at = now + NUDGE_SECONDS
            elif now >= deadline:
                self._queue_stalled = True
                return max(room[0] // SPANS_PER_RECORD, 1)
            elif now >= nudge_at:
                # Its export thread may have missed the wake-up (sdk.wake_batch_workers).
                nudge_at = now + NUDGE_SECONDS
                try:
                    sink.nudge()
                except Exception:
                    self._room_unknown()
                    return _PLENTY
            free = room[0]
        return free // SPANS_PER_RECORD

    def _room_unknown(self) -> None:
        """The span processor's queue could not be read: build without waiting for room
        (its queue may then drop spans, which the SDK counts), and say so once."""
        if not self._warned_room:
            self._warned_room = True
            log.warning(
                "tracedpool: the span processor's queue length cannot be read; spans are "
                "built without waiting for room in it:\n%s",
                traceback.format_exc(),
            )

    def _flush_sink(self) -> None:
        """Everything queued is built: let the sink hand on what it holds back."""
        try:
            sink = self._state.sink
            if sink is not None:
                sink.flush()
        except ReferenceError:
            pass  # the pool is gone, and its sink with it
        except Exception:
            self._span_error("writing spans")

    def _emit_one(self, item: Any) -> bool:
        """Build one record's spans; False when the pool is gone (nothing more to do)."""
        try:
            self._state.emit(item)
            self.emitted += 1
        except ReferenceError:
            self._queue.clear()
            self._wakes.clear()
            return False
        except BaseException:
            self._span_error("emitting spans")
        return True

    def _span_error(self, doing: str) -> None:
        """Said once per pool, with the traceback of the exception being handled."""
        if not self._warned:
            self._warned = True
            log.warning(
                "tracedpool: %s failed; the pool keeps working, further span errors are "
                "not logged:\n%s",
                doing,
                traceback.format_exc(),
            )


# -- span specs ----------------------------------------------------------------------------
def _exception_event(
    exc: BaseException, t: int, messages: bool, extra: dict[str, Any]
) -> EventSpec:
    attrs: dict[str, Any] = {N.ATTR_EXCEPTION_TYPE: qualname(type(exc))}
    if messages:
        attrs[N.ATTR_EXCEPTION_MESSAGE] = str(exc)
        cause = exc.__cause__
        tb = getattr(cause, "tb", None)
        if isinstance(tb, str):  # the worker's traceback, as the stdlib carries it
            attrs[N.ATTR_EXCEPTION_STACKTRACE] = tb.strip().strip("'\"").strip()
        else:
            attrs[N.ATTR_EXCEPTION_STACKTRACE] = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
    attrs.update(extra)
    return EventSpec(N.EVENT_EXCEPTION, t, attrs)


def severity_number(levelno: int) -> int:
    """A ``logging`` level as the OpenTelemetry log data model's SeverityNumber."""
    for std, otel in ((50, 21), (40, 17), (30, 13), (20, 9), (10, 5), (1, 1)):
        if levelno >= std:
            return otel + min(3, levelno - std)
    return 0


def _log_events(logs: list[Any], messages: bool) -> list[EventSpec]:
    """The ``tracedpool.log`` events of the records a task logged (logs[0] is the count
    of its dropped records; see tracedpool._worker.logs)."""
    events = []
    for (
        t,
        levelno,
        levelname,
        logger,
        message,
        exc_type,
        exc_message,
        exc_text,
        path,
        line,
        func,
        thread,
    ) in logs[1:]:
        attrs: dict[str, Any] = {
            N.ATTR_LOG_SEVERITY_TEXT: levelname,
            N.ATTR_LOG_SEVERITY_NUMBER: severity_number(levelno),
            N.ATTR_LOG_LOGGER: logger,
            N.ATTR_LOG_MESSAGE: message,
            N.ATTR_CODE_FUNCTION: func,
            N.ATTR_CODE_FILE_PATH: path,
            N.ATTR_CODE_LINE_NUMBER: line,
            N.ATTR_THREAD_NAME: thread,
        }
        if exc_text:
            if exc_type:
                attrs[N.ATTR_EXCEPTION_TYPE] = exc_type
            if messages:
                if exc_type:
                    attrs[N.ATTR_EXCEPTION_MESSAGE] = exc_message
                attrs[N.ATTR_EXCEPTION_STACKTRACE] = exc_text
        events.append(EventSpec(N.EVENT_LOG, t, attrs))
    return events


def _bounded_repr(value: Any, redact: Any) -> str:
    try:
        text = repr(value)
    except BaseException as e:
        text = f"<repr failed: {type(e).__name__}>"
    if len(text) > _MAX_REPR:
        text = text[:_MAX_REPR] + "..."
    if redact is not None:
        try:
            text = str(redact(text))
        except BaseException as e:  # broad: the user's redact callable may raise anything
            text = "<redaction failed>"
            _redaction_failed(e)
    return text


_redaction_warned = False


def _redaction_failed(e: BaseException) -> None:
    """The user's ``redact`` raised: say so once, by the exception's type only (its
    message or traceback may quote the very value that was to be redacted)."""
    global _redaction_warned
    if not _redaction_warned:
        _redaction_warned = True
        log.warning(
            "tracedpool: the redact callable raised %s; the value is recorded as "
            "'<redaction failed>' (further failures are not logged)",
            type(e).__qualname__,
        )


def task_specs(rec: TaskRecord, st: Any) -> list[SpanSpec]:
    """The task span (first) and its stage spans, as specs for the sink.

    This runs once per sampled task on the emitter thread; it is written for the common
    case (a result, no fault) to build as few objects as possible.
    """
    new_id = st.sink.leaf_span_id  # the stage spans parent nothing
    span_id = rec.span_id
    tid = f"{st.pool_id}:{rec.work_id}"
    fname = rec.fname
    ppid = st.parent_pid
    t_done = rec.t_done or time_ns()
    exc = rec.exc
    outcome = rec.outcome
    failed = outcome == "exception" and exc is not None
    fault = _fault_tuple(rec, exc) if failed else None
    stage_fault = fault[0] if fault is not None else None
    broken = st.break_info if failed and st.is_broken_exc(exc) else None
    messages = st.record_exception_messages

    # the task span itself
    attrs: dict[str, Any] = {
        N.ATTR_TASK_ID: tid,
        N.ATTR_CODE_FUNCTION: fname,
        N.ATTR_POOL_ID: st.pool_id,
        N.ATTR_TASK_OUTCOME: "broken" if broken is not None else outcome,
    }
    if st.name:
        attrs[N.ATTR_POOL_NAME] = st.name
    if rec.chunksize >= 0:
        attrs[N.ATTR_MAP_CHUNKSIZE] = rec.chunksize
    if rec.arg_types:
        attrs[N.ATTR_ARG_TYPES] = tuple([t.__qualname__ for t in rec.arg_types])
    if rec.kwarg_names:
        attrs[N.ATTR_KWARG_NAMES] = rec.kwarg_names
    if rec.result_type is not None:
        attrs[N.ATTR_RESULT_TYPE] = rec.result_type.__qualname__
    if rec.args_repr is not None:
        attrs[N.ATTR_ARGS_REPR] = rec.args_repr
    if rec.future is not None and outcome == "result":
        attrs[N.ATTR_RESULT_REPR] = _bounded_repr(rec.future.result(), st.redact)
    events: list[EventSpec] = []
    status = None
    if failed and exc is not None:
        attrs[N.ATTR_ERROR_TYPE] = qualname(type(exc))
        status = (True, type(exc).__name__)
        if stage_fault == "result-unpickle":
            events.append(_exception_event(exc, t_done, messages, _fault_attrs(fault)))
        if broken is not None:
            events.append(EventSpec(N.EVENT_POOL_BROKEN, t_done, st.broken_attrs(rec.work_id)))
            attrs[N.ATTR_BROKEN_ROLE] = role_of(broken, rec.work_id)
            if broken.reason == "result-unpickle-failed" and rec.work_id in broken.culprits:
                f = broken.fault or {}
                ev: dict[str, Any] = {
                    N.ATTR_EXCEPTION_TYPE: f.get("exc_type", "UnpicklingError"),
                    N.ATTR_FAULT_STAGE: "result-unpickle",
                    N.ATTR_FAULT_TARGET: f.get("target", "result"),
                }
                if messages:
                    ev[N.ATTR_EXCEPTION_MESSAGE] = f.get("message", "")
                events.append(EventSpec(N.EVENT_EXCEPTION, t_done, ev))
    forced = st.forced
    if forced is not None and outcome != "result" and rec.work_id in forced.pending:
        events.append(EventSpec(N.EVENT_WORKERS_SIGNALLED, forced.t_ns, st.forced_attrs()))
    if rec.stall is not None:
        t_stall, diagnosis, path = rec.stall
        ev_attrs: dict[str, Any] = {N.ATTR_STALL_DIAGNOSIS: diagnosis}
        if path:
            ev_attrs[N.ATTR_STALL_REPORT] = path
        events.append(EventSpec(N.EVENT_STALL, t_stall, ev_attrs))
    if rec.slow is not None:
        t_slow, seconds, pid = rec.slow
        events.append(
            EventSpec(
                N.EVENT_SLOW_TASK,
                t_slow,
                {N.ATTR_SLOW_TASK_SECONDS: seconds, N.ATTR_WORKER_PID: pid},
            )
        )
    if rec.internal_error is not None:
        t_err, where = rec.internal_error
        events.append(
            EventSpec(N.EVENT_INTERNAL_ERROR, t_err, {N.ATTR_INTERNAL_ERROR_WHERE: where})
        )
    # The task span and its submit span, which every task has; then enqueue and
    # feeder-serialize (also in the parent), worker-run and sendback, as far as it got.
    specs: list[SpanSpec] = [
        _new(
            SpanSpec,
            (N.SPAN_TASK, span_id, 0, INTERNAL, rec.t_submit0, t_done, attrs, events, status, ()),
        ),
        _new(
            SpanSpec,
            (
                N.SPAN_SUBMIT,
                new_id(),
                span_id,
                PRODUCER,
                rec.t_submit0,
                rec.t_submit1 or t_done,
                {
                    N.ATTR_TASK_ID: tid,
                    N.ATTR_THREAD_NAME: rec.submit_thread,
                    N.ATTR_PROCESS_PID: ppid,
                },
                (),
                None,
                (),
            ),
        ),
    ]
    if rec.t_enqueue:
        # The first submit starts the manager, which may enqueue before submit() returns:
        # then the wait began when submit did.
        start = rec.t_submit1 if 0 < rec.t_submit1 <= rec.t_enqueue else rec.t_submit0
        specs.append(
            _new(
                SpanSpec,
                (
                    N.SPAN_ENQUEUE,
                    new_id(),
                    span_id,
                    INTERNAL,
                    start,
                    rec.t_enqueue,
                    {
                        N.ATTR_TASK_ID: tid,
                        N.ATTR_THREAD_NAME: st.manager_name,
                        N.ATTR_PROCESS_PID: ppid,
                    },
                    (),
                    None,
                    (),
                ),
            )
        )
    if rec.t_ser0:
        end = rec.t_written or rec.t_ser1 or t_done
        attrs = {
            N.ATTR_TASK_ID: tid,
            N.ATTR_THREAD_NAME: "QueueFeederThread",
            N.ATTR_PROCESS_PID: ppid,
        }
        if rec.payload_bytes >= 0:
            attrs[N.ATTR_PAYLOAD_BYTES] = rec.payload_bytes
        stage_events: tuple[EventSpec, ...] = ()
        status = None
        if stage_fault == "feeder-serialize":
            fa = _fault_attrs(fault)
            attrs.update(fa)
            stage_events = (_exception_event(exc, end, messages, fa),)  # type: ignore[arg-type]
            status = (True, f"{type(exc).__name__} while pickling {fa[N.ATTR_FAULT_TARGET]}")
        specs.append(
            _new(
                SpanSpec,
                (
                    N.SPAN_FEEDER_SERIALIZE,
                    new_id(),
                    span_id,
                    INTERNAL,
                    rec.t_ser0,
                    end,
                    attrs,
                    stage_events,
                    status,
                    (),
                ),
            )
        )

    # worker-run and sendback: timed in the worker
    meta = rec.meta
    if meta is not None:
        wpid = meta[M_PID]
        attrs = {N.ATTR_TASK_ID: tid, N.ATTR_PROCESS_PID: wpid, N.ATTR_CODE_FUNCTION: fname}
        stage_events = ()
        status = None
        if failed and stage_fault is None and broken is None:
            stage_events = (_exception_event(exc, meta[M_RUN1], messages, {}),)  # type: ignore[arg-type]
            status = (True, type(exc).__name__)
        if meta[M_LOGS]:
            stage_events = (*_log_events(meta[M_LOGS], messages), *stage_events)
            if meta[M_LOGS][0]:
                attrs[N.ATTR_LOG_RECORDS_DROPPED] = meta[M_LOGS][0]
        specs.append(
            _new(
                SpanSpec,
                (
                    N.SPAN_WORKER_RUN,
                    rec.worker_span_id,
                    span_id,
                    CONSUMER,
                    meta[M_RECV] or meta[M_RUN0],
                    meta[M_RUN1],
                    attrs,
                    stage_events,
                    status,
                    (),
                ),
            )
        )
        if meta[M_SEND0]:
            end = rec.t_read or t_done
            attrs = {N.ATTR_TASK_ID: tid, N.ATTR_PROCESS_PID: wpid}
            if rec.result_bytes >= 0:
                attrs[N.ATTR_RESULT_BYTES] = rec.result_bytes
            stage_events = ()
            status = None
            if stage_fault == "sendback":
                fa = _fault_attrs(fault)
                attrs.update(fa)
                stage_events = (_exception_event(exc, end, messages, fa),)  # type: ignore[arg-type]
                status = (
                    True,
                    f"{type(exc).__name__} while pickling the {fa[N.ATTR_FAULT_TARGET]}",
                )
            specs.append(
                _new(
                    SpanSpec,
                    (
                        N.SPAN_SENDBACK,
                        new_id(),
                        span_id,
                        PRODUCER,
                        meta[M_SEND0],
                        end,
                        attrs,
                        stage_events,
                        status,
                        (),
                    ),
                )
            )
        if meta[M_SPANS]:
            st.sink.emit_foreign(meta[M_SPANS])
    elif (
        broken is not None
        and broken.reason == "worker-unpickle-failed"
        and broken.fault
        and broken.fault.get("work_id") == rec.work_id
    ):
        # (A result that failed to unpickle in the parent also leaves no worker
        # timings, but the call did run: its fault is on the task span, above.)
        specs.append(_worker_unpickle_spec(rec, broken.fault, tid, fname, t_done, messages))
    return specs


def _fault_tuple(rec: TaskRecord, exc: BaseException | None) -> tuple[str, str, str] | None:
    located = pickling_fault(exc)
    if located is not None:
        return located.stage, located.target, located.type_name
    return rec.fault


def _fault_attrs(fault: Any) -> dict[str, Any]:
    return {
        N.ATTR_FAULT_STAGE: fault[0],
        N.ATTR_FAULT_TARGET: fault[1],
        N.ATTR_FAULT_TYPE: fault[2],
    }


def _worker_unpickle_spec(
    rec: TaskRecord, f: dict[str, Any], tid: str, fname: str, t_done: int, messages: bool
) -> SpanSpec:
    """The call never ran: it failed to unpickle in the worker, so its worker-run span is
    where that happened, at the time the worker reported it."""
    t = f.get("t_ns") or t_done
    fa = {N.ATTR_FAULT_STAGE: "worker-unpickle", N.ATTR_FAULT_TARGET: f.get("target", "call")}
    ev: dict[str, Any] = {N.ATTR_EXCEPTION_TYPE: f.get("exc_type", "")}
    if messages:
        ev[N.ATTR_EXCEPTION_MESSAGE] = f.get("message", "")
        ev[N.ATTR_EXCEPTION_STACKTRACE] = f.get("traceback", "")
    ev.update(fa)
    attrs = {N.ATTR_TASK_ID: tid, N.ATTR_PROCESS_PID: f.get("pid", 0), N.ATTR_CODE_FUNCTION: fname}
    attrs.update(fa)
    status = (True, f"{f.get('exc_type')} while unpickling {fa[N.ATTR_FAULT_TARGET]}")
    return SpanSpec(
        N.SPAN_WORKER_RUN,
        rec.worker_span_id,
        rec.span_id,
        CONSUMER,
        t,
        t,
        attrs,
        (EventSpec(N.EVENT_EXCEPTION, t, ev),),
        status,
        (),
    )


def wake_spec(w: WakeRecord, st: Any) -> SpanSpec:
    links = [(r.trace_id, r.span_id, r.flags) for r in w.served]
    attrs = {
        N.ATTR_WAKE_REASON: w.reason,
        N.ATTR_WAKE_IDLE_NS: w.idle_ns,
        N.ATTR_WAKE_TASKS: len(w.served),
        N.ATTR_WAKE_COUNT: w.count,
        N.ATTR_POOL_ID: st.pool_id,
        N.ATTR_THREAD_NAME: st.manager_name,
    }
    return _new(
        SpanSpec,
        (
            N.SPAN_MANAGER_WAKE,
            st.sink.new_span_id(),
            st.pool_trace[1],
            INTERNAL,
            w.t_ready,
            w.t_end or w.t_ready,
            attrs,
            (),
            None,
            links,
        ),
    )
