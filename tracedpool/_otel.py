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

import inspect
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from ._version import __version__
from ._wire import WORKER

SCOPE_NAME = "tracedpool"

# A span spec: (name, span_id, parent_span_id, kind, start_ns, end_ns, attributes,
# events, status, links). parent_span_id 0 means "the task's remote parent" for the
# task span itself (from the record), events are (name, t_ns, attributes), status is
# (is_error, description) or None, links are (trace_id, span_id, flags) tuples.
Spec = tuple[Any, ...]


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

    def new_trace_id(self) -> int:
        raise NotImplementedError

    def emit(self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[Spec]) -> None:
        raise NotImplementedError

    def emit_foreign(self, spans: Sequence[tuple[Any, ...]]) -> None:
        """Spans made by task code in a worker, as the worker's collector shipped them."""


class SdkSink(Sink):
    def __init__(self, provider: Any) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._resource = provider.resource
        # The provider's composite processor: what Span.end() itself calls.
        self._processor = provider._active_span_processor
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

    def new_span_id(self) -> int:
        return int(self._ids.generate_span_id())

    def new_trace_id(self) -> int:
        return int(self._ids.generate_trace_id())

    def sample(self, name: str, attributes: Any) -> tuple[int, int, int, Any, Any] | None:
        current = trace.get_current_span().get_span_context()
        parent: Any = current if current.is_valid else None
        trace_id = current.trace_id if parent is not None else self._ids.generate_trace_id()
        result = self._sampler.should_sample(None, trace_id, name, trace.SpanKind.INTERNAL)
        if not result.decision.is_recording():
            return None
        flags = 1 if result.decision.is_sampled() else 0
        return trace_id, self._ids.generate_span_id(), flags, result.trace_state, parent

    def new_trace(self, name: str) -> tuple[int, int, int, Any] | None:
        trace_id = self._ids.generate_trace_id()
        result = self._sampler.should_sample(
            otel_context.Context(), trace_id, name, trace.SpanKind.INTERNAL
        )
        if not result.decision.is_recording():
            return None
        flags = 1 if result.decision.is_sampled() else 0
        return trace_id, self._ids.generate_span_id(), flags, result.trace_state

    def emit(self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[Spec]) -> None:
        SC, RS = self._SpanContext, self._ReadableSpan
        tflags = self._flags[flags]
        kinds, resource, scope, ok = self._kinds, self._resource, self._scope, self._ok
        on_end = self._processor.on_end
        made: dict[int, Any] = {}  # parents are emitted first: reuse their contexts
        for name, span_id, parent_id, kind, start, end, attrs, events, status, links in specs:
            ctx = SC(trace_id, span_id, False, tflags, state)
            made[span_id] = ctx
            if parent_id == 0:
                parent_ctx = parent
            else:
                parent_ctx = made.get(parent_id) or SC(trace_id, parent_id, False, tflags, state)
            on_end(
                RS(
                    name,
                    ctx,
                    parent_ctx,
                    resource,
                    attrs,
                    [self._Event(n, a, t) for n, t, a in events] if events else (),
                    [self._Link(SC(t, s, False, self._flags[f])) for t, s, f in links]
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

    def emit(self, trace_id: int, flags: int, state: Any, parent: Any, specs: list[Spec]) -> None:
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


def global_provider_unset() -> bool:
    """True while no global TracerProvider has been set (the API's proxy is in place).

    Checked at every submit of a pool that follows the global provider, so it reads the
    API's module attribute (set once, by ``set_tracer_provider``) instead of calling
    ``get_tracer_provider()``; an API without that attribute falls back to the call.
    """
    if _HAS_PROVIDER_GLOBAL:
        return trace._TRACER_PROVIDER is None  # type: ignore[attr-defined]
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


_HAS_PROVIDER_GLOBAL = hasattr(trace, "_TRACER_PROVIDER")


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
        if getattr(provider, "_disabled", False):  # OTEL_SDK_DISABLED
            return None
        if hasattr(provider, "_active_span_processor") and hasattr(provider, "id_generator"):
            return SdkSink(provider)
    return ApiSink(provider)


# -- worker side ---------------------------------------------------------------------------
class _WorkerTracing:
    def __init__(self) -> None:
        self.spans: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.ok = False


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
    state = _WorkerTracing()
    WORKER.tracing = state
    try:
        from opentelemetry.sdk.trace import SpanProcessor
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    except ImportError:  # pragma: no cover - no SDK in the worker: propagate only
        _attach_base_context()
        return state

    class _Collector(SpanProcessor):  # type: ignore[misc]
        def on_end(self, span: Any) -> None:
            try:
                item = _serialize(span)
            except Exception:
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
        multi = provider._active_span_processor
        with multi._lock:
            multi._span_processors = (collector,)
    elif isinstance(provider, trace.ProxyTracerProvider):
        own = SdkProvider(sampler=ParentBased(ALWAYS_ON))
        own.add_span_processor(collector)
        trace.set_tracer_provider(own)
    state.ok = True
    _attach_base_context()
    return state


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
    """At worker start: if an SDK provider was inherited (fork), take it over now."""
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    if isinstance(trace.get_tracer_provider(), SdkProvider):
        _setup_worker_tracing()


def worker_attach(trace_info: tuple[int, int, int]) -> Any:
    """Make a sampled task's worker-run span current in the worker."""
    if WORKER.tracing is None:
        _setup_worker_tracing()
    trace_id, span_id, flags = trace_info
    span = trace.NonRecordingSpan(
        trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(flags))
    )
    return otel_context.attach(trace.set_span_in_context(span, otel_context.Context()))


def worker_detach(token: Any) -> list[tuple[Any, ...]] | None:
    """Leave the task's context; return the spans task code ended meanwhile."""
    try:
        otel_context.detach(token)
    except Exception:
        pass
    state = WORKER.tracing
    if state is None or not state.spans:
        return None
    with state.lock:
        spans: list[tuple[Any, ...]] = state.spans
        state.spans = []
    return spans
