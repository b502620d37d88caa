"""Zero-code instrumentation: ``tracedpool.instrument()`` traces stdlib pools however the
class was named, and ``uninstrument()`` restores the stdlib exactly."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor as EarlyImported
from typing import Any

import pytest

import tracedpool
from tracedpool._telemetry import names as N
from tracedpool.testing import spans_by_task, square

STDLIB = concurrent.futures.process.ProcessPoolExecutor
STDLIB_INIT = STDLIB.__dict__["__init__"]


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    tracedpool.uninstrument()
    assert STDLIB.__dict__["__init__"] is STDLIB_INIT


def _make_with_default(factory: Any = EarlyImported) -> Any:
    """Holds the class in a default argument, bound before instrument() ran."""
    return factory(1, mp_context=multiprocessing.get_context("fork"))


def test_instrumented_stdlib_pool_is_traced(recorder: Any, start_method: str) -> None:
    """A pool built as concurrent.futures.ProcessPoolExecutor is traced, with the
    instrument() options, and still is a ProcessPoolExecutor."""
    provider, exporter = recorder
    assert tracedpool.instrument(tracer_provider=provider, name="zero-code")
    ctx = multiprocessing.get_context(start_method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        assert isinstance(pool, concurrent.futures.ProcessPoolExecutor)
        assert isinstance(pool, tracedpool.TracedProcessPoolExecutor)
        assert list(pool.map(square, range(4))) == [0, 1, 4, 9]
        pool_id = pool.pool_id
    spans = exporter.get_finished_spans()
    tasks = [s for s in spans if s.name == N.SPAN_TASK]
    assert len(tasks) == 4  # map() with the default chunksize: one task per item
    assert tasks[0].attributes[N.ATTR_POOL_NAME] == "zero-code"
    assert all(t.startswith(pool_id) for t in spans_by_task(spans))


def test_names_bound_before_instrument_are_reached(recorder: Any) -> None:
    """`from concurrent.futures import ProcessPoolExecutor` done earlier, a default
    argument and the lazily resolved package attribute all build traced pools, and every
    name still is the stdlib class."""
    provider, _exporter = recorder
    tracedpool.instrument(tracer_provider=provider)
    assert EarlyImported is STDLIB
    assert concurrent.futures.ProcessPoolExecutor is STDLIB
    for pool in (_make_with_default(), EarlyImported(1)):
        with pool:
            assert type(pool).__mro__[1] is tracedpool.TracedProcessPoolExecutor
            assert pool.submit(square, 5).result(timeout=60) == 25


def test_uninstrument_restores_the_stdlib_exactly(recorder: Any) -> None:
    """After uninstrument() the class's __init__ is the original function object, new
    pools are plain stdlib pools, and a pool traced before keeps working."""
    provider, _exporter = recorder
    before = dict(vars(STDLIB))
    assert tracedpool.instrument(tracer_provider=provider)
    assert tracedpool.is_instrumented()
    traced = STDLIB(1, mp_context=multiprocessing.get_context("fork"))
    assert tracedpool.uninstrument()
    assert not tracedpool.is_instrumented()
    assert dict(vars(STDLIB)) == before
    assert all(vars(STDLIB)[k] is v for k, v in before.items())
    assert STDLIB.__init__ is STDLIB_INIT
    with STDLIB(1, mp_context=multiprocessing.get_context("fork")) as plain:
        assert type(plain) is STDLIB
        assert plain.submit(square, 2).result(timeout=60) == 4
    with traced:
        assert isinstance(traced, tracedpool.TracedProcessPoolExecutor)
        assert traced.submit(square, 3).result(timeout=60) == 9


def test_instrument_and_uninstrument_are_idempotent() -> None:
    """A second instrument() or uninstrument() changes nothing and says so."""
    assert tracedpool.instrument(stall_timeout=None)
    patched = STDLIB.__dict__["__init__"]
    assert not tracedpool.instrument(stall_timeout=5)
    assert STDLIB.__dict__["__init__"] is patched
    assert tracedpool.uninstrument()
    assert not tracedpool.uninstrument()
    assert STDLIB.__dict__["__init__"] is STDLIB_INIT


def test_concurrent_instrument_and_uninstrument_leave_a_consistent_class() -> None:
    """Threads racing instrument() and uninstrument() never stack patches: at rest the
    class is either exactly the stdlib's or patched once."""
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait(timeout=30)
        for _ in range(200):
            if i % 2:
                tracedpool.instrument()
            else:
                tracedpool.uninstrument()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    init = STDLIB.__dict__["__init__"]
    if tracedpool.is_instrumented():
        assert init is not STDLIB_INIT
        assert init.__wrapped__ is STDLIB_INIT
    else:
        assert init is STDLIB_INIT
    tracedpool.uninstrument()
    assert STDLIB.__dict__["__init__"] is STDLIB_INIT


def test_what_instrument_cannot_reach() -> None:
    """Documented limits: a pool created before instrument() and a user's subclass stay
    untraced, and both still work."""
    ctx = multiprocessing.get_context("fork")
    early = STDLIB(1, mp_context=ctx)

    class Custom(STDLIB):
        pass

    tracedpool.instrument(stall_timeout=None)
    with early, Custom(1, mp_context=ctx) as custom:
        assert type(early) is STDLIB
        assert type(custom) is Custom
        assert early.submit(square, 2).result(timeout=60) == 4
        assert custom.submit(square, 3).result(timeout=60) == 9


def test_bad_options_raise_before_anything_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown options, bad values and bad TRACEDPOOL_* variables raise at instrument()
    and leave the stdlib untouched."""
    with pytest.raises(TypeError, match="unknown option"):
        tracedpool.instrument(max_workers=3)
    with pytest.raises(ValueError, match="stall_action"):
        tracedpool.instrument(stall_action="explode")
    monkeypatch.setenv(N.ENV_STALL_TIMEOUT, "soon")
    with pytest.raises(ValueError, match=N.ENV_STALL_TIMEOUT):
        tracedpool.instrument()
    assert STDLIB.__dict__["__init__"] is STDLIB_INIT
    assert not tracedpool.is_instrumented()


def test_env_options_apply_to_instrumented_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACEDPOOL_STALL_ACTION and TRACEDPOOL_STALL_REPORT_DIR reach instrumented pools;
    an explicit option wins over the variable."""
    monkeypatch.setenv(N.ENV_STALL_ACTION, "break")
    monkeypatch.setenv(N.ENV_STALL_REPORT_DIR, "/tmp/tracedpool-test-reports")
    tracedpool.instrument(stall_report_dir="/tmp/elsewhere")
    with STDLIB(1, mp_context=multiprocessing.get_context("fork")) as pool:
        config = pool._tp_state.stall_config
        assert config.action == "break"
        assert str(config.report_dir) == "/tmp/elsewhere"


def test_a_patch_installed_over_ours_is_left_in_place(caplog: Any) -> None:
    """If something else wraps __init__ after us, uninstrument() leaves that chain alone
    and ours passes calls through to the stdlib from then on."""
    tracedpool.instrument(stall_timeout=None)
    ours = STDLIB.__dict__["__init__"]
    calls = []

    def theirs(self: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        ours(self, *args, **kwargs)

    STDLIB.__init__ = theirs  # type: ignore[method-assign]
    try:
        with caplog.at_level("WARNING", logger="tracedpool"):
            assert tracedpool.uninstrument()
        assert "replaced after" in caplog.text
        with STDLIB(1, mp_context=multiprocessing.get_context("fork")) as pool:
            assert type(pool) is STDLIB
            assert pool.submit(square, 4).result(timeout=60) == 16
        assert calls == [1]
    finally:
        STDLIB.__init__ = STDLIB_INIT  # type: ignore[method-assign]


def test_instrumented_stdlib_pool_captures_worker_logs(recorder: Any, start_method: str) -> None:
    """Under instrument(), a stdlib-built pool's task records reach the parent's logging
    with their task id and the trace and span of the task's worker-run span."""
    import logging

    import logtasks

    provider, exporter = recorder
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(logtasks.LOGGER)
    logger.addHandler(handler)
    try:
        assert tracedpool.instrument(tracer_provider=provider)
        ctx = multiprocessing.get_context(start_method)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            assert pool.submit(logtasks.info_and_warning, 4).result(timeout=60) == 4
            pool_id = pool.pool_id
    finally:
        logger.removeHandler(handler)
    (record,) = records  # the default level, WARNING: the info record stays in the worker
    assert record.getMessage() == "warning from task 4"
    run = next(
        s
        for s in spans_by_task(exporter.get_finished_spans())[f"{pool_id}:0"]
        if s.name == N.SPAN_WORKER_RUN
    )
    assert getattr(record, N.RECORD_TASK_ID) == f"{pool_id}:0"
    assert getattr(record, N.RECORD_TRACE_ID) == f"{run.context.trace_id:032x}"
    assert getattr(record, N.RECORD_SPAN_ID) == f"{run.context.span_id:016x}"
