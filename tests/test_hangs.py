"""Known stdlib hangs a subclass can fix: each must finish, bounded, under tracedpool."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from typing import Any

import pytest
from faults import ExitAtPickle, getpid, identity, raise_error, sleep_then

from tracedpool.testing import square

needs_max_tasks = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="max_tasks_per_child is new in 3.11"
)


def test_sysexit_in_reduce_fails_only_that_task(make_pool: Any, start_method: str) -> None:
    """An argument whose __reduce__ raises SystemExit (kills the stdlib's feeder thread and
    wedges the pool) fails that future with a PicklingError naming args[1]; the pool works."""
    import pickle

    pool = make_pool(2, start=start_method)
    bad = pool.submit(identity, 1, ExitAtPickle())
    with pytest.raises(pickle.PicklingError, match=r"args\[1\]"):
        bad.result(timeout=30)
    assert [pool.submit(square, i).result(timeout=30) for i in range(5)] == [0, 1, 4, 9, 16]
    again = pool.submit(identity, ExitAtPickle())
    with pytest.raises(pickle.PicklingError, match=r"args\[0\]"):
        again.result(timeout=30)
    assert pool.submit(square, 5).result(timeout=30) == 25


@needs_max_tasks
def test_gh115634_max_tasks_per_child_backlog_completes(make_pool: Any) -> None:
    """gh-115634: with max_tasks_per_child and a backlog the stdlib strands the queue."""
    pool = make_pool(1, start="spawn", max_tasks_per_child=2)
    futures = [pool.submit(getpid) for _ in range(10)]
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    assert len({f.result() for f in done}) == 5  # a fresh worker every two tasks


@pytest.mark.breaks_pool  # shut down inside the test
def test_gh116685_unpicklable_items_with_cancel_futures(make_pool: Any) -> None:
    """gh-116685: unpicklable items + shutdown(cancel_futures=True) hung shutdown()."""
    # A race in the stdlib: the reproducer from the issue hangs about 3 runs in 10 there.
    for _ in range(20):
        pool = make_pool(1)
        futures = [pool.submit(lambda: 123) for _ in range(10)]
        t = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True})
        t.start()
        t.join(20)
        assert not t.is_alive(), "shutdown(cancel_futures=True) hung"
        assert all(f.done() for f in futures)


@needs_max_tasks
@pytest.mark.breaks_pool  # shut down inside the test
def test_gh119592_shutdown_nowait_with_max_tasks_completes(make_pool: Any) -> None:
    """gh-119592/gh-132969: shutdown(wait=False) with max_tasks_per_child stranded the
    remaining futures (the manager thread died with TypeError)."""
    pool = make_pool(1, start="spawn", max_tasks_per_child=1)
    futures = [pool.submit(sleep_then, i, 0.2) for i in range(3)]
    pool.shutdown(wait=False)
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    assert sorted(f.result() for f in done) == [0, 1, 2]


@pytest.mark.breaks_pool  # shut down inside the test
def test_gh136655_as_completed_finishes_after_cancel_futures(make_pool: Any) -> None:
    """gh-136655: shutdown(cancel_futures=True) left as_completed() waiting for ever."""
    pool = make_pool(2)
    futures = [pool.submit(sleep_then, i, 0.05) for i in range(1, 16)]
    futures.insert(2, pool.submit(raise_error, "stop"))
    seen = 0
    for future in concurrent.futures.as_completed(futures, timeout=60):
        seen += 1
        if future.exception() is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    assert seen == len(futures)


@pytest.mark.breaks_pool
def test_worker_killed_while_pool_busy_reports_and_shuts_down(make_pool: Any) -> None:
    """A SIGKILLed worker breaks the pool promptly and shutdown() returns."""
    import signal

    from faults import kill_self

    pool = make_pool(2)
    victim = pool.submit(kill_self, signal.SIGKILL)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        victim.result(timeout=30)
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 10


def _wakeup_locks() -> bool:
    import concurrent.futures.process as cfp

    wakeup = cfp._ThreadWakeup()
    try:
        return hasattr(wakeup, "_lock")
    finally:
        wakeup.close()


@pytest.mark.skipif(
    not _wakeup_locks(), reason="this CPython's pool wake-up has no lock (before gh-125451)"
)
def test_a_worker_forked_while_another_pool_is_locked_still_exits(make_pool: Any) -> None:
    """A worker forked while another of the parent's pools held its wake-up lock (a
    submit to it, or its teardown, in another thread) inherits the lock held. At exit the
    stdlib's worker wakes every pool it inherited, so it waits on that lock forever and
    the shutdown that joins it never returns (seen in CI: a stdlib pool tearing down
    while the next test's pool forked). tracedpool's workers forget the owner's pools."""
    import multiprocessing

    other = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("fork")
    )
    assert other.submit(square, 2).result(timeout=30) == 4  # its wake-up is registered
    lock = other._executor_manager_thread_wakeup._lock  # type: ignore[attr-defined]
    stdlib = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("fork")
    )
    with lock:  # held in the parent while both pools fork their workers
        pool = make_pool(1, start="fork")
        assert pool.submit(square, 3).result(timeout=30) == 9
        assert stdlib.submit(square, 3).result(timeout=30) == 9
    std_workers = list(stdlib._processes.values())  # type: ignore[attr-defined]
    std_manager = stdlib._executor_manager_thread  # type: ignore[attr-defined]
    workers = list(pool._processes.values())  # type: ignore[attr-defined]
    # Each pool's manager joins (and reaps) its workers; a second joiner here would race
    # it for the exit status, so the shutdowns are what is waited on.
    closing = threading.Thread(target=pool.shutdown, name="shutdown")
    try:
        stdlib.shutdown(wait=False)
        closing.start()
        closing.join(timeout=30)
        assert not closing.is_alive(), "tracedpool's shutdown is still waiting on its worker"
        assert [p.exitcode for p in workers] == [0]
        # The control: the stdlib's worker, forked the same way, waits on its copy of the
        # lock, and its manager on it; a hang has no end, so 2 s past the other shows it.
        std_manager.join(timeout=2)
        assert std_manager.is_alive() and std_workers[0].is_alive()
    finally:
        for p in std_workers + workers:
            if p.is_alive():
                p.kill()
        if closing.ident is not None:
            closing.join(timeout=30)
        std_manager.join(timeout=30)
        other.shutdown(wait=True)
