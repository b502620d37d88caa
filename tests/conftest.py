"""Shared fixtures: real pools under each start method, a recording tracer provider, and a
health check after each test that does not deliberately break its pool."""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import unprivileged

import tracedpool
from tracedpool import TracedProcessPoolExecutor
from tracedpool.testing import assert_pool_healthy, recording_provider

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def recorder() -> tuple[Any, Any]:
    """(provider, exporter): an SDK provider recording into memory."""
    return recording_provider()


@pytest.fixture(scope="session")
def nobody() -> Iterator[unprivileged.Unprivileged]:
    """This Python, tracedpool and its dependencies, runnable as the nobody user (built
    once per session, in a world-readable temporary directory); skips where switching
    user is impossible (not root, no setpriv)."""
    reason = unprivileged.why_not()
    if reason is not None:
        pytest.skip(reason)
    runtime, root = unprivileged.build(Path(tracedpool.__file__).parent)
    yield runtime
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_pool(request: pytest.FixtureRequest) -> Iterator[Callable[..., TracedProcessPoolExecutor]]:
    """Create traced pools; afterwards check they still work (unless marked breaks_pool)
    and shut them down, killing any worker left behind."""
    pools: list[TracedProcessPoolExecutor] = []

    def make(*args: Any, start: str | None = None, **kwargs: Any) -> TracedProcessPoolExecutor:
        if start is not None:
            kwargs["mp_context"] = multiprocessing.get_context(start)
        pool = TracedProcessPoolExecutor(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    breaks = request.node.get_closest_marker("breaks_pool") is not None
    for pool in pools:
        try:
            if not (breaks or pool._broken or pool._shutdown_thread):  # type: ignore[attr-defined]
                assert_pool_healthy(pool)
        finally:
            procs = list((pool._processes or {}).values())  # type: ignore[attr-defined]
            pool.shutdown(wait=True, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.kill()
