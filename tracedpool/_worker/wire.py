"""What travels between the parent and its workers, and the worker-side half of tracing.

A task that is not being traced travels exactly as the stdlib sends it: no wrapper, no
extra bytes. A *sampled* task is wrapped in ``_Task``, which pickles as one flat reduce
tuple ``(header, fn, *args, *kwarg_values)``: one pickling pass, so aliasing is kept
(``f(x, x)`` still receives one object), and the header carries the trace context.

Faults are located only after they happen, so locating costs the hot path nothing:

* in the parent's feeder thread, by pickling each part again (``probe_parts``);
* in the worker, by replaying the failed message through the pure-Python unpickler to
  find the opcode that raised (a CPython-private table, so the replay is
  ``tracedpool._pool.cpython.failing_opcode``, passed in by the call queue's hook), and
  walking the opcodes statically (``pickletools``) to learn which part of the call that
  opcode was rebuilding (``locate_call_failure``).

A per-pool *status pipe* carries small records from workers to the parent, each written
with a single non-blocking ``os.write`` below ``PIPE_BUF`` (atomic, never blocks, and no
lock is shared between workers, so a killed worker cannot wedge the others): "work item
N started here", "work item N failed to unpickle here", "the initializer failed here",
and "tracedpool itself failed here" (``REC_WARN``: the worker's tracing set-up, locating
a fault), which the parent logs once per kind: a worker's own stderr is not the parent's
log, and such a failure must neither stop the worker nor pass without a word.
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .._errors import FAULT_ATTR, PicklingFault
from . import lifeline as _lifeline
from . import logs as _logs

time_ns = time.time_ns

TAG = "tracedpool/2"

# Indices into the per-task metadata list a worker attaches to a traced result item.
# M_LOGS: None, or [records dropped, record tuple, ...] (tracedpool._worker.logs).
M_PID, M_RECV, M_RUN0, M_RUN1, M_SEND0, M_SPANS, M_LOGS = range(7)

# Status records: kind, pid, work id, timestamp; FAULT and INIT_FAIL carry a JSON payload
# after a length. Kept under PIPE_BUF (4096 on Linux) so each write is atomic.
_REC = struct.Struct("<Biqq")
_LEN = struct.Struct("<I")
REC_START = 1
REC_FAULT = 2
REC_INIT_FAIL = 3
REC_WARN = 4
_MAX_RECORD = 4000

_feeder = threading.local()


class WorkerState:
    """Per-worker-process facts the worker-side hooks share."""

    status_fd: int = -1
    status_conn: Any = None
    pending_meta: list[Any] | None = None
    current_work_id: int = -1
    last_recv_ns: int = 0
    otel: Any = None  # the _otel module, imported by the first traced task
    pid: int = 0
    logs_conn: Any = None  # the log pipe's write end, when records are captured
    logs_unsent: bool = False  # records were dropped and the parent has no count yet
    logs_flush: Any = None  # sends that count (CaptureHandler.flush_drops)


WORKER = WorkerState()


def feeder_task() -> Any:
    """The traced task the current feeder thread is pickling (set by ``__reduce__``)."""
    return getattr(_feeder, "task", None)


def clear_feeder_task() -> None:
    _feeder.task = None


class _Task:
    """A sampled task's call, submitted to the stdlib pool in place of ``fn``."""

    __slots__ = ("args", "fn", "kwargs", "rec", "trace")

    def __init__(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], trace: Any, rec: Any
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.trace = trace
        self.rec = rec

    def __reduce__(self) -> tuple[Any, ...]:
        # Runs on the feeder thread when the pickler reaches this call item.
        _feeder.task = self
        rec = self.rec
        if rec is not None:
            rec.t_ser0 = time_ns()
        kwargs = self.kwargs
        if kwargs:
            header = (TAG, len(self.args), tuple(kwargs), self.trace)
            return (_rebuild_task, (header, self.fn, *self.args, *kwargs.values()))
        return (_rebuild_task, ((TAG, len(self.args), (), self.trace), self.fn, *self.args))

    def __call__(self) -> Any:
        # Runs in the worker, called by the stdlib's _process_worker.
        w = WORKER
        meta: list[Any] = [w.pid, w.last_recv_ns, time_ns(), 0, 0, None, None]
        w.pending_meta = meta
        otel = w.otel
        if otel is None:
            from .._telemetry import otel

            w.otel = otel
            w.pid = meta[M_PID] = os.getpid()
            _start_tracing(w.otel.worker_setup_tracing)  # once per worker
        token = otel.worker_attach(self.trace)
        try:
            return self.fn(*self.args, **self.kwargs)
        finally:
            meta[M_RUN1] = time_ns()
            meta[M_SPANS] = otel.worker_detach(token)


def _rebuild_task(header: tuple[Any, ...], fn: Any, *parts: Any) -> _Task:
    _tag, nargs, kwnames, trace = header
    if kwnames:
        return _Task(fn, parts[:nargs], dict(zip(kwnames, parts[nargs:], strict=True)), trace, None)
    return _Task(fn, parts, {}, trace, None)


def record_start(work_id: int) -> None:
    """Worker side: "work item ``work_id`` starts on this pid now"."""
    w = WORKER
    w.current_work_id = work_id
    if w.status_fd >= 0:
        _write(w.status_fd, _REC.pack(REC_START, os.getpid(), work_id, time_ns()))
    if w.logs_unsent:
        w.logs_flush()


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass  # pipe full (EAGAIN) or parent gone: the record is dropped, never blocks


def _write_payload(fd: int, kind: int, work_id: int, payload: dict[str, Any]) -> None:
    if fd < 0:
        return
    body = json.dumps(payload, default=str).encode("utf-8", "replace")
    room = _MAX_RECORD - _REC.size - _LEN.size
    if len(body) > room:
        # Shorten the traceback first: the tail (innermost frames) is the useful part.
        tb = payload.get("traceback", "")
        payload["traceback"] = "..." + tb[-max(0, len(tb) - (len(body) - room) - 3) :]
        body = json.dumps(payload, default=str).encode("utf-8", "replace")[:room]
    header = _REC.pack(kind, os.getpid(), work_id, time_ns())
    _write(fd, header + _LEN.pack(len(body)) + body)


def _exc_facts(e: BaseException) -> dict[str, Any]:
    """What the parent is told of an exception. Its ``__str__`` is any code at all (a
    task's own class); one that raises is named in the message instead."""
    facts: dict[str, Any] = {"exc_type": qualname(type(e))}
    try:
        facts["message"] = str(e)
    except Exception as err:
        facts["message"] = f"<str() raised {qualname(type(err))}>"
    try:
        facts["traceback"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception as err:
        facts["traceback"] = f"<the traceback could not be formatted: {qualname(type(err))}>"
    return facts


def report_to_parent(what: str, e: BaseException) -> None:
    """Worker side: tracedpool itself failed at ``what`` (a short phrase); the parent logs
    it once per ``what``. Without a status pipe the worker's own log says it."""
    fd = WORKER.status_fd
    if fd >= 0:
        facts = _exc_facts(e)
        facts["what"] = what
        _write_payload(fd, REC_WARN, WORKER.current_work_id, facts)
    else:
        logging.getLogger("tracedpool").warning(
            "tracedpool: worker %d: %s failed", os.getpid(), what, exc_info=e
        )


def _start_tracing(setup: Any) -> None:
    """Run a worker-side tracing set-up step. A missing SDK is no failure (the step
    returns quietly); anything else is reported to the parent, and the worker runs on:
    its tasks still run, only the spans their code creates may be lost."""
    try:
        setup()
    except Exception as e:
        report_to_parent("setting up tracing (spans that task code creates may be lost)", e)


def qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        return type(obj).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


# -- worker initialisation ------------------------------------------------------------------
def _current_work_id() -> int:
    return WORKER.current_work_id


def worker_init(
    status_conn: Any,
    user_init: Any,
    user_initargs: tuple[Any, ...],
    options: dict[str, Any] | None = None,
) -> None:
    """The initializer every worker runs: the tie to the pool's owner (first, so that
    a user initializer that hangs is covered too), log capture (so that the rest of
    start-up, the user's initializer included, is captured), the status pipe, the
    stack-dump handler the stall detector falls back on, then the user's initializer.
    Before all of these, a forked worker forgets the owner's pools (``forget_pools``:
    ``tracedpool._pool.cpython.forget_owner_pools``)."""
    w = WORKER
    if options and options.get("forget_pools") is not None:
        options["forget_pools"]()
    if options and "lifeline" in options:
        _lifeline.start(options["lifeline"], _current_work_id, options.get("forkserver_child"))
    capture = None
    if options and options.get("logs") is not None:
        logs_conn, logs_level, owner = options["logs"]
        capture = _logs.install(logs_conn, logs_level, w, M_LOGS, owner)
    w.status_conn = status_conn  # keeps the descriptor open for the worker's lifetime
    try:
        fd = status_conn.fileno()
        os.set_blocking(fd, False)
        w.status_fd = fd
    except (OSError, ValueError):  # a closed pipe: this worker sends no status
        w.status_fd = -1
    if options and options.get("dump_handler"):
        try:
            from .._diagnosis.stall import install_worker_dump_handler

            install_worker_dump_handler()
        except (OSError, RuntimeError, ValueError):  # no signal or file: no fallback dump
            pass
    try:
        from .._telemetry import otel as _otel
    except ImportError as e:  # a broken install: the tasks still run, untraced
        report_to_parent("importing tracedpool's tracing", e)
    else:
        _start_tracing(_otel.worker_init_tracing)
    try:
        if user_init is not None:
            user_init(*user_initargs)
    except BaseException as e:
        facts = _exc_facts(e)
        facts["initializer"] = qualname(user_init)
        _write_payload(w.status_fd, REC_INIT_FAIL, -1, facts)
        raise
    finally:
        if capture is not None:
            _logs.attach(capture)


# -- locating a call that failed to unpickle --------------------------------------------------
_MARK = object()
_MEMO_SET = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
# The stdlib's _CallItem pickles its __dict__ in this order (3.10 to 3.14).
_CALL_KEYS = ("work_id", "fn", "args", "kwargs")


class _Trace:
    """A static walk of a pickle: the stack size after each opcode, and a snapshot of the
    literal values (strings, ints) on the stack just before a chosen opcode."""

    def __init__(self, data: bytes, snapshot_at: int) -> None:
        self.ops = list(pickletools.genops(data))
        self.lengths: list[int] = []
        self.lows: list[int] = []
        self.snapshot: list[Any] = []
        stack: list[Any] = []
        memo: dict[Any, Any] = {}
        for i, (op, arg, _pos) in enumerate(self.ops):
            if i == snapshot_at:
                self.snapshot = list(stack)
            name = op.name
            if name in _MEMO_SET:
                if stack:
                    memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                low = len(stack)
            else:
                before = op.stack_before
                if pickletools.markobject in before:
                    below = before.index(pickletools.markobject)
                    while stack and stack[-1] is not _MARK:
                        stack.pop()
                    if stack:
                        stack.pop()
                    if below:
                        del stack[-below:]
                elif before:
                    del stack[-len(before) :]
                low = len(stack)
                if name in _MEMO_GET:
                    stack.append(memo.get(arg))
                elif op.stack_after == [pickletools.markobject]:
                    stack.append(_MARK)
                else:
                    literal = arg if isinstance(arg, (str, int)) and op.stack_after else None
                    stack.extend(literal for _ in op.stack_after)
            self.lengths.append(len(stack))
            self.lows.append(low)

    def finish(self, start: int, end: int, level: int) -> int:
        """The last opcode in [start, end) after which the stack is at most ``level``."""
        for i in range(end - 1, start - 1, -1):
            if self.lengths[i] <= level:
                return i
        return start - 1

    def in_progress(self, base: int, start: int, end: int, failed_at: int, count: int) -> int:
        """Which of ``count`` consecutive values, the first at stack index ``base`` and
        built by opcodes [start, end), was being rebuilt at ``failed_at``."""
        for k in range(count):
            if self.finish(start, end, base + k + 1) >= failed_at:
                return k
        return count


def locate_call_failure(
    buf: Any, failing_opcode: Callable[[bytes], int | None]
) -> tuple[int, str] | None:
    """Which work item and which part of its call made a message fail to unpickle.

    Two passes, both after the failure: the pure-Python unpickler replays the message to
    find the opcode that raised (the worker is about to die anyway), then a static walk
    of the opcodes maps that opcode to ``fn``, ``args[i]`` or ``kwargs[name]``.
    """
    data = bytes(buf)
    failed_at = failing_opcode(data)
    if failed_at is None:
        return None  # it did not fail a second time: the part cannot be named
    try:
        walk = _Trace(data, failed_at)
    except (ValueError, IndexError, TypeError):
        return None  # the opcodes do not walk as expected: the part cannot be named
    ops = walk.ops
    key_at = next((i for i, (_o, a, _p) in enumerate(ops) if a == "work_id"), -1)
    if key_at < 0 or key_at + 1 >= len(ops):
        return None
    work_id = next(
        (a for o, a, _p in ops[key_at + 1 : key_at + 4] if "INT" in o.name and isinstance(a, int)),
        -1,
    )
    if failed_at <= key_at:
        return work_id, "call"
    base = walk.lengths[key_at] - 1  # the key 'work_id' sits at this stack index
    close = next((i for i in range(key_at + 1, len(ops)) if walk.lows[i] <= base), len(ops))
    if failed_at >= close:
        return work_id, "call"
    item = walk.in_progress(base, key_at, close, failed_at, 2 * len(_CALL_KEYS))
    key = _CALL_KEYS[min(item // 2, len(_CALL_KEYS) - 1)]
    if key == "work_id":
        return work_id, "call"
    start = walk.finish(key_at, close, base + item) + 1  # first opcode of this value
    end = walk.finish(key_at, close, base + item + 1) + 1
    if key == "fn":
        tag_at = next((i for i in range(start, end) if ops[i][1] == TAG), -1)
        return work_id, (_locate_in_task(walk, tag_at, failed_at) if tag_at >= 0 else "fn")
    return work_id, _locate_in_container(walk, key, base + item + 1, start, end, failed_at)


def _locate_in_task(walk: _Trace, tag_at: int, failed_at: int) -> str:
    """Inside a traced task's flat tuple (header, fn, *args, *kwarg_values)."""
    header_mark = walk.lengths[tag_at] - 2  # the header tuple's MARK
    header_at = next(
        (i for i in range(tag_at + 1, len(walk.ops)) if walk.lengths[i] == header_mark + 1),
        -1,
    )
    if header_at < 0 or failed_at <= header_at:
        return "fn"
    values = [a for _o, a, _p in walk.ops[tag_at:header_at] if isinstance(a, (str, int))]
    nargs = values[1] if len(values) > 1 and isinstance(values[1], int) else 0
    kwnames = tuple(v for v in values[2:] if isinstance(v, str))
    base = header_mark  # the header's own index once built
    close = next(
        (i for i in range(header_at + 1, len(walk.ops)) if walk.lows[i] <= base), len(walk.ops)
    )
    part = walk.in_progress(base + 1, header_at + 1, close, failed_at, 1 + nargs + len(kwnames))
    return target_name(part, nargs, kwnames)


def _locate_in_container(
    walk: _Trace, key: str, index: int, start: int, end: int, failed_at: int
) -> str:
    """Inside the stdlib call item's ``args`` tuple or ``kwargs`` dict."""
    ops = walk.ops
    first = ops[start][0].name if start < len(ops) else ""
    closing = max((i for i in range(start, end) if ops[i][0].name not in _MEMO_SET), default=-1)
    if closing < 0:
        return key
    if key == "args":
        # MARK items... TUPLE, or up to three items pushed in place and TUPLE1-3.
        base = walk.lengths[start] if first == "MARK" else index - 1
        i = walk.in_progress(base, start + (first == "MARK"), closing, failed_at, 1 << 30)
        return f"args[{i}]"
    # kwargs: EMPTY_DICT, then MARK k v ... SETITEMS, or k v SETITEM for a single item.
    mark_at = next((i for i in range(start, closing) if ops[i][0].name == "MARK"), -1)
    if mark_at >= 0:
        base, begin = walk.lengths[mark_at], mark_at + 1
    else:
        begin = next(
            (i + 1 for i in range(start, closing) if ops[i][0].name == "EMPTY_DICT"), start
        )
        while begin < closing and ops[begin][0].name in _MEMO_SET:
            begin += 1
        base = index
    item = walk.in_progress(base, begin, closing, failed_at, 1 << 30)
    name = walk.snapshot[base + item - item % 2] if base + item < len(walk.snapshot) else None
    return f"kwargs[{name}]" if isinstance(name, str) else "kwargs"


def target_name(part: int, nargs: int, kwnames: tuple[str, ...]) -> str:
    """The part of a call at position ``part`` of (fn, *args, *kwarg_values)."""
    if part == 0:
        return "fn"
    if part - 1 < nargs:
        return f"args[{part - 1}]"
    index = part - 1 - nargs
    return f"kwargs[{kwnames[index]}]" if index < len(kwnames) else "call"


def report_worker_unpickle_failure(
    fd: int, buf: Any, e: BaseException, failing_opcode: Callable[[bytes], int | None]
) -> None:
    """Tell the parent which work item and part failed to unpickle, before the worker dies."""
    try:
        located = locate_call_failure(buf, failing_opcode)
    except Exception as bug:  # must not cost the report: the part is unnamed, the bug said
        located = None
        report_to_parent("locating which part of a call failed to unpickle", bug)
    work_id, target = located if located is not None else (-1, "call")
    facts = _exc_facts(e)  # never raises: a failing str() is named instead
    facts.update(stage="worker-unpickle", target=target)
    _write_payload(fd, REC_FAULT, work_id, facts)


# -- locating a call that failed to pickle ------------------------------------------------------
def probe_parts(fn: Any, args: Any, kwargs: Any) -> tuple[str, str]:
    """Which part of a call fails to pickle on its own: (target, type name).

    The probe's own exception is dropped here on purpose: its traceback would tie the
    calling frames (and the queue they hold) into a cycle only the GC could free."""
    from multiprocessing.reduction import ForkingPickler

    if type(fn) is _Task:
        fn, args, kwargs = fn.fn, fn.args, fn.kwargs
    parts: list[tuple[str, Any]] = [("fn", fn)]
    parts += [(f"args[{i}]", a) for i, a in enumerate(args or ())]
    parts += [(f"kwargs[{k}]", v) for k, v in (kwargs or {}).items()]
    for name, part in parts:
        try:
            ForkingPickler.dumps(part)
        except BaseException:
            return name, qualname(type(part))
    return "call", ""


def annotate_fault(e: BaseException, stage: str, target: str, objtype: Any, work_id: int) -> None:
    """Mark an exception with where a pickling fault struck; add a note on 3.11+."""
    typename = objtype if isinstance(objtype, str) else qualname(objtype)
    try:
        setattr(e, FAULT_ATTR, (stage, target, typename, work_id))
    except (AttributeError, TypeError):
        return  # an exception that takes no attributes (slots): it cannot be marked
    add_note = getattr(e, "add_note", None)
    if add_note is not None:
        add_note(f"tracedpool: {PicklingFault(stage, target, typename, work_id)}")


# -- reading the status pipe in the parent ------------------------------------------------------
class StatusReader:
    """Parses status records; drained by the manager thread and at breakage."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        self._pending = b""
        self._lock = threading.Lock()
        self.started: dict[int, tuple[int, int]] = {}  # pid -> (work id, t_ns) last started
        self.faults: list[dict[str, Any]] = []
        self.init_failures: list[dict[str, Any]] = []
        self._warnings: list[dict[str, Any]] = []  # REC_WARN, logged outside the lock

    def drain(self) -> None:
        with self._lock:
            if self._fd < 0:
                return  # closed: the number may belong to another file by now
            chunks = [self._pending]
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except OSError:  # EAGAIN: nothing more; EBADF: closed at shutdown
                    break
                if not data:
                    break
                chunks.append(data)
            self._pending = self._parse(b"".join(chunks))
            warnings, self._warnings = self._warnings, []
        for payload in warnings:
            _log_worker_warning(payload)

    def _parse(self, buf: bytes) -> bytes:
        pos, size = 0, len(buf)
        rec, length = _REC, _LEN
        started = self.started
        while size - pos >= rec.size:
            kind, pid, work_id, t = rec.unpack_from(buf, pos)
            if kind == REC_START:
                started[pid] = (work_id, t)
                pos += rec.size
                continue
            if size - pos < rec.size + length.size:
                break
            (n,) = length.unpack_from(buf, pos + rec.size)
            end = pos + rec.size + length.size + n
            if end > size:
                break
            try:
                payload = json.loads(buf[pos + rec.size + length.size : end])
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {}  # a worker writes a dict: anything else is not its record
            payload.update(pid=pid, work_id=work_id, t_ns=t)
            if kind == REC_FAULT:
                self.faults.append(payload)
            elif kind == REC_WARN:
                self._warnings.append(payload)
            else:
                self.init_failures.append(payload)
            pos = end
        return buf[pos:]

    def close(self, writer: Any = None) -> None:
        """Close the read end and, once, the parent's copy of the write end.

        The manager thread (at its exit), ``shutdown()`` and the executor's finalizer
        may all get here, concurrently. ``Connection.close`` is not atomic: two threads
        closing one connection can both call ``close(fd)``, and the second call then
        closes whatever file took that number meanwhile (seen on 3.14: a Popen's pipe,
        so a later worker start through the fork server failed with EBADF). Both ends
        are closed under this reader's lock, and only the first call closes anything.
        """
        with self._lock:
            if self._fd < 0:
                return
            self._fd = -1
            for conn in (self._conn, writer):
                if conn is None:
                    continue
                try:
                    conn.close()
                except OSError:
                    pass


#: What workers reported failing in tracedpool itself (REC_WARN), already logged here.
_worker_warnings_said: set[str] = set()


def _log_worker_warning(payload: dict[str, Any]) -> None:
    """In the parent: a worker's REC_WARN, logged once per kind with the worker's
    traceback (the parent's own traceback would say nothing)."""
    what = str(payload.get("what") or "an unnamed step")
    if what in _worker_warnings_said:
        return
    _worker_warnings_said.add(what)
    logging.getLogger("tracedpool").warning(
        "tracedpool: worker %s: %s failed: %s: %s; further reports of this kind are not logged\n%s",
        payload.get("pid"),
        what,
        payload.get("exc_type"),
        payload.get("message"),
        payload.get("traceback", ""),
    )
