"""Failures tracedpool swallows to protect the host are either narrowed to the ones
expected, or said once: none of them vanishes without a word."""

from __future__ import annotations

import json
import logging
import multiprocessing
from typing import Any

import pytest

from tracedpool._pool import cpython as _cpython
from tracedpool._telemetry import otel as _otel
from tracedpool._worker import wire as _wire


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


def test_a_failed_take_over_of_the_inherited_provider_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At worker start, a failure to take over an inherited SDK provider is a warning
    with its traceback, not silence (the worker's start-up swallows what escapes)."""
    from opentelemetry.sdk.trace import TracerProvider

    def broken() -> None:
        raise RuntimeError("take-over bug")

    monkeypatch.setattr(_otel.trace, "get_tracer_provider", TracerProvider)
    monkeypatch.setattr(_otel, "_setup_worker_tracing", broken)
    with caplog.at_level(logging.WARNING, logger="tracedpool"):
        _otel.worker_init_tracing()
    (record,) = [r for r in caplog.records if "could not take over" in r.getMessage()]
    assert record.exc_info is not None and "take-over bug" in str(record.exc_info[1])
