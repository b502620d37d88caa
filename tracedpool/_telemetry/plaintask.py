"""The common task straight from its record to the bytes ``configure()``'s exporters
send: OTLP/JSON for the embedded file (``otel.FileSink``), OTLP protobuf for OTLP/HTTP
(``otel.OtlpSink``).

Most tasks end the same way: a result, no events, no recorded values, no worker logs,
every stage timed. For those, ``emit.task_specs`` builds six ``SpanSpec`` tuples and
their attribute dicts only for an encoder to take them apart again. Here the six spans
are written from the record's fields in one pass, about a third of the time
(docs/performance.md). Any other record gets None, and its specs are built as before.

Each function mirrors ``task_specs`` and the encoder of its format field by field:
tests/test_export.py compares both ways for real records of every shape these take
(pool names, map chunks, keyword arguments, remote and local parents, trace state,
spans from the task's code) and checks the records they refuse.
"""

from __future__ import annotations

import json
from time import time_ns
from typing import Any

from .._worker.wire import M_LOGS, M_PID, M_RECV, M_RUN0, M_RUN1, M_SEND0, M_SPANS
from . import names as N
from .otlpjson import _FLAG_HAS_IS_REMOTE, _FLAG_IS_REMOTE
from .otlpproto import len_field, varint

# The API's span kinds (OTLP's are one more).
_INTERNAL, _PRODUCER, _CONSUMER = 0, 3, 4
#: A plain task's spans, (name, kind), in the order both encodings write them.
_SPANS = (
    (N.SPAN_TASK, _INTERNAL),
    (N.SPAN_SUBMIT, _PRODUCER),
    (N.SPAN_ENQUEUE, _INTERNAL),
    (N.SPAN_FEEDER_SERIALIZE, _INTERNAL),
    (N.SPAN_WORKER_RUN, _CONSUMER),
    (N.SPAN_SENDBACK, _PRODUCER),
)


def _plain_meta(rec: Any, st: Any) -> Any:
    """The worker's result meta of a plain task, or None: the record is not plain.
    A plain task's spans from its own code go to the sink here, as ``task_specs``
    sends them."""
    meta = rec.meta
    if (
        rec.outcome != "result"
        or meta is None
        or meta[M_LOGS]
        or not (rec.t_enqueue and rec.t_ser0 and meta[M_SEND0])
        or rec.payload_bytes < 0
        or rec.result_bytes < 0
        or rec.args_repr is not None
        or rec.future is not None
        or rec.stall is not None
        or rec.slow is not None
        or rec.internal_error is not None
    ):
        return None
    if meta[M_SPANS]:
        st.sink.emit_foreign(meta[M_SPANS])
    return meta


def _plain_task(rec: Any, st: Any) -> tuple[Any, str, int, int] | None:
    """For a plain task: its result meta, its trace state as a header, its stage spans'
    flags and its task span's (which also say whether its parent is remote); for any
    other record, None."""
    meta = _plain_meta(rec, st)
    if meta is None:
        return None
    state, parent = rec.trace_state, rec.parent
    own = (rec.flags & 0xFF) | _FLAG_HAS_IS_REMOTE
    task = own | _FLAG_IS_REMOTE if parent is not None and parent.is_remote else own
    return meta, state.to_header() if state else "", own, task


def _enqueue_start(rec: Any) -> int:
    # The first submit starts the manager, which may enqueue before submit() returns.
    t1: int = rec.t_submit1
    return t1 if 0 < t1 <= rec.t_enqueue else int(rec.t_submit0)


# -- OTLP/JSON ----------------------------------------------------------------------------------
_escape = json.encoder.encode_basestring


def _str_key(key: str) -> str:
    return '{"key":' + _escape(key) + ',"value":{"stringValue":'


def _int_key(key: str) -> str:
    return '{"key":' + _escape(key) + ',"value":{"intValue":"'


def _array_key(key: str) -> str:
    return '{"key":' + _escape(key) + ',"value":{"arrayValue":{"values":['


def _named(name: str, kind: int) -> str:
    return f'"name":{_escape(name)},"kind":{kind + 1},"startTimeUnixNano":"'


_J_TASK_ID = _str_key(N.ATTR_TASK_ID)
_J_FUNCTION = _str_key(N.ATTR_CODE_FUNCTION)
_J_POOL_ID = _str_key(N.ATTR_POOL_ID)
_J_POOL_NAME = _str_key(N.ATTR_POOL_NAME)
_J_THREAD = _str_key(N.ATTR_THREAD_NAME)
_J_RESULT_TYPE = _str_key(N.ATTR_RESULT_TYPE)
_J_PID = _int_key(N.ATTR_PROCESS_PID)
_J_CHUNKSIZE = _int_key(N.ATTR_MAP_CHUNKSIZE)
_J_PAYLOAD = _int_key(N.ATTR_PAYLOAD_BYTES)
_J_RESULT_BYTES = _int_key(N.ATTR_RESULT_BYTES)
_J_ARG_TYPES = _array_key(N.ATTR_ARG_TYPES)
_J_KWARG_NAMES = _array_key(N.ATTR_KWARG_NAMES)
_J_OUTCOME = _str_key(N.ATTR_TASK_OUTCOME) + '"result"}}'
_J_FEEDER = _J_THREAD + '"QueueFeederThread"}}'
_J_N_TASK, _J_N_SUBMIT, _J_N_ENQUEUE, _J_N_SERIALIZE, _J_N_RUN, _J_N_SENDBACK = (
    _named(name, kind) for name, kind in _SPANS
)


def _j_strings(values: Any) -> str:
    return ",".join(['{"stringValue":' + _escape(v) + "}" for v in values])


def task_json(rec: Any, st: Any, leaf_id: Any) -> str | None:
    """A plain task's spans as ``otlpjson.SpecEncoder.encode`` writes its specs, or
    None. ``rec`` is an ``emit.TaskRecord``, ``st`` its pool's state, ``leaf_id`` picks
    the stage spans' ids."""
    plain = _plain_task(rec, st)
    if plain is None:
        return None
    meta, header, own, task_flags = plain
    parent = rec.parent
    to_parent = f',"parentSpanId":"{parent.span_id:016x}"' if parent is not None else ""
    to_parent += f',"flags":{task_flags},'
    head = f'{{"traceId":"{rec.trace_id:032x}","spanId":"'
    after = '"' + (',"traceState":' + _escape(header) if header else "")
    span_id = f"{rec.span_id:016x}"
    to_task = f'{after},"parentSpanId":"{span_id}","flags":{own},'
    tid = _J_TASK_ID + _escape(f"{st.pool_id}:{rec.work_id}") + "}}"
    fname = _J_FUNCTION + _escape(rec.fname) + "}}"
    ppid = f'{_J_PID}{st.parent_pid}"}}}}'
    wpid = f'{_J_PID}{meta[M_PID]}"}}}}'
    t_done = rec.t_done or time_ns()
    attrs = f"{tid},{fname},{_J_POOL_ID}{_escape(st.pool_id)}}}}},{_J_OUTCOME}"
    if st.name:
        attrs += f",{_J_POOL_NAME}{_escape(st.name)}}}}}"
    if rec.chunksize >= 0:
        attrs += f',{_J_CHUNKSIZE}{rec.chunksize}"}}}}'
    if rec.arg_types:
        attrs += f",{_J_ARG_TYPES}{_j_strings([t.__qualname__ for t in rec.arg_types])}]}}}}}}"
    if rec.kwarg_names:
        attrs += f",{_J_KWARG_NAMES}{_j_strings(rec.kwarg_names)}]}}}}}}"
    if rec.result_type is not None:
        attrs += f",{_J_RESULT_TYPE}{_escape(rec.result_type.__qualname__)}}}}}"
    end = '],"status":{}}'
    return (
        f'{head}{span_id}{after}{to_parent}{_J_N_TASK}{rec.t_submit0}","endTimeUnixNano":'
        f'"{t_done}","attributes":[{attrs}{end},'
        f'{head}{leaf_id():016x}{to_task}{_J_N_SUBMIT}{rec.t_submit0}","endTimeUnixNano":'
        f'"{rec.t_submit1 or t_done}","attributes":[{tid},'
        f"{_J_THREAD}{_escape(rec.submit_thread)}}}}},{ppid}{end},"
        f'{head}{leaf_id():016x}{to_task}{_J_N_ENQUEUE}{_enqueue_start(rec)}",'
        f'"endTimeUnixNano":"{rec.t_enqueue}","attributes":[{tid},'
        f"{_J_THREAD}{_escape(st.manager_name)}}}}},{ppid}{end},"
        f'{head}{leaf_id():016x}{to_task}{_J_N_SERIALIZE}{rec.t_ser0}","endTimeUnixNano":'
        f'"{rec.t_written or rec.t_ser1 or t_done}","attributes":[{tid},{_J_FEEDER},{ppid},'
        f'{_J_PAYLOAD}{rec.payload_bytes}"}}}}{end},'
        f'{head}{rec.worker_span_id:016x}{to_task}{_J_N_RUN}{meta[M_RECV] or meta[M_RUN0]}",'
        f'"endTimeUnixNano":"{meta[M_RUN1]}","attributes":[{tid},{wpid},{fname}{end},'
        f'{head}{leaf_id():016x}{to_task}{_J_N_SENDBACK}{meta[M_SEND0]}","endTimeUnixNano":'
        f'"{rec.t_read or t_done}","attributes":[{tid},{wpid},'
        f'{_J_RESULT_BYTES}{rec.result_bytes}"}}}}{end}'
    )


# -- OTLP protobuf ------------------------------------------------------------------------------
def _p_key(key: str) -> bytes:
    """A ``Span.attributes`` entry's start: its ``KeyValue.key`` and the value's tag."""
    return len_field(1, key.encode("utf-8")) + b"\x12"


def _p_attr(key: bytes, value: bytes) -> bytes:
    """A ``Span.attributes`` field (9) from a key's start and an ``AnyValue``."""
    pair = key + varint(len(value)) + value
    return b"\x4a" + varint(len(pair)) + pair


def _p_str(text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    return b"\x0a" + varint(len(data)) + data


def _p_int(n: int) -> bytes:
    return b"\x18" + varint(n & 0xFFFFFFFFFFFFFFFF)


def _p_strings(values: Any) -> bytes:
    """An ``AnyValue`` holding an array of strings."""
    items = b"".join([b"\x0a" + varint(len(v)) + v for v in map(_p_str, values)])
    return b"\x2a" + varint(len(items)) + items


def _p_named(name: str, kind: int) -> bytes:
    return len_field(5, name.encode("utf-8")) + b"\x30" + varint(kind + 1) + b"\x39"


_P_TASK_ID = _p_key(N.ATTR_TASK_ID)
_P_FUNCTION = _p_key(N.ATTR_CODE_FUNCTION)
_P_POOL_ID = _p_key(N.ATTR_POOL_ID)
_P_POOL_NAME = _p_key(N.ATTR_POOL_NAME)
_P_THREAD = _p_key(N.ATTR_THREAD_NAME)
_P_RESULT_TYPE = _p_key(N.ATTR_RESULT_TYPE)
_P_PID = _p_key(N.ATTR_PROCESS_PID)
_P_CHUNKSIZE = _p_key(N.ATTR_MAP_CHUNKSIZE)
_P_PAYLOAD = _p_key(N.ATTR_PAYLOAD_BYTES)
_P_RESULT_BYTES = _p_key(N.ATTR_RESULT_BYTES)
_P_ARG_TYPES = _p_key(N.ATTR_ARG_TYPES)
_P_KWARG_NAMES = _p_key(N.ATTR_KWARG_NAMES)
_P_OUTCOME = _p_attr(_p_key(N.ATTR_TASK_OUTCOME), _p_str("result"))
_P_FEEDER = _p_attr(_P_THREAD, _p_str("QueueFeederThread"))
_P_N_TASK, _P_N_SUBMIT, _P_N_ENQUEUE, _P_N_SERIALIZE, _P_N_RUN, _P_N_SENDBACK = (
    _p_named(name, kind) for name, kind in _SPANS
)
_P_STATUS_UNSET = b"\x7a\x00"


def _p_span(head: bytes, span_id: int, to: bytes, named: bytes, start: int, end: int) -> bytes:
    """A span's fields from its id to its end time (the attributes follow)."""
    return (
        head
        + span_id.to_bytes(8, "big")
        + to
        + named
        + start.to_bytes(8, "little")
        + b"\x41"
        + end.to_bytes(8, "little")
    )


def _p_close(body: bytes) -> bytes:
    """A ``ScopeSpans.spans`` field (2) around a span's bytes."""
    return b"\x12" + varint(len(body)) + body


def task_proto(rec: Any, st: Any, leaf_id: Any) -> bytes | None:
    """A plain task's spans as ``otlpproto.SpecProtoEncoder.encode`` writes its specs,
    or None. Arguments as ``task_json`` takes them."""
    plain = _plain_task(rec, st)
    if plain is None:
        return None
    meta, header, own, task_flags = plain
    parent = rec.parent
    own_tail = b"\x85\x01" + own.to_bytes(4, "little")  # Span.flags, fixed32 field 16
    parent_tail = b"\x85\x01" + task_flags.to_bytes(4, "little")
    head = b"\x0a\x10" + rec.trace_id.to_bytes(16, "big") + b"\x12\x08"
    after = len_field(3, header.encode("utf-8", "replace")) if header else b""
    to_parent = after
    if parent is not None:
        to_parent += b"\x22\x08" + parent.span_id.to_bytes(8, "big")
    to_task = after + b"\x22\x08" + rec.span_id.to_bytes(8, "big")
    end_task = _P_STATUS_UNSET + own_tail
    tid = _p_attr(_P_TASK_ID, _p_str(f"{st.pool_id}:{rec.work_id}"))
    fname = _p_attr(_P_FUNCTION, _p_str(rec.fname))
    ppid = _p_attr(_P_PID, _p_int(st.parent_pid))
    wpid = _p_attr(_P_PID, _p_int(meta[M_PID]))
    t_done = rec.t_done or time_ns()
    attrs = tid + fname + _p_attr(_P_POOL_ID, _p_str(st.pool_id)) + _P_OUTCOME
    if st.name:
        attrs += _p_attr(_P_POOL_NAME, _p_str(st.name))
    if rec.chunksize >= 0:
        attrs += _p_attr(_P_CHUNKSIZE, _p_int(rec.chunksize))
    if rec.arg_types:
        attrs += _p_attr(_P_ARG_TYPES, _p_strings([t.__qualname__ for t in rec.arg_types]))
    if rec.kwarg_names:
        attrs += _p_attr(_P_KWARG_NAMES, _p_strings(rec.kwarg_names))
    if rec.result_type is not None:
        attrs += _p_attr(_P_RESULT_TYPE, _p_str(rec.result_type.__qualname__))
    spans = (
        _p_span(head, rec.span_id, to_parent, _P_N_TASK, rec.t_submit0, t_done)
        + attrs
        + _P_STATUS_UNSET
        + parent_tail,
        _p_span(head, leaf_id(), to_task, _P_N_SUBMIT, rec.t_submit0, rec.t_submit1 or t_done)
        + tid
        + _p_attr(_P_THREAD, _p_str(rec.submit_thread))
        + ppid
        + end_task,
        _p_span(head, leaf_id(), to_task, _P_N_ENQUEUE, _enqueue_start(rec), rec.t_enqueue)
        + tid
        + _p_attr(_P_THREAD, _p_str(st.manager_name))
        + ppid
        + end_task,
        _p_span(
            head,
            leaf_id(),
            to_task,
            _P_N_SERIALIZE,
            rec.t_ser0,
            rec.t_written or rec.t_ser1 or t_done,
        )
        + tid
        + _P_FEEDER
        + ppid
        + _p_attr(_P_PAYLOAD, _p_int(rec.payload_bytes))
        + end_task,
        _p_span(
            head,
            rec.worker_span_id,
            to_task,
            _P_N_RUN,
            meta[M_RECV] or meta[M_RUN0],
            meta[M_RUN1],
        )
        + tid
        + wpid
        + fname
        + end_task,
        _p_span(head, leaf_id(), to_task, _P_N_SENDBACK, meta[M_SEND0], rec.t_read or t_done)
        + tid
        + wpid
        + _p_attr(_P_RESULT_BYTES, _p_int(rec.result_bytes))
        + end_task,
    )
    return b"".join([_p_close(span) for span in spans])
