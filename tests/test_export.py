"""Export: configure()'s rules, the embedded OTLP/JSON-lines file, and real OTLP over HTTP.

Spans come from real traced pools. The OTLP test runs the real HTTP exporter against a
local receiver that decodes the protobuf payload as Jaeger's OTLP receiver would.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import ErrorAtPickle, identity, traced_work
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tracedpool
from tracedpool import TracedProcessPoolExecutor
from tracedpool._telemetry import configure as C
from tracedpool._telemetry import names as N
from tracedpool._telemetry.jsonl import EXPORTER_NAME, JsonLinesSpanExporter, default_trace_file
from tracedpool._telemetry.otlpjson import read_spans, trace_files
from tracedpool.testing import OtlpReceiver

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
ROOT = Path(__file__).resolve().parent.parent
#: Tests only (so not in tracedpool._telemetry.names): an OTLP/HTTP endpoint, a collector or
#: Jaeger such as http://localhost:4318, for the opt-in test against a real one.
ENV_TEST_OTLP_ENDPOINT = "TRACEDPOOL_TEST_OTLP_ENDPOINT"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No OTEL_* or TRACEDPOOL_TRACE_FILE* variable from the outside; state under tmp."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "TRACEDPOOL_TRACE_FILE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return monkeypatch


def _traced_pool_run(provider: Any) -> tuple[int, int]:
    """A request span fanned out into a pool: two good tasks (one makes spans in the
    worker) and one whose argument cannot be pickled. Returns (trace_id, request span id)."""
    tracer = provider.get_tracer("tests")
    with (
        TracedProcessPoolExecutor(max_workers=2, tracer_provider=provider) as pool,
        tracer.start_as_current_span("GET /work") as request,
    ):
        assert pool.submit(traced_work, 3).result(timeout=60) == 6
        assert pool.submit(identity, 5).result(timeout=60) == 5
        with pytest.raises(ValueError):
            pool.submit(identity, 1, ErrorAtPickle()).result(timeout=60)
    ctx = request.get_span_context()
    return ctx.trace_id, ctx.span_id


# -- the OTLP/JSON encoding --------------------------------------------------------------
def _ids_to_base64(obj: Any) -> Any:
    """OTLP/JSON's one departure from protobuf's JSON mapping: ids are hex, not base64."""
    if isinstance(obj, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId")
            else _ids_to_base64(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_ids_to_base64(v) for v in obj]
    return obj


def test_json_lines_are_the_otlp_encoding_of_the_same_spans(tmp_path: Path) -> None:
    """Each line parses (protobuf json_format) into the ExportTraceServiceRequest the
    official OTLP encoder builds from the same spans; ids hex, enums integers."""
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    memory = InMemorySpanExporter()
    path = tmp_path / "t.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    _traced_pool_run(provider)
    provider.shutdown()

    spans = memory.get_finished_spans()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(spans) > 10  # SimpleSpanProcessor: one request per span
    # Spans end on several threads (caller, emitter), so the two processors may see them
    # in different orders: match lines to spans by span id.
    by_id = {
        json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]: line
        for line in lines
    }
    for span in spans:
        raw = json.loads(by_id[format(span.context.span_id, "016x")])
        (rs,) = raw["resourceSpans"]
        (ss,) = rs["scopeSpans"]
        (js,) = ss["spans"]
        assert js["traceId"] == format(span.context.trace_id, "032x")
        assert js["spanId"] == format(span.context.span_id, "016x")
        assert js["kind"] == span.kind.value + 1 and isinstance(js["kind"], int)
        assert js["startTimeUnixNano"] == str(span.start_time)
        assert js["flags"] & 0xFF == int(span.context.trace_flags)

        ours = json_format.Parse(json.dumps(_ids_to_base64(raw)), pb.ExportTraceServiceRequest())
        official = encode_spans([span])
        # The proto puts the W3C trace flags in bits 0-7 of Span.flags; the Python
        # encoder leaves them zero. Compare the rest exactly.
        for message in (ours, official):
            for s in message.resource_spans[0].scope_spans[0].spans:
                s.flags &= ~0xFF
                for link in s.links:
                    link.flags &= ~0xFF
        assert ours == official, span.name

    names = {s.name for s in spans}
    assert {N.SPAN_TASK, N.SPAN_FEEDER_SERIALIZE, N.SPAN_WORKER_RUN, "user-inner"} <= names
    joined = "\n".join(lines)
    assert '"key":"tracedpool.fault.stage","value":{"stringValue":"feeder-serialize"}' in joined
    assert '"status":{"message":' in joined and '"code":2}' in joined


def _every_kind_of_spec() -> tuple[Any, Any, int, list[tuple[Any, Any]], list[Any]]:
    """An SDK sink writing to memory, and specs of every kind: a task span with an error
    and every attribute type, a stage span with events and links, a span whose id the
    sink picks; under a remote parent with trace state, and under none.
    Returns (sink, memory, trace id, [(parent, trace state)], specs)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    from tracedpool._telemetry.otel import EventSpec, SdkSink, SpanSpec

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "specs", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    state = TraceState([("vendor", "opaque")])
    remote = SpanContext(trace_id, 0x00F067AA0BA902B7, True, TraceFlags(1), state)
    attrs = {
        "s": "text é",
        "i": 7,
        "neg": -3,
        "big": 2**62,
        "f": 0.5,
        "b": True,
        "t": ("a", "b"),
        "e": (),
        "ti": (1, 2),
    }
    specs = [
        SpanSpec("task", 0x11, 0, 0, 1000, 5000, attrs, [], (True, "it failed"), ()),
        SpanSpec(
            "stage",
            0x12,
            0x11,
            3,
            1100,
            1200,
            {"x": 1},
            [EventSpec("exception", 1150, {"exception.type": "E"}), EventSpec("bare", 1160, {})],
            (True, ""),
            [(trace_id, 0x99, 1), (0x1234, 0x98, 0)],
        ),
        SpanSpec("leaf", 0, 0x11, 4, 1300, 1400, {}, (), None, ()),
    ]
    return SdkSink(provider), memory, trace_id, [(remote, state), (None, None)], specs


def test_spans_encoded_from_their_specs_are_those_the_sdk_path_writes() -> None:
    """configure()'s file sink encodes tracedpool's spans straight from the specs: for
    every kind of spec, the JSON is what encode_span writes for the SDK span SdkSink
    builds from it, and the line's frame is encode_request's."""
    from tracedpool._telemetry.otel import SCOPE_NAME
    from tracedpool._telemetry.otlpjson import SpecEncoder, encode_request, request_line
    from tracedpool._version import __version__

    sink, memory, trace_id, parents, specs = _every_kind_of_spec()
    encoder = SpecEncoder(sink._resource, SCOPE_NAME, __version__)
    for parent, trace_state in parents:
        memory.clear()
        sink.emit(trace_id, 1, trace_state, parent, specs)
        sdk_spans = memory.get_finished_spans()
        official = encode_request(sdk_spans)["resourceSpans"][0]["scopeSpans"][0]["spans"]
        line = request_line(
            encoder.frame, [encoder.encode(trace_id, 1, trace_state, parent, specs, int)]
        )
        request = json.loads(line)
        ours = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
        frame = encode_request(sdk_spans)
        for r in (request, frame):
            r["resourceSpans"][0]["scopeSpans"][0]["spans"] = []
        assert request == frame
        assert len(ours) == len(official) == 3
        for got, expected in zip(ours, official, strict=True):
            if expected["name"] == "leaf":  # its id was picked: by the SDK there, int() here
                assert got.pop("spanId") == "0" * 16
                expected.pop("spanId")
            assert got == expected, expected["name"]
        assert (b'"traceState":"vendor=opaque"' in line) == (trace_state is not None)


def test_protobuf_encoded_from_the_specs_is_what_the_sdk_encoder_sends() -> None:
    """configure()'s OTLP/HTTP sink encodes tracedpool's spans straight from the specs:
    for every kind of spec, the request parses into the message the SDK's OTLP encoder
    builds from the SDK spans SdkSink makes of them (W3C flag bits aside, as above)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tracedpool._telemetry.otel import SCOPE_NAME
    from tracedpool._telemetry.otlpproto import SpecProtoEncoder
    from tracedpool._version import __version__

    sink, memory, trace_id, parents, specs = _every_kind_of_spec()
    encoder = SpecProtoEncoder(sink._resource, SCOPE_NAME, __version__)
    for parent, trace_state in parents:
        memory.clear()
        sink.emit(trace_id, 1, trace_state, parent, specs)
        official = encode_spans(memory.get_finished_spans())
        ours = pb.ExportTraceServiceRequest()
        ours.ParseFromString(
            encoder.request([encoder.encode(trace_id, 1, trace_state, parent, specs, int)])
        )
        leaf = [s for s in ours.resource_spans[0].scope_spans[0].spans if s.name == "leaf"]
        assert leaf[0].span_id == bytes(8)  # picked: by the SDK there, int() here
        for message in (ours, official):
            for s in message.resource_spans[0].scope_spans[0].spans:
                assert s.flags & 0x100  # whether the parent is remote is known
                s.flags &= ~0xFF
                if s.name == "leaf":
                    s.span_id = bytes(8)
                for link in s.links:
                    link.flags &= ~0xFF
        assert ours == official


def test_read_spans_gives_back_what_was_written(tmp_path: Path) -> None:
    """read_spans over the file and its rotated predecessors returns every span of a
    traced pool, oldest first, with ids, parentage, attributes, events and status."""
    memory = InMemorySpanExporter()
    path = tmp_path / "t.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesSpanExporter(path, max_bytes=8192, count=50))
    )
    _traced_pool_run(provider)
    provider.shutdown()
    assert len(trace_files(path)) > 1  # rotated: the order across files matters

    spans = memory.get_finished_spans()
    read = list(read_spans(path))
    assert len(read) == len(spans)
    # Oldest file first, each file in order: the write order (the first line written
    # holds the earliest of those spans; threads may interleave the two processors).
    by_id = {s["span_id"]: s for s in read}
    assert len(by_id) == len(read)
    first_written = json.loads(trace_files(path)[0].read_text().splitlines()[0])
    assert (
        read[0]["span_id"]
        == first_written["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
    )
    for span in spans:
        got = by_id[format(span.context.span_id, "016x")]
        parent = span.parent
        assert got["trace_id"] == format(span.context.trace_id, "032x")
        assert got["span_id"] == format(span.context.span_id, "016x")
        assert got["parent_span_id"] == (format(parent.span_id, "016x") if parent else None)
        assert (got["name"], got["start_ns"], got["end_ns"]) == (
            span.name,
            span.start_time,
            span.end_time,
        )
        assert got["attributes"] == {
            k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()
        }
        assert [(e["name"], e["time_ns"]) for e in got["events"]] == [
            (e.name, e.timestamp) for e in span.events
        ]
        assert got["status_code"] == span.status.status_code.value
        assert got["resource"] == dict(span.resource.attributes)


def test_attribute_values_use_the_otlp_any_value_forms(tmp_path: Path) -> None:
    """Strings, ints (as decimal strings), doubles, bools and arrays of each."""
    path = tmp_path / "t.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    attrs: dict[str, Any] = {
        "s": "é",
        "i": -(2**62),
        "d": 0.5,
        "b": False,
        "a": [1, 2],
        "sa": ["x", "y"],
    }
    provider.get_tracer("t").start_span("x", attributes=attrs).end()
    provider.shutdown()
    span = json.loads(path.read_text(encoding="utf-8"))["resourceSpans"][0]["scopeSpans"][0]
    got = {a["key"]: a["value"] for a in span["spans"][0]["attributes"]}
    assert got == {
        "s": {"stringValue": "é"},
        "i": {"intValue": str(-(2**62))},
        "d": {"doubleValue": 0.5},
        "b": {"boolValue": False},
        "a": {"arrayValue": {"values": [{"intValue": "1"}, {"intValue": "2"}]}},
        "sa": {"arrayValue": {"values": [{"stringValue": "x"}, {"stringValue": "y"}]}},
    }


# -- the file ------------------------------------------------------------------------------
def _spans(n: int) -> list[Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(n):
        tracer.start_span(f"s{i}", attributes={"pad": "x" * 200}).end()
    return list(memory.get_finished_spans())


def test_file_and_directory_are_private(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default file is per user, under XDG_STATE_HOME: directory 0700, file 0600."""
    exporter = JsonLinesSpanExporter()
    assert (
        exporter.path == default_trace_file() == tmp_path / "state/tracedpool/traces/traces.jsonl"
    )
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
    assert stat.S_IMODE(exporter.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(exporter.path.stat().st_mode) == 0o600


def test_a_symlink_planted_at_the_path_is_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A symlink at the file's path is refused: its target is untouched, one warning."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    path = tmp_path / "traces.jsonl"
    path.symlink_to(target)
    exporter = JsonLinesSpanExporter(path)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
        assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert target.read_text() == "precious\n"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and N.ENV_TRACE_FILE in warnings[0].getMessage()
    assert exporter.dropped == 2


def test_an_unwritable_directory_drops_spans_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Telemetry never breaks the host: the pool works, spans are dropped, one warning."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    exporter = JsonLinesSpanExporter(blocker / "traces.jsonl")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        with TracedProcessPoolExecutor(max_workers=1, tracer_provider=provider) as pool:
            assert list(pool.map(identity, range(3))) == [0, 1, 2]
        provider.shutdown()
    assert exporter.dropped > 0
    ours = [r for r in caplog.records if N.ENV_TRACE_FILE in r.getMessage()]
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING


def test_a_failed_file_is_retried_even_while_exports_keep_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports during the retry wait do not push the retry back: once the directory can
    be created again, the next export after the wait writes the file."""
    from tracedpool._telemetry import jsonl as _jsonl

    monkeypatch.setattr(_jsonl, "RETRY_SECONDS", 0.3)
    blocker = tmp_path / "d"
    blocker.write_text("")  # a file where the directory must go: the open fails
    exporter = JsonLinesSpanExporter(blocker / "traces.jsonl")
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    blocker.unlink()
    deadline = time.monotonic() + 10
    while exporter.export(_spans(1)) is SpanExportResult.FAILURE:  # more often than 0.3 s
        assert time.monotonic() < deadline, "the file was never retried"
        time.sleep(0.05)
    assert (blocker / "traces.jsonl").exists()


def test_a_hard_link_planted_at_the_path_is_refused(tmp_path: Path) -> None:
    """A hard link to another of the user's files is not appended to (O_NOFOLLOW only
    stops symlinks)."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    target.chmod(0o600)
    path = tmp_path / "traces.jsonl"
    os.link(target, path)
    exporter = JsonLinesSpanExporter(path)
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert target.read_text() == "precious\n"


def test_rotation_keeps_the_file_count_and_size_bounded(tmp_path: Path) -> None:
    """With 3 files of 4 KiB: never more than 3 files, none over the bound, newest kept."""
    path = tmp_path / "traces.jsonl"
    exporter = JsonLinesSpanExporter(path, max_bytes=4096, count=3)
    batches = [_spans(3) for _ in range(30)]  # about 1.5 KiB a line
    for batch in batches:
        assert exporter.export(batch) is SpanExportResult.SUCCESS
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]
    for f in files:
        assert f.stat().st_size <= 4096
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    last = path.read_text(encoding="utf-8").splitlines()[-1]
    assert json.loads(last)["resourceSpans"][0]["scopeSpans"][0]["spans"][-1]["name"] == "s2"
    kept = sum(len(f.read_text().splitlines()) for f in files)
    assert 3 <= kept < 30


def test_writers_sharing_a_file_follow_each_others_rotation(tmp_path: Path) -> None:
    """Two exporters on one path (as two processes would be): after one rotates, the
    other writes to the new file, not the rotated one; every line stays whole."""
    path = tmp_path / "traces.jsonl"
    a = JsonLinesSpanExporter(path, max_bytes=4096, count=8)
    b = JsonLinesSpanExporter(path, max_bytes=4096, count=8)
    for i in range(12):  # lines of about 1.4 KiB: two a file
        assert (a if i % 2 else b).export(_spans(2)) is SpanExportResult.SUCCESS
    files = list(tmp_path.glob("traces.jsonl*"))
    assert len(files) == 6
    lines = [ln for f in files for ln in f.read_text().splitlines()]
    assert len(lines) == 12 and all(json.loads(ln) for ln in lines)
    assert all(f.stat().st_size <= 4096 for f in files)


# -- configure(): the rules ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variables", "names", "rule"),
    [
        ({}, [EXPORTER_NAME], C.RULE_DEFAULT),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"}, ["otlp"], "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"},
            ["otlp"],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"},
            ["console"],
            "OTEL_TRACES_EXPORTER",
        ),
        ({"OTEL_TRACES_EXPORTER": "none"}, [], "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": f"OTLP, {EXPORTER_NAME}"},
            ["otlp", EXPORTER_NAME],
            "OTEL_TRACES_EXPORTER",
        ),
    ],
)
def test_exporter_precedence(
    env: pytest.MonkeyPatch, variables: dict[str, str], names: list[str], rule: str
) -> None:
    """OTEL_TRACES_EXPORTER, then an OTLP endpoint variable, then the embedded default."""
    for k, v in variables.items():
        env.setenv(k, v)
    assert C.exporter_names() == (names, rule)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkn"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkn'"),
        ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "cannot be combined"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes': unknown"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG='half'",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "between 0 and 1",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "do not send http/json",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='udp': must be one of http/protobuf, grpc",
        ),
        ({N.ENV_TRACE_FILE_MAX_BYTES: "big"}, f"{N.ENV_TRACE_FILE_MAX_BYTES}='big'"),
        ({N.ENV_TRACE_FILE_COUNT: "0"}, ">= 1"),
    ],
)
def test_bad_values_raise_naming_the_rule(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    """Bad configuration raises ValueError naming the variable and the rule; nothing is
    installed."""
    for k, v in variables.items():
        env.setenv(k, v)
    with pytest.raises(ValueError, match=re.escape(message)):
        tracedpool.configure(install=False)


def test_a_missing_exporter_package_names_the_extra(env: pytest.MonkeyPatch) -> None:
    """OTLP over gRPC without its package: ImportError saying what to install."""
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4317")
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    # A None entry makes the import itself fail, as it does when the package is absent.
    env.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(
        ImportError, match=r"opentelemetry-exporter-otlp-proto-grpc.*tracedpool\[otlp\]"
    ):
        tracedpool.configure(install=False)


def test_sampler_and_resource_come_from_the_variables(env: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_SAMPLER(_ARG) pick the sampler; OTEL_SERVICE_NAME beats the argument,
    OTEL_RESOURCE_ATTRIBUTES beats resource_attributes."""
    env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=infra")
    setup = tracedpool.configure(
        install=False,
        service_name="from-code",
        resource_attributes={"team": "code", "region": "eu"},
    )
    provider = setup.provider
    assert "TraceIdRatioBased{0.25}" in provider.sampler.get_description()
    attrs = provider.resource.attributes
    assert attrs["service.name"] == "from-code"
    assert (attrs["team"], attrs["region"], attrs["deployment.environment"]) == (
        "infra",
        "eu",
        "prod",
    )
    assert setup.rule == C.RULE_DEFAULT and setup.exporters == (EXPORTER_NAME,)
    assert setup.trace_file == default_trace_file()
    provider.shutdown()

    env.setenv("OTEL_SERVICE_NAME", "from-env")
    setup = tracedpool.configure(install=False, service_name="from-code")
    assert setup.provider.resource.attributes["service.name"] == "from-env"
    setup.provider.shutdown()


_INSTALL_SCRIPT = """
import json, sys
from opentelemetry import trace
import tracedpool
from tracedpool import TracedProcessPoolExecutor
from faults import traced_work

if sys.argv[1] == "app-first":
    from opentelemetry.sdk.trace import TracerProvider
    mine = TracerProvider()
    trace.set_tracer_provider(mine)
setup = tracedpool.configure(service_name="installed")
again = tracedpool.configure()
with TracedProcessPoolExecutor(max_workers=1) as pool:
    pool.submit(traced_work, 2).result(timeout=60)
out = {
    "installed": setup.installed, "rule": setup.rule, "file": str(setup.trace_file),
    "global_is_setup": trace.get_tracer_provider() is setup.provider,
    "again_installed": again.installed, "again_rule": again.rule,
    "again_same": again.provider is setup.provider,
}
if sys.argv[1] == "app-first":
    out["global_is_apps"] = trace.get_tracer_provider() is mine
print(json.dumps(out))
"""


def _run_script(tmp_path: Path, mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT), str(ROOT / "tests")))
    proc = subprocess.run(
        [sys.executable, "-c", _INSTALL_SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("variables", "queue"),
    [({}, C.POOL_MAX_QUEUE_SIZE), ({"OTEL_BSP_MAX_QUEUE_SIZE": "1000"}, 1000)],
)
def test_configure_sizes_the_batch_queue_for_a_pool_unless_the_user_did(
    env: pytest.MonkeyPatch, variables: dict[str, str], queue: int
) -> None:
    """configure()'s batch processor holds a pool's burst (8,192 spans) unless an
    OTEL_BSP_* size is set: then the SDK reads the variables, as it would alone."""
    from tracedpool._telemetry.sdk import span_room

    for name, value in variables.items():
        env.setenv(name, value)
    setup = tracedpool.configure(install=False)
    assert span_room(setup.provider._active_span_processor) == (queue, queue)
    setup.provider.shutdown()


def test_configure_installs_once_and_the_file_gets_the_pool_spans(tmp_path: Path) -> None:
    """In a fresh process: configure() installs the global provider (a second call
    returns it, untouched), and at exit the pool's spans are in the default file."""
    out = _run_script(tmp_path, "fresh")
    assert out["installed"] and out["rule"] == C.RULE_DEFAULT and out["global_is_setup"]
    assert not out["again_installed"] and out["again_rule"] == C.RULE_EXISTING
    assert out["again_same"]
    path = Path(out["file"])
    assert path == tmp_path / "state/tracedpool/traces/traces.jsonl"
    spans = [
        s
        for line in path.read_text().splitlines()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    ]
    names = {s["name"] for s in spans}
    assert {N.SPAN_TASK, N.SPAN_WORKER_RUN, "user-inner", N.SPAN_POOL} <= names


def test_a_configured_file_gets_every_pool_span_written_directly(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the embedded default alone, a pool writes its own spans to the file itself
    (no SDK span objects): each task's spans are all there, parented as the SDK path
    parents them, under the caller's request span, with the fault recorded; the task
    code's own spans still come through the SDK."""
    from tracedpool._telemetry.otel import FileSink, resolve_sink

    path = tmp_path / "t.jsonl"
    setup = tracedpool.configure(install=False, trace_file=path)
    assert isinstance(resolve_sink(setup.provider), FileSink)
    trace_id, request_id = _traced_pool_run(setup.provider)
    setup.provider.shutdown()
    spans = list(read_spans(path))
    by_id = {s["span_id"]: s for s in spans}
    tasks = [s for s in spans if s["name"] == N.SPAN_TASK]
    assert len(tasks) == 3
    for task in tasks:
        assert task["trace_id"] == format(trace_id, "032x")
        assert task["parent_span_id"] == format(request_id, "016x")
        stages = {s["name"] for s in spans if s["parent_span_id"] == task["span_id"]}
        assert {N.SPAN_SUBMIT, N.SPAN_ENQUEUE, N.SPAN_FEEDER_SERIALIZE} <= stages
    failed = [t for t in tasks if t["status_code"] == 2]
    assert len(failed) == 1
    assert [s["name"] for s in spans].count("user-inner") == 1  # once, though plain
    assert by_id[next(s for s in spans if s["name"] == "user-inner")["parent_span_id"]]
    assert any(s["attributes"].get(N.ATTR_FAULT_STAGE) == "feeder-serialize" for s in spans), (
        "the pickling fault"
    )


def _exported_names(exporter: str, path: Path, receiver: OtlpReceiver) -> list[str]:
    """The names of the spans that reached the file, or the OTLP receiver."""
    if exporter == "file":
        return [s["name"] for s in read_spans(path)]
    return [
        s.name
        for _, _, request in receiver.decoded()
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


@pytest.mark.parametrize("exporter", ["file", "otlp"])
def test_a_plain_task_is_written_as_its_specs_would_be(
    env: pytest.MonkeyPatch, tmp_path: Path, receiver: OtlpReceiver, exporter: str
) -> None:
    """configure()'s sinks write a task that ran to a result straight from its record
    (``plaintask``): for every shape such a task takes, the OTLP/JSON text or protobuf
    is exactly what encoding its specs gives; a record of any other shape (a failure,
    recorded values, worker logs) is left to the specs."""
    import itertools

    from logtasks import info_and_warning
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from tracedpool._telemetry import emit, plaintask
    from tracedpool._telemetry.otel import FileSink, OtlpSink

    sink_class, direct = (
        (FileSink, plaintask.task_json) if exporter == "file" else (OtlpSink, plaintask.task_proto)
    )
    if exporter == "otlp":
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    compared: list[str] = []
    refused: list[str] = []
    mismatched: list[tuple[Any, Any]] = []
    writes = sink_class.emit_task

    def compare(self: Any, rec: Any, st: Any) -> bool:
        ids = itertools.count(0x1000)
        encoded = direct(rec, st, lambda: next(ids))
        if encoded is None:
            refused.append(rec.fname)
        else:
            compared.append(rec.fname)
            ids = itertools.count(0x1000)
            self.leaf_span_id = lambda: next(ids)
            try:
                specs = emit.task_specs(rec, st)
            finally:
                del self.leaf_span_id
            parts = (rec.trace_id, rec.flags, rec.trace_state, rec.parent, specs, None)
            if self._encode(*parts) != encoded:
                mismatched.append((self._encode(*parts), encoded))
        return bool(writes(self, rec, st))

    env.setattr(sink_class, "emit_task", compare)
    setup = tracedpool.configure(install=False, trace_file=tmp_path / "t.jsonl")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0x00F067AA0BA902B7,
        True,
        TraceFlags(1),
        TraceState([("vendor", "opaque")]),
    )
    tracer = setup.provider.get_tracer("tests")
    with TracedProcessPoolExecutor(2, tracer_provider=setup.provider, name="named") as pool:
        assert pool.submit(identity, 1, key="v").result(timeout=60) == ((1,), {"key": "v"})
        assert list(pool.map(identity, range(4), chunksize=2)) == [0, 1, 2, 3]
        with trace.use_span(NonRecordingSpan(remote)):
            assert pool.submit(identity, "remote").result(timeout=60) == "remote"
        with tracer.start_as_current_span("request"):
            assert pool.submit(traced_work, 3).result(timeout=60) == 6
        with pytest.raises(ValueError):
            pool.submit(identity, 1, ErrorAtPickle()).result(timeout=60)
        assert pool.submit(info_and_warning, 2).result(timeout=60) == 2
    with TracedProcessPoolExecutor(1, tracer_provider=setup.provider, record_values=True) as pool:
        assert pool.submit(traced_work, 1).result(timeout=60) == 2
    setup.provider.shutdown()
    assert not mismatched
    plain = ["identity"] * 4 + ["traced_work"]  # one submit, two map chunks, one remote
    assert sorted(name.rsplit(".", 1)[-1] for name in compared) == sorted(plain)
    assert sorted(name.rsplit(".", 1)[-1] for name in refused) == [
        "identity",  # its argument failed to pickle
        "info_and_warning",  # logged a warning in the worker
        "traced_work",  # with record_values
    ]
    names = _exported_names(exporter, tmp_path / "t.jsonl", receiver)
    assert names.count(N.SPAN_TASK) == 8
    # The task code's spans (this test's comparison emits them more than once).
    assert "user-inner" in names


@pytest.mark.parametrize("exporter", ["file", "otlp"])
def test_a_processor_added_after_configure_sees_the_pool_spans_too(
    env: pytest.MonkeyPatch, tmp_path: Path, receiver: OtlpReceiver, exporter: str
) -> None:
    """Adding a span processor to a configure()d provider ends the pool's own encoding:
    the added processor receives every pool span as an SDK span, and the configured
    exporter still gets them (through the SDK)."""
    path = tmp_path / "t.jsonl"
    if exporter == "otlp":
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    setup = tracedpool.configure(install=False, trace_file=path)
    memory = InMemorySpanExporter()
    setup.provider.add_span_processor(SimpleSpanProcessor(memory))
    _traced_pool_run(setup.provider)
    setup.provider.shutdown()
    in_memory = [s for s in memory.get_finished_spans() if s.name == N.SPAN_TASK]
    exported = _exported_names(exporter, path, receiver)
    assert len(in_memory) == exported.count(N.SPAN_TASK) == 3


def test_configure_never_overrides_the_applications_provider(tmp_path: Path) -> None:
    """An application that set its own provider keeps it; configure() says so."""
    out = _run_script(tmp_path, "app-first")
    assert not out["installed"] and out["rule"] == C.RULE_EXISTING
    assert out["global_is_apps"] and out["file"] == "None"
    assert not (tmp_path / "state").exists()


# -- OTLP over the real wire -----------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def test_otlp_http_delivers_what_jaeger_would_receive(
    env: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    """The real OTLP/HTTP exporter, chosen by OTEL_EXPORTER_OTLP_ENDPOINT, sends the
    pool's spans as protobuf (encoded by the pool, sent with the exporter's own client;
    the task code's spans encoded by the SDK): names, parentage, the fault's event,
    service.name."""
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    env.setenv("OTEL_SERVICE_NAME", "wire-test")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    from tracedpool._telemetry.otel import OtlpSink, resolve_sink

    setup = tracedpool.configure(install=False)
    assert (setup.rule, setup.exporters) == ("OTEL_EXPORTER_OTLP_ENDPOINT", ("otlp http/protobuf",))
    assert isinstance(resolve_sink(setup.provider), OtlpSink)  # the pool encodes its spans
    trace_id, request_id = _traced_pool_run(setup.provider)
    assert setup.provider.force_flush(30_000)
    setup.provider.shutdown()

    got = receiver.decoded()
    assert got, "no OTLP request arrived"
    assert {(path, ctype) for path, ctype, _ in got} == {("/v1/traces", "application/x-protobuf")}
    spans: list[Any] = []
    for _, _, request in got:
        for rs in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            assert resource["service.name"] == "wire-test"
            assert resource["deployment.environment"] == "test"
            spans += [s for ss in rs.scope_spans for s in ss.spans]

    def hexid(b: bytes) -> int:
        return int.from_bytes(b, "big")

    in_trace = [s for s in spans if hexid(s.trace_id) == trace_id]
    by_id = {hexid(s.span_id): s for s in in_trace}
    tasks = [s for s in in_trace if s.name == N.SPAN_TASK]
    assert len(tasks) == 3
    for task in tasks:
        assert hexid(task.parent_span_id) == request_id
    stages = [s for s in in_trace if s.name in N.STAGE_SPANS]
    assert stages and all(by_id[hexid(s.parent_span_id)].name == N.SPAN_TASK for s in stages)
    inner = next(s for s in in_trace if s.name == "user-inner")
    assert by_id[hexid(inner.parent_span_id)].name == N.SPAN_WORKER_RUN

    faulted = [
        (s, e)
        for s in in_trace
        for e in s.events
        if e.name == N.EVENT_EXCEPTION
        and any(
            kv.key == N.ATTR_FAULT_STAGE and kv.value.string_value == "feeder-serialize"
            for kv in e.attributes
        )
    ]
    assert faulted, "no exception event with the fault's stage"
    span, _ = faulted[0]
    assert span.name == N.SPAN_FEEDER_SERIALIZE
    assert span.status.code == 2  # STATUS_CODE_ERROR
    assert by_id[hexid(span.parent_span_id)].status.code == 2


@pytest.mark.skipif(
    not os.environ.get(ENV_TEST_OTLP_ENDPOINT),
    reason=f"set {ENV_TEST_OTLP_ENDPOINT} (e.g. http://localhost:4318) to run against a real "
    "collector or Jaeger",
)
def test_real_collector_accepts_the_pools_spans(env: pytest.MonkeyPatch) -> None:
    """Opt-in: the pool's spans reach a real OTLP/HTTP endpoint; with Jaeger's query API
    on the same host (port 16686), the trace is found there."""
    endpoint = os.environ[ENV_TEST_OTLP_ENDPOINT].rstrip("/")
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    service = f"tracedpool-test-{os.getpid()}"
    env.setenv("OTEL_SERVICE_NAME", service)
    setup = tracedpool.configure(install=False)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    memory = InMemorySpanExporter()
    setup.provider.add_span_processor(SimpleSpanProcessor(memory))
    trace_id, _ = _traced_pool_run(setup.provider)
    assert setup.provider.force_flush(30_000)
    # The same spans once more, checking the endpoint's answer directly.
    assert OTLPSpanExporter().export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    setup.provider.shutdown()

    host = urllib.parse.urlparse(endpoint).hostname
    url = f"http://{host}:16686/api/traces/{trace_id:032x}"
    deadline = time.monotonic() + 45  # a collector's tail sampling waits before deciding
    names: set[str] = set()
    while N.SPAN_TASK not in names and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                data = json.load(reply)
            names = {s["operationName"] for t in data.get("data", []) for s in t["spans"]}
        except urllib.error.HTTPError:  # 404 until the trace is stored
            pass
        except OSError as e:
            pytest.skip(f"no Jaeger query API at {url} ({e}); the export itself succeeded")
        time.sleep(1)
    assert {N.SPAN_TASK, N.SPAN_FEEDER_SERIALIZE, "user-inner"} <= names


def test_a_forked_child_can_export_even_if_forked_mid_export(tmp_path: Path) -> None:
    """A fork while another thread holds the exporter's lock does not deadlock the child."""
    path = tmp_path / "traces.jsonl"
    exporter = JsonLinesSpanExporter(path)
    spans = _spans(1)
    with exporter._lock:  # as if the batch processor's thread were mid-export
        pid = os.fork()
        if pid == 0:  # the child: export, then leave without running pytest's cleanup
            code = 0 if exporter.export(spans) is SpanExportResult.SUCCESS else 1
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child deadlocked on the exporter's lock")
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(path.read_text().splitlines()) == 1
