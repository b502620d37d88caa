"""``tracedpool.configure()``: one call to set up the OpenTelemetry SDK for tracing.

For services that have not configured OpenTelemetry themselves. It never replaces a
provider the application already installed: it returns that one, and says so.

Which exporter, in order (the first rule that applies wins):

1. ``OTEL_TRACES_EXPORTER``, if set: a comma-separated list of ``otlp``, ``console``,
   ``tracedpool_jsonl`` (the embedded default), any name installed under the
   ``opentelemetry_traces_exporter`` entry point, or ``none`` alone.
2. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, if set: OTLP.
3. Otherwise the embedded default: OTLP/JSON lines in a private local file
   (``tracedpool._telemetry.jsonl``), so nothing needs to be running.

OTLP uses ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``:
``http/protobuf`` (the specification's default) or ``grpc``. The exporters themselves
read the endpoint, headers, timeout, compression and certificate variables.
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` are honoured; bad values raise ``ValueError`` naming the
variable and the rule, before anything is installed.

Each exporter sits behind the SDK's ``BatchSpanProcessor``. Unless
``OTEL_BSP_MAX_QUEUE_SIZE`` or ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` is set, it is sized
for a pool's bursts (``batch_sizing``): a queue of 8,192 spans, batches of 1,024.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

from . import names as N
from .otel import own_file_pipeline, own_otlp_pipeline
from .plaintask import task_json, task_proto
from .sdk import global_provider_unset, otlp_http_send, queued_spans

log = logging.getLogger("tracedpool")

# The standard variables (OpenTelemetry's specification names; spelled here rather than
# imported from the SDK so the rules can be checked before the SDK is imported).
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_PYTHON_TRACER_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER"

EXPORTER_NAME = N.EXPORTER_NAME  # the embedded default's OTEL_TRACES_EXPORTER name
RULE_EXISTING = "existing provider"
RULE_DISABLED = OTEL_SDK_DISABLED
RULE_DEFAULT = "embedded default"

PROTOCOLS = ("http/protobuf", "grpc")
BUILTIN_EXPORTERS = ("otlp", "console", EXPORTER_NAME, "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

_INSTALL_OTLP = "pip install 'tracedpool[otlp]'"
_INSTALL_SDK = "pip install 'tracedpool[sdk]'"


@dataclass(frozen=True)
class TracingSetup:
    """What ``configure()`` found or did."""

    provider: Any  # the TracerProvider now in use
    installed: bool  # True if configure() created it and made it the global provider
    rule: str  # which rule chose: "existing provider", a variable's name, "embedded default"
    exporters: tuple[str, ...]  # e.g. ("otlp http/protobuf",) or ("tracedpool_jsonl",)
    trace_file: Path | None  # the embedded default's file, when it is one of the exporters

    def describe(self) -> str:
        """One line for a log or a demo's printout."""
        if self.rule == RULE_EXISTING:
            return "tracing: the application's own provider is in use; tracedpool left it alone"
        if self.rule == RULE_DISABLED:
            return f"tracing: disabled by {OTEL_SDK_DISABLED}"
        what = ", ".join(self.exporters) or "no exporter"
        where = f" -> {self.trace_file}" if self.trace_file is not None else ""
        return f"tracing: {what}{where} (chosen by {self.rule})"


def configure(
    *,
    service_name: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    trace_file: str | os.PathLike[str] | None = None,
    install: bool = True,
) -> TracingSetup:
    """Set up an SDK ``TracerProvider`` from the standard variables, unless one is set.

    ``service_name``, ``resource_attributes`` and ``trace_file`` are defaults: the
    standard variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and
    ``TRACEDPOOL_TRACE_FILE`` win, so operators can re-point a deployed service without
    a code change. With ``install=False`` the provider is built and returned but not
    made global (pass it to ``TracedProcessPoolExecutor(tracer_provider=...)``).

    Raises ``ValueError`` for a bad variable (naming it and the rule) and ``ImportError``
    naming the extra to install when the SDK or a chosen exporter is missing.
    """
    if install:
        existing = _existing_provider()
        if existing is not None:
            log.info("tracedpool: a tracer provider is already set; configure() leaves it")
            return TracingSetup(existing, False, RULE_EXISTING, (), None)
    if os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return TracingSetup(trace.get_tracer_provider(), False, RULE_DISABLED, (), None)
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise ImportError(
            f"tracedpool.configure() needs the OpenTelemetry SDK: {_INSTALL_SDK}"
        ) from e

    # Everything that can be wrong is checked before anything is created or installed.
    names, rule = exporter_names()
    sampler = sampler_from_env()
    exporters: list[tuple[str, Any]] = [_make_exporter(n, trace_file) for n in names]

    attributes: dict[str, Any] = dict(resource_attributes or {})
    if service_name is not None:
        attributes["service.name"] = service_name
    attributes.update(OTELResourceDetector().detect().attributes)  # the variables win
    # The SDK's own exit-time shutdown waits out every export retry (about 31 s with the
    # collector down), past a container's grace period; ours is bounded (below).
    provider = TracerProvider(
        resource=Resource.create(attributes), sampler=sampler, shutdown_on_exit=False
    )
    queue_size, batch_size = batch_sizing()
    # One of tracedpool's own exporters alone: pools encode their own spans for it.
    outlet = _otlp_outlet(provider, exporters[0][1]) if len(exporters) == 1 else None
    processors = [
        BatchSpanProcessor(
            outlet or exporter, max_queue_size=queue_size, max_export_batch_size=batch_size
        )
        for _, exporter in exporters
    ]
    for processor in processors:
        provider.add_span_processor(processor)
    _ExitShutdown(provider, processors, rule)
    if names == [EXPORTER_NAME]:
        own_file_pipeline(
            provider, exporters[0][1], batch_size or POOL_MAX_EXPORT_BATCH_SIZE, task_json
        )
    elif outlet is not None:
        own_otlp_pipeline(provider, outlet.encoder, task_proto)

    file = next((e.path for n, e in exporters if n == EXPORTER_NAME), None)
    setup = TracingSetup(provider, install, rule, tuple(n for n, _ in exporters), file)
    if install:
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:  # another thread won the race
            provider.shutdown()
            return TracingSetup(trace.get_tracer_provider(), False, RULE_EXISTING, (), None)
    log.info("tracedpool: %s", setup.describe())
    return setup


#: The batch processor's queue and export batch when neither ``OTEL_BSP_MAX_QUEUE_SIZE``
#: nor ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` is set. The SDK's defaults (2,048 and 512) are
#: sized for spans made one at a time by request handlers; a pool's emitter hands over
#: a burst's spans (six per task) as fast as it builds them. It waits for a full queue
#: to drain rather than overflow it (``Emitter._room``), and a larger queue and batch
#: mean fewer such waits and fewer, larger writes and requests. At most ~8,192 finished
#: spans are held (a few MB).
POOL_MAX_QUEUE_SIZE = 8192
POOL_MAX_EXPORT_BATCH_SIZE = 1024


def batch_sizing(environ: Mapping[str, str] | None = None) -> tuple[int | None, int | None]:
    """``BatchSpanProcessor``'s (max_queue_size, max_export_batch_size) sized for a pool,
    or (None, None), so that the SDK reads the variables, when the user sized the batch
    processor themselves."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_BSP_MAX_QUEUE_SIZE") or env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        return None, None
    return POOL_MAX_QUEUE_SIZE, POOL_MAX_EXPORT_BATCH_SIZE


DEFAULT_EXIT_EXPORT_TIMEOUT = 3.0


def exit_export_timeout() -> float:
    """``TRACEDPOOL_EXIT_EXPORT_TIMEOUT`` in seconds; a bad value falls back to the
    default with a warning (this is read at exit, where raising helps no one)."""
    raw = os.environ.get(N.ENV_EXIT_EXPORT_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_EXIT_EXPORT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        log.warning(
            "tracedpool: %s=%r is not a number of seconds >= 0; using %s",
            N.ENV_EXIT_EXPORT_TIMEOUT,
            raw,
            DEFAULT_EXIT_EXPORT_TIMEOUT,
        )
        return DEFAULT_EXIT_EXPORT_TIMEOUT
    return value


class _ExitShutdown:
    """Shuts a ``configure()``d provider down at interpreter exit, waiting at most
    ``TRACEDPOOL_EXIT_EXPORT_TIMEOUT``.

    The shutdown (a last flush of each batch processor) runs on a daemon thread; if it
    has not finished in time, the spans still queued are counted, said once, and left:
    the process exits whatever the collector does (refused, black-holed, slow). The
    thread is started here, idle until exit, because 3.12 refuses to start threads once
    the interpreter is shutting down, which is when atexit callbacks run."""

    def __init__(self, provider: Any, processors: list[Any], rule: str) -> None:
        self.provider = provider
        self.processors = processors
        self.rule = rule
        self.go = threading.Event()
        self.done = threading.Event()
        self.pid = os.getpid()
        self.thread = threading.Thread(
            target=self._wait_then_shut_down, name="tracedpool-exit-export", daemon=True
        )
        self.thread.start()
        atexit.register(self.at_exit)

    def _wait_then_shut_down(self) -> None:
        self.go.wait()
        self._shut_down()

    def _shut_down(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:
            log.warning("tracedpool: the tracer provider's shutdown failed", exc_info=True)
        finally:
            self.done.set()

    def at_exit(self) -> None:
        timeout = exit_export_timeout()
        t0 = time.monotonic()
        if os.getpid() == self.pid and self.thread.is_alive():
            self.go.set()
        else:  # a forked child: the idle thread did not come along
            try:
                threading.Thread(target=self._shut_down, daemon=True).start()
            except RuntimeError:  # no thread can start now: shut down here, unbounded
                self._shut_down()
        if self.done.wait(timeout):
            return
        unsent = [queued_spans(p) for p in self.processors]
        known = sum(n for n in unsent if n is not None)
        count = f"{known} span(s)" if None not in unsent else f"at least {known} span(s)"
        log.warning(
            "tracedpool: the trace exporter (chosen by %s) was still sending after %.1f s "
            "at exit; %s still queued were not sent, and the batch in flight may be lost. "
            "%s sets this bound.",
            self.rule,
            time.monotonic() - t0,
            count,
            N.ENV_EXIT_EXPORT_TIMEOUT,
        )


def _otlp_outlet(provider: Any, exporter: Any) -> Any:
    """The SDK's OTLP/HTTP exporter wrapped so that pools can queue spans they encoded
    themselves (``otlpproto.OtlpHttpOutlet``), or None for any other exporter."""
    send = otlp_http_send(exporter)
    if send is None:
        return None
    from .._version import __version__
    from .otel import SCOPE_NAME
    from .otlpproto import OtlpHttpOutlet, SpecProtoEncoder

    return OtlpHttpOutlet(
        exporter, send, SpecProtoEncoder(provider.resource, SCOPE_NAME, __version__)
    )


def _existing_provider() -> Any:
    """The global provider if the application (or anyone) already set one, else None."""
    if global_provider_unset():
        if not os.environ.get(OTEL_PYTHON_TRACER_PROVIDER):
            return None
        trace.get_tracer_provider()  # the API loads the provider that variable names
        if global_provider_unset():
            return None
    return trace.get_tracer_provider()


# -- the rules ------------------------------------------------------------------------------
def exporter_names() -> tuple[list[str], str]:
    """(exporter names, the rule that chose them), by the documented precedence."""
    raw = os.environ.get(OTEL_TRACES_EXPORTER, "").strip()
    if raw:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        if "none" in names:
            if len(names) > 1:
                raise ValueError(
                    f"{OTEL_TRACES_EXPORTER}={raw!r}: 'none' means no exporter and cannot "
                    "be combined with others"
                )
            return [], OTEL_TRACES_EXPORTER
        return names, OTEL_TRACES_EXPORTER
    for var in (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT):
        if os.environ.get(var, "").strip():
            return ["otlp"], var
    return [EXPORTER_NAME], RULE_DEFAULT


def otlp_protocol() -> str:
    """The OTLP protocol for traces: the traces variable, then the general one."""
    for var in (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL):
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        value = raw.lower()
        if value == "http/json":
            raise ValueError(
                f"{var}={raw!r}: the Python OTLP exporters do not send http/json; "
                f"use one of {', '.join(PROTOCOLS)}"
            )
        if value not in PROTOCOLS:
            raise ValueError(f"{var}={raw!r}: must be one of {', '.join(PROTOCOLS)}")
        return value
    return "http/protobuf"


def sampler_from_env() -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) name; strict, unlike the SDK's
    own parsing, which warns and falls back to a default."""
    from opentelemetry.sdk.trace import sampling

    name = os.environ.get(OTEL_TRACES_SAMPLER, "").strip().lower() or "parentbased_always_on"
    arg = os.environ.get(OTEL_TRACES_SAMPLER_ARG, "").strip()
    if name in ("traceidratio", "parentbased_traceidratio"):
        ratio = 1.0
        if arg:
            try:
                ratio = float(arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(
                    f"{OTEL_TRACES_SAMPLER_ARG}={arg!r}: the {name} sampler takes a "
                    "probability between 0 and 1"
                )
        if name == "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        return sampling.ParentBasedTraceIdRatio(ratio)
    fixed = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if name in fixed:
        return fixed[name]
    factory = _entry_point("opentelemetry_traces_sampler", name)
    if factory is None:
        raise ValueError(
            f"{OTEL_TRACES_SAMPLER}={name!r}: unknown sampler; use one of "
            f"{', '.join(SAMPLERS)} or a name installed under the "
            "opentelemetry_traces_sampler entry point"
        )
    return factory(arg or None)


def _entry_point(group: str, name: str) -> Any:
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    return None


def _make_exporter(name: str, trace_file: Any) -> tuple[str, Any]:
    if name == "otlp":
        protocol = otlp_protocol()
        module = (
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
            if protocol == "grpc"
            else "opentelemetry.exporter.otlp.proto.http.trace_exporter"
        )
        try:
            import importlib

            cls = importlib.import_module(module).OTLPSpanExporter
        except ImportError as e:
            package = "opentelemetry-exporter-otlp-proto-" + (
                "grpc" if protocol == "grpc" else "http"
            )
            raise ImportError(
                f"OTLP over {protocol} needs {package}, which is not installed: {_INSTALL_OTLP}"
            ) from e
        return f"otlp {protocol}", cls()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return name, ConsoleSpanExporter()
    if name == EXPORTER_NAME:
        from .jsonl import JsonLinesSpanExporter

        return name, JsonLinesSpanExporter(trace_file)
    cls = _entry_point("opentelemetry_traces_exporter", name)
    if cls is None:
        raise ValueError(
            f"{OTEL_TRACES_EXPORTER}: unknown exporter {name!r}; use "
            f"{', '.join(BUILTIN_EXPORTERS)} or a name installed under the "
            "opentelemetry_traces_exporter entry point"
        )
    return name, cls()
