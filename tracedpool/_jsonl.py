"""The embedded default exporter: spans as OTLP/JSON lines in a private local file.

Each ``export()`` call writes one line: one ``ExportTraceServiceRequest`` in the OTLP
JSON encoding (the protobuf JSON mapping with OTLP's rules: trace and span ids as hex
strings, enums as integers, 64-bit integers as decimal strings, lowerCamelCase field
names, default values omitted). A collector's ``otlpjsonfile`` receiver, or
``tracedpool timeline``, can read it back; nothing needs to be running.

The file is the host's, not ours, so writing it is careful:

* directory 0700 and files 0600, opened with ``O_NOFOLLOW`` (a symlink planted at the
  path is refused, never written through) and checked to be a regular file we own;
* bounded: before a line would take the file past ``max_bytes``, it is rotated
  (``traces.jsonl`` -> ``traces.jsonl.1`` -> ... up to ``count`` files in all), under
  an advisory lock on the directory so processes sharing the file rotate it once;
* a process that finds the file rotated under it by another reopens the new one;
* any failure (unwritable directory, disk full) logs one warning and drops the batch;
  the file is retried at most every ``RETRY_SECONDS``. ``export()`` never raises.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import _names as N
from ._configure import EXPORTER_NAME

log = logging.getLogger("tracedpool")

__all__ = ["EXPORTER_NAME", "JsonLinesSpanExporter", "default_trace_file", "encode_request"]
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_COUNT = 3
RETRY_SECONDS = 30.0

# OTLP SpanFlags (trace.proto): bits 0-7 are the W3C trace flags, bit 8 says whether
# bit 9 (the parent or linked context is remote) is known.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200


def default_trace_file() -> Path:
    """Per user: $XDG_STATE_HOME/tracedpool/traces/traces.jsonl, else ~/.local/state/..."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tracedpool" / "traces" / "traces.jsonl"


def _int_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: must be a whole number >= {minimum}")
    return value


def file_settings(path: Any = None) -> tuple[Path, int, int]:
    """(path, max_bytes, count) from the arguments and ``TRACEDPOOL_TRACE_FILE*``.

    The variables win over ``path``, so an operator can move the file without a code
    change. Bad values raise ``ValueError`` naming the variable and the rule.
    """
    env_path = os.environ.get(N.ENV_TRACE_FILE, "").strip()
    chosen = Path(env_path) if env_path else Path(path) if path else default_trace_file()
    max_bytes = _int_env(N.ENV_TRACE_FILE_MAX_BYTES, DEFAULT_MAX_BYTES, 1024)
    count = _int_env(N.ENV_TRACE_FILE_COUNT, DEFAULT_COUNT, 1)
    return chosen.expanduser(), max_bytes, count


# -- the OTLP JSON encoding ------------------------------------------------------------------
def _any_value(value: Any) -> dict[str, Any]:
    # bool before int: bool is an int subclass.
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        if math.isnan(value):
            return {"doubleValue": "NaN"}
        return {"doubleValue": "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, (bytes, bytearray)):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _attributes(value)}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if value is None:
        return {}
    return {"stringValue": str(value)}


def _attributes(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not attrs:
        return []
    return [{"key": str(k), "value": _any_value(v)} for k, v in attrs.items()]


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Proto3 JSON omits fields holding their default value."""
    if value:
        out[key] = value


def _span_flags(trace_flags: int, other: Any) -> int:
    """A span's flags: its W3C trace flags, and whether its parent (a root has none, so
    not remote) or, for a link, the linked context is remote."""
    flags = (int(trace_flags) & 0xFF) | _FLAG_HAS_IS_REMOTE
    if other is not None and other.is_remote:
        flags |= _FLAG_IS_REMOTE
    return flags


def _dropped(obj: Any, name: str) -> int:
    try:
        return int(getattr(obj, name, 0) or 0)
    except (TypeError, ValueError):
        return 0


def encode_span(span: Any) -> dict[str, Any]:
    """One SDK ``ReadableSpan`` as an OTLP JSON ``Span``."""
    ctx = span.context
    parent = span.parent
    out: dict[str, Any] = {
        "traceId": format(ctx.trace_id, "032x"),
        "spanId": format(ctx.span_id, "016x"),
    }
    _put(out, "traceState", ctx.trace_state.to_header() if ctx.trace_state else "")
    if parent is not None:
        out["parentSpanId"] = format(parent.span_id, "016x")
    out["flags"] = _span_flags(ctx.trace_flags, parent)
    out["name"] = span.name
    out["kind"] = span.kind.value + 1  # the SDK's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL 1
    out["startTimeUnixNano"] = str(span.start_time or 0)
    out["endTimeUnixNano"] = str(span.end_time or 0)
    _put(out, "attributes", _attributes(span.attributes))
    _put(out, "droppedAttributesCount", _dropped(span, "dropped_attributes"))
    events = []
    for event in span.events:
        ev: dict[str, Any] = {"timeUnixNano": str(event.timestamp), "name": event.name}
        _put(ev, "attributes", _attributes(event.attributes))
        _put(ev, "droppedAttributesCount", _dropped(event, "dropped_attributes"))
        events.append(ev)
    _put(out, "events", events)
    _put(out, "droppedEventsCount", _dropped(span, "dropped_events"))
    links = []
    for link in span.links:
        lctx = link.context
        lk: dict[str, Any] = {
            "traceId": format(lctx.trace_id, "032x"),
            "spanId": format(lctx.span_id, "016x"),
        }
        _put(lk, "traceState", lctx.trace_state.to_header() if lctx.trace_state else "")
        _put(lk, "attributes", _attributes(link.attributes))
        _put(lk, "droppedAttributesCount", _dropped(link, "dropped_attributes"))
        lk["flags"] = _span_flags(lctx.trace_flags, lctx)
        links.append(lk)
    _put(out, "links", links)
    _put(out, "droppedLinksCount", _dropped(span, "dropped_links"))
    status: dict[str, Any] = {}
    if span.status is not None:
        _put(status, "message", span.status.description or "")
        _put(status, "code", span.status.status_code.value)  # UNSET 0, OK 1, ERROR 2 in both
    out["status"] = status
    return out


def encode_request(spans: Sequence[Any]) -> dict[str, Any]:
    """An OTLP JSON ``ExportTraceServiceRequest``: spans grouped by resource, then scope."""
    by_resource: dict[int, tuple[Any, dict[Any, tuple[Any, list[Any]]]]] = {}
    for span in spans:
        resource = span.resource
        entry = by_resource.get(id(resource))
        if entry is None:
            entry = by_resource[id(resource)] = (resource, {})
        scope = span.instrumentation_scope
        key = (scope.name, scope.version, scope.schema_url) if scope is not None else None
        group = entry[1].get(key)
        if group is None:
            group = entry[1][key] = (scope, [])
        group[1].append(encode_span(span))
    resource_spans = []
    for resource, scopes in by_resource.values():
        scope_spans = []
        for scope, encoded in scopes.values():
            ss: dict[str, Any] = {}
            if scope is not None:
                sc: dict[str, Any] = {"name": scope.name}
                _put(sc, "version", scope.version or "")
                _put(sc, "attributes", _attributes(getattr(scope, "attributes", None)))
                ss["scope"] = sc
            ss["spans"] = encoded
            _put(ss, "schemaUrl", (scope.schema_url if scope is not None else "") or "")
            scope_spans.append(ss)
        rs: dict[str, Any] = {}
        if resource is not None:
            rs["resource"] = {"attributes": _attributes(resource.attributes)}
        rs["scopeSpans"] = scope_spans
        _put(rs, "schemaUrl", (resource.schema_url if resource is not None else "") or "")
        resource_spans.append(rs)
    return {"resourceSpans": resource_spans}


def encode_line(spans: Sequence[Any]) -> bytes:
    """One request as one line of UTF-8 JSON, newline included."""
    text = json.dumps(encode_request(spans), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "replace") + b"\n"


# -- the file --------------------------------------------------------------------------------
class JsonLinesSpanExporter(SpanExporter):  # type: ignore[misc]
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

    # SpanExporter API
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            line = encode_line(spans)
        except Exception as e:  # a span we cannot encode must not stop the others
            return self._drop(len(spans), f"could not encode spans: {e!r}")
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            try:
                self._write(line)
            except OSError as e:
                self._close_fd()
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return self._drop(len(spans), f"cannot write {self.path}: {e}")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._close_fd()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is already an unbuffered write

    # internals
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
            if time.monotonic() < self._retry_at:
                raise OSError("waiting to retry after an earlier failure")
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
