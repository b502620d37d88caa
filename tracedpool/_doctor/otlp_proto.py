"""A hand-written protobuf encoder for the one ``ExportTraceServiceRequest`` the
endpoint check sends (a single ``tracedpool.doctor.test`` span), and a decoder for the
collector's reply, so the check needs no exporter or protobuf package. Only what that
message needs: varints, length-delimited and fixed64 fields
(opentelemetry/proto/trace/v1/trace.proto, opentelemetry/proto/collector/trace/v1); the
writing primitives are ``_telemetry.otlpproto``'s, which encodes the pools' spans.
"""

from __future__ import annotations

import struct
from typing import Any

from .._telemetry import names as N
from .._telemetry.otlpproto import len_field, varint
from .._version import __version__


def _string_kv(key: str, value: str) -> bytes:
    any_value = len_field(1, value.encode())  # AnyValue.string_value
    return len_field(1, key.encode()) + len_field(2, any_value)


def encode_test_span(service: str, trace_id: bytes, span_id: bytes, start: int, end: int) -> bytes:
    span = (
        len_field(1, trace_id)
        + len_field(2, span_id)
        + len_field(5, N.SPAN_DOCTOR_TEST.encode())
        + varint(6 << 3 | 0)
        + varint(1)  # SPAN_KIND_INTERNAL
        + varint(7 << 3 | 1)
        + struct.pack("<Q", start)
        + varint(8 << 3 | 1)
        + struct.pack("<Q", end)
    )
    scope = len_field(1, b"tracedpool") + len_field(2, __version__.encode())
    scope_spans = len_field(1, scope) + len_field(2, span)
    resource = len_field(1, _string_kv("service.name", service))
    resource_spans = len_field(1, resource) + len_field(2, scope_spans)
    return len_field(1, resource_spans)


def fields(buf: bytes) -> dict[int, list[Any]]:
    """Top-level fields of a protobuf message, by number: varints as ints, the other
    wire types (length-delimited, fixed64, fixed32) as bytes."""
    out: dict[int, list[Any]] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            size, i = _read_varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
