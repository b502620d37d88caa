"""Metrics: real pools, read through the SDK's InMemoryMetricReader."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from faults import ErrorAtPickle, identity, kill_self, sleep_then, stop_self_later
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tracedpool._telemetry import emit as _emit
from tracedpool._telemetry import metrics as _metrics
from tracedpool._telemetry import names as N
from tracedpool.testing import recording_provider, square, wait_for


def _meter() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points, from one collection."""
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def _counter(points: dict[str, list[Any]], name: str, **attrs: Any) -> int:
    return sum(
        p.value
        for p in points.get(name, [])
        if all(p.attributes.get(k) == v for k, v in attrs.items())
    )


def test_stage_durations_and_sizes_per_traced_task(make_pool: Any, start_method: str) -> None:
    """Each traced task records its duration, one duration per stage, and its payload
    and result sizes; the run stage holds the task's own time."""
    tracer_provider, _ = recording_provider()
    meter_provider, reader = _meter()
    pool = make_pool(
        2,
        start=start_method,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        name="metrics",
    )
    futures = [pool.submit(sleep_then, i, 0.05) for i in range(4)]
    assert [f.result(timeout=60) for f in futures] == [0, 1, 2, 3]
    pool.shutdown(wait=True)
    points = _points(reader)
    fname = "faults.sleep_then"
    (task,) = points[N.METRIC_TASK_DURATION]
    assert task.count == 4
    assert task.attributes == {N.ATTR_CODE_FUNCTION: fname, N.ATTR_POOL_NAME: "metrics"}
    stages = {p.attributes[N.ATTR_TASK_STAGE]: p for p in points[N.METRIC_STAGE_DURATION]}
    assert set(stages) == set(N.METRIC_STAGES)
    for stage, point in stages.items():
        assert point.count == 4, stage
        assert point.attributes[N.ATTR_CODE_FUNCTION] == fname
        assert point.min >= 0, stage
    assert stages["run"].min >= 0.045
    # the stages partition the task's life (up to sub-millisecond gaps and clock reads)
    assert sum(p.sum for p in stages.values()) <= task.sum + 0.01
    assert sum(p.sum for p in stages.values()) >= stages["run"].sum
    (payload,) = points[N.METRIC_PAYLOAD_SIZE]
    (result,) = points[N.METRIC_RESULT_SIZE]
    assert payload.count == result.count == 4
    assert payload.min > 0 and result.min > 0


def test_gauges_show_pending_running_and_live_workers(make_pool: Any) -> None:
    """While one worker runs a task and two wait: running 1, pending 2, live workers 1;
    all zero once idle and shut down. Untraced pools are observed too."""
    meter_provider, reader = _meter()
    pool = make_pool(1, start="fork", meter_provider=meter_provider, name="gauges")
    futures = [pool.submit(sleep_then, i, 1.5) for i in range(3)]

    def observed() -> tuple[int, int, int]:
        points = _points(reader)
        return (
            _counter(points, N.METRIC_TASKS_PENDING, **{N.ATTR_POOL_NAME: "gauges"}),
            _counter(points, N.METRIC_TASKS_RUNNING, **{N.ATTR_POOL_NAME: "gauges"}),
            _counter(points, N.METRIC_WORKERS_LIVE, **{N.ATTR_POOL_NAME: "gauges"}),
        )

    assert wait_for(lambda: observed() == (2, 1, 1), seconds=20), observed()
    for f in futures:
        f.result(timeout=60)
    assert wait_for(lambda: observed()[:2] == (0, 0), seconds=20), observed()
    pool.shutdown(wait=True)
    assert observed() == (0, 0, 0)


@pytest.mark.breaks_pool
def test_faults_and_broken_pools_are_counted_even_untraced(make_pool: Any) -> None:
    """A feeder pickling fault and a killed worker are counted by stage and reason, with
    no tracer provider at all."""
    meter_provider, reader = _meter()
    pool = make_pool(1, start="fork", meter_provider=meter_provider)
    with pytest.raises(ValueError):
        pool.submit(identity, ErrorAtPickle()).result(timeout=60)
    assert pool.submit(square, 2).result(timeout=60) == 4
    with pytest.raises(Exception, match="SIGKILL"):
        pool.submit(kill_self, signal.SIGKILL).result(timeout=60)
    points = _points(reader)
    faults = N.METRIC_PICKLING_FAULTS
    assert _counter(points, faults, **{N.ATTR_FAULT_STAGE: "feeder-serialize"}) == 1
    assert _counter(points, N.METRIC_POOL_BREAKS, **{N.ATTR_BROKEN_REASON: "worker-died"}) == 1
    assert N.METRIC_TASK_DURATION not in points  # stage metrics come from traced tasks


@pytest.mark.breaks_pool
def test_sendback_and_stall_are_counted(make_pool: Any, tmp_path: Path) -> None:
    """A result that cannot be pickled in the worker (traced) and a stopped worker are
    counted."""
    from faults import return_unpicklable

    tracer_provider, _ = recording_provider()
    meter_provider, reader = _meter()
    pool = make_pool(
        1,
        start="fork",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        stall_timeout=1.0,
        stall_report_dir=tmp_path,
        stall_action="break",
    )
    with pytest.raises(Exception):  # noqa: B017 - the stdlib's type varies by version
        pool.submit(return_unpicklable).result(timeout=60)
    with pytest.raises(Exception, match="stall"):
        pool.submit(stop_self_later, 0.1).result(timeout=60)
    pool.shutdown(wait=True)
    points = _points(reader)
    faults = N.METRIC_PICKLING_FAULTS
    assert _counter(points, faults, **{N.ATTR_FAULT_STAGE: "sendback"}) == 1
    assert _counter(points, N.METRIC_STALLS, **{N.ATTR_STALL_KIND: "worker-stopped"}) == 1


class _Gate(SpanExporter):
    """Holds the emitter inside the first export until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_dropped_span_records_are_counted(make_pool: Any, monkeypatch: Any) -> None:
    """When span building falls behind the backlog limit, the records dropped are
    counted once the emitter catches up."""
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setattr(_emit, "MAX_BACKLOG", 2)
    gate = _Gate()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(gate))
    meter_provider, reader = _meter()
    pool = make_pool(
        1, start="fork", tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    assert pool.submit(square, 1).result(timeout=60) == 1
    assert gate.entered.wait(30)
    futures = [pool.submit(square, i) for i in range(12)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(12)]
    assert pool._tp_state.emitter.dropped > 0
    gate.release.set()
    pool.shutdown(wait=True)  # the manager has exited: nothing more is pushed or dropped
    dropped = pool._tp_state.emitter.dropped
    assert _counter(_points(reader), N.METRIC_SPANS_DROPPED) == dropped
    stats = pool.stats()  # the counter is both kinds; stats() tells them apart
    assert stats["span_records_dropped"] == dropped
    assert stats["task_records_dropped"] + stats["wake_records_dropped"] == dropped
    assert stats["task_records_dropped"] > 0


def _finished_pool(meter_provider: Any, name: str, overflow: bool = True) -> Any:
    """A shut-down pool, referenced only by the caller (so that it can be collected),
    whose emitter dropped records if ``overflow`` (needs MAX_BACKLOG patched small): its
    span processor blocked while twelve more tasks finished."""
    import multiprocessing

    from opentelemetry.sdk.trace import TracerProvider

    from tracedpool import TracedProcessPoolExecutor

    gate = _Gate()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(gate))
    pool = TracedProcessPoolExecutor(
        1,
        multiprocessing.get_context("fork"),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        name=name,
    )
    try:
        assert pool.submit(square, 1).result(timeout=60) == 1
        if overflow:
            assert gate.entered.wait(30)
            futures = [pool.submit(square, i) for i in range(12)]
            assert [f.result(timeout=60) for f in futures] == [i * i for i in range(12)]
    finally:
        gate.release.set()
        pool.shutdown(wait=True)
    return pool


def test_a_collected_pools_dropped_count_is_kept(monkeypatch: Any) -> None:
    """spans.dropped is a cumulative counter: it must not go down when a pool that
    dropped records (built with a meter provider) is garbage collected."""
    import gc
    import weakref

    monkeypatch.setattr(_emit, "MAX_BACKLOG", 2)
    meter_provider, reader = _meter()
    pool = _finished_pool(meter_provider, "collected")
    dropped = pool._tp_state.emitter.dropped
    assert dropped > 0
    state = weakref.ref(pool._tp_state)
    del pool
    for _ in range(3):
        gc.collect()
    assert state() is None
    points = _points(reader)
    assert _counter(points, N.METRIC_SPANS_DROPPED, **{N.ATTR_POOL_NAME: "collected"}) == dropped


def test_a_pool_finalized_while_the_reader_collects_does_not_deadlock(monkeypatch: Any) -> None:
    """The metric reader's collection holds the registry's lock while it walks the live
    pools; its own list of them can be the last reference to a pool the application
    dropped, so the pool's finalizer runs on that thread, under that lock. It must not
    wait for the lock it already holds (that froze the reader, then every thread that
    finalized a pool after it). A collected pool that dropped nothing leaves no entry."""
    import gc
    import weakref

    monkeypatch.setattr(_emit, "MAX_BACKLOG", 2)
    meter_provider, reader = _meter()
    pools = {
        "dropped-some": _finished_pool(meter_provider, "dropped-some"),
        "dropped-none": _finished_pool(meter_provider, "dropped-none", overflow=False),
    }
    dropped = pools["dropped-some"]._tp_state.emitter.dropped
    assert dropped > 0 and pools["dropped-none"]._tp_state.emitter.dropped == 0
    registry = pools["dropped-some"]._tp_state.metrics
    states = [weakref.ref(p._tp_state) for p in pools.values()]
    done = threading.Event()

    def collect_while_the_pools_die() -> None:
        with registry._retired_lock:  # as _observe_dropped holds it
            pools.clear()  # the last references
            for _ in range(3):
                gc.collect()
            done.set()

    thread = threading.Thread(target=collect_while_the_pools_die, daemon=True)
    thread.start()
    thread.join(30)
    assert done.is_set(), "a pool's finalizer waited for the lock its own thread held"
    assert all(ref() is None for ref in states)
    assert registry._retired_dropped == {"dropped-some": dropped}
    points = _points(reader)
    assert _counter(points, N.METRIC_SPANS_DROPPED, **{N.ATTR_POOL_NAME: "dropped-some"}) == dropped


def test_no_meter_provider_creates_nothing(make_pool: Any) -> None:
    """With no MeterProvider a pool holds no instruments and records nothing."""
    if _metrics.global_meter_provider() is not None:
        pytest.skip("a global MeterProvider is set in this test process")
    before = dict(_metrics._by_provider)
    tracer_provider, _ = recording_provider()
    pool = make_pool(1, start="fork", tracer_provider=tracer_provider)
    assert pool.submit(square, 3).result(timeout=60) == 9
    pool.shutdown(wait=True)
    assert pool._tp_state.metrics is None
    assert _metrics._by_provider == before


def test_a_noop_meter_provider_switches_a_pools_metrics_off(make_pool: Any) -> None:
    """meter_provider=NoOpMeterProvider() gives the pool no instruments."""
    from opentelemetry.metrics import NoOpMeterProvider

    pool = make_pool(1, start="fork", meter_provider=NoOpMeterProvider())
    assert pool.submit(square, 3).result(timeout=60) == 9
    assert pool._tp_state.metrics is None


LATE_GLOBAL = """
import multiprocessing
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tracedpool import TracedProcessPoolExecutor
from tracedpool._telemetry import names as N
from tracedpool.testing import recording_provider, square

tracer_provider, _ = recording_provider()
pool = TracedProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                 tracer_provider=tracer_provider, stall_timeout=None)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
assert [f.result(timeout=60) for f in [pool.submit(square, i) for i in range(3)]]
pool.shutdown(wait=True)
names = {m.name: m for rm in reader.get_metrics_data().resource_metrics
         for sm in rm.scope_metrics for m in sm.metrics}
print(names[N.METRIC_TASK_DURATION].data.data_points[0].count)
"""


def test_a_global_meter_provider_set_after_the_pool_is_used() -> None:
    """A pool built before the app sets its global MeterProvider reports to it."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", LATE_GLOBAL],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
