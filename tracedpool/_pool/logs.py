"""The parent-side half of log capture: one reader thread per pool re-emits worker records.

The workers write each record as one atomic frame on the pool's log pipe
(``tracedpool._worker.logs``). ``LogListener`` reads it on its own thread, not the
manager's: the manager thread hands results to futures and must not spend its turns on
logging, and a slow handler of the parent's must not delay a future. The reader blocks
in ``poll`` while the workers are quiet (no polling, no cost per task that logs
nothing).

Each frame becomes a ``logging.LogRecord`` with the worker's logger name, level, time,
source location, process and thread, its message already formatted and its traceback as
``exc_text``, plus the ``tracedpool_*`` attributes (``names.RECORD_*``). It goes to
``logging.getLogger(name).handle()`` when that logger is enabled for its level: the
parent's own filters, handlers and formatters decide what is written, and where. A record
logged inside a traced task is handled inside a ``NonRecordingSpan`` of the span it was
logged in, so an OpenTelemetry ``LoggingHandler`` exports it correlated to the trace.

Memory is bounded by the pipe: the reader holds at most one read's worth of frames; when
it falls behind, the pipe fills and the workers drop (and count) records instead of
waiting. The dropped count is the workers' (the latest each reported) plus the frames
found malformed here.

The manager thread drains the pipe at breakage (so records a dying worker sent precede
its futures' failure) and at its exit, after the workers are joined: by the time
``shutdown(wait=True)`` returns, every record the workers wrote has been handled. Both
waits are bounded (1 s at breakage, 2 s at exit): a handler of the parent's that blocks
holds up log records only, never the pool; the reader closes the pipe once it returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._telemetry import names as N
from .._threads import start_daemon
from .._worker.logs import FIELDS, HEADER, MAX_FRAME

log = logging.getLogger("tracedpool")

#: The last records kept per worker pid, for stall reports (``recent_records``).
RECENT_PER_WORKER = 5
#: Workers whose last records and drop counts are kept, the newest: a pool that replaces
#: its workers (``max_tasks_per_child``) sees new pids for ever. An older worker's drops
#: still count, in one total.
WORKERS_KEPT = 256
_READ = 65536
_POLL_ERR = select.POLLERR | select.POLLNVAL


class LogListener:
    """Reads one pool's log pipe and re-emits each record in the parent."""

    def __init__(self, conn: Any, writer: Any, pool_id: str, level: int) -> None:
        self.level = level  # the lowest level the workers send (the pool's log_level)
        self._conn = conn
        self._writer = writer
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        _grow_pipe(self._fd)
        self.pool_id = pool_id
        self._lock = threading.Lock()  # held while frames are parsed and re-emitted
        self._stop_lock = threading.Lock()  # never held across user code: claims stop()
        self._stop_claimed = False
        self._close_pending = False  # stop() could not wait: the lock's holder closes
        self._pending = b""
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self.thread: threading.Thread | None = None
        self.received = 0
        self.malformed = 0
        self._worker_dropped: dict[int, int] = {}
        self._retired_dropped = 0  # the drops of workers no longer kept
        self.recent: dict[int, deque[dict[str, Any]]] = {}

    def recent_records(self, pid: int) -> list[dict[str, Any]]:
        """A copy of the last records worker ``pid`` sent (oldest first), for a stall
        report. Read on the watcher's thread without the reader's lock, which is held
        while the parent's handlers run and so may be held for as long as one blocks."""
        recent = self.recent.get(pid)
        for _attempt in range(3):
            try:
                return list(recent or ())
            except RuntimeError:
                continue  # appended to while copied (a free-threaded build): again
        return []

    @property
    def dropped(self) -> int:
        """Records dropped: by the workers (caps, a full pipe) and here (malformed)."""
        return sum(self._worker_dropped.values()) + self._retired_dropped + self.malformed

    def start(self) -> None:
        """Start the reader thread (once, when the manager thread starts, after a fork
        pool's first workers exist: no tracedpool thread may exist while they are forked)."""
        with self._lock:
            if self.thread is not None or self._stopping:
                return
            self.thread = start_daemon(
                self._run,
                f"tracedpool-logs-{self.pool_id}",
                "worker log records are handled only at breakage and shutdown",
            )

    def _run(self) -> None:
        poll = select.poll()
        poll.register(self._fd, select.POLLIN)
        poll.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                events = poll.poll()
            except OSError:
                return
            if any(fd == self._wake_r for fd, _ev in events):
                return
            if not self.drain() or any(ev & _POLL_ERR for _fd, ev in events):
                return  # end of file (no writer left) or the pipe is gone

    def drain(self, timeout: float | None = None) -> bool:
        """Handle every frame now in the pipe; False at end of file or once closed.

        ``timeout`` bounds the wait for the reader thread, which may be inside a slow
        handler of the parent's (None: wait as long as it takes; the reader itself)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return True  # the reader is handling frames: they are not lost, only later
        try:
            return self._drain_locked()
        finally:
            if self._close_pending:
                self._close_locked()
            self._lock.release()

    def _drain_locked(self) -> bool:
        if self._fd < 0:
            return False
        chunks = [self._pending]
        alive = True
        while True:
            try:
                data = os.read(self._fd, _READ)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not data:
                alive = False
                break
            chunks.append(data)
            if len(chunks) >= 16:
                break  # handle a bounded batch: a flood must not grow this list
        self._pending = self._parse(b"".join(chunks))
        return alive

    def _parse(self, buf: bytes) -> bytes:
        pos, size, hsize = 0, len(buf), HEADER.size
        while size - pos >= hsize:
            length, dropped, pid = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME:
                self.malformed += 1  # not a frame a worker writes: resynchronising is
                return b""  # impossible, so what is buffered is dropped
            end = pos + hsize + length
            if end > size:
                break
            known = self._worker_dropped.get(pid)
            if known is None and len(self._worker_dropped) >= WORKERS_KEPT:
                self._retired_dropped += self._worker_dropped.pop(next(iter(self._worker_dropped)))
            self._worker_dropped[pid] = max(dropped, known or 0)
            if length:
                try:
                    fields = json.loads(buf[pos + hsize : end])
                except ValueError:
                    fields = None
                if isinstance(fields, list) and len(fields) == len(FIELDS):
                    self.received += 1
                    try:
                        self._emit(pid, dict(zip(FIELDS, fields, strict=True)))
                    except Exception:
                        log.warning(
                            "tracedpool: re-emitting a worker's log record failed",
                            exc_info=True,
                        )
                else:
                    self.malformed += 1
            pos = end
        return buf[pos:]

    def _emit(self, pid: int, f: dict[str, Any]) -> None:
        work_id = f["work_id"]
        task_id = f"{self.pool_id}:{work_id}" if work_id >= 0 else None
        recent = self.recent.get(pid)
        if recent is None:
            if len(self.recent) >= WORKERS_KEPT:
                del self.recent[next(iter(self.recent))]  # the longest-known worker
            recent = self.recent[pid] = deque(maxlen=RECENT_PER_WORKER)
        recent.append(
            {
                "t": f["created"],
                "level": f["levelname"],
                "logger": f["name"],
                "message": f["message"][:500],
                "task_id": task_id,
            }
        )
        logger = logging.getLogger(f["name"])
        levelno = f["levelno"]
        if not logger.isEnabledFor(levelno):
            return
        created = f["created"]
        pathname = f["pathname"]
        record = logging.makeLogRecord(
            {
                "name": f["name"],
                "msg": f["message"],
                "args": None,
                "levelno": levelno,
                "levelname": f["levelname"],
                "pathname": pathname,
                "filename": os.path.basename(pathname),
                "module": os.path.splitext(os.path.basename(pathname))[0],
                "lineno": f["lineno"],
                "funcName": f["funcName"],
                "created": created,
                "msecs": (created - int(created)) * 1000,
                "exc_info": None,
                "exc_text": f["exc_text"] or None,
                "stack_info": f["stack_info"] or None,
                "thread": f["thread"],
                "threadName": f["threadName"],
                "process": pid,
                "processName": f["processName"],
                N.RECORD_TASK_ID: task_id,
                N.RECORD_WORKER_PID: pid,
                N.RECORD_TRACE_ID: f["trace_id"] or None,
                N.RECORD_SPAN_ID: f["span_id"] or None,
            }
        )
        with _in_span(f["trace_id"], f["span_id"], f["trace_flags"]):
            logger.handle(record)

    def stop(self, timeout: float) -> None:
        """Handle what is left, stop the thread and close both ends of the pipe.

        The manager's exit, ``shutdown()`` and the executor's finalizer may all get
        here; only the first call does anything. A later one must not touch the
        descriptors: their numbers may belong to other files by then."""
        with self._stop_lock:
            if self._stop_claimed:
                return
            self._stop_claimed = True
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")  # only this call closes it, below or deferred
        except OSError:
            pass  # the thread never started and the pipe is full: nothing waits
        deadline = time.monotonic() + timeout
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        # The reader may be stuck in a handler of the parent's (or this may be a
        # finalizer run on the reader's own thread): never wait past the timeout. Then
        # whoever holds the lock closes the pipe when it lets go.
        self._close_pending = True
        if self._lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            try:
                self._drain_locked()
                self._close_locked()
            finally:
                self._lock.release()

    def _close_locked(self) -> None:
        if self._fd < 0:
            return
        self._fd = -1
        for conn in (self._conn, self._writer):
            try:
                conn.close()
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


@contextlib.contextmanager
def _in_span(trace_hex: str, span_hex: str, flags: int) -> Iterator[None]:
    """The worker's span as the current span, for an OpenTelemetry LoggingHandler."""
    if not trace_hex:
        yield
        return
    ctx = trace.SpanContext(int(trace_hex, 16), int(span_hex, 16), True, trace.TraceFlags(flags))
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(ctx)))
    try:
        yield
    finally:
        otel_context.detach(token)


def _grow_pipe(fd: int) -> None:
    """A bigger pipe absorbs a burst of records instead of dropping it (Linux: up to
    /proc/sys/fs/pipe-max-size, 1 MiB by default, without privileges)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or past the limit: the default 64 KiB then
