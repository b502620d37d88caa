"""OpenTelemetry: choosing a span sink once per provider, and the worker-side collector.

Spans are never created live on the hot path. The caller's thread decides sampling at
``submit`` (one sampler call) and the hooks only store timestamps; the pool's emitter
thread later turns each finished task into span *specs* and hands them to a sink:

* ``SdkSink`` (the SDK's ``TracerProvider``): builds ``ReadableSpan`` objects with the
  ids chosen at submit and gives them to the provider's span processors' ``on_end``.
  About 1 us a span instead of ~10-15 us through ``Tracer.start_span``; the provider's
  sampler, id generator, resource and processors are all honoured. (Processors'
  ``on_start`` is not called: there is no live span to start.)
* ``ApiSink`` (any other provider): replays the specs through the public API with
  explicit timestamps.

With no SDK (the API's proxy or no-op provider) there is no sink, and a task costs no
tracer call at all.

In a worker, ``worker_attach`` makes the task's ``worker-run`` span current, so spans
that the task's own code creates are its children; a collecting span processor ships
them back with the result, because a worker ends in ``os._exit`` before any batch
processor could flush them (fork, forkserver).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._version import __version__
from . import sdk as _sdk

SCOPE_NAME = "tracedpool"


class EventSpec(NamedTuple):
    """A span event to record: OpenTelemetry's (name, timestamp, attributes)."""

    name: str
    t_ns: int
    attributes: dict[str, Any]


class SpanSpec(NamedTuple):
    """A finished span to hand to a sink, built on the pool's emitter thread.

    A tuple, so sinks unpack it as fast as a plain one. The emitter builds the per-task
    ones with ``tuple.__new__(SpanSpec, (...))``: one C call instead of the generated
    ``__new__``'s Python call and C call (about 190 ns instead of 360; one is built per
    stage of every sampled task, and benchmarks/calls.py counts those calls).
    """

    name: str
    span_id: int  # 0: the sink picks one
    parent_id: int  # 0: the task's remote parent (the ``parent`` given to emit), or none
    kind: int  # trace.SpanKind's value
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: Sequence[EventSpec]
    status: tuple[bool, str] | None  # (is_error, description), or None: unset
    links: Sequence[tuple[int, int, int]]  # (trace_id, span_id, flags)


#: The spans of a task that ran to a result (``plaintask``): its task span and 5 stages.
PLAIN_TASK_SPANS = 6


class Sink:
    """Where a pool's finished spans go; chosen once per provider."""

    def new_trace(self, name: str) -> tuple[int, int, int, Any] | None:
        """Sample a root for the pool's own trace: (trace_id, span_id, flags, state)."""
        raise NotImplementedError

    def sample(self, name: str, attributes: Any) -> tuple[int, int, int, Any, Any] | None:
        """Sample a task at submit, in the caller's context.

        Returns (trace_id, span_id, flags, trace_state, parent_span_context) for a
        recording task, or None when it is dropped.
        """
        raise NotImplementedError

    def new_span_id(self) -> int:
        raise NotImplementedError

    def leaf_span_id(self) -> int:
        """An id for a span that parents nothing (may be cheaper; see SdkSink)."""
        return self.new_span_id()

    def new_trace_id(self) -> int:
        raise NotImplementedError

    def emit(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        raise NotImplementedError

    def emit_foreign(self, spans: Sequence[tuple[Any, ...]]) -> None:
        """Spans made by task code in a worker, as the worker's collector shipped them."""

    def emit_task(self, rec: Any, st: Any) -> bool:
        """Emit a finished task's spans straight from its record, if this sink can for
        this record; False: the caller builds its specs and calls ``emit``."""
        return False

    def room(self) -> tuple[int, int] | None:
        """(free slots, size) of the fullest batch queue behind this sink: what it can
        still take before it drops spans. None where no queue is known (the emitter then
        never waits)."""
        return None

    def flush(self) -> None:
        """Hand on what the sink holds back; the emitter calls it whenever it has built
        everything queued (a sink that holds nothing back does nothing)."""

    def nudge(self) -> None:
        """The queue behind ``room`` is not draining: wake whatever drains it."""


class SdkSink(Sink):
    def __init__(self, provider: Any) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._resource = provider.resource
        # The provider's composite processor: what Span.end() itself calls.
        self._processor = _sdk.span_processor(provider)
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._ReadableSpan = ReadableSpan
        self._Event = Event
        self._Link = Link
        self._SpanContext = SpanContext
        self._TraceFlags = TraceFlags
        self._kinds = {k.value: k for k in SpanKind}
        self._flags = (TraceFlags(0), TraceFlags(1))
        # emit() passes ReadableSpan's arguments by position, in this order.
        expected = [
            "name",
            "context",
            "parent",
            "resource",
            "attributes",
            "events",
            "links",
            "kind",
            "instrumentation_info",
            "status",
            "start_time",
            "end_time",
            "instrumentation_scope",
        ]
        params = list(inspect.signature(ReadableSpan.__init__).parameters)[1:14]
        if params != expected:
            raise TypeError(f"unexpected ReadableSpan signature: {params}")
        self._ok = Status(StatusCode.UNSET)
        self._Status = Status
        self._ERROR = StatusCode.ERROR
        self._InstrumentationScope = InstrumentationScope
        self._scopes: dict[tuple[str, str | None], Any] = {}
        # Fast paths, each chosen once here by a probe, each with the generic call as
        # its fallback. They take the submitting and emitting threads' Python calls per
        # sampled task from ~230 to ~150 (benchmarks/calls.py, docs/performance.md).
        self._rule = _sdk.sampling_rule(self._sampler)
        self._rand = _sdk.random_bits(self._ids)
        #: Ids for spans that parent nothing; a 0 (the invalid id, 2**-64 odds) is
        #: replaced in emit().
        self.leaf_span_id: Any = (
            functools.partial(self._rand, 64) if self._rand is not None else self.new_span_id
        )
        self._make_context = _sdk.span_context_maker(SpanContext, TraceFlags)
        #: ``routes(flags)``: where a task's spans go (``sdk.SpanRoutes``).
        self._routes_for = _sdk.SpanRoutes(self._processor).routes

    def new_span_id(self) -> int:
        rand = self._rand
        if rand is not None:
            return rand(64) or int(self._ids.generate_span_id())  # 0 is the invalid id
        return int(self._ids.generate_span_id())

    def new_trace_id(self) -> int:
        rand = self._rand
        if rand is not None:
            return rand(128) or int(self._ids.generate_trace_id())
        return int(self._ids.generate_trace_id())

    def sample(self, name: str, attributes: Any) -> tuple[int, int, int, Any, Any] | None:
        current = trace.get_current_span().get_span_context()
        parent: Any = current if current.is_valid else None
        trace_id = current.trace_id if parent is not None else self.new_trace_id()
        rule = self._rule
        if rule is None:
            result = self._sampler.should_sample(None, trace_id, name, trace.SpanKind.INTERNAL)
            if not result.decision.is_recording():
                return None
            flags = 1 if result.decision.is_sampled() else 0
            return trace_id, self.new_span_id(), flags, result.trace_state, parent
        # A sampler of a known SDK type, decided as it would decide (see _sampling_rule).
        if parent is None:
            verdict = rule[0]
        else:
            verdict = rule[1 + 2 * (not parent.is_remote) + (not parent.trace_flags & 1)]
        if verdict is not True and (verdict is False or trace_id & _LOW_64 >= verdict):
            return None
        return (
            trace_id,
            self.new_span_id(),
            1,
            None if parent is None else parent.trace_state,
            parent,
        )

    def new_trace(self, name: str) -> tuple[int, int, int, Any] | None:
        trace_id = self._ids.generate_trace_id()
        result = self._sampler.should_sample(
            otel_context.Context(), trace_id, name, trace.SpanKind.INTERNAL
        )
        if not result.decision.is_recording():
            return None
        flags = 1 if result.decision.is_sampled() else 0
        return trace_id, self._ids.generate_span_id(), flags, result.trace_state

    def emit(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        mk, SC, RS = self._make_context, self._SpanContext, self._ReadableSpan
        tflags = self._flags[flags]
        if state is None:
            state = _DEFAULT_TRACE_STATE
        kinds, resource, scope, ok = self._kinds, self._resource, self._scope, self._ok
        fl, dts = self._flags, _DEFAULT_TRACE_STATE
        made: dict[int, Any] = {}  # parents are emitted first: reuse their contexts
        spans = []
        for name, span_id, parent_id, kind, start, end, attrs, events, status, links in specs:
            ctx = mk(SC, (trace_id, span_id or self.new_span_id(), False, tflags, state, True))
            made[span_id] = ctx
            if parent_id == 0:
                parent_ctx = parent
            elif parent_id in made:  # a subscript, not made.get(): no call per stage span
                parent_ctx = made[parent_id]
            else:
                parent_ctx = mk(SC, (trace_id, parent_id, False, tflags, state, True))
            spans.append(
                RS(
                    name,
                    ctx,
                    parent_ctx,
                    resource,
                    attrs,
                    [self._Event(n, a, t) for n, t, a in events] if events else (),
                    [self._Link(mk(SC, (t, s, False, fl[f], dts, True))) for t, s, f in links]
                    if links
                    else (),
                    kinds[kind],
                    None,
                    self._Status(self._ERROR, status[1]) if status else ok,
                    start,
                    end,
                    scope,
                )
            )
        for route in self._routes_for(flags):
            route(spans)

    def room(self) -> tuple[int, int] | None:
        return _sdk.span_room(self._processor)

    def nudge(self) -> None:
        _sdk.wake_batch_workers(self._processor)

    def emit_foreign(self, spans: Sequence[tuple[Any, ...]]) -> None:
        SC, TF = self._SpanContext, self._TraceFlags
        on_end = self._processor.on_end
        for (
            name,
            trace_id,
            span_id,
            parent_id,
            kind,
            start,
            end,
            attrs,
            events,
            status,
            scope_name,
            scope_version,
            links,
            flags,
        ) in spans:
            key = (scope_name, scope_version)
            scope = self._scopes.get(key)
            if scope is None:
                scope = self._scopes[key] = self._InstrumentationScope(scope_name, scope_version)
            tf = TF(flags)
            on_end(
                self._ReadableSpan(
                    name=name,
                    context=SC(trace_id, span_id, False, tf),
                    parent=SC(trace_id, parent_id, True, tf) if parent_id else None,
                    resource=self._resource,
                    attributes=attrs,
                    events=[self._Event(n, a, t) for n, t, a in events],
                    links=[self._Link(SC(t, s, True, TF(f)), a) for t, s, f, a in links],
                    kind=self._kinds.get(kind, self._kinds[0]),
                    status=self._Status(self._ERROR, status[1]) if status[0] == 2 else self._ok,
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=scope,
                )
            )


class _DirectSink(SdkSink):
    """A pipeline ``configure()`` built, used only by tracedpool's own exporter: the
    pool's spans are encoded straight from their specs (no SDK span objects), and
    ``_put`` hands them on; a plain task's straight from its record (``encode_task``,
    one of ``plaintask``'s), and ``_put_task`` hands them on. Sampling and ids are the
    SDK provider's, as in ``SdkSink``. Once anything else is added to the provider
    (another span processor), every later span goes through the SDK as ``SdkSink``
    sends it, so that processor sees it too."""

    def __init__(
        self,
        provider: Any,
        processors: tuple[Any, ...],
        encode_task: Callable[[Any, Any, Any], Any],
    ) -> None:
        super().__init__(provider)
        self._expected = processors
        self._encode_task = encode_task  # plaintask cannot be imported here (a cycle)
        self.direct = True

    def _still_direct(self) -> bool:
        if self.direct and _sdk.span_processors(self._processor) is self._expected:
            return True
        if self.direct:
            self.direct = False
            self.flush()  # what was encoded first, in order
        return False

    def emit(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        if not self._still_direct():
            super().emit(trace_id, flags, state, parent, specs)
        elif flags & 1:  # a batch processor exports only sampled spans
            self._put(trace_id, flags, state, parent, specs)

    def emit_task(self, rec: Any, st: Any) -> bool:
        if not self._still_direct():
            return False
        if not rec.flags & 1:
            return True  # not sampled: a batch processor exports none of its spans
        encoded = self._encode_task(rec, st, self.leaf_span_id)
        if encoded is None:
            return False
        self._put_task(encoded)
        return True

    def _put(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        raise NotImplementedError

    def _put_task(self, encoded: Any) -> None:
        raise NotImplementedError


class FileSink(_DirectSink):
    """The embedded default's file alone: spans as OTLP/JSON text
    (``otlpjson.SpecEncoder``, ``plaintask.task_json``), held by the exporter, which
    writes a line per batch."""

    def __init__(
        self,
        provider: Any,
        processors: tuple[Any, ...],
        exporter: Any,
        batch: int,
        task_json: Callable[[Any, Any, Any], str | None],
    ):
        super().__init__(provider, processors, task_json)
        from .otlpjson import SpecEncoder

        encoder = SpecEncoder(provider.resource, SCOPE_NAME, __version__)
        self._encode, self._frame = encoder.encode, encoder.frame
        self._exporter = exporter
        self._batch = batch

    def _put(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        chunk = self._encode(trace_id, flags, state, parent, specs, self.new_span_id)
        self._exporter.hold(chunk, len(specs), self._frame, self._batch)

    def _put_task(self, encoded: str) -> None:
        self._exporter.hold(encoded, PLAIN_TASK_SPANS, self._frame, self._batch)

    def flush(self) -> None:
        self._exporter.write_held()


class OtlpSink(_DirectSink):
    """OTLP/HTTP alone: spans as protobuf bytes (``otlpproto.SpecProtoEncoder``,
    ``plaintask.task_proto``), one ``EncodedSpans`` item per task in the batch
    processor's queue; its exporter (``otlpproto.OtlpHttpOutlet``) sends them."""

    def __init__(
        self,
        provider: Any,
        processors: tuple[Any, ...],
        emit: Any,
        encoder: Any,
        task_proto: Callable[[Any, Any, Any], bytes | None],
    ):
        super().__init__(provider, processors, task_proto)
        from .otlpproto import EncodedSpans

        self._queue_item, self._encode, self._Encoded = emit, encoder.encode, EncodedSpans

    def _put(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        data = self._encode(trace_id, flags, state, parent, specs, self.new_span_id)
        self._queue_item(self._Encoded(data, len(specs)))

    def _put_task(self, encoded: bytes) -> None:
        self._queue_item(self._Encoded(encoded, PLAIN_TASK_SPANS))


#: Providers that ``configure()`` set up with one of tracedpool's own exporters alone:
#: the provider, weakly, to what makes its pools' sink.
_own_pipelines: weakref.WeakKeyDictionary[Any, Callable[[Any], Sink]] = weakref.WeakKeyDictionary()


def _only_processors(provider: Any) -> tuple[Any, ...] | None:
    processors = _sdk.span_processors(_sdk.span_processor(provider))
    return processors if processors is not None and len(processors) == 1 else None


def own_file_pipeline(
    provider: Any, exporter: Any, batch: int, task_text: Callable[[Any, Any, Any], str | None]
) -> None:
    """``configure()`` built ``provider`` to export only to ``exporter`` (the embedded
    default's file): pools using it write their own spans there (``FileSink``), a plain
    task's straight from its record with ``task_text`` (``plaintask.task_json``)."""
    processors = _only_processors(provider)
    if processors is not None:
        _own_pipelines[provider] = lambda p: FileSink(p, processors, exporter, batch, task_text)


def own_otlp_pipeline(
    provider: Any, encoder: Any, task_bytes: Callable[[Any, Any, Any], bytes | None]
) -> None:
    """``configure()`` built ``provider`` to export only through a batch processor in
    front of ``otlpproto.OtlpHttpOutlet``: pools using it queue their own spans there,
    encoded by ``encoder`` (``OtlpSink``), a plain task's straight from its record with
    ``task_bytes`` (``plaintask.task_proto``)."""
    processors = _only_processors(provider)
    emit = _sdk.batch_emit(processors[0]) if processors is not None else None
    if processors is not None and emit is not None:
        _own_pipelines[provider] = lambda p: OtlpSink(p, processors, emit, encoder, task_bytes)


_LOW_64 = _sdk.LOW_64
_DEFAULT_TRACE_STATE = trace.DEFAULT_TRACE_STATE


class ApiSink(Sink):
    """Any non-SDK provider: replay specs through the public API, off the hot path."""

    def __init__(self, provider: Any) -> None:
        import random

        self._tracer = provider.get_tracer(SCOPE_NAME, __version__)
        self._rand = random.Random()
        self._lock = threading.Lock()

    def new_span_id(self) -> int:
        with self._lock:
            return self._rand.getrandbits(64) or 1

    def new_trace_id(self) -> int:
        with self._lock:
            return self._rand.getrandbits(128) or 1

    def sample(self, name: str, attributes: Any) -> tuple[int, int, int, Any, Any] | None:
        parent = trace.get_current_span().get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self.new_trace_id()
        return trace_id, self.new_span_id(), 1, None, parent if parent.is_valid else None

    def new_trace(self, name: str) -> tuple[int, int, int, Any] | None:
        return self.new_trace_id(), self.new_span_id(), 1, None

    def emit(
        self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[SpanSpec]
    ) -> None:
        from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode

        made: dict[int, Any] = {}
        for name, span_id, parent_id, kind, start, end, attrs, events, status, links in specs:
            if parent_id == 0:
                parent_span = NonRecordingSpan(parent) if parent is not None else None
            else:
                parent_span = made.get(parent_id)
            ctx = (
                trace.set_span_in_context(parent_span, otel_context.Context())
                if parent_span is not None
                else otel_context.Context()
            )
            span = self._tracer.start_span(
                name,
                context=ctx,
                kind=trace.SpanKind(kind),
                attributes=attrs,
                links=[Link(SpanContext(t, s, False, trace.TraceFlags(f))) for t, s, f in links],
                start_time=start,
            )
            for ev_name, t, a in events:
                span.add_event(ev_name, a, t)
            if status:
                span.set_status(Status(StatusCode.ERROR, status[1]))
            span.end(end_time=end)
            made[span_id] = span


def resolve_sink(provider: Any) -> Sink | None:
    """The sink for a provider, or None when it is the API's proxy or no-op provider."""
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    sdk_provider: Any = None
    try:
        from opentelemetry.sdk import trace as sdk_trace

        sdk_provider = sdk_trace.TracerProvider
    except ImportError:  # pragma: no cover - SDK not installed
        pass
    if sdk_provider is not None and isinstance(provider, sdk_provider):
        if _sdk.provider_disabled(provider):  # OTEL_SDK_DISABLED
            return None
        if hasattr(provider, "id_generator") and _sdk.span_processor(provider) is not None:
            own = _own_pipelines.get(provider)
            return own(provider) if own is not None else SdkSink(provider)
    return ApiSink(provider)


# -- worker side ---------------------------------------------------------------------------
class _WorkerTracing:
    def __init__(self) -> None:
        self.spans: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.ok = False


# This worker process's collector, set up by its first traced task (or at start when an
# SDK provider was inherited). Kept here, not in the wire module's WorkerState, so the
# worker side imports tracing and tracing imports nothing of the worker side.
_worker_tracing: _WorkerTracing | None = None


def _serialize(span: Any) -> tuple[Any, ...]:
    ctx = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    status = span.status
    return (
        span.name,
        ctx.trace_id,
        ctx.span_id,
        parent.span_id if parent is not None else 0,
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events],
        (status.status_code.value, status.description),
        scope.name if scope is not None else "",
        scope.version if scope is not None else None,
        [
            (
                lk.context.trace_id,
                lk.context.span_id,
                int(lk.context.trace_flags),
                dict(lk.attributes or {}),
            )
            for lk in span.links
        ],
        int(ctx.trace_flags),
    )


def _setup_worker_tracing() -> _WorkerTracing:
    global _worker_tracing
    state = _worker_tracing = _WorkerTracing()
    try:
        from opentelemetry.sdk.trace import SpanProcessor
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    except ImportError:  # pragma: no cover - no SDK in the worker: propagate only
        _attach_base_context()
        return state

    class _Collector(SpanProcessor):
        def on_end(self, span: Any) -> None:
            try:
                item = _serialize(span)
            except Exception:
                _dropped_worker_span()
                return
            with state.lock:
                state.spans.append(item)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    collector = _Collector()
    provider = trace.get_tracer_provider()
    if isinstance(provider, SdkProvider):
        # Inherited through fork, or configured by the worker's own code: its span
        # processors would export from here and lose the spans at os._exit. Route its
        # spans to the parent instead, for tracers already handed out too.
        _sdk.replace_span_processors(provider, (collector,))
    elif isinstance(provider, trace.ProxyTracerProvider):
        own = SdkProvider(sampler=ParentBased(ALWAYS_ON))
        own.add_span_processor(collector)
        trace.set_tracer_provider(own)
    state.ok = True
    _attach_base_context()
    return state


_warned_dropped_span = False


def _dropped_worker_span() -> None:
    """A span the task's code ended in the worker could not be shipped to the parent:
    say so once per worker (with the traceback), then drop such spans quietly."""
    global _warned_dropped_span
    if not _warned_dropped_span:
        _warned_dropped_span = True
        logging.getLogger("tracedpool").warning(
            "tracedpool: a span ended in worker %d could not be sent to the parent and "
            "was dropped; further such spans are dropped without a word",
            os.getpid(),
            exc_info=True,
        )


def _attach_base_context() -> None:
    """Run the worker, between traced tasks, under a valid but unsampled parent.

    Under fork the worker's context is whatever the forking thread had current then (a
    stale request span), and a task that was not sampled carries no context at all:
    either way, spans that task code makes would otherwise be recorded as children of
    the wrong span or as orphan roots. Under this parent, parent-based samplers drop
    them, as they would have been in the caller's process.
    """
    import random

    rng = random.SystemRandom()
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, True, trace.TraceFlags(0)
        )
    )
    otel_context.attach(trace.set_span_in_context(span, otel_context.Context()))


def worker_init_tracing() -> None:
    """At worker start: if an SDK provider was inherited (fork), take it over now.

    No SDK is no failure (nothing was inherited); a take-over that fails raises, and
    the worker reports it to the parent (``tracedpool._worker.wire``)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    except ImportError:
        return  # no SDK here, so none was inherited; a traced task still propagates context

    if isinstance(trace.get_tracer_provider(), SdkProvider):
        _setup_worker_tracing()  # what it raises, the worker reports to the parent (wire)


def worker_setup_tracing() -> None:
    """Before a worker's first traced task: set up its collector, unless that is done.

    Raises what the set-up raises (the worker reports it to the parent, once); a
    failed set-up is not retried, and tasks run on, attached to their context."""
    if _worker_tracing is None:
        _setup_worker_tracing()


def worker_attach(trace_info: tuple[int, int, int]) -> Any:
    """Make a sampled task's worker-run span current in the worker (after
    ``worker_setup_tracing``)."""
    trace_id, span_id, flags = trace_info
    span = trace.NonRecordingSpan(
        trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(flags))
    )
    return otel_context.attach(trace.set_span_in_context(span, otel_context.Context()))


def worker_detach(token: Any) -> list[tuple[Any, ...]] | None:
    """Leave the task's context; return the spans task code ended meanwhile."""
    otel_context.detach(token)  # the API's detach logs and swallows its own failures
    state = _worker_tracing
    if state is None or not state.spans:
        return None
    with state.lock:
        spans: list[tuple[Any, ...]] = state.spans
        state.spans = []
    return spans
