"""Hostile inputs, each run side by side with the stdlib's pool where that says something:
the stdlib's outcome or better, never a hang, never a crash of the parent.

Pickling bombs in arguments (deep recursion, ``__reduce__`` raising ``BaseException``
subclasses) are rows of the fault table (tests/test_faults.py); here they are compared
with the stdlib. ``benchmarks/hostile.py`` runs the large-result case at full size.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from faults import (
    CrashOnDel,
    CustomBaseError,
    RaiseAtPickle,
    Unpicklable,
    bytes_of,
    crash_on_del_result,
    deeply_nested,
    identity,
    ignore_first,
)

from tracedpool import TracedBrokenProcessPool, TracedProcessPoolExecutor
from tracedpool._telemetry import names as N
from tracedpool.testing import spans_by_task, square, wait_for

CI_RESULT_BYTES = 64 * 1024 * 1024


def _stdlib(workers: int = 1) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _end(pool: ProcessPoolExecutor) -> None:
    """Shut a (possibly wedged) pool down without waiting on its workers: kill them, then
    wait for its manager thread. A pool forked while that thread still tears down would
    copy its wake-up lock held, and a stdlib worker then never exits
    (test_hangs.py::test_a_worker_forked_while_another_pool_is_locked_still_exits)."""
    manager = pool._executor_manager_thread  # type: ignore[attr-defined]
    for p in list((pool._processes or {}).values()):  # type: ignore[attr-defined]
        p.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(timeout=30)
        assert not manager.is_alive(), "the stdlib pool's manager outlived its killed workers"


def _outcome(future: concurrent.futures.Future[Any], timeout: float) -> tuple[str, Any]:
    try:
        return "result", future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return "pending", None
    except BaseException as e:
        return "raised", e


# -- pickling bombs ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # stdlib's
@pytest.mark.parametrize(
    "exc_type", [KeyboardInterrupt, GeneratorExit, SystemExit, CustomBaseError]
)
def test_reduce_raising_base_exception_fails_one_task_where_stdlib_wedges(
    exc_type: type[BaseException], make_pool: Any, recorder: Any
) -> None:
    """An argument whose __reduce__ raises a BaseException: the stdlib's feeder thread
    dies and that task and every later one wait for ever; tracedpool fails that task
    with a PicklingError naming the part, and the next task runs."""
    stdlib = _stdlib()
    try:
        bad = stdlib.submit(identity, RaiseAtPickle(exc_type))
        after = stdlib.submit(square, 3)
        stdlib_after = _outcome(after, timeout=1.0)
        stdlib_bad = _outcome(bad, timeout=0)
    finally:
        _end(stdlib)
    assert stdlib_after[0] == "pending" and stdlib_bad[0] == "pending"  # wedged

    provider, _ = recorder
    pool = make_pool(1, start="fork", tracer_provider=provider)
    bad = pool.submit(identity, RaiseAtPickle(exc_type))
    with pytest.raises(pickle.PicklingError, match=r"args\[0\]") as info:
        bad.result(timeout=30)
    assert exc_type.__name__ in str(info.value)
    assert pool.submit(square, 3).result(timeout=30) == 9


def test_deep_recursion_argument_fails_like_the_stdlib_but_located(make_pool: Any) -> None:
    """A 100,000-deep nested list: RecursionError while pickling, in both pools; both
    keep working; tracedpool's error says which argument."""
    nested = deeply_nested()
    stdlib = _stdlib()
    try:
        kind, err = _outcome(stdlib.submit(identity, 1, nested), timeout=30)
        assert kind == "raised" and isinstance(err, RecursionError)
        assert stdlib.submit(square, 2).result(timeout=30) == 4
    finally:
        stdlib.shutdown(wait=True)
    pool = make_pool(1, start="fork")
    with pytest.raises(RecursionError) as info:
        pool.submit(identity, 1, nested).result(timeout=30)
    assert getattr(info.value, "__tracedpool_fault__", (None, None))[:2] == (
        "feeder-serialize",
        "args[1]",
    )
    assert pool.submit(square, 2).result(timeout=30) == 4


# -- large results ------------------------------------------------------------------------------
def test_large_result_arrives_whole_in_both(make_pool: Any, recorder: Any) -> None:
    """A 64 MiB result (300 MiB in benchmarks/hostile.py) arrives whole from both pools;
    the span records its size, not its bytes."""
    stdlib = _stdlib()
    try:
        assert len(stdlib.submit(bytes_of, CI_RESULT_BYTES).result(timeout=60)) == CI_RESULT_BYTES
    finally:
        stdlib.shutdown(wait=True)
    provider, exporter = recorder
    pool = make_pool(1, start="fork", tracer_provider=provider)
    result = pool.submit(bytes_of, CI_RESULT_BYTES).result(timeout=60)
    assert len(result) == CI_RESULT_BYTES and result[:1] == b"x"
    del result
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    (sendback,) = [s for s in spans if s.name == N.SPAN_SENDBACK]
    assert sendback.attributes[N.ATTR_RESULT_BYTES] >= CI_RESULT_BYTES
    assert all(len(str(v)) < 4096 for s in spans for v in s.attributes.values())


# -- a worker that dies after sending its result -------------------------------------------------
@pytest.mark.breaks_pool
@pytest.mark.parametrize("how", ["exit", "segfault", "raise"])
@pytest.mark.parametrize("where", ["result", "argument"])
def test_del_crashing_worker_after_result_keeps_the_result(
    how: str, where: str, make_pool: Any, recorder: Any
) -> None:
    """A __del__ that kills the worker once the result was sent: the result is kept, as
    in the stdlib; the pool then breaks as the stdlib's does, naming the worker and its
    exit code or signal. A __del__ that only raises changes nothing."""

    def run(pool: Any) -> tuple[Any, tuple[str, Any]]:
        if where == "result":
            first = pool.submit(crash_on_del_result, how)
        else:
            first = pool.submit(ignore_first, CrashOnDel(how), 7)
        value = first.result(timeout=30)
        time.sleep(0.3)  # the worker has run __del__ by now
        try:
            second = pool.submit(square, 4)
        except BrokenProcessPool as e:
            return value, ("raised", e)
        return value, _outcome(second, timeout=30)

    stdlib = _stdlib()
    try:
        std_value, std_next = run(stdlib)
    finally:
        _end(stdlib)
    provider, _ = recorder
    pool = make_pool(1, start="fork", tracer_provider=provider)
    value, following = run(pool)

    assert type(value) is type(std_value)
    if where == "argument":
        assert value == std_value == 7
    if how == "raise":
        assert std_next == ("result", 16) and following == ("result", 16)
        return
    assert std_next[0] == "raised" and isinstance(std_next[1], BrokenProcessPool)
    assert following[0] == "raised"
    err = following[1]
    assert isinstance(err, TracedBrokenProcessPool), repr(err)
    if how == "exit":
        assert (err.exitcode, err.signal) == (3, None), str(err)
    else:
        assert (err.exitcode, err.signal) == (-11, "SIGSEGV"), str(err)
    assert err.worker_pid is not None and str(err.worker_pid) in str(err)


# -- done-callbacks -----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # stdlib's
@pytest.mark.parametrize("exc_type", [RuntimeError, SystemExit, KeyboardInterrupt])
def test_raising_done_callback_never_stops_the_pool(
    exc_type: type[BaseException],
    make_pool: Any,
    recorder: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A done-callback raising an Exception is logged and ignored by the stdlib; one
    raising SystemExit or KeyboardInterrupt kills the stdlib's manager thread and every
    later future waits for ever. tracedpool logs and ignores both; every task is traced."""

    def raising(_future: Any) -> None:
        raise exc_type("raised by a done-callback")

    def run(pool: Any) -> list[tuple[str, Any]]:
        first = pool.submit(square, 2)
        first.add_done_callback(raising)
        assert first.result(timeout=30) == 4
        time.sleep(0.2)  # the callback has run on the manager thread
        rest = [pool.submit(square, i) for i in range(5)]
        return [_outcome(f, timeout=1.0 if i == 0 else 0.1) for i, f in enumerate(rest)]

    stdlib = _stdlib()
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            std = run(stdlib)
    finally:
        _end(stdlib)
    if exc_type is RuntimeError:
        assert std == [("result", i * i) for i in range(5)]
    else:
        assert {kind for kind, _ in std} == {"pending"}  # the stdlib's pool is wedged

    provider, exporter = recorder
    pool = make_pool(1, start="fork", tracer_provider=provider)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        ours = run(pool)
    assert ours == [("result", i * i) for i in range(5)]
    assert any(exc_type.__name__ in (r.exc_text or r.getMessage()) for r in caplog.records)
    pool.shutdown(wait=True)
    assert len(spans_by_task(exporter.get_finished_spans())) == 6


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # stdlib's
def test_raising_done_callback_of_an_unpicklable_task_never_stops_the_feeder(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that fails to pickle is failed on the feeder thread, which runs its
    done-callbacks: one raising SystemExit ends the stdlib's feeder and wedges the pool.
    tracedpool logs it and keeps feeding."""

    def raising(_future: Any) -> None:
        raise SystemExit("raised by a done-callback")

    def run(pool: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
        assert pool.submit(square, 1).result(timeout=30) == 1
        bad = pool.submit(identity, Unpicklable())
        bad.add_done_callback(raising)
        after = pool.submit(square, 3)
        return _outcome(after, timeout=1.0), _outcome(bad, timeout=0.1)

    stdlib = _stdlib()
    try:
        std_after, std_bad = run(stdlib)
    finally:
        _end(stdlib)
    assert std_after[0] == "pending"  # the stdlib's feeder died
    pool = make_pool(1, start="fork")
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        after, bad = run(pool)
    assert after == ("result", 9)
    assert bad[0] == "raised" and isinstance(bad[1], TypeError)
    assert std_bad[0] == "raised" and isinstance(std_bad[1], TypeError)
    assert any("feeder thread" in r.getMessage() for r in caplog.records)


def test_done_callback_that_submits_chains_tasks(make_pool: Any, recorder: Any) -> None:
    """A done-callback that submits the next task (it runs on the manager thread) chains
    200 tasks to the end, as in the stdlib; one that submits after shutdown gets the
    stdlib's RuntimeError inside the callback, which is logged."""

    def chain(pool: Any, n: int) -> list[int]:
        results: list[int] = []
        finished = threading.Event()

        def next_one(future: Any) -> None:
            results.append(future.result())
            if len(results) < n:
                pool.submit(square, len(results)).add_done_callback(next_one)
            else:
                finished.set()

        pool.submit(square, 0).add_done_callback(next_one)
        assert finished.wait(60), f"chain stopped after {len(results)}"
        return results

    stdlib = _stdlib()
    try:
        expected = chain(stdlib, 200)
    finally:
        stdlib.shutdown(wait=True)
    provider, exporter = recorder
    pool = make_pool(2, start="fork", tracer_provider=provider)
    assert chain(pool, 200) == expected == [i * i for i in range(200)]
    late: list[BaseException] = []

    def submit_late(_future: Any) -> None:
        try:
            pool.submit(square, 1)
        except BaseException as e:
            late.append(e)

    last = pool.submit(square, 1)
    last.add_done_callback(submit_late)
    pool.shutdown(wait=True)
    assert last.result(timeout=0) == 1
    assert len(spans_by_task(exporter.get_finished_spans())) >= 201
    assert not late or "after shutdown" in str(late[0])


# -- many threads ---------------------------------------------------------------------------------
def test_submit_from_many_threads_at_once(make_pool: Any, recorder: Any) -> None:
    """16 threads x 500 submits released at once: every result right, every task id
    unique, and each task's span records its own argument and result."""
    provider, exporter = recorder
    pool = make_pool(2, start="fork", tracer_provider=provider, record_values=True)
    threads_n, per_thread = 16, 500
    barrier = threading.Barrier(threads_n)
    futures: dict[int, list[concurrent.futures.Future[Any]]] = {}

    def submitter(k: int) -> None:
        barrier.wait(30)
        futures[k] = [pool.submit(square, k * per_thread + i) for i in range(per_thread)]

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    for k, fs in futures.items():
        assert [f.result(timeout=60) for f in fs] == [
            (k * per_thread + i) ** 2 for i in range(per_thread)
        ]
    pool.shutdown(wait=True)

    # shutdown() waits for the span backlog at most 2 s; on a loaded box building 48,000
    # spans through a SimpleSpanProcessor takes longer. Wait for it (bounded): nothing may
    # be dropped, only late.
    def tasks_done() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]

    wait_for(lambda: len(tasks_done()) >= threads_n * per_thread, 120)
    assert pool.stats()["span_records_dropped"] == 0
    tasks = tasks_done()
    ids = [s.attributes[N.ATTR_TASK_ID] for s in tasks]
    assert len(ids) == len(set(ids)) == threads_n * per_thread
    for s in tasks:  # the record matched to each task is that task's own
        x = int(str(s.attributes[N.ATTR_ARGS_REPR]).strip("(),{} ").split(",")[0])
        assert s.attributes[N.ATTR_RESULT_REPR] == repr(x * x), dict(s.attributes)


def _shutdown_racing_submit(pool: Any, delay: float, wait_timeout: float) -> dict[str, Any]:
    """Four threads submit until refused while this one calls shutdown(wait=False,
    cancel_futures=True); then every future must be seen done by wait()."""
    futures: list[concurrent.futures.Future[Any]] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def submitter() -> None:
        go.wait(10)
        while True:
            try:
                futures.append(pool.submit(square, 3))
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    deadline = time.monotonic() + 10
    while len(futures) < 200 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for t in threads:
        t.join(30)
    hung = sum(t.is_alive() for t in threads)
    done, not_done = concurrent.futures.wait(futures, timeout=wait_timeout)
    for f in not_done:  # the stdlib's un-notified cancellations: notify, to clean up
        if f.cancelled():
            f.set_running_or_notify_cancel()
    pool.shutdown(wait=True)
    # shutdown(wait=False) dropped the manager (3.10), which may still be reaping the
    # workers: give them time, reading each exit code again (a waitpid race can answer
    # None once).
    deadline = time.monotonic() + 30
    while any(p.exitcode is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "submit_hung": hung,
        "futures": len(futures),
        "unseen": len(not_done),
        "cancelled": sum(f.cancelled() for f in done),
        "wrong": sum(1 for f in done if not f.cancelled() and f.result() != 9),
        "errors": errors,
        "workers_left": sum(p.exitcode is None for p in processes),
    }


@pytest.mark.breaks_pool  # shut down inside the test
def test_shutdown_nowait_cancel_racing_submit(recorder: Any) -> None:
    """shutdown(wait=False, cancel_futures=True) while four threads submit: no hang,
    every future done or cancelled and seen so by wait(), and submit() raises only the
    stdlib's 'cannot schedule new futures after shutdown'. (The stdlib leaves the
    cancelled futures un-notified, gh-136655: wait() and as_completed() never see them.)"""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    std = _shutdown_racing_submit(ProcessPoolExecutor(2, mp_context=ctx), 0.05, 2.0)
    # The stdlib's submit() never hangs either; its wait() misses the cancelled futures
    # (std["unseen"] > 0 on 3.11), which is what tracedpool must do better.
    assert std["submit_hung"] == 0 and std["wrong"] == 0

    provider, _ = recorder
    rng = random.Random(6)
    for _ in range(5):
        pool = TracedProcessPoolExecutor(2, mp_context=ctx, tracer_provider=provider)
        ours = _shutdown_racing_submit(pool, rng.uniform(0.0, 0.1), 60.0)
        assert (ours["submit_hung"], ours["unseen"], ours["wrong"]) == (0, 0, 0), ours
        assert ours["workers_left"] == 0, ours
        assert len(ours["errors"]) == 4
        for e in ours["errors"]:
            assert type(e) is RuntimeError and "after shutdown" in str(e), repr(e)
