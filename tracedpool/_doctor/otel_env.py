"""What the ``OTEL_*`` environment variables configure for traces, read by the
specification's rules as the SDK and the OTLP exporters would: the endpoint, protocol,
headers, compression and CA certificate (``otlp_target``), and ``service.name``.

Only reading, no checks and no network: the telemetry and endpoint checks judge what is
read here, and ``result.crash_text`` masks the header values (credentials) it returns.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any


def service_name() -> tuple[str | None, str]:
    """(service.name, where it came from) as the SDK would resolve it from the env."""
    name = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return name, "OTEL_SERVICE_NAME"
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return urllib.parse.unquote(value.strip()), "OTEL_RESOURCE_ATTRIBUTES"
    return None, "unset"


ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def otlp_target(override: str | None = None) -> dict[str, Any] | None:
    """The traces endpoint, protocol, headers and timeout from the OTEL_* variables (the
    specification's rules: a signal-specific endpoint is used as given, the generic one
    gets ``/v1/traces`` appended for HTTP), or None when none is configured."""
    env = os.environ
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if override:
        url, source = override, "--otlp-endpoint"
        if protocol.startswith("http") and urllib.parse.urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/v1/traces"
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url, source = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip(), ENDPOINT_VARS[0]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url, source = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip(), ENDPOINT_VARS[1]
        if protocol.startswith("http"):
            url = url.rstrip("/") + "/v1/traces"
    else:
        return None
    headers_source, headers = otlp_headers()
    compression = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
        or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        or "none"
    ).strip()
    return {
        "url": url,
        "source": source,
        "protocol": protocol,
        "headers": headers,
        "compression": compression,
        "headers_source": headers_source,
        "certificate": env.get(_CERT_VARS[0]) or env.get(_CERT_VARS[1]),
        "certificate_source": _CERT_VARS[0] if env.get(_CERT_VARS[0]) else _CERT_VARS[1],
    }


_HEADER_VARS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
_CERT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")


def otlp_headers() -> tuple[str, dict[str, str]]:
    """(the variable they came from, the headers) as the exporter would send them."""
    env = os.environ
    source = _HEADER_VARS[0] if env.get(_HEADER_VARS[0]) else _HEADER_VARS[1]
    headers: dict[str, str] = {}
    for pair in env.get(source, "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return source, headers


def header_values() -> list[str]:
    """The configured header values, which are credentials: what a finding must mask.
    Not guarded: reading the environment and %-decoding (errors replaced) cannot raise,
    and a failure here must not turn into findings that leave a credential unmasked."""
    return [v for v in otlp_headers()[1].values() if v]
