"""The worker-side half of log capture: a handler that streams each record to the parent.

``install()`` runs in the worker's initializer, before the user's: it removes every
handler the worker found in place (inherited under fork, or configured by a module the
worker imported), and while the user's initializer runs, records that find no handler
come to the ``CaptureHandler`` (it stands in as ``logging.lastResort``), so root has no
handler and ``logging.basicConfig()`` there works as in a stdlib worker. ``attach()``
then puts the handler on the root logger, beside whatever the initializer configured:
that is how a user keeps worker-side handlers.

Each record becomes one frame on the pool's log pipe, written with a single
non-blocking ``os.write`` no larger than ``PIPE_BUF``: atomic (frames of several workers
never interleave), and never blocking the task. A full pipe, or a record past a bound
(per task, per worker per second), is dropped and counted, never waited for. The
message is formatted here, with its arguments (which may not pickle), and exception
info becomes text (its traceback). A record is written as it is logged, so a worker
killed right after still delivered it. Once the pool's owner is gone nobody reads the
pipe: records then go to the worker's stderr, as with no handler (``logging.lastResort``),
so a worker's last words (``tracedpool._worker.lifeline``) are still seen.

A record logged by the task's own thread while a sampled task runs is also kept,
bounded, in the task's result metadata (``M_LOGS`` of ``tracedpool._worker.wire``): it
travels with the result and becomes an event on the task's ``worker-run`` span, with no
race against the parent's reading of the pipe.

Frame: ``<IIi`` (body length, records dropped by this worker so far, pid), then a JSON
list (``FIELDS``). A body of length 0 only reports the dropped count.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from typing import Any

from opentelemetry import trace

HEADER = struct.Struct("<IIi")
#: The largest frame: below PIPE_BUF (4096 on Linux), so each write is atomic.
MAX_FRAME = 4000
#: Records (and frame bytes) one task may send; past them its records are dropped.
MAX_TASK_RECORDS = 1000
MAX_TASK_BYTES = 1 << 20
#: Records (and frame bytes) one worker may send per second, task or not: a flood from
#: any thread costs the parent a bounded share of its time.
MAX_WORKER_RECORDS_PER_SECOND = 2000
MAX_WORKER_BYTES_PER_SECOND = 2 << 20
#: Records kept per sampled task for its span's events (the SDK's default event limit).
MAX_TASK_EVENTS = 128
#: The JSON body's fields, in order.
FIELDS = (
    "work_id",
    "created",
    "levelno",
    "levelname",
    "name",
    "message",
    "exc_text",
    "pathname",
    "lineno",
    "funcName",
    "threadName",
    "thread",
    "processName",
    "trace_id",
    "span_id",
    "trace_flags",
    "stack_info",
)

_formatter = logging.Formatter()


class CaptureHandler(logging.Handler):
    """Streams records to the parent; see the module docstring."""

    def __init__(self, fd: int, level: int, state: Any, meta_slot: int, owner: int) -> None:
        super().__init__(level)
        self.fd = fd
        self.owner = owner  # the pool's process, which reads the pipe
        self.ppid = os.getppid()  # the owner, but under forkserver (the fork server)
        self.state = state  # the worker's WorkerState: current work id, pending meta
        self.meta_slot = meta_slot
        self.task_thread = threading.get_ident()  # tasks run on the worker's main thread
        self.pid = os.getpid()
        self.task = -2
        self.task_records = self.task_bytes = 0
        self.window_end = 0.0
        self.window_records = self.window_bytes = 0
        self.dropped = 0
        self.reported = 0
        # What a record with no handler falls to once this handler lets go of it (it is
        # logging.lastResort itself while the user's initializer runs; see install).
        self.fallback = logging.lastResort

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _send(self, record: logging.LogRecord) -> None:
        if self._owner_gone():
            # Nobody reads the pipe any more (the lifeline's last line, for one): say it
            # where a worker with no handler would, on its own stderr.
            fallback = self.fallback
            if fallback is not None and record.levelno >= fallback.level:
                fallback.handle(record)
            return
        state = self.state
        on_task = threading.get_ident() == self.task_thread
        work_id = state.current_work_id if on_task else -1
        now = time.monotonic()
        if now >= self.window_end:
            self.window_end = now + 1.0
            self.window_records = self.window_bytes = 0
        if work_id != self.task:
            self.task = work_id
            self.task_records = self.task_bytes = 0
        meta = state.pending_meta if on_task else None
        if self.window_records >= MAX_WORKER_RECORDS_PER_SECOND or (
            work_id >= 0 and self.task_records >= MAX_TASK_RECORDS
        ):
            self._drop(meta)
            return
        message = record.getMessage()
        exc_text = record.exc_text
        exc_type = exc_message = ""
        if record.exc_info:
            exc_text = _formatter.formatException(record.exc_info)
            exc = record.exc_info[1]
            if exc is not None:
                exc_type = type(exc).__qualname__
                exc_message = str(exc)
        ctx = trace.get_current_span().get_span_context()
        trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
        span_id = f"{ctx.span_id:016x}" if ctx.is_valid else ""
        fields = [
            work_id,
            record.created,
            record.levelno,
            record.levelname,
            record.name,
            message,
            exc_text or "",
            record.pathname,
            record.lineno,
            record.funcName,
            record.threadName,
            record.thread,
            record.processName,
            trace_id,
            span_id,
            int(ctx.trace_flags) if ctx.is_valid else 0,
            record.stack_info or "",
        ]
        body = encode(fields)
        size = HEADER.size + len(body)
        if self.window_bytes + size > MAX_WORKER_BYTES_PER_SECOND or (
            work_id >= 0 and self.task_bytes + size > MAX_TASK_BYTES
        ):
            self._drop(meta)
            return
        self.window_records += 1
        self.window_bytes += size
        self.task_records += 1
        self.task_bytes += size
        if meta is not None:
            logs = meta[self.meta_slot]
            if logs is None:
                logs = meta[self.meta_slot] = [0]
            if len(logs) <= MAX_TASK_EVENTS:
                logs.append(
                    (
                        time.time_ns(),
                        record.levelno,
                        record.levelname,
                        record.name,
                        message,
                        exc_type,
                        exc_message,
                        exc_text or "",
                        record.pathname,
                        record.lineno,
                        record.funcName,
                        record.threadName,
                    )
                )
        try:
            os.write(self.fd, HEADER.pack(len(body), self.dropped, self.pid) + body)
        except OSError:  # the pipe is full (EAGAIN) or the parent is gone: never block
            self._drop(meta)
            return
        self.reported = self.dropped

    def _owner_gone(self) -> bool:
        if os.getppid() != self.ppid:
            return True  # reparented: the parent is gone
        if self.owner == self.ppid:
            return False
        try:
            os.kill(self.owner, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists (EPERM)
        return False

    def _drop(self, meta: Any) -> None:
        self.dropped += 1
        self.state.logs_unsent = True
        if meta is not None:
            logs = meta[self.meta_slot]
            if logs is None:
                meta[self.meta_slot] = [1]
            else:
                logs[0] += 1

    def flush_drops(self) -> None:
        """Tell the parent how many records were dropped, if it does not know yet."""
        self.state.logs_unsent = False
        if self.dropped == self.reported:
            return
        try:
            os.write(self.fd, HEADER.pack(0, self.dropped, self.pid))
        except OSError:
            self.state.logs_unsent = True  # the pipe is still full: at the next task, then
            return
        self.reported = self.dropped


def encode(fields: list[Any]) -> bytes:
    """The JSON body, shortened to fit a frame: the message keeps its head, the
    traceback its tail (the innermost frames, the useful part)."""
    body = json.dumps(fields, default=str, ensure_ascii=False).encode("utf-8", "replace")
    room = MAX_FRAME - HEADER.size
    for _ in range(6):
        over = len(body) - room
        if over <= 0:
            return body
        exc_text = fields[6]
        stack_info = fields[16]
        if stack_info:
            fields[16] = "..." + stack_info[-max(0, len(stack_info) - over - 64) :]
        elif len(exc_text) > 256:
            fields[6] = "..." + exc_text[-max(256, len(exc_text) - over - 64) :]
        else:
            message = fields[5]
            fields[5] = message[: max(0, len(message) - over - 64)] + "..."
        body = json.dumps(fields, default=str, ensure_ascii=False).encode("utf-8", "replace")
    fields[5], fields[6], fields[16] = "[record too large]", "", ""
    fields[7] = fields[7][-200:]
    return json.dumps(fields, default=str).encode("utf-8", "replace")[:room]


def install(conn: Any, level: int, state: Any, meta_slot: int, owner: int) -> CaptureHandler | None:
    """In a worker, before the user's initializer: take the handlers it inherited away
    and catch records that find no handler; ``attach`` puts the handler on root after."""
    try:
        fd = conn.fileno()
        os.set_blocking(fd, False)
    except (OSError, ValueError):  # a closed pipe: this worker's records stay here
        return None
    handler = CaptureHandler(fd, level, state, meta_slot, owner)
    manager = logging.Logger.manager
    loggers = [logging.getLogger()]
    loggers += [lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    root = logging.getLogger()
    for logger in loggers:
        # Removed, not closed: under fork, closing an inherited file handler would flush
        # the parent's buffered lines a second time.
        had_handlers = bool(logger.handlers)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        if had_handlers and logger is not root and not logger.propagate:
            # Its records never reach root: capture them where its own handlers were
            # (else they would fall to logging.lastResort, the worker's bare stderr).
            logger.addHandler(handler)
    # Not on root yet: the user's initializer runs first, and logging.basicConfig() in it
    # does nothing once root has a handler. Until attach(), records that find no handler
    # come here instead of to the worker's bare stderr.
    logging.lastResort = handler
    root.setLevel(level)
    state.logs_conn = conn  # keeps the descriptor open for the worker's lifetime
    state.logs_flush = handler.flush_drops
    from multiprocessing import util

    # The worker's exit runs multiprocessing's finalizers (not atexit): the last count
    # of dropped records reaches the parent then.
    util.Finalize(None, handler.flush_drops, exitpriority=100)
    return handler


def attach(handler: CaptureHandler) -> None:
    """In a worker, after the user's initializer: capture from root on, beside whatever
    handlers the initializer configured (``basicConfig``, ``dictConfig``)."""
    if logging.lastResort is handler:
        logging.lastResort = handler.fallback
    root = logging.getLogger()
    if handler not in root.handlers:
        root.addHandler(handler)
