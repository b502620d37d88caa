"""The SDK fast paths decide and deliver exactly what the SDK's own calls would.

Each fast path (sampling rules, span contexts, batch-queue delivery, the manager's
persistent poll set) is chosen by a probe; these tests pin their results to the SDK's
and the stdlib's own behaviour with real objects, so a drift shows here first.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import sampling as S
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from tracedpool import TracedProcessPoolExecutor
from tracedpool._pool import cpython as _cpython
from tracedpool._telemetry import names as N
from tracedpool._telemetry import otel as _otel
from tracedpool._telemetry import sdk as _sdk
from tracedpool.testing import spans_by_task, square

SAMPLERS = [
    S.ALWAYS_ON,
    S.ALWAYS_OFF,
    S.TraceIdRatioBased(0.25),
    S.TraceIdRatioBased(0.0),
    S.TraceIdRatioBased(1.0),
    S.ParentBased(S.ALWAYS_ON),
    S.ParentBased(S.ALWAYS_OFF),
    S.ParentBased(S.TraceIdRatioBased(0.5)),
    S.ParentBased(
        S.TraceIdRatioBased(0.5),
        remote_parent_sampled=S.ALWAYS_OFF,
        remote_parent_not_sampled=S.ALWAYS_ON,
        local_parent_sampled=S.TraceIdRatioBased(0.3),
        local_parent_not_sampled=S.ALWAYS_ON,
    ),
    # What OTEL_TRACES_SAMPLER=parentbased_traceidratio builds: an SDK subclass that
    # only picks ParentBased's constructor arguments.
    S.ParentBasedTraceIdRatio(0.4),
]


def _parents(rng: random.Random) -> list[SpanContext | None]:
    state = TraceState([("vendor", "value")])
    out: list[SpanContext | None] = [None]
    for remote in (False, True):
        for flags in (0, 1):
            out.append(
                SpanContext(
                    rng.getrandbits(128), rng.getrandbits(64), remote, TraceFlags(flags), state
                )
            )
    return out


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.get_description()[:60])
def test_sampling_rule_decides_as_the_sdk_sampler(sampler: Any) -> None:
    """For every parent kind and many trace ids, the fast rule's verdict and trace state
    are the SDK sampler's own."""
    assert _sdk.sampling_rule(sampler) is not None
    sink = _otel.SdkSink(TracerProvider(sampler=sampler))
    reference = _otel.SdkSink(TracerProvider(sampler=sampler))
    reference._rule = None  # the generic path: the sampler's should_sample
    rng = random.Random(7)
    for parent in _parents(rng):
        for _ in range(300):
            ctx = otel_context.Context()
            if parent is not None:
                ctx = trace.set_span_in_context(NonRecordingSpan(parent), ctx)
            token = otel_context.attach(ctx)
            try:
                trace_id = rng.getrandbits(128)
                # Both sinks draw the root's trace id from the same generator state.
                sink._rand = reference._rand = None
                sink._ids.generate_trace_id = lambda t=trace_id: t  # type: ignore[method-assign]
                reference._ids.generate_trace_id = lambda t=trace_id: t  # type: ignore[method-assign]
                fast = sink.sample(N.SPAN_TASK, None)
                slow = reference.sample(N.SPAN_TASK, None)
            finally:
                otel_context.detach(token)
            assert (fast is None) == (slow is None), (parent, trace_id)
            if fast is not None and slow is not None:
                assert fast[0] == slow[0] and fast[2] == slow[2] and fast[4] == slow[4]
                assert (fast[3] or None) == (slow[3] or None)


def test_unknown_samplers_take_the_generic_path() -> None:
    """A subclass or a custom sampler is never second-guessed."""

    class Mine(S.StaticSampler):
        pass

    assert _sdk.sampling_rule(Mine(S.Decision.RECORD_AND_SAMPLE)) is None
    assert _sdk.sampling_rule(S.StaticSampler(S.Decision.RECORD_ONLY)) is None
    assert _sdk.sampling_rule(S.ParentBased(Mine(S.Decision.DROP))) is None

    class MyRatio(S.ParentBasedTraceIdRatio):
        pass

    assert _sdk.sampling_rule(MyRatio(0.5)) is None


def test_span_context_fast_constructor_equals_the_public_one() -> None:
    mk = _sdk.span_context_maker(SpanContext, TraceFlags)
    fields = (12345 << 70, 987654321, False, TraceFlags(1), trace.DEFAULT_TRACE_STATE, True)
    fast = mk(SpanContext, fields)
    public = SpanContext(12345 << 70, 987654321, False, TraceFlags(1))
    assert type(fast) is SpanContext and fast == public
    assert fast.is_valid and not fast.is_remote and fast.trace_flags.sampled


def _batch_provider(**kwargs: Any) -> tuple[TracerProvider, InMemorySpanExporter, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter, **kwargs)
    provider.add_span_processor(processor)
    return provider, exporter, processor


def test_batch_processor_receives_every_span_in_order_through_the_bulk_path() -> None:
    """A real pool under a real BatchSpanProcessor: every task's six spans arrive, task
    span first, and a second processor beside it sees the same spans."""
    assert _sdk._BULK_OK, "the probe should accept this SDK's BatchProcessor.emit"
    provider, exporter, _ = _batch_provider()
    side = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(side))
    with TracedProcessPoolExecutor(max_workers=2, tracer_provider=provider) as pool:
        assert [f.result(timeout=30) for f in [pool.submit(square, i) for i in range(50)]] == [
            i * i for i in range(50)
        ]
    provider.force_flush()
    spans = exporter.get_finished_spans()
    tasks = spans_by_task(spans)
    assert len(tasks) == 50
    for task_spans in tasks.values():
        names = [s.name for s in task_spans]
        assert names[0] == N.SPAN_TASK
        assert sorted(names) == sorted(
            [
                N.SPAN_TASK,
                N.SPAN_SUBMIT,
                N.SPAN_ENQUEUE,
                N.SPAN_FEEDER_SERIALIZE,
                N.SPAN_WORKER_RUN,
                N.SPAN_SENDBACK,
            ]
        )
    assert {s.context.span_id for s in side.get_finished_spans()} == {
        s.context.span_id for s in spans
    }


def test_full_batch_queue_drops_through_the_processors_own_path() -> None:
    """An exporter that blocks and a tiny queue: the bulk path steps aside, the
    processor's own emit drops, and the pool is unaffected. (Counted, not read from the
    log: the SDK logs "Queue full" once per 20 s, so an earlier test may have used it.)"""

    class Blocked(InMemorySpanExporter):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def export(self, spans: Any) -> Any:
            self.release.wait(10)
            return super().export(spans)

    exporter = Blocked()
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter, max_queue_size=4, max_export_batch_size=2)
    provider.add_span_processor(processor)
    try:
        with TracedProcessPoolExecutor(max_workers=2, tracer_provider=provider) as pool:
            results = [f.result(timeout=30) for f in [pool.submit(square, i) for i in range(20)]]
        assert results == [i * i for i in range(20)]
        assert len(processor._batch_processor._queue) <= 4
    finally:
        exporter.release.set()
        provider.shutdown()
    exported = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    assert len(exported) < 20, "nothing was dropped"


def test_unsampled_recording_spans_skip_the_batch_processor() -> None:
    """RECORD_ONLY: a processor of the user's own still sees the spans, the batch
    processor does not (as its own on_end decides)."""

    class Seen(SpanProcessor):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_end(self, span: Any) -> None:
            self.names.append(span.name)

    class RecordOnly(S.Sampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> S.SamplingResult:
            return S.SamplingResult(S.Decision.RECORD_ONLY)

        def get_description(self) -> str:
            return "RecordOnly"

    exporter = InMemorySpanExporter()
    seen = Seen()
    provider = TracerProvider(sampler=RecordOnly())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.add_span_processor(seen)
    with TracedProcessPoolExecutor(max_workers=1, tracer_provider=provider) as pool:
        assert pool.submit(square, 4).result(timeout=30) == 16
    provider.force_flush()
    assert exporter.get_finished_spans() == ()
    assert N.SPAN_TASK in seen.names


@pytest.mark.skipif(not _cpython.FAST_WAIT, reason="no persistent-poll wait on this Python")
def test_manager_poll_set_follows_the_worker_set(start_method: str) -> None:
    """Workers retiring at max_tasks_per_child are replaced and their sentinels leave the
    poll set: every task still completes, on more distinct pids than max_workers."""
    if not _cpython.HAS_MAX_TASKS_PER_CHILD:
        pytest.skip("max_tasks_per_child needs 3.11+")
    if start_method == "fork":
        pytest.skip("the stdlib refuses max_tasks_per_child with fork")
    ctx = multiprocessing.get_context(start_method)
    with TracedProcessPoolExecutor(max_workers=2, mp_context=ctx, max_tasks_per_child=2) as pool:
        pids = {f.result(timeout=60) for f in [pool.submit(os.getpid) for _ in range(12)]}
        manager = pool._tp_state.manager
        assert manager is not None
        deadline = time.monotonic() + 10
        while manager._tp_poll_key is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager._tp_poll_key is not None
    assert len(pids) > 2
