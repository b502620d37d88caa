"""The embedded default exporter: spans as OTLP/JSON lines in a private local file.

Each ``export()`` call writes one line: one ``ExportTraceServiceRequest`` in the OTLP
JSON encoding (``tracedpool._telemetry.otlpjson``). ``read_spans`` there reads the file back; a
collector's ``otlpjsonfile`` receiver can too. Nothing needs to be running.

The file is the host's, not ours, so writing it is careful:

* directory 0700 and files 0600, opened with ``O_NOFOLLOW`` (a symlink planted at the
  path is refused, never written through) and checked to be a regular file we own
  with no other hard link;
* bounded: before a line would take the file past ``max_bytes``, it is rotated
  (``traces.jsonl`` -> ``traces.jsonl.1`` -> ... up to ``count`` files in all), under
  an advisory lock on the directory so processes sharing the file rotate it once;
* a process that finds the file rotated under it by another reopens the new one;
* any failure (unwritable directory, disk full) logs one warning and drops the batch;
  the file is retried at most every ``RETRY_SECONDS``. ``export()`` never raises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import names as N
from .names import EXPORTER_NAME
from .otlpjson import default_trace_file, encode_line, file_settings, request_line

log = logging.getLogger("tracedpool")

__all__ = ["EXPORTER_NAME", "JsonLinesSpanExporter", "default_trace_file"]

RETRY_SECONDS = 30.0


# -- the file --------------------------------------------------------------------------------
class JsonLinesSpanExporter(SpanExporter):
    """Writes each batch of spans as one OTLP/JSON line to a bounded, rotated local file.

    ``path``, ``max_bytes`` and ``count`` default to ``TRACEDPOOL_TRACE_FILE``,
    ``TRACEDPOOL_TRACE_FILE_MAX_BYTES`` and ``TRACEDPOOL_TRACE_FILE_COUNT`` (which win
    over ``path``), then to the per-user default. Use it behind a
    ``BatchSpanProcessor``: every export is a write system call.
    """

    def __init__(
        self, path: Any = None, max_bytes: int | None = None, count: int | None = None
    ) -> None:
        self.path, env_max, env_count = file_settings(path)
        self.max_bytes = max_bytes if max_bytes is not None else env_max
        self.count = count if count is not None else env_count
        if self.max_bytes < 1 or self.count < 1:
            raise ValueError("max_bytes and count must be >= 1")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._retry_at = 0.0
        self._warned = False
        self._closed = False
        self.dropped = 0  # spans lost to write failures, for tests and stats
        # Spans encoded elsewhere (otel.FileSink), held to be written as one line: the
        # exporter holds them, not the pool, so that a pool dropped at exit loses none.
        self._held: list[str] = []
        self._held_count = 0
        self._held_frame: tuple[str, str] | None = None
        self._held_lock = threading.Lock()
        # A fork while another thread exports would leave the lock held in the child for
        # ever (the SDK's batch processor restarts its thread there and exports again).
        # A weak reference: the hook must not keep a shut-down exporter alive.
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m())

    # SpanExporter API
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            line = encode_line(spans)
        except Exception as e:  # a span we cannot encode must not stop the others
            return self._drop(len(spans), f"could not encode spans: {e!r}")
        return self.write_encoded(line, len(spans))

    def hold(self, chunk: str, count: int, frame: tuple[str, str], batch: int) -> None:
        """Keep ``count`` spans that ``otlpjson.SpecEncoder`` encoded (``chunk``, in its
        ``frame``), and write what is held as one line once it reaches ``batch`` spans;
        ``write_held`` (and ``force_flush`` and ``shutdown``) write it sooner."""
        with self._held_lock:
            if self._held_frame is not None and frame != self._held_frame:
                self._write_held_locked()  # another resource: a line of its own
            self._held_frame = frame
            self._held.append(chunk)
            self._held_count += count
            if self._held_count >= batch:
                self._write_held_locked()

    def write_held(self) -> None:
        """Write the spans ``hold`` keeps, as one line."""
        with self._held_lock:
            self._write_held_locked()

    def _write_held_locked(self) -> None:
        chunks, count, frame = self._held, self._held_count, self._held_frame
        if not chunks or frame is None:
            return
        self._held, self._held_count = [], 0
        self.write_encoded(request_line(frame, chunks), count)

    def write_encoded(self, line: bytes, count: int) -> SpanExportResult:
        """Append one encoded request line holding ``count`` spans (``export`` after
        encoding)."""
        with self._lock:
            if self._closed:
                self.dropped += count  # after shutdown: the exit report counts these
                return SpanExportResult.FAILURE
            if self._fd is None and time.monotonic() < self._retry_at:
                # Waiting out an earlier failure. This must not push the retry back, or
                # a service exporting more often than RETRY_SECONDS would never retry.
                return self._drop(count, "waiting to retry after an earlier failure")
            try:
                self._write(line)
            except OSError as e:
                self._close_fd()
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return self._drop(count, f"cannot write {self.path}: {e}")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.write_held()
        with self._lock:
            self._closed = True
            self._close_fd()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.write_held()
        return True  # every export is an unbuffered write

    # internals
    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        # What the parent held is the parent's to write.
        self._held_lock = threading.Lock()
        self._held, self._held_count = [], 0

    def _drop(self, n: int, why: str) -> SpanExportResult:
        self.dropped += n
        if not self._warned:
            self._warned = True
            log.warning(
                "tracedpool: the trace file exporter is dropping spans (%s); "
                "set %s to a writable path. Logged once.",
                why,
                N.ENV_TRACE_FILE,
            )
        return SpanExportResult.FAILURE

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        st = os.fstat(self._fd)
        if st.st_size and st.st_size + len(line) > self.max_bytes:
            self._rotate(st)
        elif not self._still_current(st):
            self._reopen()
        assert self._fd is not None
        view = memoryview(line)
        while view:  # O_APPEND: each write lands at the end, whole lines at once
            written = os.write(self._fd, view)
            view = view[written:]

    def _open(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o700)
        if directory.is_symlink():
            raise OSError(f"{directory} is a symlink; refusing to write traces there")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        st = os.fstat(fd)
        refusal = (
            "is not a regular file"
            if not stat.S_ISREG(st.st_mode)
            else "belongs to another user"
            if st.st_uid != os.geteuid()
            # a hard link planted in a shared directory would have us append to (and
            # rotate) one of this user's other files; O_NOFOLLOW does not stop links
            else "has other hard links"
            if st.st_nlink != 1
            else None
        )
        if refusal is not None:
            os.close(fd)
            raise OSError(f"{self.path} {refusal}")
        if stat.S_IMODE(st.st_mode) & 0o077:
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                os.close(fd)
                raise
        self._fd = fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _reopen(self) -> None:
        self._close_fd()
        self._open()

    def _still_current(self, st: os.stat_result) -> bool:
        """Our descriptor is still the file at ``path`` (no one rotated it away)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _rotate(self, st: os.stat_result) -> None:
        with self._dir_lock():
            if self._still_current(st):  # no other process rotated it meanwhile
                base = str(self.path)
                if self.count == 1:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(base)
                else:
                    for i in range(self.count - 1, 0, -1):
                        src = base if i == 1 else f"{base}.{i - 1}"
                        with contextlib.suppress(FileNotFoundError):
                            os.replace(src, f"{base}.{i}")
            self._reopen()

    @contextlib.contextmanager
    def _dir_lock(self) -> Any:
        """An advisory lock on the directory: one rotation at a time across processes."""
        try:
            import fcntl

            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (ImportError, OSError):
            yield
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(dfd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(dfd)  # closing releases the lock
