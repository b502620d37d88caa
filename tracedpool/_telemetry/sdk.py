"""The OpenTelemetry boundary: every private name of the SDK and the API, in one module.

tracedpool depends on the public API; where a private name buys a large saving or is the
only way to do something, it is read here and nowhere else (tests/test_boundaries.py
fails if another module reads one). Each use is probed once, at import or when the
object is first seen, and has a fallback that keeps spans correct. What is read, and
the fallback where the SDK or API lacks it:

- ``trace._TRACER_PROVIDER`` (API), at every ``submit``: is a global provider set yet?
  Else ``get_tracer_provider()`` and an ``isinstance``.
- ``metrics._internal._METER_PROVIDER`` (API), per finished traced task of a pool
  waiting for a meter provider. Else ``get_meter_provider()`` and a type check.
- ``TracerProvider._active_span_processor``, the composite processor ``Span.end``
  calls, and ``_disabled`` (``OTEL_SDK_DISABLED``). Else ``ApiSink``: spans replayed
  through the public tracer (slower), and the provider taken as enabled.
- ``SynchronousMultiSpanProcessor._span_processors`` and ``BatchSpanProcessor.
  _batch_processor``, to route a task's spans; ``BatchProcessor``'s ``_queue`` and
  limits, to queue them in one go. Else each processor's ``on_end``, span by span.
- The built-in samplers' ``_decision``, ``_root`` and ``_*_parent_*`` fields, to decide
  as they would. Else ``should_sample`` per task.
- ``SpanContext``'s tuple layout, and ``RandomIdGenerator`` being ``getrandbits``. Else
  the public constructor and the generator's methods.
- The composite's ``_lock`` and ``_span_processors``, for a worker's take-over of an
  inherited provider. Else the worker keeps the inherited processors (task code's
  spans may be lost at the worker's exit).
- ``BatchProcessor._queue``, for the spans still queued at exit, and its free room
  (``span_room``), which the emitter waits on rather than overflow it. Else unknown
  (None): the emitter never waits.

A fallback taken because the SDK is installed but laid out differently is said once per
feature through the ``tracedpool`` logger (``degraded()`` lists them): a lost fast path at
DEBUG (spans stay correct), a lost function at WARNING. No SDK at all is the expected
no-op case and says nothing.

Every decision is made once per interpreter or per provider; the per-task paths use
the callables chosen here and pay no probe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import metrics as _metrics_api
from opentelemetry import trace

log = logging.getLogger("tracedpool")

LOW_64 = (1 << 64) - 1

_A = TypeVar("_A")
_R = TypeVar("_R")

_degraded: dict[str, str] = {}


def degraded() -> dict[str, str]:
    """The SDK features this interpreter runs without, each with what it costs."""
    return dict(_degraded)


def _degrade(feature: str, consequence: str, level: int = logging.DEBUG) -> None:
    """Say once per feature that a probe failed and which fallback is taken."""
    if feature not in _degraded:
        _degraded[feature] = consequence
        log.log(level, "tracedpool: this OpenTelemetry SDK has no %s; %s", feature, consequence)


def _sdk_class(module: str, name: str) -> Any:
    """A class of the SDK, or None; an SDK that is installed but lacks it is said once."""
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError:
        if SDK_INSTALLED:  # pragma: no cover - SDK reshaped
            _degrade(f"{module}.{name}", "the generic path is used")
        return None
    except AttributeError:  # pragma: no cover - SDK reshaped
        _degrade(f"{module}.{name}", "the generic path is used")
        return None


def _sdk_installed() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


SDK_INSTALLED = _sdk_installed()


# -- the global providers (API) ------------------------------------------------------------
_HAS_PROVIDER_GLOBAL = hasattr(trace, "_TRACER_PROVIDER")
if not _HAS_PROVIDER_GLOBAL:  # pragma: no cover - a differently laid out API
    _degrade("trace._TRACER_PROVIDER", "each submit asks get_tracer_provider()")


def global_provider_unset() -> bool:
    """True while no global TracerProvider has been set (the API's proxy is in place).

    Checked at every submit of a pool that follows the global provider, so it reads the
    API's module attribute (set once, by ``set_tracer_provider``) instead of calling
    ``get_tracer_provider()``; an API without that attribute falls back to the call.
    """
    if _HAS_PROVIDER_GLOBAL:
        return trace._TRACER_PROVIDER is None
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


try:  # where the API keeps the global meter provider (None until one is set)
    from opentelemetry.metrics import _internal as _metrics_internal

    _HAS_METER_GLOBAL = hasattr(_metrics_internal, "_METER_PROVIDER")
except ImportError:  # pragma: no cover - a differently laid out API
    _metrics_internal = None  # type: ignore[assignment]
    _HAS_METER_GLOBAL = False
if not _HAS_METER_GLOBAL:  # pragma: no cover
    _degrade("metrics._internal._METER_PROVIDER", "the meter provider is asked for by call")


def global_meter_provider() -> Any:
    """The global MeterProvider, or None while it is unset or the no-op one."""
    if _HAS_METER_GLOBAL:
        provider = _metrics_internal._METER_PROVIDER
        if provider is None:
            return None
    else:
        provider = _metrics_api.get_meter_provider()
        if type(provider).__name__ == "_ProxyMeterProvider":
            return None
    if isinstance(provider, _metrics_api.NoOpMeterProvider):
        return None
    return provider


def when_meter_provider_set(then: Callable[[_A], _R | None]) -> Callable[[_A], _R | None]:
    """``then``, behind a guard that answers None while no global MeterProvider is set.

    The guard is called per finished traced task of a pool that follows the global
    provider and had none when it was built, so the unset case is one attribute read in
    one call, as before the boundary moved here."""
    if not _HAS_METER_GLOBAL:  # pragma: no cover
        return then
    api = _metrics_internal

    def guarded(arg: _A) -> _R | None:
        if api._METER_PROVIDER is None:
            return None
        return then(arg)

    guarded.__doc__ = then.__doc__
    return guarded


# -- the SDK's tracer provider ------------------------------------------------------------------
def provider_disabled(provider: Any) -> bool:
    """The SDK provider was built with ``OTEL_SDK_DISABLED=true`` (it records nothing)."""
    return bool(getattr(provider, "_disabled", False))


def span_processor(provider: Any) -> Any:
    """The SDK provider's composite span processor (what ``Span.end`` calls), or None."""
    processor = getattr(provider, "_active_span_processor", None)
    if processor is None:
        _degrade(
            "TracerProvider._active_span_processor",
            "spans are replayed through the public tracer (slower)",
            logging.WARNING,
        )
    return processor


def replace_span_processors(provider: Any, processors: tuple[Any, ...]) -> bool:
    """Make ``processors`` the only ones of an SDK provider, for tracers already handed
    out too (a worker's take-over of an inherited provider). False, said once, where
    the composite is not laid out as read here."""
    multi: Any = getattr(provider, "_active_span_processor", None)
    lock = getattr(multi, "_lock", None)
    if lock is None or not isinstance(getattr(multi, "_span_processors", None), tuple):
        _degrade(
            "SynchronousMultiSpanProcessor._span_processors",
            "a worker keeps the tracer provider it inherited, and spans that task code "
            "creates there may be lost at the worker's exit",
            logging.WARNING,
        )
        return False
    with lock:
        multi._span_processors = processors
    return True


def span_processors(composite: Any) -> tuple[Any, ...] | None:
    """The processors of a provider's composite, as the tuple it holds (the SDK makes a
    new one on ``add_span_processor``, so identity says whether they changed), or None
    where the composite is not laid out as read here."""
    processors = getattr(composite, "_span_processors", None)
    return processors if isinstance(processors, tuple) else None


def wake_batch_workers(composite: Any) -> None:
    """Wake the export thread of each SDK ``BatchSpanProcessor`` behind a provider.

    Its ``emit`` wakes the thread only when the wake-up flag is clear, and the thread
    clears it after exporting; spans queued in between find it still set, so the
    thread then sleeps out the whole schedule delay (5 s by default) with a full batch
    queued. The emitter, waiting for room, wakes it again (a spurious wake exports
    nothing). A private attribute, probed: where it is missing, nothing happens."""
    for processor in span_processors(composite) or ():
        event = getattr(getattr(processor, "_batch_processor", None), "_worker_awaken", None)
        if event is not None and callable(getattr(event, "set", None)):
            event.set()


def batch_emit(processor: Any) -> Callable[[Any], None] | None:
    """An SDK ``BatchSpanProcessor``'s queueing call, which takes any item for its
    exporter (``on_end`` takes only SDK spans), or None where it is not laid out as
    read here."""
    emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
    return emit if callable(emit) else None


def otlp_http_send(exporter: Any) -> Callable[[bytes], bool] | None:
    """Sends an encoded ``ExportTraceServiceRequest`` with the SDK's OTLP/HTTP span
    exporter's own client (its endpoint, headers, compression, timeout and retries):
    request bytes -> delivered?. None for another exporter, or where that one is not
    laid out as read here (said once)."""
    cls = _sdk_class("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter")
    if cls is None or type(exporter) is not cls:
        return None
    send = getattr(getattr(exporter, "_client", None), "export", None)
    if not callable(send):
        _degrade(
            "OTLPSpanExporter._client.export",
            "configure()'s OTLP/HTTP pipeline builds SDK spans and lets the SDK encode them",
            logging.INFO,
        )
        return None

    def deliver(data: bytes) -> bool:
        return bool(getattr(send(data), "success", False))

    return deliver


def queued_spans(processor: Any) -> int | None:
    """Spans waiting in an SDK ``BatchSpanProcessor``'s queue (an item that stands for
    several, ``otlpproto.EncodedSpans``, counts as its ``count``), or None where the
    SDK's layout is not the one read here (a private attribute, probed)."""
    batch = getattr(processor, "_batch_processor", None)
    queue = getattr(batch, "_queue", None)
    try:
        return sum(getattr(item, "count", 1) for item in list(queue)) if queue is not None else None
    except TypeError:
        return None


def span_room(composite: Any) -> tuple[int, int] | None:
    """(free slots, size) of the fullest SDK ``BatchSpanProcessor`` queue among a
    provider's processors, or None when there is none (or the SDK's layout is not the
    one read here: private attributes, probed). The emitter waits on it rather than overflow the
    queue, where the SDK drops spans ("Queue full") that a moment later would fit."""
    processors = getattr(composite, "_span_processors", None)
    if not isinstance(processors, tuple):
        return None
    room: tuple[int, int] | None = None
    for processor in processors:
        queue: Any = getattr(getattr(processor, "_batch_processor", None), "_queue", None)
        size = getattr(queue, "maxlen", None)
        if not isinstance(size, int):
            continue
        try:
            free = size - len(queue)
        except TypeError:
            continue
        if room is None or free < room[0]:
            room = (free, size)
    return room


# -- routing a task's finished spans to the processors -------------------------------------
def _does_only(cls: Any, method: str, names: set[str]) -> Any:
    """``cls`` if its ``method`` touches no names but ``names`` (read from its code), else
    None: the routing below relies on what these ``on_end``s do, so a version whose
    ``on_end`` does more keeps the generic call."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    if code is not None and set(code.co_names) <= names:
        return cls
    if cls is not None:  # pragma: no cover - SDK reshaped
        _degrade(f"{cls.__name__}.{method} as read here", "spans are ended one by one")
    return None


_SYNC_MULTI = _does_only(
    _sdk_class("opentelemetry.sdk.trace", "SynchronousMultiSpanProcessor"),
    "on_end",
    {"_span_processors", "on_end"},
)
_BATCH = _does_only(
    _sdk_class("opentelemetry.sdk.trace.export", "BatchSpanProcessor"),
    "on_end",
    {"context", "trace_flags", "sampled", "_batch_processor", "emit"},
)


def _probe_bulk() -> bool:
    """Whether the SDK's batch processor's ``emit`` is the one ``_bulk_queue`` mirrors
    (read from the names its code uses; any change there keeps the per-span ``emit``)."""
    if not SDK_INSTALLED:
        return False
    cls = _sdk_class("opentelemetry.sdk._shared_internal", "BatchProcessor")
    code = getattr(getattr(cls, "emit", None), "__code__", None)
    expected = {
        "_shutdown", "_logger", "info", "_exporting", "_metrics", "drop_items", "_pid",
        "os", "getpid", "_bsp_reset_once", "do_once", "_at_fork_reinit", "len", "_queue",
        "_max_queue_size", "warning", "appendleft", "_max_export_batch_size",
        "_worker_awaken", "is_set", "set",
    }  # fmt: skip
    if code is not None and set(code.co_names) <= expected and "appendleft" in code.co_names:
        return True
    _degrade("BatchProcessor.emit as read here", "a task's spans are queued one by one")
    return False


_BULK_OK = _probe_bulk()


def _each(call: Any) -> Any:
    def each(spans: list[Any]) -> None:
        for span in spans:
            call(span)

    return each


def _bulk_queue(batch: Any) -> Any:
    """A task's spans into a batch processor's queue at once: what ``emit`` does for
    each, when none is to be dropped. Shutdown, a fork, or a full queue take the
    processor's own ``emit`` (its warnings, drop counts and fork reset)."""
    getpid = os.getpid

    def bulk(spans: list[Any]) -> None:
        queue = batch._queue
        if (
            batch._shutdown
            or batch._pid != getpid()
            or len(queue) + len(spans) > batch._max_queue_size
        ):
            for span in spans:
                batch.emit(span)
            return
        queue.extendleft(spans)  # as appendleft, one span after another
        if len(queue) >= batch._max_export_batch_size and not batch._worker_awaken.is_set():
            batch._worker_awaken.set()

    return bulk


class SpanRoutes:
    """Where a task's finished spans go: ``routes(flags)`` gives callables taking a list
    of spans, for unsampled (0) or sampled (1) tasks.

    ``SynchronousMultiSpanProcessor.on_end`` calls every processor's ``on_end`` in
    turn. A ``BatchSpanProcessor``'s ``on_end`` only checks the sampled flag (known
    here: ``flags``) and queues the span with its batch processor, which can take a
    task's spans in one go (``_bulk_queue``). Every other processor gets its own
    ``on_end``, span by span; an unknown composite gets its ``on_end``. The table is
    rebuilt when the provider's processors change (``add_span_processor``).
    """

    __slots__ = ("_cache", "_composite")

    def __init__(self, composite: Any) -> None:
        self._composite = composite
        self._cache: tuple[Any, Any] = (None, ())  # (processors tuple, its routes)

    def routes(self, flags: int) -> tuple[Any, ...]:
        composite = self._composite
        processors = getattr(composite, "_span_processors", None)
        if type(composite) is not _SYNC_MULTI or not isinstance(processors, tuple):
            return (_each(composite.on_end),)
        cached, routes = self._cache
        if processors is not cached:
            sampled: list[Any] = []
            unsampled: list[Any] = []
            for processor in processors:
                batch = getattr(processor, "_batch_processor", None)
                if type(processor) is _BATCH and batch is not None and callable(batch.emit):
                    # An unsampled span never reaches a BatchSpanProcessor's queue.
                    sampled.append(_bulk_queue(batch) if _BULK_OK else _each(batch.emit))
                else:
                    sampled.append(_each(processor.on_end))
                    unsampled.append(_each(processor.on_end))
            routes = (tuple(unsampled), tuple(sampled))
            self._cache = (processors, routes)
        return routes[flags]  # type: ignore[no-any-return]


# -- deciding and building spans without the SDK's per-call overhead --------------------------
def sampling_rule(sampler: Any) -> tuple[Any, ...] | None:
    """The SDK's built-in samplers as data, or None for any other sampler.

    ``(root, remote sampled, remote unsampled, local sampled, local unsampled)``: which
    rule decides a task with no parent, or with a parent of each kind. A rule is True
    (sample), False (drop) or an int: the ``TraceIdRatioBased`` bound on the trace id's
    low 64 bits. These samplers return the parent's trace state and no attributes, and
    their decisions are pure functions of the parent and the trace id, so deciding here
    is exactly what ``should_sample`` would decide, without its five Python calls and a
    ``SamplingResult``. Exact types only, since a subclass may decide differently; the
    exception is the SDK's own subclasses that only pick constructor arguments
    (``_is_sdk_sampler``). A built-in sampler whose private fields are not found keeps
    ``should_sample`` (None).
    """
    try:
        from opentelemetry.sdk.trace import sampling as S
    except ImportError:  # pragma: no cover
        return None

    def leaf(s: Any) -> Any:
        if _is_sdk_sampler(s, S.StaticSampler):
            decision = getattr(s, "_decision", None)
            if decision is S.Decision.RECORD_AND_SAMPLE:
                return True
            if decision is S.Decision.DROP:
                return False
        if (
            _is_sdk_sampler(s, S.TraceIdRatioBased)
            and isinstance(getattr(s, "bound", None), int)
            and getattr(s, "TRACE_ID_LIMIT", None) == LOW_64
        ):
            return s.bound
        return None

    if _is_sdk_sampler(sampler, S.ParentBased):
        names = (
            "_root",
            "_remote_parent_sampled",
            "_remote_parent_not_sampled",
            "_local_parent_sampled",
            "_local_parent_not_sampled",
        )
        rules = tuple(leaf(getattr(sampler, n, None)) for n in names)
        return None if None in rules else rules
    rule = leaf(sampler)
    return None if rule is None else (rule,) * 5


#: What a class body holds besides its methods (ABCs add two names, 3.13 two more).
_CLASS_BOILERPLATE = frozenset(
    {"__module__", "__qualname__", "__doc__", "__abstractmethods__", "_abc_impl"}
    | {"__firstlineno__", "__static_attributes__"}
)


def _is_sdk_sampler(sampler: Any, base: type) -> bool:
    """``sampler`` is a ``base``, or one of the SDK's own subclasses of it that only
    choose its constructor arguments. ``ParentBasedTraceIdRatio`` is one: it is what
    ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` builds. Such a class is defined in
    ``base``'s own module and overrides nothing but ``__init__``, so the sampler decides
    from the same attributes with the same ``should_sample``."""
    cls = type(sampler)
    if cls is base:
        return True
    overrides = getattr(cls, "should_sample", None) is not getattr(base, "should_sample", 0)
    if not issubclass(cls, base) or overrides:
        return False
    for klass in cls.__mro__[: cls.__mro__.index(base)]:
        if klass.__module__ != base.__module__:
            return False
        if set(vars(klass)) - _CLASS_BOILERPLATE - {"__init__"}:
            return False
    return True


def random_bits(ids: Any) -> Any:
    """``random.getrandbits`` when the provider uses the SDK's ``RandomIdGenerator``
    (which is exactly that, retried on the invalid id 0), else None."""
    generator = _sdk_class("opentelemetry.sdk.trace.id_generator", "RandomIdGenerator")
    if generator is not None and type(ids) is generator:
        import random

        return random.getrandbits
    return None


def span_context_maker(SpanContext: Any, TraceFlags: Any) -> Any:
    """``mk(SpanContext, (trace_id, span_id, False, flags, trace_state, True))``: a
    local, valid span context.

    ``SpanContext`` is a tuple whose ``__new__`` fills defaults and computes
    ``is_valid``; for the ids tracedpool makes (never 0, in range) the tuple itself can
    be built in one C call, ``tuple.__new__``. Used only when a probe shows both ways
    give equal objects; else the public constructor.
    """

    def public(cls: Any, fields: tuple[Any, ...]) -> Any:
        return cls(fields[0], fields[1], fields[2], fields[3], fields[4])

    fast = tuple.__new__
    try:
        fields = (3 << 100, 5 << 40, False, TraceFlags(1), trace.DEFAULT_TRACE_STATE, True)
        a, b = public(SpanContext, fields), fast(SpanContext, fields)
        same = type(a) is type(b) and tuple(a) == tuple(b) and a.is_valid and b.is_valid
        same = same and b.trace_state is a.trace_state and bool(b.trace_flags.sampled)
        same = same and not b.is_remote and a.span_id == b.span_id
    except (TypeError, ValueError, AttributeError, IndexError):  # pragma: no cover
        same = False  # a SpanContext that is not this tuple: the public constructor
    if not same:  # pragma: no cover
        _degrade("SpanContext laid out as a plain tuple", "span contexts are built by call")
    return fast if same else public
