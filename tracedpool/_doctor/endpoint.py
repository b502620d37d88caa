"""``telemetry.endpoint``: is the configured OTLP traces endpoint there, and does it
take a span? Over http/protobuf it sends one real ``tracedpool.doctor.test`` span
(encoded by ``otlp_proto``) with the configured headers, compression and CA
certificate, and reads the collector's partial-success reply; over gRPC it opens a
TCP connection only. The endpoint and headers are read by ``otel_env``. A header value
is a credential: no finding, fix or datum ever quotes one.
"""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .._telemetry import names as N
from .otel_env import otlp_target, service_name
from .otlp_proto import encode_test_span, fields
from .result import Check


def _bad_header(headers: dict[str, str]) -> tuple[str, str] | None:
    """(key, what is wrong) for the first header http.client would refuse, naming only
    the key: the value is a credential and must never be printed."""
    for key, value in headers.items():
        if not key or any(c in key for c in ":\r\n\0") or key != key.strip():
            return key, "its name is not a valid HTTP header name"
        if any(c in value for c in "\r\n\0"):
            return key, "its value contains a line break or NUL (after %-decoding)"
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return key, "its value has characters HTTP headers cannot carry (not Latin-1)"
    return None


def endpoint_check(override: str | None, timeout: float) -> Check:
    target = otlp_target(override)
    if target is None:
        return Check(
            "telemetry.endpoint",
            "skip",
            "no OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT set: no endpoint to test",
        )
    data = {k: v for k, v in target.items() if k != "headers"}
    data["header_names"] = sorted(target["headers"])
    url = target["url"]
    if target["protocol"] == "grpc":
        # The gRPC exporter takes a bare host:port, which urlsplit would read as a scheme.
        return _grpc_reachable(
            urllib.parse.urlsplit(url if "://" in url else "//" + url), target, data, timeout
        )
    parts = urllib.parse.urlsplit(url)
    if target["protocol"] != "http/protobuf":
        return Check(
            "telemetry.endpoint",
            "skip",
            f"protocol {target['protocol']}: only http/protobuf and grpc can be tested",
            data=data,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or _bad_port(parts):
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not an http(s) URL with a valid host "
            "and port",
            f"set {target['source']} to e.g. http://otel-collector:4318",
            data,
        )
    bad = _bad_header(target["headers"])
    if bad is not None:
        data["bad_header"] = bad[0]
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['headers_source']}: header {bad[0]!r} cannot be sent: {bad[1]}",
            f"fix {target['headers_source']} (comma-separated key=value pairs, values "
            "%-encoded; no line breaks)",
            data,
        )
    name, _ = service_name()
    start = time.time_ns()
    body = encode_test_span(
        name or "unknown_service:python", os.urandom(16), os.urandom(8), start, start + 1000
    )
    headers = {"Content-Type": "application/x-protobuf", **target["headers"]}
    if target["compression"] == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(target["url"], data=body, headers=headers, method="POST")
    context = None
    if parts.scheme == "https":
        import ssl

        try:
            context = ssl.create_default_context(cafile=target["certificate"] or None)
        except (OSError, ValueError) as e:  # a missing file, or not PEM (ssl.SSLError)
            source = target["certificate_source"] if target["certificate"] else "the system"
            data["error"] = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
            return Check(
                "telemetry.endpoint",
                "fail",
                f"{source} CA certificates cannot be loaded"
                + (f" from {target['certificate']!r}" if target["certificate"] else "")
                + f": {data['error']}",
                f"point {target['certificate_source']} at a readable PEM file of the CA that "
                "signed the collector's certificate, or unset it",
                data,
            )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, reply = response.status, response.read(65536)
    except http.client.InvalidURL as e:  # a ValueError: the URL only, no header in it
        data["error"] = str(e)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not a valid URL: {e}",
            f"set {target['source']} to e.g. http://otel-collector:4318",
            data,
        )
    except ValueError as e:
        # Anything else http.client refuses: its message may quote a header value, a
        # credential, so only the type is kept.
        data["error"] = type(e).__name__
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} could not be requested ({type(e).__name__}): the URL in "
            f"{target['source']} or a header in {target['headers_source']} is invalid",
            f"check {target['source']} and {target['headers_source']}",
            data,
        )
    except urllib.error.HTTPError as e:
        data["http_status"] = e.code
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} refused the test span: HTTP {e.code} {e.reason}",
            _http_fix(e.code, target["source"]),
            data,
        )
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        data["error"] = str(reason)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} is not reachable: {reason}",
            f"start the collector, or fix {target['source']} (host, port 4318 for "
            "http/protobuf, http vs https)",
            data,
        )
    spent = time.monotonic() - t0
    data.update(http_status=status, seconds=round(spent, 3))
    try:
        partial = fields(reply).get(1)
        rejected = fields(partial[0]).get(1, [0])[0] if partial else 0
        message = fields(partial[0]).get(2, [b""])[0] if partial else b""
    except (ValueError, IndexError, TypeError):
        rejected, message = 0, b""  # a JSON or empty body from a proxy: 2xx is acceptance
    if rejected:
        data["rejected_spans"] = rejected
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} rejected the test span: {bytes(message).decode(errors='replace')}",
            "check the collector's logs and its receiver configuration",
            data,
        )
    return Check(
        "telemetry.endpoint",
        "ok",
        f"{target['url']} accepted a test span ({N.SPAN_DOCTOR_TEST}, HTTP {status}, "
        f"{spent * 1000:.0f} ms)",
        data=data,
    )


def _http_fix(code: int, source: str) -> str:
    if code in (401, 403):
        return "set the credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=...)"
    if code == 404:
        return (
            f"check the path in {source}: OTEL_EXPORTER_OTLP_ENDPOINT is a base URL (/v1/traces "
            "is appended), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as given"
        )
    if code == 415:
        return "the endpoint does not take OTLP protobuf: is it the collector's OTLP/HTTP port?"
    return "check the collector's logs"


def _bad_port(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - parsing it is the check: it raises on "43l8" or 70000
    except ValueError:
        return True
    return False


def _grpc_reachable(
    parts: urllib.parse.SplitResult, target: dict[str, Any], data: dict[str, Any], timeout: float
) -> Check:
    if not parts.hostname or _bad_port(parts):
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not a valid gRPC endpoint (host:port)",
            f"set {target['source']} to e.g. http://otel-collector:4317",
            data,
        )
    host, port = parts.hostname, parts.port or 4317
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        data["error"] = str(e)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{host}:{port} (OTLP/gRPC) is not reachable: {e}",
            "start the collector, or fix the endpoint (port 4317 for gRPC)",
            data,
        )
    return Check(
        "telemetry.endpoint",
        "ok",
        f"{host}:{port} (OTLP/gRPC) accepts connections; no test span is sent over gRPC "
        "(set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and port 4318 to test one)",
        data=data,
    )
