"""A small web service whose requests fan out into process-pool tasks, traced end to end.

What it shows: each HTTP request gets a SERVER span (continuing the caller's trace when
the request carries a W3C ``traceparent`` header); the handler splits the work into
parts, submits them to one shared ``TracedProcessPoolExecutor`` and gathers the results.
Every pool task then appears in the request's trace as a child of the request span, with
its stages (queue wait, pickling, run in the worker, send-back) as spans of their own, so
a slow request shows where its time went: waiting for a free worker, pickling, or work.

It uses only the standard library's ``http.server`` and the OpenTelemetry API.

Run it (after ``make demo`` created ``.venv``, or ``pip install 'tracedpool[sdk]'``)::

    .venv/bin/python examples/service.py              # serves on http://127.0.0.1:8000
    curl 'http://127.0.0.1:8000/primes?below=300000&parts=4'

    .venv/bin/python examples/service.py --self-test 5   # no browser, no curl: starts on
                                                         # a free port, sends 5 requests,
                                                         # prints where the traces went

``tracedpool.configure()`` sets up tracing from the standard OTEL_* variables. With none
set, spans go to the embedded default: OTLP/JSON lines in a local file (printed at start;
``$TRACEDPOOL_TRACE_FILE`` moves it), which ``tracedpool timeline`` turns into a page.
With ``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` they go to Jaeger or a
collector instead (see ``collectors/README.md``; needs ``tracedpool[otlp]``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

import tracedpool
from tracedpool import TracedProcessPoolExecutor

tracer = trace.get_tracer("examples.service")

MAX_BELOW = 5_000_000  # bounds the work one request may ask for
MAX_PARTS = 16
TASK_TIMEOUT = 60.0  # seconds a request waits for its parts before giving up


# -- the work: runs in the pool's worker processes --------------------------------------


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi): deliberately plain CPU work, so it is worth a process."""
    count = 0
    for n in range(max(lo, 2), hi):
        if n % 2 == 0:
            count += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


# -- the service: runs in the server's request threads ----------------------------------


class Handler(BaseHTTPRequestHandler):
    """``GET /primes?below=N&parts=K``: counts the primes below N in K pool tasks."""

    # The one pool every request shares, set before the server starts. Sharing it is the
    # point: under load, requests queue for its workers, and the traces show that wait.
    pool: TracedProcessPoolExecutor

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        # Continue the caller's trace if it sent one; otherwise this span is a root.
        # (Header names are case-insensitive: clients send "Traceparent" too.)
        parent = propagate.extract({k.lower(): v for k, v in self.headers.items()})
        with tracer.start_as_current_span(
            f"GET {url.path}",
            context=parent,
            kind=SpanKind.SERVER,
            # The path only: query strings can carry user data, and spans must not.
            attributes={"http.request.method": "GET", "url.path": url.path},
        ) as span:
            status, body = self.route(url.path, parse_qs(url.query))
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            self.reply(status, body)

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if path != "/primes":
            return 404, {"error": "try /primes?below=300000&parts=4"}
        try:
            below = int(query.get("below", ["200000"])[0])
            parts = int(query.get("parts", ["4"])[0])
        except ValueError:
            return 400, {"error": "below and parts must be integers"}
        if not (0 < below <= MAX_BELOW and 0 < parts <= MAX_PARTS):
            return 400, {"error": f"need 0 < below <= {MAX_BELOW} and 0 < parts <= {MAX_PARTS}"}

        # Fan out: submit() runs in this request's thread, so each task span becomes a
        # child of the request span above, whichever worker runs it.
        step = -(-below // parts)
        futures = [
            self.pool.submit(count_primes, lo, min(lo + step, below))
            for lo in range(0, below, step)
        ]
        try:
            # Bounded: a request must never wait for ever on a stuck pool.
            total = sum(f.result(timeout=TASK_TIMEOUT) for f in futures)
        except Exception as e:
            for f in futures:
                f.cancel()
            # The error's type goes to the client; the details are in the task spans.
            return 500, {"error": type(e).__name__}
        return 200, {"below": below, "parts": len(futures), "primes": total}

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the traces are the request log here; keep the terminal for the results


# -- self-test: a client in this process, so no browser or curl is needed ---------------


def client_get(url: str) -> tuple[int, dict[str, Any]]:
    """One request, in a CLIENT span whose context travels in the ``traceparent`` header:
    the server's span, and so every pool task, joins this trace."""
    with tracer.start_as_current_span("GET /primes", kind=SpanKind.CLIENT) as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=60
            ) as r:
                status, body = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, body = e.code, json.loads(e.read() or b"{}")
        span.set_attribute("http.response.status_code", status)
        return status, body


def self_test(host: str, port: int, requests: int) -> int:
    sizes = [100_000 + 50_000 * (i % 4) for i in range(requests)]
    urls = [f"http://{host}:{port}/primes?below={n}&parts=4" for n in sizes]
    print(f"self-test: {requests} requests to http://{host}:{port}/primes, 2 at a time")
    failed = 0
    # Two client threads, so requests overlap and share the pool's workers.
    with ThreadPoolExecutor(2, thread_name_prefix="client") as clients:
        for url, (status, body) in zip(urls, clients.map(client_get, urls), strict=True):
            print(f"  {status} {url.split('?', 1)[1]:<24} -> {body}")
            failed += status != 200
    return failed


def stop_on_signals(server: ThreadingHTTPServer) -> None:
    """Ctrl-C or SIGTERM (what a container runtime sends) stops the server cleanly, so
    that the pool shuts down and the last spans are flushed: a process killed by an
    unhandled SIGTERM exits at once and loses the spans still in the batch queue."""

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this very thread.
        threading.Thread(target=server.shutdown, name="stop").start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2, help="pool size (default 2)")
    parser.add_argument(
        "--self-test",
        type=int,
        metavar="N",
        help="serve on a free port, send N requests from this process, print, exit",
    )
    args = parser.parse_args(argv)

    # Before any pool exists: the pool's spans need a provider to go to.
    setup = tracedpool.configure(service_name="tracedpool-example-service")
    print(setup.describe())
    started = time.time()

    failed = 0
    with TracedProcessPoolExecutor(max_workers=args.workers, name="primes") as pool:
        Handler.pool = pool
        port = 0 if args.self_test is not None else args.port  # 0: the OS picks a free one
        with ThreadingHTTPServer((args.host, port), Handler) as server:
            if args.self_test is None:
                url = f"http://{args.host}:{server.server_port}/primes"
                print(f"serving on {url}")
                print(f"  e.g. curl '{url}?below=300000&parts=4'; Ctrl-C to stop")
                stop_on_signals(server)
                server.serve_forever()
                print("stopping")
            else:
                thread = threading.Thread(target=server.serve_forever, name="server")
                thread.start()
                try:
                    failed = self_test(args.host, server.server_port, args.self_test)
                finally:
                    server.shutdown()
                    thread.join(timeout=10)

    # Flush now, so the spans are in the file (or at the collector) when we say so.
    flush = getattr(setup.provider, "force_flush", None)
    if flush is not None:
        flush()
    if setup.trace_file is not None:
        seconds = int(time.time() - started) + 5
        print(f"\nThe spans are OTLP/JSON lines in {setup.trace_file}. A page of this run:")
        print(f"  tracedpool timeline {setup.trace_file} -o timeline.html --last {seconds}")
    else:
        print("\nThe spans went to the exporter above (Jaeger: http://localhost:16686,")
        print("service tracedpool-example-service, or the name in OTEL_SERVICE_NAME).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
