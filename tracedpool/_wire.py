"""What travels between the parent and its workers, and the worker-side half of tracing.

``_Task`` wraps the user's call. It pickles as one flat reduce tuple
``(header, fn, *args, *kwarg_values)``: one pickling pass, so aliasing is kept
(``f(x, x)`` still receives one object) and the hot path pays no probing. Faults are
located only after they happen:

* in the parent's feeder thread, by pickling each part again (``probe_parts``);
* in the worker, by replaying the failed message through the pure-Python unpickler
  and reading how far it got (``locate_call_failure``).

A per-pool *status pipe* carries small records from workers to the parent, each written
with a single non-blocking ``os.write`` below ``PIPE_BUF`` (atomic, never blocks, and no
lock is shared between workers, so a killed worker cannot wedge the others): "task N
started here", "task N failed to unpickle here", "the initializer failed here".
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import threading
import time
import traceback
from typing import Any

time_ns = time.time_ns

TAG = "tracedpool/1"

# Indices into the per-task metadata list a worker attaches to its result item.
M_SEQ, M_PID, M_RECV, M_RUN0, M_RUN1, M_SEND0, M_SPANS = range(7)

# Status records: kind, pid, task sequence, timestamp; FAULT and INIT_FAIL carry a JSON
# payload after a length. Kept under PIPE_BUF (4096 on Linux) so each write is atomic.
_REC = struct.Struct("<Biqq")
_LEN = struct.Struct("<I")
REC_START = 1
REC_FAULT = 2
REC_INIT_FAIL = 3
_MAX_RECORD = 4000

_feeder = threading.local()


class WorkerState:
    """Per-worker-process facts the worker-side hooks share."""

    status_fd: int = -1
    status_conn: Any = None
    pending_meta: list[Any] | None = None
    current_seq: int = -1
    last_recv_ns: int = 0
    tracing: Any = None


WORKER = WorkerState()


def feeder_task() -> Any:
    """The task the current feeder thread is pickling (set by ``_Task.__reduce__``)."""
    return getattr(_feeder, "task", None)


def clear_feeder_task() -> None:
    _feeder.task = None


class _Task:
    """The user's call, as submitted to the stdlib pool in place of ``fn``."""

    __slots__ = ("args", "fn", "kwargs", "rec", "seq", "trace")

    def __init__(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        seq: int,
        trace: Any,
        rec: Any,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.seq = seq
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
            header = (TAG, self.seq, len(self.args), tuple(kwargs), self.trace)
            return (_rebuild_task, (header, self.fn, *self.args, *kwargs.values()))
        header = (TAG, self.seq, len(self.args), (), self.trace)
        return (_rebuild_task, (header, self.fn, *self.args))

    def __call__(self) -> Any:
        # Runs in the worker, called by the stdlib's _process_worker.
        w = WORKER
        seq = self.seq
        w.current_seq = seq
        t_run0 = time_ns()
        if w.status_fd >= 0:
            _write(w.status_fd, _REC.pack(REC_START, os.getpid(), seq, t_run0))
        if self.trace is None:
            return self.fn(*self.args, **self.kwargs)
        return _run_traced(self, t_run0)


def _rebuild_task(header: tuple[Any, ...], fn: Any, *parts: Any) -> _Task:
    _tag, seq, nargs, kwnames, trace = header
    if kwnames:
        args = parts[:nargs]
        kwargs = dict(zip(kwnames, parts[nargs:], strict=True))
    else:
        args, kwargs = parts, {}
    return _Task(fn, args, kwargs, seq, trace, None)


def _run_traced(task: _Task, t_run0: int) -> Any:
    from . import _otel

    w = WORKER
    meta: list[Any] = [task.seq, os.getpid(), w.last_recv_ns, t_run0, 0, 0, None]
    w.pending_meta = meta
    token = _otel.worker_attach(task.trace)
    try:
        return task.fn(*task.args, **task.kwargs)
    finally:
        meta[M_RUN1] = time_ns()
        meta[M_SPANS] = _otel.worker_detach(token)


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass  # pipe full (EAGAIN) or parent gone: the record is dropped, never blocks


def _write_payload(fd: int, kind: int, seq: int, payload: dict[str, Any]) -> None:
    if fd < 0:
        return
    body = json.dumps(payload, default=str).encode("utf-8", "replace")
    room = _MAX_RECORD - _REC.size - _LEN.size
    if len(body) > room:
        # Shorten the traceback first: the tail (innermost frames) is the useful part.
        tb = payload.get("traceback", "")
        payload["traceback"] = "..." + tb[-max(0, len(tb) - (len(body) - room) - 3) :]
        body = json.dumps(payload, default=str).encode("utf-8", "replace")[:room]
    header = _REC.pack(kind, os.getpid(), seq, time_ns())
    _write(fd, header + _LEN.pack(len(body)) + body)


def _exc_facts(e: BaseException) -> dict[str, Any]:
    return {
        "exc_type": qualname(type(e)),
        "message": str(e),
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }


def qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        return type(obj).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


# -- worker initialisation -----------------------------------------------------------------
def worker_init(status_conn: Any, user_init: Any, user_initargs: tuple[Any, ...]) -> None:
    """The initializer every worker runs: the status pipe, then the user's initializer."""
    w = WORKER
    w.status_conn = status_conn  # keeps the descriptor open for the worker's lifetime
    try:
        fd = status_conn.fileno()
        os.set_blocking(fd, False)
        w.status_fd = fd
    except Exception:
        w.status_fd = -1
    if user_init is None:
        return
    try:
        user_init(*user_initargs)
    except BaseException as e:
        facts = _exc_facts(e)
        facts["initializer"] = qualname(user_init)
        _write_payload(w.status_fd, REC_INIT_FAIL, -1, facts)
        raise


# -- locating faults -----------------------------------------------------------------------
def target_name(done: int, nargs: int, kwnames: tuple[str, ...]) -> str:
    """The part of a call that the ``done``-th slot after the header holds."""
    if done == 0:
        return "fn"
    if done - 1 < nargs:
        return f"args[{done - 1}]"
    index = done - 1 - nargs
    return f"kwargs[{kwnames[index]}]" if index < len(kwnames) else "call"


def locate_call_failure(buf: Any) -> tuple[int, str] | None:
    """Which task and which part made a call message fail to unpickle.

    Two passes over the message, both after the failure (nothing on the hot path):

    1. Replay it through the pure-Python unpickler, counting opcodes, to learn the index
       of the opcode that raised (the worker is dying anyway).
    2. Walk the opcodes statically (``pickletools``) with a model of the unpickler's
       stack, to learn which opcode finishes each part of our flat reduce tuple
       ``(header, fn, *args, *kwarg_values)``. The failing part is the first one not
       finished before the failing opcode.
    """
    data = bytes(buf)
    failed_at = _failing_opcode(data)
    if failed_at is None:
        return None  # it did not fail a second time: the part cannot be named
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return None
    stack: list[Any] = []
    lengths: list[int] = []  # stack size after each opcode
    lows: list[int] = []  # stack size after its pops, before its pushes
    header_at = header_len = -1
    header: tuple[Any, ...] | None = None
    tag_mark = -1
    for i, (op, arg, _pos) in enumerate(ops):
        lows.append(_simulate(stack, op))
        if arg == TAG and header_at < 0 and tag_mark < 0:
            tag_mark = max((k for k, x in enumerate(stack) if x is _MARK), default=-1)
        elif tag_mark >= 0 and header_at < 0 and len(stack) == tag_mark + 1:
            header_at, header_len = i, len(stack)
        lengths.append(len(stack))
    if header_at < 0:
        return None
    header = _header_values(ops, header_at)
    if header is None:
        return None
    seq, nargs, kwnames = header
    n_parts = 1 + nargs + len(kwnames)
    # The tuple closes at the opcode that pops the header itself.
    close = next((i for i in range(header_at + 1, len(ops)) if lows[i] < header_len), len(ops))
    if failed_at <= header_at or failed_at >= close:
        return seq, "call"
    for part in range(n_parts):
        level = header_len + part + 1
        finished = max((i for i in range(header_at + 1, close) if lengths[i] <= level), default=-1)
        if finished >= failed_at:
            return seq, target_name(part, nargs, kwnames)
    return seq, "call"


_MARK = object()
_MEMO_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})


def _simulate(stack: list[Any], op: Any) -> int:
    """Apply one opcode's effect on the unpickler's stack (sizes only; marks kept);
    return the stack size between its pops and its pushes."""
    before = op.stack_before
    if op.name in _MEMO_OPS:  # stores the top in the memo; pops nothing
        return len(stack)
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
    stack.extend(_MARK if x is pickletools.markobject else None for x in op.stack_after)
    return low


def _header_values(ops: list[Any], header_end: int) -> tuple[int, int, tuple[str, ...]] | None:
    """seq, nargs and kwarg names, read from the header's literal opcodes."""
    values: list[Any] = []
    names: list[str] = []
    in_kwnames = False
    for op, arg, _pos in ops[: header_end + 1]:
        if arg == TAG:
            values = []
            names = []
            in_kwnames = False
            continue
        if isinstance(arg, int) and not isinstance(arg, bool) and "INT" in op.name:
            if len(values) < 2:
                values.append(arg)
            continue
        if len(values) == 2 and isinstance(arg, str) and "UNICODE" in op.name:
            in_kwnames = True
            names.append(arg)
    del in_kwnames
    if len(values) < 2:
        return None
    return values[0], values[1], tuple(names)


def _failing_opcode(data: bytes) -> int | None:
    """Replay ``data`` through the pure-Python unpickler; the index of the opcode that
    raised, or None if it loads."""
    unpickler = pickle._Unpickler(io.BytesIO(data))  # type: ignore[attr-defined]
    count = [0]

    def counting(fn: Any) -> Any:
        def run(self: Any) -> Any:
            count[0] += 1
            return fn(self)

        return run

    table = pickle._Unpickler.dispatch  # type: ignore[attr-defined]
    unpickler.dispatch = {k: counting(f) for k, f in table.items()}  # type: ignore[misc]
    try:
        unpickler.load()
    except BaseException:
        return count[0] - 1
    return None


def report_worker_unpickle_failure(fd: int, buf: Any, e: BaseException) -> None:
    """Tell the parent which task and part failed to unpickle, before the worker dies."""
    try:
        located = locate_call_failure(buf)
        seq, target = located if located is not None else (-1, "call")
        facts = _exc_facts(e)
        facts.update(stage="worker-unpickle", target=target)
        _write_payload(fd, REC_FAULT, seq, facts)
    except BaseException:
        pass


def probe_parts(task: _Task) -> tuple[str, str, BaseException | None]:
    """Which part of a call fails to pickle on its own: (target, type name, error)."""
    from multiprocessing.reduction import ForkingPickler

    parts: list[tuple[str, Any]] = [("fn", task.fn)]
    parts += [(f"args[{i}]", a) for i, a in enumerate(task.args)]
    parts += [(f"kwargs[{k}]", v) for k, v in task.kwargs.items()]
    for name, part in parts:
        try:
            ForkingPickler.dumps(part)
        except BaseException as e:
            return name, qualname(type(part)), e
    return "call", "", None


FAULT_ATTR = "__tracedpool_fault__"


def annotate_fault(e: BaseException, stage: str, target: str, objtype: Any, seq: int) -> None:
    """Mark an exception with where a pickling fault struck; add a note on 3.11+."""
    typename = objtype if isinstance(objtype, str) else qualname(objtype)
    try:
        setattr(e, FAULT_ATTR, (stage, target, typename, seq))
    except Exception:
        return
    add_note = getattr(e, "add_note", None)
    if add_note is not None:
        verb = "unpickle" if stage.endswith("unpickle") else "pickle"
        add_note(f"tracedpool: could not {verb} {target} ({typename}) at stage {stage}")


def fault_of(e: BaseException | None) -> tuple[str, str, str, int] | None:
    if e is None:
        return None
    value = getattr(e, FAULT_ATTR, None)
    return value if isinstance(value, tuple) and len(value) == 4 else None


# -- reading the status pipe in the parent -------------------------------------------------
class StatusReader:
    """Parses status records; drained by the manager thread and at breakage."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        self._pending = b""
        self._lock = threading.Lock()
        self.started: dict[int, tuple[int, int]] = {}  # pid -> (seq, t_ns) last started
        self.faults: list[dict[str, Any]] = []
        self.init_failures: list[dict[str, Any]] = []

    def drain(self) -> None:
        with self._lock:
            chunks = [self._pending]
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            buf = b"".join(chunks)
            self._pending = self._parse(buf)

    def _parse(self, buf: bytes) -> bytes:
        pos, size = 0, len(buf)
        rec, length = _REC, _LEN
        while size - pos >= rec.size:
            kind, pid, seq, t = rec.unpack_from(buf, pos)
            if kind == REC_START:
                self.started[pid] = (seq, t)
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
            payload.update(pid=pid, seq=seq, t_ns=t)
            (self.faults if kind == REC_FAULT else self.init_failures).append(payload)
            pos = end
        return buf[pos:]

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass
