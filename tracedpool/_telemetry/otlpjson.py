"""OTLP/JSON: the encoding the embedded default writes, and reading its files back.

Needs no OpenTelemetry SDK: encoding takes SDK span objects by duck typing, and reading
returns plain dicts, so ``tracedpool`` commands can read a trace file anywhere.

The encoding is the protobuf JSON mapping of ``ExportTraceServiceRequest`` with OTLP's
own rules (OTLP specification, "JSON Protobuf Encoding"): trace and span ids as hex
strings (not base64), enums as integers, 64-bit integers as decimal strings,
lowerCamelCase field names, fields at their default value omitted. One request per line.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _jsonfile
from .._jsonfile import BAD_LINE, JsonFileError
from . import names as N

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_COUNT = 3

# OTLP SpanFlags (trace.proto): bits 0-7 are the W3C trace flags, bit 8 says whether
# bit 9 (the parent or linked context is remote) is known.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200

#: A string as a JSON string, quotes included (the json module's C escaper; non-ASCII
#: stays as it is, as ``encode_line`` writes it).
_escape = json.encoder.encode_basestring


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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


# -- reading it back -------------------------------------------------------------------------
class SpecEncoder:
    """OTLP JSON written straight from the span specs tracedpool builds (``otel.SpanSpec``
    tuples), for ``otel.FileSink``: the same JSON ``encode_span`` writes for the SDK span
    that ``otel.SdkSink`` would build from each spec, without building it.

    Building SDK spans and encoding them cost about 45 us a span, with seven spans a
    trivial task. Here the JSON text is put together directly: strings escaped by the
    ``json`` module's C escaper, keys escaped once, no dict per field for the encoder to
    walk (about 4 us a span; docs/performance.md). A task's spans share its trace id,
    trace state and flags, which are written once per task.
    """

    __slots__ = ("_keys", "_names", "frame")

    def __init__(self, resource: Any, scope_name: str, scope_version: str | None) -> None:
        #: An attribute key -> the escaped start of its key/value pair (the keys are
        #: tracedpool's names: few, and the same for every task).
        self._keys: dict[str, str] = {}
        #: (span name, kind) -> the span's text from its name to its start time's quote
        #: (tracedpool's span names: few).
        self._names: dict[tuple[str, int], str] = {}
        scope: dict[str, Any] = {"name": scope_name}
        _put(scope, "version", scope_version or "")
        rs: dict[str, Any] = {}
        if resource is not None:
            rs["resource"] = {"attributes": _attributes(resource.attributes)}
        rs["scopeSpans"] = [{"scope": scope, "spans": []}]
        _put(rs, "schemaUrl", (getattr(resource, "schema_url", "") or "") if resource else "")
        frame = json.dumps({"resourceSpans": [rs]}, separators=(",", ":"), ensure_ascii=False)
        # '"spans":[]' cannot occur inside a JSON string (its quotes would be escaped), and
        # the resource, the only other text, comes before the scope spans.
        cut = frame.rindex('"spans":[]') + len('"spans":[')
        #: The request around the spans, for ``request_line``.
        self.frame = (frame[:cut], frame[cut:])

    def encode(
        self,
        trace_id: int,
        flags: int,
        state: Any,
        parent: Any,
        specs: Sequence[Any],
        new_span_id: Any,
    ) -> str:
        """One task's (or one pool span's) specs as comma-separated OTLP JSON spans,
        for ``request_line``. Arguments as ``otel.Sink.emit`` takes them;
        ``new_span_id`` picks an id for a spec whose id is 0."""
        header = state.to_header() if state else ""
        head = f'{{"traceId":"{trace_id:032x}","spanId":"'
        own_flags = (flags & 0xFF) | _FLAG_HAS_IS_REMOTE
        if parent is not None:
            remote_flags = own_flags | _FLAG_IS_REMOTE if parent.is_remote else own_flags
            to_parent = f',"parentSpanId":"{parent.span_id:016x}","flags":{remote_flags},'
        else:
            to_parent = f',"flags":{own_flags},'
        after_id = '"' + (',"traceState":' + _escape(header) if header else "")
        attributes, names = self._attributes, self._names
        out = []
        for name, span_id, parent_id, kind, start, end, attrs, events, status, links in specs:
            if parent_id:
                to = f',"parentSpanId":"{parent_id:016x}","flags":{own_flags},'
            else:
                to = to_parent
            named = names.get((name, kind))
            if named is None:  # OTLP's kinds are the API's + 1
                named = f'"name":{_escape(name)},"kind":{kind + 1},"startTimeUnixNano":"'
                names[name, kind] = named
            text = (
                f"{head}{span_id or new_span_id():016x}{after_id}{to}"
                f'{named}{start}","endTimeUnixNano":"{end}"'
            )
            if attrs:
                text += f',"attributes":[{attributes(attrs)}]'
            if events:
                text += ',"events":[' + ",".join(self._event(*event) for event in events) + "]"
            if links:
                text += (
                    ',"links":['
                    + ",".join(
                        f'{{"traceId":"{l_trace:032x}","spanId":"{l_span:016x}",'
                        f'"flags":{(l_flags & 0xFF) | _FLAG_HAS_IS_REMOTE}}}'
                        for l_trace, l_span, l_flags in links
                    )
                    + "]"
                )
            if not status:
                text += ',"status":{}}'
            elif status[1]:  # (is_error, description): the SDK span's status is ERROR then
                text += f',"status":{{"message":{_escape(status[1])},"code":2}}}}'
            else:
                text += ',"status":{"code":2}}'
            out.append(text)
        return ",".join(out)

    def _event(self, name: str, t_ns: int, attrs: Mapping[str, Any]) -> str:
        text = f'{{"timeUnixNano":"{t_ns}","name":{_escape(name)}'
        return text + (f',"attributes":[{self._attributes(attrs)}]}}' if attrs else "}")

    def _attributes(self, attrs: Mapping[str, Any]) -> str:
        keys = self._keys
        parts = []
        for key, value in attrs.items():
            start = keys.get(key)
            if start is None:
                start = keys[key] = '{"key":' + _escape(str(key)) + ',"value":'
            kind = type(value)
            if kind is str:
                parts.append(start + '{"stringValue":' + _escape(value) + "}}")
            elif kind is int:
                parts.append(f'{start}{{"intValue":"{value}"}}}}')
            elif kind is tuple and all(type(v) is str for v in value):
                # argument types, keyword names: the one array tracedpool writes per task
                values = ",".join(['{"stringValue":' + _escape(v) + "}" for v in value])
                parts.append(start + '{"arrayValue":{"values":[' + values + "]}}}")
            else:
                parts.append(start + _dumps(_any_value(value)) + "}")
        return ",".join(parts)


def request_line(frame: tuple[str, str], chunks: Sequence[str]) -> bytes:
    """``SpecEncoder.encode``'s results, in that encoder's ``frame``, as one request
    line, newline included (as ``encode_line`` writes it)."""
    text = frame[0] + ",".join(chunks) + frame[1] + "\n"
    return text.encode("utf-8", "replace")


def trace_files(path: str | os.PathLike[str]) -> list[Path]:
    """The file and its rotated predecessors that exist, oldest first."""
    base = Path(path)
    rotated = []
    for candidate in base.parent.glob(base.name + ".*"):
        suffix = candidate.name[len(base.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    ordered = [p for _, p in sorted(rotated, reverse=True)]
    if base.exists():
        ordered.append(base)
    return ordered


def decode_value(value: Mapping[str, Any]) -> Any:
    """An OTLP JSON ``AnyValue`` as a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])  # float() reads "NaN" and "Infinity" too
    if "arrayValue" in value:
        return [decode_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return decode_attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None


def decode_attributes(attrs: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: decode_value(a.get("value", {})) for a in attrs or ()}


def decode_request(request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The spans of one OTLP JSON request, flattened to plain dicts.

    Each dict: ``trace_id``, ``span_id``, ``parent_span_id`` (hex; None for a root),
    ``name``, ``kind`` (OTLP's integer), ``start_ns``, ``end_ns``, ``attributes``,
    ``events`` (``name``, ``time_ns``, ``attributes``), ``links`` (``trace_id``,
    ``span_id``, ``attributes``), ``status_code`` (0 unset, 1 ok, 2 error),
    ``status_message``, ``resource`` (attributes) and ``scope`` (name).
    """
    for rs in request.get("resourceSpans", ()):
        resource = decode_attributes(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans", ()):
            scope = ss.get("scope", {}).get("name", "")
            for span in ss.get("spans", ()):
                status = span.get("status", {})
                yield {
                    "trace_id": span["traceId"],
                    "span_id": span["spanId"],
                    "parent_span_id": span.get("parentSpanId") or None,
                    "name": span.get("name", ""),
                    "kind": int(span.get("kind", 0)),
                    "start_ns": int(span.get("startTimeUnixNano", 0)),
                    "end_ns": int(span.get("endTimeUnixNano", 0)),
                    "attributes": decode_attributes(span.get("attributes")),
                    "events": [
                        {
                            "name": e.get("name", ""),
                            "time_ns": int(e.get("timeUnixNano", 0)),
                            "attributes": decode_attributes(e.get("attributes")),
                        }
                        for e in span.get("events", ())
                    ],
                    "links": [
                        {
                            "trace_id": lk["traceId"],
                            "span_id": lk["spanId"],
                            "attributes": decode_attributes(lk.get("attributes")),
                        }
                        for lk in span.get("links", ())
                    ],
                    "status_code": int(status.get("code", 0)),
                    "status_message": status.get("message", ""),
                    "resource": resource,
                    "scope": scope,
                }


@dataclass
class ReadStats:
    """What ``read_spans`` met besides spans."""

    skipped: int = 0  # lines not JSON, or nested too deeply to parse or decode
    requests: int = 0  # lines read as export requests
    first_bad: tuple[Path, int] | None = None  # (file, line) of the first skipped line


def read_spans(
    path: str | os.PathLike[str], *, strict: bool = False, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Every span in a trace file and its rotated predecessors, oldest file first.

    A line that does not parse (a write cut short by a crash or a full disk) is skipped,
    and so is one nested too deeply to parse or decode (whether the JSON parser or the
    decoder meets the limit first depends on the Python version, so both count alike);
    ``stats`` counts them. A line's spans are given all or none.

    With ``strict`` (``tracedpool timeline``), a file that cannot be read, a JSON line
    that is not an export request, and a file with no readable line at all raise
    ``JsonFileError`` naming the file and line; otherwise such lines are skipped too.
    """
    stats = stats if stats is not None else ReadStats()
    if strict:
        p = Path(path)
        try:
            p.stat()
        except OSError as e:
            raise JsonFileError(f"cannot read {p}: {e.strerror or e}", unreadable=True) from None
    for file in trace_files(path):
        for lineno, request in _jsonfile.lines(file):
            if request is BAD_LINE:
                stats.skipped += 1
                stats.first_bad = stats.first_bad or (file, lineno)
                continue
            if not isinstance(request, dict) or "resourceSpans" not in request:
                if strict:
                    raise JsonFileError(_not_export(file, lineno, "no resourceSpans"))
                continue
            try:
                spans = list(decode_request(request))
            except RecursionError:
                stats.skipped += 1
                stats.first_bad = stats.first_bad or (file, lineno)
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                if strict:
                    raise JsonFileError(
                        _not_export(file, lineno, f"{type(e).__name__}: {e}")
                    ) from None
                continue
            stats.requests += 1
            yield from spans
    if strict and not stats.requests and stats.first_bad is not None:
        raise JsonFileError(_not_export(*stats.first_bad, "not JSON, or nested too deeply"))


def _not_export(file: Path, lineno: int, why: str) -> str:
    return (
        f"{file}, line {lineno}: not an OTLP/JSON trace export ({why}); expected one "
        "ExportTraceServiceRequest JSON object per line"
    )
