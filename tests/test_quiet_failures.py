"""Failures tracedpool swallows to protect the host are either narrowed to the ones
expected, or said once: none of them vanishes without a word."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tracedpool._pool import cpython as _cpython
from tracedpool._telemetry import otel as _otel
from tracedpool._worker import wire as _wire
from tracedpool.testing import square


def test_a_status_record_whose_payload_is_not_an_object_is_kept_without_raising() -> None:
    """The status pipe's reader turns a payload that is JSON but not an object into an
    empty one (it used to raise AttributeError out of drain())."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    status = _wire.StatusReader(reader)
    try:
        body = json.dumps([1, 2]).encode()
        record = _wire._REC.pack(_wire.REC_FAULT, 123, 7, 99) + _wire._LEN.pack(len(body))
        _wire._write(writer.fileno(), record + body)
        status.drain()
        assert status.faults == [{"pid": 123, "work_id": 7, "t_ns": 99}]
    finally:
        status.close(writer)


@pytest.mark.parametrize("message", [b"", b"not a pickle", b"\x80\x05\x95", None])
def test_locating_a_result_in_a_message_that_is_no_pickle_answers_unknown(message: Any) -> None:
    """A message cut short, or not a pickle at all, is read as far as it goes."""
    assert _cpython.locate_result_in_message(message) == (None, "result")


@pytest.fixture
def status_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[_wire.StatusReader]:
    """This process plays a worker whose status pipe the returned reader drains; the
    parent's once-per-kind memory of worker reports starts empty."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    status = _wire.StatusReader(reader)
    monkeypatch.setattr(_wire.WORKER, "status_fd", writer.fileno())
    monkeypatch.setattr(_wire, "_worker_warnings_said", set())
    yield status
    status.close(writer)


def _reports(caplog: pytest.LogCaptureFixture, what: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if what in r.getMessage()]


def test_a_failed_take_over_of_the_inherited_provider_reaches_the_parent_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status_pipe: _wire.StatusReader,
) -> None:
    """At worker start, a failure to take over an inherited SDK provider neither stops
    the worker nor stays in its stderr: the parent logs it once, with the worker's
    traceback, however many workers report it."""
    from opentelemetry.sdk.trace import TracerProvider

    def broken() -> None:
        raise RuntimeError("take-over bug")

    monkeypatch.setattr(_otel.trace, "get_tracer_provider", TracerProvider)
    monkeypatch.setattr(_otel, "_setup_worker_tracing", broken)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        _wire._start_tracing(_otel.worker_init_tracing)
        _wire._start_tracing(_otel.worker_init_tracing)
        status_pipe.drain()
    (record,) = _reports(caplog, "setting up tracing")
    assert "take-over bug" in record.getMessage() and "broken" in record.getMessage()
    assert status_pipe.faults == [] and status_pipe.init_failures == []


def test_no_sdk_in_a_worker_is_not_reported(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status_pipe: _wire.StatusReader,
) -> None:
    """A worker without the SDK is the expected no-op case: nothing is said."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with caplog.at_level(logging.DEBUG, logger="tracedpool"):
        _wire._start_tracing(_otel.worker_init_tracing)
        status_pipe.drain()
    assert caplog.records == []


def test_a_bug_in_locating_an_unpickling_fault_is_said_and_the_fault_still_reported(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status_pipe: _wire.StatusReader,
) -> None:
    """The fault record still reaches the parent (part unnamed) when locating it fails
    or the exception's own ``str()`` raises; the locating bug is logged once."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no str")

    def broken(buf: Any, failing_opcode: Any) -> Any:
        raise RuntimeError("locator bug")

    monkeypatch.setattr(_wire, "locate_call_failure", broken)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        _wire.report_worker_unpickle_failure(
            _wire.WORKER.status_fd, b"x", Unprintable(), _cpython.failing_opcode
        )
        status_pipe.drain()
    (fault,) = status_pipe.faults
    assert fault["target"] == "call" and fault["message"].startswith("<str() raised")
    (record,) = _reports(caplog, "locating which part")
    assert "locator bug" in record.getMessage()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_tasks_run_when_tracing_set_up_fails_in_the_workers(
    make_pool: Any,
    recorder: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose tracing set-up fails (a bug, not a missing SDK) still runs its
    traced tasks, and the parent says so once (fork carries the broken set-up over)."""

    def broken() -> None:
        raise RuntimeError("set-up bug")

    monkeypatch.setattr(_otel, "_setup_worker_tracing", broken)
    monkeypatch.setattr(_wire, "_worker_warnings_said", set())
    provider, _exporter = recorder
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        pool = make_pool(2, start="fork", tracer_provider=provider)
        assert list(pool.map(square, range(6))) == [i * i for i in range(6)]
        pool.shutdown(wait=True)
    (record,) = _reports(caplog, "setting up tracing")
    assert "set-up bug" in record.getMessage()
