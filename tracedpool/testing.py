"""Helpers for testing code that uses tracedpool, in your own test suite.

* ``recording_provider()``: an SDK ``TracerProvider`` recording into memory, to pass as
  ``tracer_provider=``; ``spans_by_task(spans)`` groups its spans by task.
* ``assert_pool_healthy(pool)``: a trivial task still round-trips (``square``, which
  workers import by module path under fork, spawn and forkserver).
* ``wait_for(predicate)``: a bounded wait for something another thread or process does.
* ``otlp_json_line(spans)`` and ``OtlpReceiver``: the OTLP/JSON line tracedpool's file
  exporter writes, and a real OTLP/HTTP receiver, to test export paths end to end.

tracedpool's own fault injectors (tasks that segfault, kill their worker, refuse to
pickle...) are not installed: they live with its tests (``tests/faults.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._telemetry import names as N

__all__ = [
    "OtlpReceiver",
    "assert_pool_healthy",
    "otlp_json_line",
    "recording_provider",
    "spans_by_task",
    "square",
    "wait_for",
]


def square(x: int) -> int:
    return x * x


# -- span helpers --------------------------------------------------------------------------


def recording_provider() -> tuple[Any, Any]:
    """A fresh SDK ``TracerProvider`` whose spans land in an in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def spans_by_task(spans: Any) -> dict[str, list[Any]]:
    """Finished spans grouped by ``tracedpool.task.id``."""
    out: dict[str, list[Any]] = {}
    for s in spans:
        tid = (s.attributes or {}).get(N.ATTR_TASK_ID)
        if tid is not None:
            out.setdefault(str(tid), []).append(s)
    return out


def assert_pool_healthy(pool: Any, timeout: float = 30) -> None:
    """A trivial task still round-trips."""
    assert pool.submit(square, 3).result(timeout=timeout) == 9


def wait_for(predicate: Any, seconds: float = 30) -> bool:
    """Polls ``predicate`` every 50 ms until it is true (True) or ``seconds`` pass (False):
    a bounded wait for something another thread or process does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# -- OTLP/JSON ---------------------------------------------------------------------------------


def otlp_json_line(spans: Any) -> str:
    """SDK spans as one OTLP/JSON ``ExportTraceServiceRequest`` line (without its
    newline): exactly what tracedpool's file exporter writes and ``tracedpool timeline``
    reads, from the same encoder."""
    from ._telemetry.otlpjson import encode_line

    return encode_line(spans).decode("utf-8").rstrip("\n")


# -- a real OTLP/HTTP receiver -----------------------------------------------------------------
class OtlpReceiver:
    """A real OTLP/HTTP receiver on 127.0.0.1, in a thread: for tests and benchmarks.

    Every POST is handed to ``on_request(path, headers, body)`` (headers lower-cased);
    by default it is kept in ``requests``. The answer is ``status`` (404 for any path but
    ``/v1/traces``) with ``reply`` as a protobuf body. With ``listen=False`` the port is
    bound but connections are refused until ``start()``: an endpoint that comes back.
    """

    def __init__(
        self,
        status: int = 200,
        reply: bytes = b"",
        *,
        listen: bool = True,
        on_request: Any = None,
    ) -> None:
        import http.server

        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        record = on_request if on_request is not None else self._record
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(outer.status if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(outer.reply)))
                self.end_headers()
                self.wfile.write(outer.reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.status, self.reply = status, reply
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, False)
        server.daemon_threads = True
        server.server_bind()
        self._server = server
        self.port = int(server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        if listen:
            self.start()

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.requests.append((path, headers, body))

    def start(self) -> None:
        """Listen and serve (until then, connections to the bound port are refused)."""
        self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def decoded(self) -> list[Any]:
        """The kept requests as ``(path, content type, ExportTraceServiceRequest)``
        (needs opentelemetry-proto)."""
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

        out = []
        with self.lock:
            kept = list(self.requests)
        for path, headers, body in kept:
            request = pb.ExportTraceServiceRequest()
            request.ParseFromString(body)
            out.append((path, headers.get("content-type", ""), request))
        return out
