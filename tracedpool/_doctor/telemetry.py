"""The ``telemetry`` checks: will this configuration's spans go anywhere? The
OpenTelemetry packages installed and the switches that silence them
(``OTEL_SDK_DISABLED``, an exporter of ``none``, the ``always_off`` sampler), what
``tracedpool.configure()`` would pick, ``service.name``, and the OTLP endpoint
(``endpoint``).
"""

from __future__ import annotations

import os
from typing import Any

from .endpoint import endpoint_check
from .otel_env import ENDPOINT_VARS, service_name
from .result import Check, Options, guarded


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def telemetry_checks(opts: Options) -> list[Check]:
    return [
        guarded("telemetry.sdk", _sdk_check),
        guarded("telemetry.service-name", _service_name_check),
        guarded("telemetry.endpoint", endpoint_check, opts.otlp_endpoint, opts.timeout),
    ]


def _sdk_check() -> Check:
    from opentelemetry import trace

    env = os.environ
    data: dict[str, Any] = {
        "api": dist_version("opentelemetry-api"),
        "sdk": dist_version("opentelemetry-sdk"),
        "exporter_otlp_http": dist_version("opentelemetry-exporter-otlp-proto-http"),
        "exporter_otlp_grpc": dist_version("opentelemetry-exporter-otlp-proto-grpc"),
        "global_provider": type(trace.get_tracer_provider()).__name__,
        "traces_exporter": env.get("OTEL_TRACES_EXPORTER", "otlp"),
        "sampler": env.get("OTEL_TRACES_SAMPLER"),
    }
    if data["sdk"] is None:
        return Check(
            "telemetry.sdk",
            "warn",
            "opentelemetry-sdk is not installed: tracedpool records nothing (and costs nothing)",
            "pip install opentelemetry-sdk and configure a TracerProvider, or run the service "
            "under opentelemetry-instrument",
            data,
        )
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_SDK_DISABLED=true: the SDK is switched off, no span is recorded",
            "unset OTEL_SDK_DISABLED",
            data,
        )
    exporters = {x.strip() for x in data["traces_exporter"].split(",")}
    if exporters == {"none"}:
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_TRACES_EXPORTER=none: spans are recorded but never exported",
            "set OTEL_TRACES_EXPORTER=otlp (or the exporter you use)",
            data,
        )
    if (data["sampler"] or "").strip() == "always_off":
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_TRACES_SAMPLER=always_off: no task is sampled",
            "use parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG",
            data,
        )
    endpoint_set = any(k in env for k in ENDPOINT_VARS)
    if (
        "otlp" in exporters
        and endpoint_set
        and not (data["exporter_otlp_http"] or data["exporter_otlp_grpc"])
    ):
        return Check(
            "telemetry.sdk",
            "warn",
            f"opentelemetry-sdk {data['sdk']} but no OTLP exporter package, although an OTLP "
            "endpoint is configured",
            "pip install opentelemetry-exporter-otlp",
            data,
        )
    configured = (
        "configured in this process"
        if data["global_provider"] not in ("ProxyTracerProvider", "NoOpTracerProvider")
        else "not configured in this process (the service configures its own)"
    )
    # What tracedpool.configure() would pick, by its documented precedence (its default,
    # the trace file, differs from opentelemetry-instrument's, OTLP).
    from .._telemetry import configure as _configure
    from .._telemetry.otlpjson import file_settings

    try:
        names, rule = _configure.exporter_names()
        if "otlp" in names:
            _configure.otlp_protocol()
        _configure.sampler_from_env()
        trace_file = file_settings()[0]
    except ValueError as e:
        return Check(
            "telemetry.sdk",
            "fail",
            f"tracedpool.configure() would refuse this configuration: {e}",
            "fix the variable named above",
            data,
        )
    chosen = ", ".join(names) or "none"
    if _configure.EXPORTER_NAME in names:
        chosen += f" -> {trace_file}"
    data["configure_exporters"], data["configure_rule"] = names, rule
    return Check(
        "telemetry.sdk",
        "ok",
        f"opentelemetry-sdk {data['sdk']}; global provider {configured}; "
        f"opentelemetry-instrument would export with {data['traces_exporter']}, "
        f"tracedpool.configure() with {chosen} (by {rule})",
        data=data,
    )


def _service_name_check() -> Check:
    name, source = service_name()
    if name is None:
        return Check(
            "telemetry.service-name",
            "warn",
            "service.name is not set: spans arrive as unknown_service:python",
            "export OTEL_SERVICE_NAME=<your service> (or set it on the TracerProvider's Resource)",
            {"service_name": None, "source": source},
        )
    return Check(
        "telemetry.service-name",
        "ok",
        f"service.name={name} (from {source})",
        data={"service_name": name, "source": source},
    )
