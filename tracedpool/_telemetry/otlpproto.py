"""OTLP protobuf, written by hand: tracedpool's own spans encoded straight from their
specs for ``configure()``'s OTLP/HTTP exporter (``otel.OtlpSink``), and the wire
primitives the doctor's endpoint check uses too.

The SDK's OTLP encoder builds a protobuf message object per span, per attribute and
per value from each SDK span, about 55 us a span (seven spans a trivial task). Here a
task's spans become bytes directly, about 6 us a span (docs/performance.md). The
field numbers are those of opentelemetry/proto/trace/v1/trace.proto and
common/v1/common.proto; a test parses what this writes with the official message
classes and compares it with the SDK encoder's message for the same spans.

The encoded spans travel through the provider's own ``BatchSpanProcessor`` as
``EncodedSpans`` items, so its queue bound, drop counts, export thread and shutdown
(with ``configure()``'s exit bound) apply unchanged; ``OtlpHttpOutlet`` is the exporter
behind it, which sends them with the SDK exporter's own HTTP client (its endpoint,
headers, compression, timeout and retries) and hands every other span to that exporter.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# OTLP SpanFlags, as the JSON encoding writes them.
from .otlpjson import _FLAG_HAS_IS_REMOTE, _FLAG_IS_REMOTE

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack


#: The one-byte varints, by value: lengths and tags are mostly below 128, and indexing
#: costs less than a call.
_SMALL = tuple(bytes((n,)) for n in range(0x80))


def varint(n: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def any_value(value: Any) -> bytes:
    """An ``AnyValue`` message's bytes, by the SDK encoder's rules (bool before int)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return len_field(1, _utf8(value))
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return len_field(7, value)
    if isinstance(value, Sequence):
        return len_field(5, b"".join([len_field(1, any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return len_field(6, b"".join(key_value(1, str(k), v) for k, v in value.items()))
    raise TypeError(f"cannot encode an attribute value of type {type(value).__name__}")


def key_value(number: int, key: str, value: Any) -> bytes:
    """A ``KeyValue`` as field ``number`` of its message."""
    return len_field(number, len_field(1, _utf8(key)) + len_field(2, any_value(value)))


class EncodedSpans:
    """Spans already encoded (repeated ``ScopeSpans.spans`` fields), queued in a batch
    processor in place of SDK spans: one item per task."""

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count


class SpecProtoEncoder:
    """``otel.SpanSpec`` tuples as OTLP protobuf ``Span`` messages: what the SDK's encoder
    writes for the SDK span that ``otel.SdkSink`` would build from each spec."""

    __slots__ = ("_keys", "_names", "_resource", "_scope")

    def __init__(self, resource: Any, scope_name: str, scope_version: str | None) -> None:
        #: An attribute key -> its ``KeyValue.key`` field (tracedpool's names: few).
        self._keys: dict[str, bytes] = {}
        #: (span name, kind) -> the ``Span`` fields name and kind, and the start time's
        #: tag (tracedpool's span names: few).
        self._names: dict[tuple[str, int], bytes] = {}
        attrs = getattr(resource, "attributes", None) or {}
        self._resource = len_field(1, b"".join(key_value(1, k, v) for k, v in attrs.items()))
        schema = getattr(resource, "schema_url", "") or ""
        if schema:
            self._resource += len_field(3, _utf8(schema))  # ResourceSpans.schema_url
        self._scope = len_field(
            1,
            len_field(1, _utf8(scope_name))
            + (len_field(2, _utf8(scope_version)) if scope_version else b""),
        )

    def request(self, chunks: Sequence[bytes]) -> bytes:
        """``encode``'s results as one ``ExportTraceServiceRequest``."""
        scope_spans = len_field(2, self._scope + b"".join(chunks))
        return len_field(1, self._resource + scope_spans)

    def encode(
        self,
        trace_id: int,
        flags: int,
        state: Any,
        parent: Any,
        specs: Sequence[Any],
        new_span_id: Any,
    ) -> bytes:
        """One task's (or pool span's) specs as repeated ``ScopeSpans.spans`` fields.
        Arguments as ``otel.Sink.emit`` takes them."""
        header = state.to_header() if state else ""
        head = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
        after_id = len_field(3, _utf8(header)) if header else b""
        own_flags = (flags & 0xFF) | _FLAG_HAS_IS_REMOTE
        own_tail = b"\x85\x01" + _fixed32(own_flags)  # Span.flags, fixed32 field 16
        if parent is not None:
            remote = own_flags | _FLAG_IS_REMOTE if parent.is_remote else own_flags
            to_parent = b"\x22\x08" + parent.span_id.to_bytes(8, "big")
            parent_tail = b"\x85\x01" + _fixed32(remote)
        else:
            to_parent, parent_tail = b"", own_tail
        attributes, names = self._attributes, self._names
        out = []
        for name, span_id, parent_id, kind, start, end, attrs, events, status, links in specs:
            named = names.get((name, kind))
            if named is None:  # OTLP's kinds are the API's + 1
                named = names[name, kind] = (
                    len_field(5, _utf8(name)) + b"\x30" + varint(kind + 1) + b"\x39"
                )
            body = (
                head
                + (span_id or new_span_id()).to_bytes(8, "big")
                + after_id
                + (b"\x22\x08" + parent_id.to_bytes(8, "big") if parent_id else to_parent)
                + named
                + _fixed64(start)
                + b"\x41"
                + _fixed64(end)
            )
            if attrs:
                body += attributes(9, attrs)
            for ev_name, t_ns, ev_attrs in events:
                event = b"\x09" + _fixed64(t_ns) + len_field(2, _utf8(ev_name))
                if ev_attrs:
                    event += attributes(3, ev_attrs)
                body += len_field(11, event)
            for l_trace, l_span, l_flags in links:
                body += len_field(
                    13,
                    b"\x0a\x10"
                    + l_trace.to_bytes(16, "big")
                    + b"\x12\x08"
                    + l_span.to_bytes(8, "big")
                    + b"\x35"
                    + _fixed32((l_flags & 0xFF) | _FLAG_HAS_IS_REMOTE),
                )
            if status:  # (is_error, description): the SDK span's status is ERROR then
                message = len_field(2, _utf8(status[1])) if status[1] else b""
                body += len_field(15, message + b"\x18\x02")
            else:
                body += b"\x7a\x00"
            body += own_tail if parent_id else parent_tail
            out.append(b"\x12" + varint(len(body)) + body)
        return b"".join(out)

    def _attributes(self, number: int, attrs: Mapping[str, Any]) -> bytes:
        keys = self._keys
        tag = varint(number << 3 | 2)
        parts = []
        for key, value in attrs.items():
            encoded_key = keys.get(key)
            if encoded_key is None:
                encoded_key = keys[key] = len_field(1, _utf8(str(key))) + b"\x12"
            kind = type(value)
            if kind is str:
                data = _utf8(value)
                n = len(data)
                val = b"\x0a" + (_SMALL[n] if n < 0x80 else varint(n)) + data
            elif kind is int:
                val = b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
            else:
                val = any_value(value)
            n = len(val)
            pair = encoded_key + (_SMALL[n] if n < 0x80 else varint(n)) + val
            n = len(pair)
            parts.append(tag + (_SMALL[n] if n < 0x80 else varint(n)) + pair)
        return b"".join(parts)


class OtlpHttpOutlet:
    """The exporter behind ``configure()``'s OTLP/HTTP batch processor when the pool
    encodes its own spans: ``EncodedSpans`` items are sent as one request with the SDK
    exporter's own client (``send``: request bytes -> delivered?), SDK spans are handed
    to that exporter, and shutting down or flushing is the exporter's. (A span exporter
    by duck typing: this module does not import the SDK, so the doctor can use it.)"""

    def __init__(self, exporter: Any, send: Callable[[bytes], bool], encoder: SpecProtoEncoder):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._ok, self._failed = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
        self.exporter = exporter
        self.encoder = encoder
        self._send = send
        self._request = encoder.request
        self._shutdown = False

    def export(self, spans: Sequence[Any]) -> Any:
        encoded = [item.data for item in spans if type(item) is EncodedSpans]
        result = self._ok
        if len(encoded) < len(spans):
            others = [item for item in spans if type(item) is not EncodedSpans]
            result = self.exporter.export(others)
        if encoded and (self._shutdown or not self._send(self._request(encoded))):
            result = self._failed
        return result

    def shutdown(self) -> None:
        self._shutdown = True
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))
