"""Drop-in behaviour: the stdlib's results, exception types, causes and semantics."""

from __future__ import annotations

import concurrent.futures
import inspect
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from faults import (
    ErrorAtUnpickle,
    failing_initializer,
    identity,
    raise_error,
    raise_not_rebuildable,
    return_instance,
    sleep_then,
)

from tracedpool import ResultUnpicklingError, TracedProcessPoolExecutor
from tracedpool.testing import square


def test_is_a_process_pool_executor() -> None:
    """Subclass of the stdlib class, with its constructor parameters for this Python."""
    assert issubclass(TracedProcessPoolExecutor, ProcessPoolExecutor)
    ours = inspect.signature(TracedProcessPoolExecutor.__init__).parameters
    for name in inspect.signature(ProcessPoolExecutor.__init__).parameters:
        assert name in ours or "kwargs" in ours


def test_results_map_and_aliasing(make_pool: Any, start_method: str) -> None:
    """Same results as the stdlib, map order kept, and f(x, x) receives one object."""
    pool = make_pool(2, start=start_method)
    assert pool.submit(square, 12).result(timeout=60) == 144
    assert list(pool.map(square, range(20), chunksize=3)) == [i * i for i in range(20)]
    shared = [1, 2, 3]
    (a, b), _ = pool.submit(identity, shared, shared).result(timeout=60)
    assert a is b
    assert pool.submit(identity, 1, key="v").result(timeout=60) == ((1,), {"key": "v"})


def test_user_exception_keeps_remote_traceback_cause(make_pool: Any) -> None:
    """A task's own exception keeps its type, args and the stdlib's remote traceback."""
    pool = make_pool(1)
    with pytest.raises(RuntimeError) as info:
        pool.submit(raise_error, "boom").result(timeout=60)
    assert info.value.args == ("boom",)
    cause = info.value.__cause__
    assert type(cause) is concurrent.futures.process._RemoteTraceback
    assert "raise_error" in cause.tb


def test_map_timeout_and_cancel_futures(make_pool: Any) -> None:
    """map(timeout=) and shutdown(cancel_futures=True) behave as the stdlib's."""
    pool = make_pool(1)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(pool.map(sleep_then, [1, 2], [2, 2], timeout=0.5))
    pool2 = make_pool(1)
    futures = [pool2.submit(sleep_then, i, 0.2) for i in range(10)]
    pool2.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futures)
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool2.submit(square, 1)


def test_initializer_runs_in_every_worker(make_pool: Any, start_method: str) -> None:
    """The user's initializer and initargs still run (before tracedpool's own set-up)."""
    pool = make_pool(1, start=start_method, initializer=sys.setrecursionlimit, initargs=(4321,))
    assert pool.submit(sys.getrecursionlimit).result(timeout=60) == 4321


@pytest.mark.breaks_pool
def test_initializer_failure_is_named(make_pool: Any) -> None:
    """A failing initializer gives BrokenProcessPool that says so, with its traceback."""
    pool = make_pool(1, initializer=failing_initializer)
    with pytest.raises(BrokenProcessPool) as info:
        pool.submit(square, 1).result(timeout=60)
    exc = info.value
    assert exc.reason == "initializer-failed"  # type: ignore[attr-defined]
    assert "failing_initializer" in str(exc) and "bad config" in str(exc)
    assert "bad config in initializer" in str(exc.__cause__)


@pytest.mark.breaks_pool
def test_submit_after_broken_names_the_cause(make_pool: Any) -> None:
    """submit() on a broken pool raises BrokenProcessPool carrying the original cause."""
    import signal

    from faults import kill_self

    pool = make_pool(1)
    with pytest.raises(BrokenProcessPool):
        pool.submit(kill_self, signal.SIGKILL).result(timeout=60)
    with pytest.raises(BrokenProcessPool, match="SIGKILL") as info:
        pool.submit(square, 1)
    assert "not usable anymore" in str(info.value)


@pytest.mark.breaks_pool
def test_bystanders_and_queued_tasks_are_told_apart(make_pool: Any) -> None:
    """Every future a breakage fails gets its own exception saying its part in it."""
    import signal

    from faults import kill_self

    pool = make_pool(2)
    bystander = pool.submit(sleep_then, 1, 5)
    import time

    time.sleep(0.5)  # the bystander is running on one worker
    # The victim waits before dying: submitting the queued tasks must not race the
    # breakage (a fast manager may otherwise break the pool before they are in).
    victim = pool.submit(kill_self, signal.SIGKILL, 1.0)
    queued = [pool.submit(sleep_then, i, 5) for i in range(4)]
    roles = {}
    for name, f in [("victim", victim), ("bystander", bystander), *[("queued", q) for q in queued]]:
        with pytest.raises(BrokenProcessPool) as info:
            f.result(timeout=60)
        roles.setdefault(name, set()).add(info.value.task_role)  # type: ignore[attr-defined]
        assert info.value.signal == "SIGKILL"  # type: ignore[attr-defined]
    assert roles["victim"] == {"culprit"}
    assert roles["bystander"] == {"bystander"}
    assert "queued" in roles["queued"]


@pytest.mark.breaks_pool
def test_result_unpickle_breaks_pool_by_default(make_pool: Any) -> None:
    """By default a result that cannot be unpickled breaks the pool, as in the stdlib."""
    pool = make_pool(2)
    with pytest.raises(BrokenProcessPool) as info:
        pool.submit(return_instance, ErrorAtUnpickle).result(timeout=60)
    assert "ErrorAtUnpickle cannot be rebuilt" in str(info.value.__cause__)


def test_rescue_unpicklable_results_fails_only_that_future(make_pool: Any) -> None:
    """Opt-in: only the task whose result cannot be unpickled fails; the pool lives on."""
    pool = make_pool(2, rescue_unpicklable_results=True)
    bystander = pool.submit(sleep_then, "ok", 0.5)
    with pytest.raises(ResultUnpicklingError, match="result") as info:
        pool.submit(return_instance, ErrorAtUnpickle).result(timeout=60)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert "ErrorAtUnpickle cannot be rebuilt" in str(info.value.__cause__)
    with pytest.raises(ResultUnpicklingError, match="exception"):
        pool.submit(raise_not_rebuildable).result(timeout=60)
    assert bystander.result(timeout=60) == "ok"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initializer": 3}, "initializer must be a callable"),
        ({"name": 3}, "name must be a str"),
        ({"tracer_provider": object()}, "tracer_provider must be"),
        ({"rescue_unpicklable_results": "yes"}, "rescue_unpicklable_results must be a bool"),
        ({"record_values": "yes"}, "record_values must be"),
        ({"record_exception_messages": 1}, "record_exception_messages must be a bool"),
    ],
)
def test_bad_options_raise_at_construction(kwargs: dict[str, Any], error: str) -> None:
    """Bad configuration raises at construction, naming the rule."""
    with pytest.raises(TypeError, match=error):
        TracedProcessPoolExecutor(1, **kwargs)


def test_bad_env_var_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed TRACEDPOOL_* variable is an error that names the variable."""
    monkeypatch.setenv("TRACEDPOOL_RECORD_VALUES", "maybe")
    with pytest.raises(ValueError, match="TRACEDPOOL_RECORD_VALUES"):
        TracedProcessPoolExecutor(1)


def test_stdlib_errors_are_unchanged() -> None:
    """The stdlib's own argument errors come through as they are."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        TracedProcessPoolExecutor(0)
    import multiprocessing

    with pytest.raises(ValueError, match="max_tasks_per_child"):
        TracedProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=1
        )


def test_unknown_internals_degrade_without_breaking_the_pool(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, recorder: Any
) -> None:
    """If the stdlib internals are not the ones tracedpool knows, the pool still works,
    submit and completion are still traced, and tracedpool says so once."""
    from tracedpool._pool import cpython as _cpython
    from tracedpool._pool import executor as _executor

    monkeypatch.setattr(_cpython, "install_queue_hooks", lambda executor, observer: False)
    monkeypatch.setattr(_executor, "_degraded_warned", False)
    provider, exporter = recorder
    with caplog.at_level("WARNING", logger="tracedpool"):
        with TracedProcessPoolExecutor(2, tracer_provider=provider) as pool:
            assert [pool.submit(square, i).result(timeout=60) for i in range(5)] == [
                0,
                1,
                4,
                9,
                16,
            ]
            with pytest.raises(RuntimeError):
                pool.submit(raise_error, "boom").result(timeout=60)
        with TracedProcessPoolExecutor(1, tracer_provider=provider) as pool:
            assert pool.submit(square, 2).result(timeout=60) == 4
    warnings = [r for r in caplog.records if "internals" in r.getMessage()]
    assert len(warnings) == 1
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"tracedpool.task", "tracedpool.submit"} <= names


@pytest.mark.breaks_pool
def test_sigkilled_worker_reports_last_sampled_rss(make_pool: Any) -> None:
    """After thousands of untraced tasks, a SIGKILLed worker is still found running its
    task, and its error carries its last sampled RSS, the OOM evidence."""
    import signal

    from faults import kill_self

    pool = make_pool(1)
    # Enough tasks that the status pipe (64 KiB, ~21 bytes a task) would overflow if the
    # manager did not drain it as it goes: the victim must still be found.
    futures = [pool.submit(square, i) for i in range(4000)]
    assert [f.result(timeout=60) for f in futures][-1] == 3999**2
    with pytest.raises(BrokenProcessPool) as info:
        pool.submit(kill_self, signal.SIGKILL).result(timeout=60)
    assert "last sampled RSS was" in str(info.value)
    assert info.value.signal == "SIGKILL"  # type: ignore[attr-defined]
    assert info.value.task_role == "culprit"  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["none", "unpicklable", "sysexit"])
def test_pool_objects_are_freed_without_the_gc(fault: str, recorder: Any) -> None:
    """After shutdown, the executor, its manager thread and call queue are freed by
    reference counting alone, as the stdlib's are (the stdlib's exit hook keys stale
    wakeups on manager threads weakly, and CPython's tests count dangling threads)."""
    import concurrent.futures.process as cfp
    import gc
    import threading
    import weakref

    from faults import ExitAtPickle, Unpicklable

    provider, _exporter = recorder
    gc.collect()
    gc.disable()
    try:
        pool = TracedProcessPoolExecutor(2, tracer_provider=provider)
        assert pool.submit(square, 3).result(timeout=60) == 9
        if fault != "none":
            bad = Unpicklable() if fault == "unpicklable" else ExitAtPickle()
            failed = pool.submit(identity, bad)
            with pytest.raises(Exception):  # noqa: B017 - the type differs per fault
                failed.result(timeout=60)
            # The stdlib's own pickling error holds the dead feeder's frames (and so the
            # queue) for as long as the caller keeps it: let it go, as the stdlib needs.
            del failed
        assert pool.submit(square, 4).result(timeout=60) == 16
        refs = [
            weakref.ref(pool),
            weakref.ref(pool._executor_manager_thread),  # type: ignore[attr-defined]
            weakref.ref(pool._call_queue),  # type: ignore[attr-defined]
            weakref.ref(pool._result_queue),  # type: ignore[attr-defined]
            weakref.ref(pool._tp_state),  # type: ignore[attr-defined]
        ]
        pool.shutdown(wait=True)
        del pool
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"kept alive: {alive}"
        assert not [t for t in threading.enumerate() if t.name.startswith("tracedpool-")]
        assert refs[1] not in [weakref.ref(t) for t in cfp._threads_wakeups]
    finally:
        gc.enable()


def test_own_threads_failing_to_start_never_fail_submit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, recorder: Any
) -> None:
    """At interpreter shutdown threads cannot start: tracedpool's emitter and watcher
    then go without, with a warning, and submit() still works."""
    import threading
    import types

    from tracedpool import _threads

    class NoStart(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")

    # Only tracedpool's own threads are refused; the pool's stdlib threads start.
    monkeypatch.setattr(_threads, "threading", types.SimpleNamespace(Thread=NoStart))
    provider, _exporter = recorder
    with (
        caplog.at_level("WARNING", logger="tracedpool"),
        TracedProcessPoolExecutor(1, tracer_provider=provider, stall_timeout=5) as pool,
    ):
        assert pool.submit(square, 5).result(timeout=60) == 25
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "spans are dropped" in messages and "no stall detection" in messages
