"""Chaos under load, shortened from benchmarks/chaos.py with the same checks, and the
regressions it found: real workers killed, crashed, stopped and resumed mid-stream."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import importlib.util
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from faults import sleep_then

from tracedpool import TracedBrokenProcessPool
from tracedpool._pool.cpython import snapshot_items


def _load_chaos() -> Any:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"
    spec = importlib.util.spec_from_file_location("tracedpool_bench_chaos", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()

# Shorter than the script's: a 1 s stall timeout, every planned action forced.
CI = chaos.Settings(
    stall_timeout=1.0, gap=(0.05, 0.4), tail=0.2, settle=30.0, budget=90.0, inflight=12
)


@pytest.mark.breaks_pool
@pytest.mark.parametrize(
    ("stall_action", "must"),
    [("report", ("kill", "stop-kill", "stop-all")), ("break", ("stop-all", "kill"))],
)
def test_chaos_round_every_future_resolves_and_names_the_signal(
    start_method: str, stall_action: str, must: tuple[str, ...], tmp_path: Path
) -> None:
    """Under load, SIGKILL/SIGSEGV/SIGSTOP/SIGCONT at random moments: every future gets
    its result or a breakage naming the pid and signal sent, stopped workers are reported
    (and broken under "break"), a new pool takes the load, nothing hangs."""
    settings = dataclasses.replace(CI, actions=(len(must), len(must)))
    result = chaos.run_round(
        0,
        seed=0,  # other plans: python benchmarks/chaos.py --seed N
        settings=settings,
        report_dir=tmp_path,
        start_method=start_method,
        stall_action=stall_action,
        must=must,
    )
    detail = "\n".join([str(result.plan), *result.hung, *result.errors])
    assert result.ok, detail
    assert result.results > 0 and result.broken > 0, detail
    assert result.pools >= 2, detail  # a kill broke a pool and a new one took over
    assert result.stall_reports >= 1, detail
    if stall_action == "break":
        assert result.stalled > 0, detail


@pytest.mark.breaks_pool
def test_breakage_racing_submits_fails_every_future_located(
    make_pool: Any, start_method: str
) -> None:
    """A worker killed while three threads keep submitting: every future, and every
    submit() refused, carries the pid and signal; none gets the stdlib's anonymous error.
    (The pool used to take its inventory before refusing new work: tens of futures per
    breakage got a plain BrokenProcessPool.)"""
    pool = make_pool(2, start=start_method)
    futures: list[concurrent.futures.Future[Any]] = []
    refused: list[BaseException] = []
    started = threading.Event()

    def submit_until_broken() -> None:
        while True:
            try:
                futures.append(pool.submit(sleep_then, 1, 0.001))
            except BaseException as e:
                refused.append(e)
                return
            started.set()
            time.sleep(0.0005)

    threads = [threading.Thread(target=submit_until_broken) for _ in range(3)]
    for t in threads:
        t.start()
    assert started.wait(30)
    deadline = time.monotonic() + 30
    while len(pool._processes) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    victim = next(iter(pool._processes))
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    errors = [f.exception() for f in done if f.exception() is not None]
    assert errors
    for e in [*errors, *refused]:
        assert isinstance(e, TracedBrokenProcessPool), repr(e)
        assert (e.worker_pid, e.signal) == (victim, "SIGKILL"), str(e)


def test_snapshot_items_survives_a_dict_changed_by_the_gc() -> None:
    """Listing a shared dict survives it changing mid-listing. Up to 3.11 a garbage
    collection can run while list(d.items()) builds its tuples; the finalizers it calls
    can change the dict (or let another thread run, as submit() and the manager do):
    list() then raises RuntimeError, which once escaped submit() under chaos."""
    shared: dict[int, int] = {i: i for i in range(2000)}

    class ChangesTheDict:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            shared[len(shared) + 10_000] = 0

    def with_garbage_pending(listing: Any) -> Any:
        hold = [(i, -i) for i in range(5000)]  # empty the 2-tuple free list
        gc.collect()
        thresholds = gc.get_threshold()
        gc.disable()
        try:
            for _ in range(20):
                ChangesTheDict()
            gc.set_threshold(100)  # the next collection falls mid-listing
            gc.enable()
            try:
                return listing()
            except RuntimeError as e:
                return e
        finally:
            gc.enable()
            gc.set_threshold(*thresholds)
            del hold

    plain = with_garbage_pending(lambda: list(shared.items()))
    if sys.version_info < (3, 12):  # 3.12 runs collections only between bytecodes
        assert isinstance(plain, RuntimeError), "the hazard did not show: test is moot"
    items = with_garbage_pending(lambda: snapshot_items(shared))
    assert isinstance(items, list) and len(items) >= 2000


@pytest.mark.breaks_pool
def test_broken_pool_ends_a_stopped_worker(make_pool: Any) -> None:
    """A pool that breaks while another worker is stopped (SIGSTOP) ends that worker too:
    shutdown() returns and no worker is left behind. The stdlib's SIGTERM stays pending
    in a stopped process and its join then waits until someone resumes it."""
    pool = make_pool(2, start="fork")
    futures = [pool.submit(sleep_then, i, 0.01) for i in range(50)]
    deadline = time.monotonic() + 30
    while len(pool._processes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped, killed = list(pool._processes)
    processes = list(pool._processes.values())
    os.kill(stopped, signal.SIGSTOP)
    try:
        os.kill(killed, signal.SIGKILL)
        for f in futures:
            f.exception(timeout=60)  # resolved, with its result or the breakage
        with pytest.raises(BrokenProcessPool):
            futures[-1].result(timeout=0)
        t = threading.Thread(target=pool.shutdown, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "shutdown() waited for the stopped worker"
        assert all(p.exitcode is not None for p in processes)
        assert processes[0].exitcode == -signal.SIGTERM
    finally:
        try:
            os.kill(stopped, signal.SIGKILL)
        except OSError:
            pass
