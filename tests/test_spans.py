"""Spans: names, parentage, trace ids and attributes, read through the SDK's in-memory
exporter in the parent."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from faults import Unpicklable, identity, sleep_then, traced_work
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tracedpool._telemetry import names as N
from tracedpool.testing import recording_provider, spans_by_task, square, wait_for


def _by_name(spans: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in spans:
        out.setdefault(s.name, s)
    return out


def test_task_spans_are_children_of_the_submitting_span(
    make_pool: Any, recorder: Any, start_method: str
) -> None:
    """Each task gets a task span under the caller's span, and its stages under it."""
    provider, exporter = recorder
    tracer = provider.get_tracer("test")
    pool = make_pool(2, start=start_method, tracer_provider=provider, name="unit")
    with tracer.start_as_current_span("request") as request:
        assert pool.submit(square, 4).result(timeout=60) == 16
    worker_pids = set(pool._processes)
    pool.shutdown(wait=True)
    spans = spans_by_task(exporter.get_finished_spans())[f"{pool.pool_id}:0"]
    named = _by_name(spans)
    task = named[N.SPAN_TASK]
    req = request.get_span_context()
    assert task.parent.span_id == req.span_id
    for name in (
        N.SPAN_SUBMIT,
        N.SPAN_ENQUEUE,
        N.SPAN_FEEDER_SERIALIZE,
        N.SPAN_WORKER_RUN,
        N.SPAN_SENDBACK,
    ):
        span = named[name]
        assert span.context.trace_id == req.trace_id, name
        assert span.parent.span_id == task.context.span_id, name
        assert span.start_time <= span.end_time, name
    assert task.attributes[N.ATTR_CODE_FUNCTION] == "tracedpool.testing.square"
    assert task.attributes[N.ATTR_TASK_OUTCOME] == "result"
    assert task.attributes[N.ATTR_POOL_NAME] == "unit"
    assert task.attributes[N.ATTR_ARG_TYPES] == ("int",)
    assert task.attributes[N.ATTR_RESULT_TYPE] == "int"
    assert named[N.SPAN_FEEDER_SERIALIZE].attributes[N.ATTR_PAYLOAD_BYTES] > 0
    assert named[N.SPAN_SENDBACK].attributes[N.ATTR_RESULT_BYTES] > 0
    worker_pid = named[N.SPAN_WORKER_RUN].attributes[N.ATTR_PROCESS_PID]
    assert worker_pid in worker_pids
    assert named[N.SPAN_SUBMIT].kind == trace.SpanKind.PRODUCER
    assert named[N.SPAN_WORKER_RUN].kind == trace.SpanKind.CONSUMER


def test_task_without_active_span_is_a_root(make_pool: Any, recorder: Any) -> None:
    """With no span active at submit, the task span is a root of its own trace."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    pool.submit(square, 2).result(timeout=60)
    pool.shutdown(wait=True)
    task = _by_name(spans_by_task(exporter.get_finished_spans())[f"{pool.pool_id}:0"])[N.SPAN_TASK]
    assert task.parent is None


def test_user_spans_in_worker_are_children_of_worker_run(
    make_pool: Any, recorder: Any, start_method: str
) -> None:
    """Spans the task's own code makes with the API reach the parent under worker-run,
    with no configuration in the worker."""
    provider, exporter = recorder
    tracer = provider.get_tracer("test")
    pool = make_pool(2, start=start_method, tracer_provider=provider)
    with tracer.start_as_current_span("request"):
        futures = [pool.submit(traced_work, i) for i in range(4)]
        assert [f.result(timeout=60) for f in futures] == [0, 2, 4, 6]
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    inner = [s for s in spans if s.name == "user-inner"]
    assert len(inner) == 4
    for s in inner:
        parent = by_id[s.parent.span_id]
        assert parent.name == N.SPAN_WORKER_RUN
        assert s.context.trace_id == parent.context.trace_id
        assert s.attributes["user.x"] in range(4)
        innermost = [
            x for x in spans if x.parent is not None and x.parent.span_id == s.context.span_id
        ]
        assert [x.name for x in innermost] == ["user-innermost"]
    # each request's tasks stay in that request's trace, not the trace of the fork time
    assert len({s.context.trace_id for s in inner}) == 1


def test_map_records_function_and_chunksize(make_pool: Any, recorder: Any) -> None:
    """map() chunks are traced with the mapped function's name and the chunk size."""
    provider, exporter = recorder
    pool = make_pool(2, tracer_provider=provider)
    assert list(pool.map(square, range(10), chunksize=4)) == [i * i for i in range(10)]
    pool.shutdown(wait=True)
    tasks = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    assert sorted(t.attributes[N.ATTR_MAP_CHUNKSIZE] for t in tasks) == [2, 4, 4]
    assert {t.attributes[N.ATTR_CODE_FUNCTION] for t in tasks} == {"tracedpool.testing.square"}


def test_task_ids_are_unique_across_pools(make_pool: Any, recorder: Any) -> None:
    """tracedpool.task.id carries the pool id, so two pools never share one."""
    provider, exporter = recorder
    a, b = make_pool(1, tracer_provider=provider), make_pool(1, tracer_provider=provider)
    a.submit(square, 1).result(timeout=60)
    b.submit(square, 1).result(timeout=60)
    a.shutdown(wait=True)
    b.shutdown(wait=True)
    ids = [
        s.attributes[N.ATTR_TASK_ID] for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK
    ]
    assert len(ids) == len(set(ids)) == 2


def test_manager_wake_spans_link_to_tasks(make_pool: Any, recorder: Any) -> None:
    """Manager wakes live in the pool's own trace, say why they woke, and link the tasks."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    futures = [pool.submit(square, i) for i in range(5)]
    [f.result(timeout=60) for f in futures]
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    wakes = [s for s in spans if s.name == N.SPAN_MANAGER_WAKE]
    pool_span = next(s for s in spans if s.name == N.SPAN_POOL)
    assert wakes
    assert all(w.context.trace_id == pool_span.context.trace_id for w in wakes)
    assert all(w.parent.span_id == pool_span.context.span_id for w in wakes)
    reasons = {w.attributes[N.ATTR_WAKE_REASON] for w in wakes}
    assert "result" in reasons and "shutdown" in reasons
    task_span_ids = {s.context.span_id for s in spans if s.name == N.SPAN_TASK}
    linked = {link.context.span_id for w in wakes for link in w.links}
    assert linked & task_span_ids


def _wake(reason: str, idle_ns: int, t: int, served: list[Any]) -> Any:
    from tracedpool._telemetry.emit import WakeRecord

    w = WakeRecord(t, idle_ns, reason)
    w.t_end = t + 10
    w.served = list(served)
    return w


def _tasks(n: int) -> list[Any]:
    from tracedpool._telemetry.emit import TaskRecord

    return [TaskRecord(None, i, (1, 100 + i, 1, None, None)) for i in range(n)]


def test_back_to_back_wakes_queued_together_make_one_run() -> None:
    """``next_wake`` merges the queued wakes right behind the first while they make a
    run: same busy reason, each after a wait under WAKE_RUN_GAP_NS, at most
    WAKE_RUN_LINKS tasks; a task served twice in a run is linked once."""
    from collections import deque

    from tracedpool._telemetry.emit import WAKE_RUN_GAP_NS, WAKE_RUN_LINKS, next_wake

    a, b, c, d = _tasks(4)
    short, long = WAKE_RUN_GAP_NS - 1, WAKE_RUN_GAP_NS
    wakes = deque(
        [
            _wake("result", 5 * long, 0, [a]),  # a long wait before the run is fine
            _wake("result", short, 20, [b, a]),  # a enqueued by the first, read here
            _wake("result", short, 40, [c]),
            _wake("result", long, 60, [d]),  # waited too long: a new run
            _wake("submit", 0, 80, [a]),  # another reason: a new run
            _wake("shutdown", 0, 100, []),  # never merged
            _wake("shutdown", 0, 120, []),
        ]
    )
    run = next_wake(wakes)
    assert (run.count, run.t_ready, run.t_end, run.idle_ns) == (3, 0, 50, 5 * long)
    assert run.served == [a, b, c]
    assert [w.count for w in (next_wake(wakes), next_wake(wakes))] == [1, 1]
    assert [(w.reason, w.count) for w in (next_wake(wakes), next_wake(wakes))] == [
        ("shutdown", 1),
        ("shutdown", 1),
    ]
    assert not wakes

    many = _tasks(WAKE_RUN_LINKS + 1)
    wakes = deque(_wake("result", 0, i, [t]) for i, t in enumerate(many))
    first, second = next_wake(wakes), next_wake(wakes)
    assert (first.count, len(first.served)) == (WAKE_RUN_LINKS, WAKE_RUN_LINKS)
    assert (second.count, second.served) == (1, many[-1:])


def test_a_burst_gets_manager_wake_runs(make_pool: Any, recorder: Any, monkeypatch: Any) -> None:
    """Wakes built after a burst come as runs: fewer spans than wakes, the count says
    how many each covers, and every task is linked from a run that read its result."""
    from tracedpool._telemetry import emit as _emit

    monkeypatch.setattr(_emit, "DEFER_SECONDS", 60.0)  # build only once the burst is over
    monkeypatch.setattr(_emit, "DEFER_TICK", 0.5)
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    futures = [pool.submit(square, i) for i in range(300)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(300)]
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    task_ids = {s.context.span_id for s in spans if s.name == N.SPAN_TASK}
    runs = [
        s
        for s in spans
        if s.name == N.SPAN_MANAGER_WAKE and s.attributes[N.ATTR_WAKE_REASON] == "result"
    ]
    for run in runs:
        linked = [link.context.span_id for link in run.links]
        assert len(linked) == len(set(linked)) == run.attributes[N.ATTR_WAKE_TASKS]
        assert 1 <= len(linked) <= _emit.WAKE_RUN_LINKS
        assert set(linked) <= task_ids
        assert run.attributes[N.ATTR_WAKE_COUNT] >= 1
    # The manager reads one result per wake: the runs cover the 300 wakes exactly.
    assert sum(r.attributes[N.ATTR_WAKE_COUNT] for r in runs) == 300
    assert max(r.attributes[N.ATTR_WAKE_COUNT] for r in runs) > 1
    assert len(runs) < 300
    read = {link.context.span_id for r in runs for link in r.links}
    assert read == task_ids


def test_no_values_recorded_by_default(make_pool: Any, recorder: Any) -> None:
    """Spans hold types, sizes and names, never argument or result values."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    secret = "s3cr3t-value"
    assert pool.submit(identity, secret, key=secret).result(timeout=60) == (
        (secret,),
        {"key": secret},
    )
    pool.shutdown(wait=True)
    for s in exporter.get_finished_spans():
        assert secret not in repr(dict(s.attributes)), s.name
        for e in s.events:
            assert secret not in repr(dict(e.attributes)), s.name


def test_record_values_opt_in_is_bounded_and_redacted(make_pool: Any, recorder: Any) -> None:
    """With record_values=<hook>, reprs are recorded bounded and passed through the hook."""
    provider, exporter = recorder
    pool = make_pool(
        1, tracer_provider=provider, record_values=lambda text: text.replace("s3cr3t", "***")
    )
    pool.submit(identity, "s3cr3t" + "x" * 1000).result(timeout=60)
    pool.shutdown(wait=True)
    task = next(s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK)
    args_repr = task.attributes[N.ATTR_ARGS_REPR]
    assert "***" in args_repr and "s3cr3t" not in args_repr
    assert len(args_repr) <= 260
    assert N.ATTR_RESULT_REPR in task.attributes


def test_exception_messages_can_be_omitted(make_pool: Any, recorder: Any) -> None:
    """record_exception_messages=False keeps the type but drops message and stack."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider, record_exception_messages=False)
    from faults import raise_error

    with pytest.raises(RuntimeError):
        pool.submit(raise_error, "private detail").result(timeout=60)
    pool.shutdown(wait=True)
    events = [e for s in exporter.get_finished_spans() for e in s.events if e.name == "exception"]
    assert events
    for e in events:
        assert e.attributes["exception.type"] == "RuntimeError"
        assert "exception.message" not in e.attributes
        assert "exception.stacktrace" not in e.attributes


def test_user_exception_recorded_on_worker_run(make_pool: Any, recorder: Any) -> None:
    """A task that raises: exception event and ERROR on worker-run, ERROR on the task."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    from faults import raise_error

    with pytest.raises(RuntimeError):
        pool.submit(raise_error, "boom").result(timeout=60)
    pool.shutdown(wait=True)
    named = _by_name(exporter.get_finished_spans())
    run = named[N.SPAN_WORKER_RUN]
    assert run.status.status_code.name == "ERROR"
    (event,) = [e for e in run.events if e.name == "exception"]
    assert event.attributes["exception.message"] == "boom"
    assert "raise_error" in event.attributes["exception.stacktrace"]
    assert named[N.SPAN_TASK].attributes[N.ATTR_ERROR_TYPE] == "RuntimeError"


def test_sampled_out_tasks_emit_nothing(make_pool: Any) -> None:
    """A sampler that drops the task: no spans, and the task still runs."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pool = make_pool(1, tracer_provider=provider)
    assert pool.submit(traced_work, 3).result(timeout=60) == 6
    pool.shutdown(wait=True)
    assert [s.name for s in exporter.get_finished_spans()] == []


class _RaisingExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        raise RuntimeError("exporter down")


class _BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_raising_exporter_does_not_fail_tasks(make_pool: Any) -> None:
    """A span processor that raises never fails or stalls a task."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_RaisingExporter()))
    pool = make_pool(2, tracer_provider=provider)
    assert [pool.submit(square, i).result(timeout=60) for i in range(20)] == [
        i * i for i in range(20)
    ]


def test_blocking_exporter_does_not_stall_tasks(make_pool: Any) -> None:
    """A span processor that blocks stalls only the emitter, never the futures."""
    exporter = _BlockingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pool = make_pool(2, tracer_provider=provider)
    t0 = time.monotonic()
    assert [pool.submit(square, i).result(timeout=60) for i in range(20)] == [
        i * i for i in range(20)
    ]
    pool.shutdown(wait=True)  # bounded even though the emitter is stuck in export()
    assert time.monotonic() - t0 < 20
    exporter.release.set()


def test_global_provider_used_when_none_given(make_pool: Any) -> None:
    """tracer_provider=None reads the global provider at each submit (in a fresh process)."""
    import subprocess
    import sys

    code = (
        "from opentelemetry import trace\n"
        "from tracedpool.testing import recording_provider, square\n"
        "from tracedpool import TracedProcessPoolExecutor\n"
        "pool = TracedProcessPoolExecutor(1)\n"  # created before the SDK is configured
        "provider, exporter = recording_provider()\n"
        "trace.set_tracer_provider(provider)\n"
        "pool.submit(square, 3).result(timeout=60)\n"
        "pool.shutdown()\n"
        "print(sorted({s.name for s in exporter.get_finished_spans()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "tracedpool.task" in out.stdout and "tracedpool.worker-run" in out.stdout


def test_no_sdk_means_no_tracer_calls() -> None:
    """With no SDK configured, submitting tasks makes no tracer call at all."""
    import subprocess
    import sys

    code = (
        "from opentelemetry import trace\n"
        "calls = []\n"
        "for cls in (trace.ProxyTracerProvider, trace.NoOpTracerProvider):\n"
        "    orig = cls.get_tracer\n"
        "    def counting(self, *a, _orig=orig, **k):\n"
        "        calls.append(1)\n"
        "        return _orig(self, *a, **k)\n"
        "    cls.get_tracer = counting\n"
        "for cls in (trace.ProxyTracer, trace.NoOpTracer):\n"
        "    orig = cls.start_span\n"
        "    def counting_span(self, *a, _orig=orig, **k):\n"
        "        calls.append(1)\n"
        "        return _orig(self, *a, **k)\n"
        "    cls.start_span = counting_span\n"
        "from tracedpool import TracedProcessPoolExecutor\n"
        "from tracedpool.testing import square\n"
        "with TracedProcessPoolExecutor(2) as pool:\n"
        "    results = [pool.submit(square, i).result() for i in range(200)]\n"
        "    assert results == [i * i for i in range(200)]\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_importing_prints_nothing() -> None:
    """A fresh interpreter importing tracedpool (and using a pool) writes nothing to stderr."""
    import subprocess
    import sys

    code = (
        "import tracedpool\n"
        "from tracedpool.testing import square\n"
        "with tracedpool.TracedProcessPoolExecutor(1) as p:\n"
        "    p.submit(square, 2).result()\n"
    )
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0
    assert out.stderr == ""


def test_recording_provider_helper_is_isolated() -> None:
    """Each recording provider collects only its own spans."""
    (p1, e1), (_p2, e2) = recording_provider(), recording_provider()
    with p1.get_tracer("x").start_as_current_span("one"):
        pass
    assert [s.name for s in e1.get_finished_spans()] == ["one"]
    assert e2.get_finished_spans() == ()


def test_worker_sdk_configured_by_user_still_ships_spans(
    make_pool: Any, recorder: Any, start_method: str
) -> None:
    """A user who configures the SDK in the workers' initializer (which loses every span
    at os._exit under fork/forkserver) still gets task spans, under worker-run."""
    from faults import configure_sdk_in_worker

    provider, exporter = recorder
    pool = make_pool(
        2, start=start_method, tracer_provider=provider, initializer=configure_sdk_in_worker
    )
    assert [pool.submit(traced_work, i).result(timeout=60) for i in range(3)] == [0, 2, 4]
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    inner = [s for s in spans if s.name == "user-inner"]
    assert len(inner) == 3
    assert all(by_id[s.parent.span_id].name == N.SPAN_WORKER_RUN for s in inner)


def _task_spans_done(exporter: Any, pool: Any, n: int) -> bool:
    tasks = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    ours = [s for s in tasks if str(s.attributes[N.ATTR_TASK_ID]).startswith(pool.pool_id)]
    return len(ours) >= n


def test_span_building_steps_aside_during_a_burst(
    make_pool: Any, recorder: Any, monkeypatch: Any
) -> None:
    """Span building shares the GIL with the pool's threads: while the manager thread is
    busy it waits, and it builds the burst's spans once the manager has slept through a
    whole DEFER_TICK."""
    from tracedpool._telemetry import emit as _emit

    monkeypatch.setattr(_emit, "DEFER_SECONDS", 60.0)  # only quiet ends the wait here
    monkeypatch.setattr(_emit, "DEFER_TICK", 1.0)  # a burst of 2,000 takes ~0.2 s
    provider, exporter = recorder
    pool = make_pool(2, start="fork", tracer_provider=provider)
    assert pool.submit(square, 2).result(timeout=60) == 4
    assert wait_for(lambda: _task_spans_done(exporter, pool, 1))
    futures = [pool.submit(square, i) for i in range(2000)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(2000)]
    # No task of the burst was built during it. (The emitter's own count is no measure:
    # the first task's manager-wake record may be built at any time.)
    assert not _task_spans_done(exporter, pool, 2)
    assert pool.stats()["span_backlog"] >= 2000
    assert wait_for(lambda: _task_spans_done(exporter, pool, 2001), seconds=20)
    assert pool.stats()["span_backlog"] == 0


def test_a_pool_that_never_goes_quiet_still_gets_its_spans(
    make_pool: Any, recorder: Any, monkeypatch: Any
) -> None:
    """The wait is bounded by DEFER_SECONDS: a pool kept busy gets its spans anyway."""
    from tracedpool._telemetry import emit as _emit

    monkeypatch.setattr(_emit, "DEFER_SECONDS", 0.3)
    monkeypatch.setattr(_emit, "DEFER_TICK", 1.0)
    provider, exporter = recorder
    pool = make_pool(2, start="fork", tracer_provider=provider)
    stop = time.monotonic() + 5.0
    errors: list[BaseException] = []

    def keep_busy() -> None:
        try:
            while time.monotonic() < stop:
                pool.submit(square, 3).result(timeout=60)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=keep_busy)
    thread.start()
    try:
        assert wait_for(lambda: _task_spans_done(exporter, pool, 10), seconds=4)
        assert time.monotonic() < stop  # built while the pool was still busy
    finally:
        thread.join(30)
    assert not errors


def test_long_tasks_leave_room_for_span_building(
    make_pool: Any, recorder: Any, monkeypatch: Any
) -> None:
    """A task running long keeps the pool's threads asleep: spans of the tasks that
    finished meanwhile are built without waiting for it."""
    from tracedpool._telemetry import emit as _emit

    monkeypatch.setattr(_emit, "DEFER_SECONDS", 60.0)
    provider, exporter = recorder
    pool = make_pool(2, start="fork", tracer_provider=provider)
    slow = pool.submit(sleep_then, "slow", 5.0)
    futures = [pool.submit(square, i) for i in range(10)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(10)]
    assert wait_for(lambda: _task_spans_done(exporter, pool, 10), seconds=4)
    assert not slow.done()
    assert slow.result(timeout=60) == "slow"


def test_a_call_that_fails_to_pickle_keeps_its_own_feeder_span(
    make_pool: Any, recorder: Any
) -> None:
    """The feeder span of a call that failed to pickle ends at the failure: the next call
    sent, unsampled, is not timed on its record (nor its size recorded there)."""
    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    assert pool.submit(square, 1).result(timeout=60) == 1
    failed = pool.submit(identity, Unpicklable())
    unsampled = SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(unsampled)):
        assert len(pool.submit(identity, b"x" * 100_000).result(timeout=60)) == 100_000
    assert isinstance(failed.exception(timeout=60), TypeError)
    pool.shutdown(wait=True)
    spans = spans_by_task(exporter.get_finished_spans())[f"{pool.pool_id}:1"]
    feeder = _by_name(spans)[N.SPAN_FEEDER_SERIALIZE]
    assert N.ATTR_PAYLOAD_BYTES not in (feeder.attributes or {})
    assert feeder.status.status_code.name == "ERROR"


def test_pool_span_names_the_start_method(make_pool: Any, recorder: Any, start_method: str) -> None:
    """The pool's span says how its workers start (once per pool, not per task)."""
    provider, exporter = recorder
    pool = make_pool(1, start=start_method, tracer_provider=provider)
    pool.submit(square, 2).result(timeout=60)
    pool.shutdown(wait=True)
    spans = exporter.get_finished_spans()
    pool_span = next(s for s in spans if s.name == N.SPAN_POOL)
    assert pool_span.attributes[N.ATTR_POOL_START_METHOD] == start_method
    task = next(s for s in spans if s.name == N.SPAN_TASK)
    assert N.ATTR_POOL_START_METHOD not in task.attributes


def test_an_instrumentation_failure_for_a_task_is_an_event_on_its_span(
    make_pool: Any, recorder: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """When tracedpool's own work for a task fails, the task still runs and its span
    carries a tracedpool.internal-error event saying where; the log says it once."""
    import tracedpool._pool.executor as E

    def broken_qualname(obj: Any) -> str:
        raise RuntimeError("instrumentation bug")

    provider, exporter = recorder
    pool = make_pool(1, tracer_provider=provider)
    monkeypatch.setattr(E, "qualname", broken_qualname)
    assert [pool.submit(square, i).result(timeout=60) for i in (2, 3)] == [4, 9]
    pool.shutdown(wait=True)
    tasks = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_TASK]
    assert len(tasks) == 2
    for task in tasks:
        (event,) = [e for e in task.events if e.name == N.EVENT_INTERNAL_ERROR]
        assert event.attributes == {N.ATTR_INTERNAL_ERROR_WHERE: "submit"}
        assert task.start_time <= event.timestamp <= task.end_time
    logged = [r for r in caplog.records if "instrumentation failed in submit" in r.getMessage()]
    assert len(logged) == 1


class _CountingExporter(SpanExporter):
    """Counts task spans; each export takes ``delay`` seconds, or waits for ``gate``."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate, self.spans, self.tasks = delay, gate, 0, 0

    def export(self, spans: Any) -> SpanExportResult:
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        self.spans += len(spans)
        self.tasks += sum(1 for s in spans if s.name == N.SPAN_TASK)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _small_batch_queue(exporter: Any, schedule_delay_millis: int) -> tuple[Any, Any]:
    """A provider whose one batch processor queues 64 spans, exported 16 at a time."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=64,
        max_export_batch_size=16,
        schedule_delay_millis=schedule_delay_millis,
    )
    provider.add_span_processor(processor)
    return provider, processor


def test_a_small_batch_queue_drops_nothing_while_its_exporter_keeps_up(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The emitter waits for a near-full BatchSpanProcessor queue to drain instead of
    overflowing it: a 64-span queue takes 600 tasks' spans without dropping one."""
    exporter = _CountingExporter(delay=0.001)
    provider, _ = _small_batch_queue(exporter, schedule_delay_millis=5)
    pool = make_pool(2, tracer_provider=provider)
    assert list(pool.map(identity, range(600))) == list(range(600))
    pool.shutdown(wait=True)
    provider.force_flush()
    assert "Queue full" not in caplog.text
    assert exporter.tasks == 600
    assert pool._tp_state.emitter.queue_waits > 0
    provider.shutdown()


def test_an_export_thread_that_missed_its_wake_up_is_woken(make_pool: Any) -> None:
    """The SDK's batch processor wakes its export thread only when the wake-up flag is
    clear, and the thread clears it after exporting: spans queued in between find it
    still set, and the thread sleeps out the whole schedule delay with a full batch
    queued. That state is set up here (a minute's delay, the queue filled behind the
    flag's back): the emitter, waiting for room, wakes the thread, and every task's
    spans arrive without a drop (without the wake it gives up after a second, and the
    queue drops)."""
    exporter = _CountingExporter()
    provider, processor = _small_batch_queue(exporter, schedule_delay_millis=60_000)
    filler = TracerProvider().get_tracer("filler")
    batch = processor._batch_processor
    for _ in range(60):  # as the race leaves it: a full batch queued, the thread asleep
        span = filler.start_span("filler")
        span.end()
        batch._queue.appendleft(span)
    assert not batch._worker_awaken.is_set()
    pool = make_pool(2, tracer_provider=provider)
    assert list(pool.map(identity, range(200))) == list(range(200))
    pool.shutdown(wait=True)
    provider.force_flush()
    assert exporter.tasks == 200
    provider.shutdown()


def test_a_stuck_exporter_is_given_up_on_and_the_pool_shuts_down(
    make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter that frees nothing is waited on for STALLED_QUEUE_SECONDS, not for
    ever: the queue then drops (the SDK's count), and shutdown is not held."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tracedpool._telemetry import emit as _emit

    monkeypatch.setattr(_emit, "STALLED_QUEUE_SECONDS", 0.2)
    gate = threading.Event()
    exporter = _CountingExporter(gate=gate)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=32, max_export_batch_size=8)
    )
    pool = make_pool(1, tracer_provider=provider)
    assert list(pool.map(identity, range(100))) == list(range(100))
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 3.0
    assert pool._tp_state.emitter.waiting == 0
    gate.set()
    provider.shutdown()
    assert 0 < exporter.tasks < 100
