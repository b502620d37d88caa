"""Nothing of the user's is kept past its task: once a future is done and its spans are
built, no callable, argument, result or exception the user passed is reachable from
tracedpool. Checked with weak references on real pools, under each start method, with
an SDK provider and without any.

The callables are pickled by reference, so they live at module level here. A closure
cannot be pickled by reference as it is; ``_closure_over`` builds a real one (a function
whose cell holds the object) and names it after the module-level ``closure_task``, which
is what the workers resolve when they unpickle it. The parent, where tracedpool keeps
its state, sees a genuine closure.
"""

from __future__ import annotations

import functools
import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faults import Unpicklable
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tracedpool._telemetry import names as N
from tracedpool.testing import square, wait_for


class Holder:
    """A user object that a task's callable or arguments reach."""

    def __init__(self, value: int = 1) -> None:
        self.value = value

    def method(self, x: int) -> int:
        return x + self.value


class Result:
    """A task's result: built in the worker, rebuilt by unpickling in the parent."""

    def __init__(self, value: int) -> None:
        self.value = value


class HolderError(Exception):
    """A task's exception, rebuilt by unpickling in the parent."""


def add_value(holder: Holder, x: int) -> int:
    return x + holder.value


def make_result(x: int) -> Result:
    return Result(x)


def raise_error(x: int) -> int:
    raise HolderError(f"task {x} failed")


def closure_task(x: int) -> int:
    """What a worker runs for ``_closure_over``'s closure (it is pickled under this name)."""
    return x + 1


def _closure_over(holder: Holder) -> Callable[[int], int]:
    def closure_task(x: int) -> int:
        return x + holder.value

    closure_task.__qualname__ = "closure_task"
    return closure_task


def _submitted(pool: Any, kind: str) -> tuple[weakref.ref[Any], Any]:
    """Submit one task of ``kind``; returns (a weak reference to the object that must not
    outlive the task, the outcome the caller is handed). The only strong references to
    that object are in this frame, which has returned by the time it is checked."""
    holder = Holder()
    ref: weakref.ref[Any] = weakref.ref(holder)
    if kind == "bound-method":
        return ref, pool.submit(holder.method, 1).result(timeout=60)
    if kind == "partial":
        return ref, pool.submit(functools.partial(add_value, holder), 1).result(timeout=60)
    if kind == "map":
        return ref, list(pool.map(holder.method, [1, 2], timeout=60))
    if kind == "closure":
        fn = _closure_over(holder)
        assert fn.__closure__ is not None
        module = sys.modules[__name__]
        stand_in = module.closure_task
        # Pickling by reference must find the very object under the module-level name.
        module.closure_task = fn  # type: ignore[attr-defined]
        try:
            return ref, pool.submit(fn, 1).result(timeout=60)
        finally:
            module.closure_task = stand_in  # type: ignore[attr-defined]
    if kind == "argument":
        return ref, pool.submit(add_value, holder, 1).result(timeout=60)
    if kind == "result":
        result = pool.submit(make_result, 1).result(timeout=60)
        return weakref.ref(result), None
    if kind == "exception":
        exc = pool.submit(raise_error, 1).exception(timeout=60)
        assert isinstance(exc, HolderError)
        return weakref.ref(exc), None
    if kind == "raised":
        # Raised by result(): its traceback then holds the frames it passed through.
        try:
            pool.submit(raise_error, 1).result(timeout=60)
        except HolderError as e:
            return weakref.ref(e), None
        raise AssertionError("the task did not fail")
    if kind == "pickling-fault":
        exc = pool.submit(holder.method, Unpicklable()).exception(timeout=60)
        assert exc is not None
        return ref, None
    raise AssertionError(kind)


KINDS = [
    "bound-method",
    "partial",
    "closure",
    "map",
    "argument",
    "result",
    "exception",
    "raised",
    "pickling-fault",
]


@pytest.fixture(params=["sdk", "no-sdk"])
def provider(request: pytest.FixtureRequest, recorder: Any) -> Iterator[Any]:
    """An SDK provider recording in memory, or None (no SDK: the global provider is the
    API's default)."""
    if request.param == "no-sdk":
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        yield None
        return
    yield recorder


def _unsampled() -> Any:
    """A current span that is not sampled: the default (parent-based) sampler drops the
    tasks submitted under it, which then travel unwrapped."""
    ctx = SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=TraceFlags(0))
    return trace.use_span(NonRecordingSpan(ctx))


def _dead(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_of_the_task_outlives_it(
    make_pool: Any, start_method: str, provider: Any, kind: str
) -> None:
    """Once a task's future is done and its spans are built, the objects it was given
    (callable, its bound object, partial arguments and closure cells, arguments) and
    the ones it produced (result, exception) are not kept by the pool."""
    recording = provider is not None
    if recording:
        pool = make_pool(1, start=start_method, tracer_provider=provider[0])
    else:
        pool = make_pool(1, start=start_method)
    ref, _outcome = _submitted(pool, kind)
    if kind == "pickling-fault":
        # The stdlib's feeder thread keeps the last item it failed to pickle until it
        # feeds the next one (plain ProcessPoolExecutor too): feed it one, untraced, so
        # that only what tracedpool keeps is left to find.
        with _unsampled():
            assert pool.submit(square, 3).result(timeout=60) == 9
    if recording:
        # Every sampled task's spans are built (map's two items are two tasks).
        exporter = provider[1]
        tasks = 2 if kind == "map" else 1
        assert wait_for(
            lambda: sum(s.name == N.SPAN_TASK for s in exporter.get_finished_spans()) >= tasks,
            30,
        )
    assert wait_for(lambda: _dead(ref), 5), (
        f"{kind}: still referenced by {[type(r).__name__ for r in gc.get_referrers(ref())]}"
    )
