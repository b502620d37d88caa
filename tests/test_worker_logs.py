"""Worker logs: records a task (or an initializer, or another thread) logs in a worker
reach the parent's logging with their task, trace and span, and a traced task's records
are events on its worker-run span; under fork, spawn and forkserver."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import logtasks
import pytest

from tracedpool._pool.executor import _log_level
from tracedpool._telemetry import names as N
from tracedpool._worker import logs as worker_logs
from tracedpool.testing import spans_by_task, wait_for


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    """A handler on the tasks' logger in the parent, collecting what reaches it."""
    logger = logging.getLogger(logtasks.LOGGER)
    handler = _Collect()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _worker_run(exporter: Any, task_id: str) -> Any:
    spans = spans_by_task(exporter.get_finished_spans())[task_id]
    return next(s for s in spans if s.name == N.SPAN_WORKER_RUN)


def test_task_records_arrive_with_task_trace_and_span_ids(
    make_pool: Any, recorder: Any, collected: _Collect, start_method: str
) -> None:
    """Info and warning records reach the parent's handler, once each, with the task id,
    worker pid, and the trace and span of the task's worker-run span."""
    provider, exporter = recorder
    pool = make_pool(1, start=start_method, tracer_provider=provider, log_level=logging.INFO)
    assert pool.submit(logtasks.info_and_warning, 7).result(timeout=60) == 7
    pid = next(iter(pool._processes))
    pool.shutdown(wait=True)  # every record the workers wrote is handled by then
    records = [r for r in collected.records if r.name == logtasks.LOGGER]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", "info from task 7"),
        ("WARNING", "warning from task 7"),
    ]
    run = _worker_run(exporter, f"{pool.pool_id}:0")
    for r in records:
        assert getattr(r, N.RECORD_TASK_ID) == f"{pool.pool_id}:0"
        assert getattr(r, N.RECORD_WORKER_PID) == pid == r.process
        assert getattr(r, N.RECORD_TRACE_ID) == f"{run.context.trace_id:032x}"
        assert getattr(r, N.RECORD_SPAN_ID) == f"{run.context.span_id:016x}"
        assert r.funcName == "info_and_warning" and r.pathname == logtasks.__file__
    assert pool.stats()["log_records"] == 2
    assert pool.stats()["log_records_dropped"] == 0


# The SDK's own LoggingHandler is deprecated for opentelemetry-instrumentation-logging's,
# which reads the current span the same way; the SDK's is the one installed here.
@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_an_opentelemetry_logging_bridge_exports_them_in_the_tasks_trace(
    make_pool: Any, recorder: Any, start_method: str
) -> None:
    """With an OpenTelemetry LoggerProvider bridged to the parent's logging, a worker's
    record is exported with the trace and span of the task's worker-run span."""
    logs_sdk = pytest.importorskip("opentelemetry.sdk._logs")
    logs_export = pytest.importorskip("opentelemetry.sdk._logs.export")
    # Newer SDKs name it InMemoryLogRecordExporter; older ones InMemoryLogExporter.
    exporter_cls = (
        getattr(logs_export, "InMemoryLogRecordExporter", None) or logs_export.InMemoryLogExporter
    )
    log_exporter = exporter_cls()
    log_provider = logs_sdk.LoggerProvider()
    log_provider.add_log_record_processor(logs_export.SimpleLogRecordProcessor(log_exporter))
    bridge = logs_sdk.LoggingHandler(logger_provider=log_provider)
    logger = logging.getLogger(logtasks.LOGGER)
    logger.addHandler(bridge)
    try:
        provider, exporter = recorder
        pool = make_pool(1, start=start_method, tracer_provider=provider)
        assert pool.submit(logtasks.info_and_warning, 3).result(timeout=60) == 3
        pool.shutdown(wait=True)
    finally:
        logger.removeHandler(bridge)
    run = _worker_run(exporter, f"{pool.pool_id}:0")
    exported = [getattr(e, "log_record", e) for e in log_exporter.get_finished_logs()]
    assert [(r.body, r.trace_id, r.span_id) for r in exported] == [
        ("warning from task 3", run.context.trace_id, run.context.span_id)
    ]


def test_records_are_events_on_the_worker_run_span(
    make_pool: Any, recorder: Any, start_method: str
) -> None:
    """Each record a traced task logs is a tracedpool.log event on its worker-run span."""
    provider, exporter = recorder
    pool = make_pool(1, start=start_method, tracer_provider=provider, log_level="INFO")
    pool.submit(logtasks.info_and_warning, 3).result(timeout=60)
    pool.shutdown(wait=True)
    run = _worker_run(exporter, f"{pool.pool_id}:0")
    events = [e for e in run.events if e.name == N.EVENT_LOG]
    assert [dict(e.attributes) for e in events] == [
        {
            N.ATTR_LOG_SEVERITY_TEXT: level,
            N.ATTR_LOG_SEVERITY_NUMBER: number,
            N.ATTR_LOG_LOGGER: logtasks.LOGGER,
            N.ATTR_LOG_MESSAGE: f"{level.lower()} from task 3",
            N.ATTR_CODE_FUNCTION: "info_and_warning",
            N.ATTR_CODE_FILE_PATH: logtasks.__file__,
            N.ATTR_CODE_LINE_NUMBER: line,
            N.ATTR_THREAD_NAME: "MainThread",
        }
        for level, number, line in (("INFO", 9, 17), ("WARNING", 13, 18))
    ]
    assert run.start_time <= events[0].timestamp <= events[1].timestamp <= run.end_time
    assert N.ATTR_LOG_RECORDS_DROPPED not in run.attributes


def test_logging_exception_carries_its_traceback(
    make_pool: Any, recorder: Any, collected: _Collect, start_method: str
) -> None:
    """logging.exception in a task: the parent's record and the span event carry the
    worker's traceback."""
    provider, exporter = recorder
    pool = make_pool(1, start=start_method, tracer_provider=provider)
    pool.submit(logtasks.log_exception).result(timeout=60)
    pool.shutdown(wait=True)
    (record,) = collected.records
    assert record.levelname == "ERROR" and record.getMessage() == "division failed in task"
    assert record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert record.exc_text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "ZeroDivisionError: division by zero" in logging.Formatter().format(record)
    (event,) = [
        e for e in _worker_run(exporter, f"{pool.pool_id}:0").events if e.name == N.EVENT_LOG
    ]
    assert event.attributes[N.ATTR_EXCEPTION_TYPE] == "ZeroDivisionError"
    assert event.attributes[N.ATTR_EXCEPTION_MESSAGE] == "division by zero"
    assert "1 / 0" in event.attributes[N.ATTR_EXCEPTION_STACKTRACE]


@pytest.mark.breaks_pool
def test_a_worker_killed_after_logging_delivers_its_records(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """A worker SIGKILLed right after logging: its record reaches the parent before the
    task's future fails."""
    pool = make_pool(1, start=start_method)
    future = pool.submit(logtasks.log_then_die)
    assert isinstance(future.exception(timeout=60), BrokenProcessPool)
    assert [r.getMessage() for r in collected.records] == ["about to be killed"]
    assert getattr(collected.records[0], N.RECORD_TASK_ID) == f"{pool.pool_id}:0"


def test_a_flood_is_bounded_and_counted(
    make_pool: Any, recorder: Any, collected: _Collect, start_method: str
) -> None:
    """A task logging far past the per-task bound: at most the bound reaches the parent,
    the rest is counted in stats() and on the span, and the pool keeps working."""
    provider, exporter = recorder
    n = 20 * worker_logs.MAX_TASK_RECORDS
    pool = make_pool(1, start=start_method, tracer_provider=provider)
    t0 = time.monotonic()
    assert pool.submit(logtasks.flood, n).result(timeout=60) == n
    assert pool.submit(logtasks.info_and_warning, 1).result(timeout=60) == 1
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 60
    stats = pool.stats()
    arrived = [r for r in collected.records if r.getMessage().startswith("flood record")]
    assert 0 < len(arrived) <= worker_logs.MAX_TASK_RECORDS
    assert stats["log_records_dropped"] == n - len(arrived)
    assert stats["log_records"] == len(arrived) + 1  # and the next task's warning
    run = _worker_run(exporter, f"{pool.pool_id}:0")
    assert run.attributes[N.ATTR_LOG_RECORDS_DROPPED] == n - len(arrived)
    assert len([e for e in run.events if e.name == N.EVENT_LOG]) == worker_logs.MAX_TASK_EVENTS


def test_a_floods_drops_are_counted_once_its_task_ends(make_pool: Any, start_method: str) -> None:
    """The dropped count reaches stats() when the flooding task ends, not only when its
    worker next starts a task (which may never happen) or exits."""
    n = 3 * worker_logs.MAX_TASK_RECORDS
    pool = make_pool(1, start=start_method)
    assert pool.submit(logtasks.flood, n).result(timeout=60) == n
    assert wait_for(lambda: pool.stats()["log_records_dropped"] == n - worker_logs.MAX_TASK_RECORDS)


def test_a_blocked_parent_handler_holds_up_records_not_shutdown(make_pool: Any) -> None:
    """A handler of the parent's that blocks on a worker's record: shutdown(wait=True)
    still returns (the reader's wait is bounded), and the record is handled once the
    handler returns."""
    release = threading.Event()
    seen: list[str] = []

    class Blocking(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            release.wait(60)
            seen.append(record.getMessage())

    logger = logging.getLogger(logtasks.LOGGER)
    handler = Blocking()
    logger.addHandler(handler)
    try:
        pool = make_pool(1, start="spawn")
        assert pool.submit(logtasks.info_and_warning, 5).result(timeout=60) == 5
        t0 = time.monotonic()
        pool.shutdown(wait=True)
        took = time.monotonic() - t0
    finally:
        release.set()
        logger.removeHandler(handler)
    assert took < 30, f"shutdown waited {took:.1f} s on a blocked log handler"
    assert wait_for(lambda: seen == ["warning from task 5"])


def test_basic_config_in_an_initializer_works_as_in_a_stdlib_worker(
    make_pool: Any, collected: _Collect, tmp_path: Path, start_method: str
) -> None:
    """logging.basicConfig() in the user's initializer configures the worker as it would
    a stdlib worker (its file gets the records), and capture goes on beside it."""
    path = tmp_path / "worker.log"
    pool = make_pool(
        1, start=start_method, initializer=logtasks.init_basic_config, initargs=(str(path),)
    )
    assert pool.submit(logtasks.info_and_warning, 4).result(timeout=60) == 4
    pool.shutdown(wait=True)
    assert path.read_text().splitlines() == [
        "INFO initializer configured logging",
        "INFO info from task 4",
        "WARNING warning from task 4",
    ]
    assert [r.getMessage() for r in collected.records] == ["warning from task 4"]


def test_an_initializers_records_arrive(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """Records the initializer logs arrive, with the worker's pid and no task id."""
    pool = make_pool(1, start=start_method, initializer=logtasks.init_logs, initargs=("hi",))
    pool.submit(logtasks.info_and_warning, 1).result(timeout=60)
    pid = next(iter(pool._processes))
    pool.shutdown(wait=True)
    messages = [(r.getMessage(), getattr(r, N.RECORD_TASK_ID)) for r in collected.records]
    assert messages == [("initializer says hi", None), ("warning from task 1", f"{pool.pool_id}:0")]
    assert getattr(collected.records[0], N.RECORD_WORKER_PID) == pid


def test_another_threads_records_have_no_task_id(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """A record from a worker thread other than the task's arrives, with no task id."""
    pool = make_pool(1, start=start_method)
    pool.submit(logtasks.from_a_thread).result(timeout=60)
    pool.shutdown(wait=True)
    got = {r.getMessage(): getattr(r, N.RECORD_TASK_ID) for r in collected.records}
    assert got == {"from the task's thread": f"{pool.pool_id}:0", "from another thread": None}


def test_a_record_between_tasks_has_no_task_id(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """A record the worker's main thread logs after one task ended and before the next
    started (here: while it unpickles the next task's argument) names no task."""
    pool = make_pool(1, start=start_method)
    pool.submit(logtasks.info_and_warning, 1).result(timeout=60)
    pool.submit(logtasks.identity, logtasks.LogsWhenUnpickled()).result(timeout=60)
    pool.shutdown(wait=True)
    got = {r.getMessage(): getattr(r, N.RECORD_TASK_ID) for r in collected.records}
    assert got == {"warning from task 1": f"{pool.pool_id}:0", "unpickled between tasks": None}


def test_a_logger_that_does_not_propagate_is_captured_once(
    make_pool: Any, start_method: str
) -> None:
    """A logger the parent gave its own handler and ``propagate = False``: under fork the
    worker inherits it; its records still reach the parent's handler, once each (they
    used to fall to the worker's bare stderr once its inherited handler was removed)."""
    isolated = logging.getLogger(logtasks.ISOLATED)
    handler = _Collect()
    isolated.addHandler(handler)
    isolated.propagate = False
    try:
        pool = make_pool(1, start=start_method)
        pool.submit(logtasks.log_isolated).result(timeout=60)
        pool.shutdown(wait=True)
    finally:
        isolated.removeHandler(handler)
        isolated.propagate = True
    assert [r.getMessage() for r in handler.records] == ["from a logger that does not propagate"]
    assert getattr(handler.records[0], N.RECORD_TASK_ID) == f"{pool.pool_id}:0"


def test_arguments_are_formatted_in_the_worker(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """A record whose arguments do not pickle still arrives, formatted."""
    pool = make_pool(1, start=start_method)
    pool.submit(logtasks.unpicklable_arg).result(timeout=60)
    pool.shutdown(wait=True)
    assert [r.getMessage() for r in collected.records] == [
        "formatted in the worker: an-unpicklable-arg"
    ]


def test_inherited_handlers_do_not_write_twice(
    make_pool: Any, tmp_path: Path, start_method: str
) -> None:
    """A file handler of the parent's gets each worker record once, written by the parent
    (under fork the worker inherits it, and must not write to it)."""
    path = tmp_path / "app.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
    logger = logging.getLogger(logtasks.LOGGER)
    logger.addHandler(handler)
    try:
        pool = make_pool(1, start=start_method)
        pool.submit(logtasks.info_and_warning, 5).result(timeout=60)
        pid = next(iter(pool._processes))
        pool.shutdown(wait=True)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.read_text().splitlines() == [f"{pid} warning from task 5"]


def test_log_level_none_leaves_worker_logging_alone(make_pool: Any, collected: _Collect) -> None:
    """log_level=None: nothing is captured (no pipe, no reader thread)."""
    pool = make_pool(1, start="spawn", log_level=None)
    pool.submit(logtasks.info_and_warning, 1).result(timeout=60)
    pool.shutdown(wait=True)
    assert collected.records == []
    assert pool._tp_state.logs is None


def test_log_level_option_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """log_level takes a level or None/False; TRACEDPOOL_LOG_LEVEL a name, number or off;
    a bad one raises, naming the rule."""
    from tracedpool._pool.executor import _UNSET

    monkeypatch.delenv(N.ENV_LOG_LEVEL, raising=False)
    assert _log_level(_UNSET) == logging.WARNING
    assert _log_level("info") == logging.INFO
    assert _log_level(15) == 15
    assert _log_level(None) is None and _log_level(False) is None
    for value, level in (("debug", 10), ("25", 25), ("off", None), ("", logging.WARNING)):
        monkeypatch.setenv(N.ENV_LOG_LEVEL, value)
        assert _log_level(_UNSET) == level
    monkeypatch.setenv(N.ENV_LOG_LEVEL, "loud")
    with pytest.raises(ValueError, match=N.ENV_LOG_LEVEL):
        _log_level(_UNSET)
    with pytest.raises(TypeError, match="log_level"):
        _log_level(True)
    with pytest.raises(ValueError, match="log_level"):
        _log_level("loud")
    assert os.environ[N.ENV_LOG_LEVEL] == "loud"


def test_dropped_records_are_a_metric(make_pool: Any, collected: _Collect) -> None:
    """tracedpool.logs.dropped, read through the SDK's in-memory reader, is the pool's
    log_records_dropped, per pool name; a pool that drops nothing reports zero."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    n = 5 * worker_logs.MAX_TASK_RECORDS
    flooded = make_pool(1, meter_provider=meter_provider, name="flooded")
    quiet = make_pool(1, meter_provider=meter_provider, name="quiet")
    assert flooded.submit(logtasks.flood, n).result(timeout=60) == n
    assert quiet.submit(logtasks.info_and_warning, 1).result(timeout=60) == 1
    flooded.shutdown(wait=True)
    quiet.shutdown(wait=True)
    dropped = flooded.stats()["log_records_dropped"]
    assert dropped > 0
    data = reader.get_metrics_data()
    points = {
        p.attributes.get(N.ATTR_POOL_NAME): p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == N.METRIC_LOGS_DROPPED
        for p in m.data.data_points
    }
    assert points == {"flooded": dropped, "quiet": 0}


def test_records_arrive_while_the_task_still_runs(
    make_pool: Any, collected: _Collect, start_method: str
) -> None:
    """An untraced pool's records are handled as they come, not at the task's end or at
    shutdown: the reader runs from the manager thread's start."""
    from tracedpool.testing import wait_for

    pool = make_pool(1, start=start_method)
    future = pool.submit(logtasks.warn_then_sleep, 3.0)
    assert wait_for(lambda: collected.records, 2.5)
    assert not future.done()
    assert future.result(timeout=60) == "late"


def test_a_stall_report_has_the_stuck_workers_last_records(
    make_pool: Any, tmp_path: Path, start_method: str
) -> None:
    """A task that logged a warning and then hung: the stall report carries the record
    under its worker, with the task id, and `tracedpool report`'s text shows it."""
    from tracedpool._diagnosis.stall import render_text

    reports: list[dict[str, Any]] = []
    pool = make_pool(
        1,
        start=start_method,
        stall_timeout=1.0,
        stall_report_dir=tmp_path,
        on_stall=reports.append,
    )
    assert pool.submit(logtasks.warn_then_sleep, 4.0).result(timeout=60) == "late"
    assert len(reports) == 1
    (worker,) = [p for p in reports[0]["processes"] if p["role"] == "worker"]
    (record,) = worker["recent_logs"]
    message = "waiting for the ledger lock held by job 42"
    assert record["message"] == message and record["level"] == "WARNING"
    assert record["logger"] == logtasks.LOGGER and record["task_id"] == f"{pool.pool_id}:0"
    text = render_text(reports[0])
    assert f"WARNING {logtasks.LOGGER}: {message} [task {pool.pool_id}:0]" in text
    assert message in Path(reports[0]["report_path"]).with_suffix(".txt").read_text()


def test_a_pool_that_replaces_workers_keeps_a_bounded_record_of_them() -> None:
    """The reader keeps the last records and drop counts of the newest WORKERS_KEPT
    workers only (a pool with max_tasks_per_child sees new pids for ever); the drops of
    the workers it forgets still count."""
    import json
    import multiprocessing

    from tracedpool._pool import logs as pool_logs

    reader, writer = multiprocessing.Pipe(duplex=False)
    listener = pool_logs.LogListener(reader, writer, "p", logging.DEBUG)
    try:
        n = pool_logs.WORKERS_KEPT + 50
        values = dict.fromkeys(worker_logs.FIELDS, "")
        values.update(work_id=-1, created=0.0, levelno=logging.DEBUG, levelname="DEBUG")
        values.update(name="tests.bounded-reader", lineno=0, thread=0)
        values.update(trace_id=0, span_id=0, trace_flags=0, stack_info=None, exc_text=None)
        body = json.dumps([values[f] for f in worker_logs.FIELDS]).encode()
        frames = b"".join(
            worker_logs.HEADER.pack(len(body), 2, pid) + body for pid in range(1, n + 1)
        )
        assert listener._parse(frames) == b""
        assert listener.received == n and listener.malformed == 0
        assert len(listener.recent) == pool_logs.WORKERS_KEPT
        assert listener.recent_records(n)[0]["logger"] == "tests.bounded-reader"
        assert listener.recent_records(1) == []  # the oldest worker is forgotten...
        assert listener.dropped == 2 * n  # ...its drops are not
    finally:
        listener.stop(timeout=5)  # closes both ends of the pipe and its wake pipe
