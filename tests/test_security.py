"""What tracedpool records and writes, from a security reviewer's seat.

* By default, spans and stall reports hold types, sizes and names, never argument or
  result values. Exception messages and stack traces *are* recorded, as OpenTelemetry's
  own instrumentations record them, and ``record_exception_messages=False`` drops them.
* The ``record_values`` opt-in records bounded reprs, each passed through the hook.
* Every file tracedpool creates is private (directory 0700, file 0600), and a symlink
  planted where it writes is refused, never written through.

Some of this is also checked where the feature lives (test_spans, test_stall,
test_export); this module checks it end to end, with real pools, workers and files.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import tempfile
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from faults import Unpicklable, identity, raise_error, sleep_then

import tracedpool
from tracedpool._diagnosis import stall as _stall
from tracedpool._telemetry import emit as _emit
from tracedpool._telemetry import names as N
from tracedpool._telemetry.jsonl import JsonLinesSpanExporter
from tracedpool._telemetry.otlpjson import read_spans

SECRET = "s3cr3t-7f1c9a"  # marks a value: it must appear nowhere tracedpool records it


def _everything(span: Any) -> str:
    """All of a span a backend would store, as one string."""
    parts = [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
    for event in span.events:
        parts += [event.name, repr(dict(event.attributes or {}))]
    for link in span.links:
        parts.append(repr(dict(link.attributes or {})))
    return "\n".join(parts)


def _secret_task_mix(pool: Any) -> None:
    """Secrets in positional and keyword arguments and in results, in a pickling fault
    (an unpicklable argument next to a secret one), and in a task that raises."""
    assert pool.submit(identity, SECRET).result(timeout=60) == SECRET
    assert pool.submit(identity, 1, key=SECRET).result(timeout=60) == ((1,), {"key": SECRET})
    nested = {"token": SECRET, "n": [SECRET] * 3}
    assert pool.submit(identity, nested).result(timeout=60) == nested
    with pytest.raises((TypeError, pickle.PicklingError)) as info:
        pool.submit(identity, SECRET, Unpicklable()).result(timeout=60)
    assert SECRET not in str(info.value)  # the located fault names args[1] and its type
    with pytest.raises(RuntimeError):
        pool.submit(raise_error, f"failed for {SECRET}").result(timeout=60)


# -- values in spans -----------------------------------------------------------------------
def test_no_argument_or_result_value_in_any_span_by_default(make_pool: Any, recorder: Any) -> None:
    """Default settings: no span, event or link holds an argument or result value; the one
    place a secret appears is the exception message of the task that raised it."""
    provider, exporter = recorder
    pool = make_pool(2, tracer_provider=provider)
    _secret_task_mix(pool)
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    assert len({s.attributes.get(N.ATTR_TASK_ID) for s in spans if s.name == N.SPAN_TASK}) == 5
    leaking = [s for s in spans if SECRET in _everything(s)]
    # Exception messages are recorded by default (as OpenTelemetry instrumentations do):
    # only the raising task's exception event carries it, in message and stack trace.
    for span in leaking:
        assert SECRET not in repr(dict(span.attributes or {})), span.name
        carriers = [e for e in span.events if SECRET in repr(dict(e.attributes or {}))]
        assert carriers and all(e.name == "exception" for e in carriers), span.name
        for e in carriers:
            assert e.attributes["exception.type"].endswith("RuntimeError")
    assert leaking, "the raising task's exception message should be recorded by default"


def test_no_secret_anywhere_without_exception_messages(make_pool: Any, recorder: Any) -> None:
    """record_exception_messages=False: the secret appears in no span at all."""
    provider, exporter = recorder
    pool = make_pool(2, tracer_provider=provider, record_exception_messages=False)
    _secret_task_mix(pool)
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    assert spans
    assert [s.name for s in spans if SECRET in _everything(s)] == []


def test_record_values_opt_in_bounds_and_redacts_args_and_results(
    make_pool: Any, recorder: Any
) -> None:
    """record_values=hook: argument and result reprs are recorded, cut to 256 characters
    (plus '...') and passed through the hook, which sees every value before export."""
    provider, exporter = recorder
    seen: list[str] = []

    def redact(text: str) -> str:
        seen.append(text)
        return text.replace(SECRET, "[redacted]")

    pool = make_pool(1, tracer_provider=provider, record_values=redact)
    assert pool.submit(identity, SECRET).result(timeout=60) == SECRET
    big = SECRET + "x" * 10_000
    assert pool.submit(identity, big).result(timeout=60) == big
    pool.shutdown(wait=True)
    tasks = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    assert len(tasks) == 2
    for task in tasks:
        args_repr = task.attributes[N.ATTR_ARGS_REPR]
        result_repr = task.attributes[N.ATTR_RESULT_REPR]
        for text in (args_repr, result_repr):
            assert "[redacted]" in text and SECRET not in text
            assert len(text) <= 256 + len("...") + len("[redacted]")
    assert len(seen) == 4  # two arguments and two results
    assert all(len(text) <= 256 + 3 for text in seen)  # the hook gets the bounded repr
    assert [s.name for s in exporter.get_finished_spans() if SECRET in _everything(s)] == []


def test_a_failing_redaction_hook_records_a_placeholder_not_the_value(
    make_pool: Any, recorder: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A redaction hook that raises: the value is replaced, never recorded unredacted,
    and the task is unaffected; the failure is logged once, without the value the
    hook's exception quotes."""
    provider, exporter = recorder

    def broken_hook(text: str) -> str:
        raise ValueError(f"hook bug on {text}")

    monkeypatch.setattr(_emit, "_redaction_warned", False)
    pool = make_pool(1, tracer_provider=provider, record_values=broken_hook)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        assert pool.submit(identity, SECRET).result(timeout=60) == SECRET
        pool.shutdown(wait=True)
    (record,) = [r for r in caplog.records if "redact callable raised" in r.getMessage()]
    assert "ValueError" in record.getMessage() and record.exc_info is None
    assert SECRET not in caplog.text
    (task,) = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    assert task.attributes[N.ATTR_ARGS_REPR] == "<redaction failed>"
    assert task.attributes[N.ATTR_RESULT_REPR] == "<redaction failed>"
    assert SECRET not in _everything(task)


# -- stall reports ---------------------------------------------------------------------------
def test_stall_report_holds_no_argument_values_and_is_private(
    make_pool: Any, tmp_path: Path
) -> None:
    """A stalled task whose argument is a secret: the report (JSON, text, the on_stall
    dict) names the function and the worker's frames, never the argument; its directory
    is 0700 and its files 0600."""
    reports: list[dict[str, Any]] = []
    report_dir = tmp_path / "reports"
    pool = make_pool(1, stall_timeout=1.0, stall_report_dir=report_dir, on_stall=reports.append)
    assert pool.submit(sleep_then, SECRET, 4.0).result(timeout=60) == SECRET
    assert len(reports) == 1
    assert SECRET not in json.dumps(reports[0], default=str)
    path = Path(reports[0]["report_path"])
    files = sorted(report_dir.iterdir())
    assert files == [path, path.with_suffix(".txt")]
    assert stat.S_IMODE(report_dir.stat().st_mode) == 0o700
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        text = f.read_text()
        assert "sleep_then" in text  # the report is useful...
        assert SECRET not in text  # ...and holds no value


def test_report_files_are_never_written_through_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Symlinks planted at the exact report file names (the time is pinned so the names
    are known in advance): writing fails (O_EXCL|O_NOFOLLOW), the targets are untouched."""
    from datetime import datetime

    fixed = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    class PinnedClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return fixed

    monkeypatch.setattr(_stall, "datetime", PinnedClock)
    directory = tmp_path / "reports"
    directory.mkdir(mode=0o700)
    base = f"stall-{os.getpid()}-20300102T030405.678901Z-abcd1234"
    victims = []
    for suffix in (".json", ".txt"):
        victim = tmp_path / f"victim{suffix}"
        victim.write_text("precious\n")
        (directory / f"{base}{suffix}").symlink_to(victim)
        victims.append(victim)
    report = {"pool": {"id": "abcd1234"}, "diagnosis": "test", "tasks": [], "processes": []}
    with pytest.raises(OSError):
        _stall.write_report(report, directory)
    assert [v.read_text() for v in victims] == ["precious\n", "precious\n"]
    # Only the .txt link planted: the JSON is written, the text file still refused.
    (directory / f"{base}.json").unlink()
    with pytest.raises(OSError):
        _stall.write_report(report, directory)
    assert victims[1].read_text() == "precious\n"
    assert stat.S_IMODE((directory / f"{base}.json").stat().st_mode) == 0o600


def test_shared_temp_dir_planted_as_symlink_is_not_written_through(
    make_pool: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``tracedpool-<uid>`` in the shared temporary directory (workers' stack dumps, the
    heartbeat files) planted by someone else as a symlink to their directory: neither
    the workers nor the heartbeat write anything through it; the pool works."""
    monkeypatch.delenv(N.ENV_HEARTBEAT_DIR, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # inherited by forked workers
    victim = tmp_path / "victim"
    victim.mkdir()
    _stall.dump_dir().symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        pool = make_pool(1, stall_timeout=30.0, start="fork")
        assert pool.submit(identity, 7).result(timeout=60) == 7
        pool.shutdown(wait=True)
    assert list(victim.iterdir()) == []
    assert any("heartbeat" in r.getMessage() for r in caplog.records)


# -- the embedded trace file -----------------------------------------------------------------
def _file_provider(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "TRACEDPOOL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv(N.ENV_TRACE_FILE, str(path))
    setup = tracedpool.configure(install=False)
    assert setup.trace_file == path
    return setup.provider


def test_trace_file_from_configure_is_private_and_holds_no_values(
    make_pool: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure()'s embedded exporter, end to end: directory 0700, file 0600, the pool's
    spans in it, and no argument or result value among them."""
    path = tmp_path / "private" / "traces.jsonl"
    provider = _file_provider(path, monkeypatch)
    pool = make_pool(2, tracer_provider=provider, record_exception_messages=False)
    _secret_task_mix(pool)
    pool.shutdown(wait=True)
    provider.shutdown()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    spans = list(read_spans(path))
    assert sum(s["name"] == N.SPAN_TASK for s in spans) == 5
    assert SECRET not in path.read_text()


def test_a_world_readable_trace_file_is_made_private(tmp_path: Path) -> None:
    """A trace file that already exists with loose permissions is tightened to 0600
    before anything is written to it."""
    path = tmp_path / "traces.jsonl"
    path.write_text("")
    path.chmod(0o644)
    exporter = JsonLinesSpanExporter(path)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("t").start_span("s").end()
    provider.shutdown()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip()


def test_trace_file_planted_as_symlink_is_refused_and_the_pool_works(
    make_pool: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TRACEDPOOL_TRACE_FILE pointing at a planted symlink: the target is never written,
    every task succeeds, and the refusal is logged once."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "traces.jsonl"
    path.symlink_to(victim)
    provider = _file_provider(path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        pool = make_pool(2, tracer_provider=provider)
        assert list(pool.map(identity, range(50), timeout=60)) == list(range(50))
        pool.shutdown(wait=True)
        provider.shutdown()
    assert victim.read_text() == "precious\n"
    refusals = [r for r in caplog.records if N.ENV_TRACE_FILE in r.getMessage()]
    assert len(refusals) == 1
