"""tracedpool demo: a request fanned out into pool tasks, a pickling fault, a killed worker.

Run with ``make demo``. ``tracedpool.configure()`` sets up the SDK from the standard
OTEL_* variables; with none set, that is the embedded default: spans are written as
OTLP/JSON lines to a private file under ``~/.local/state/tracedpool/traces/`` (or
``$TRACEDPOOL_TRACE_FILE``), and nothing needs to be running. The demo reads that file
back and prints each trace as a waterfall, so you can see where the time went and what
failed, and ends by writing this run's timeline page (``tracedpool timeline``) to
``timeline.html`` (or ``$DEMO_TIMELINE``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from opentelemetry import trace

import tracedpool
from tracedpool import TracedProcessPoolExecutor
from tracedpool._telemetry import names as N
from tracedpool._telemetry.otlpjson import decode_request, trace_files
from tracedpool._timeline.page import TimelineError, write_timeline


def spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace, read back from the trace file and its rotated ones."""
    found: list[dict[str, Any]] = []
    for file in trace_files(path):
        with file.open(encoding="utf-8") as f:
            for line in f:
                if trace_id in line:  # cheap filter before decoding
                    found += [
                        s for s in decode_request(json.loads(line)) if s["trace_id"] == trace_id
                    ]
    return found


def resize(width: int) -> int:
    """A task: pretend to resize an image, with a span of its own in the worker."""
    with trace.get_tracer("demo").start_as_current_span("resize") as span:
        span.set_attribute("image.width", width)
        time.sleep(0.02)
    return width // 2


def kill_me() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def waterfall(path: Path | None, provider: Any, span: Any) -> None:
    """Flush the provider, read this request's trace back from the file, print it."""
    if path is None:
        return
    provider.force_flush()
    mine = spans_of(path, format(span.get_span_context().trace_id, "032x"))
    if not mine:
        print("  (no spans found in the trace file)")
        return
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    ids = {s["span_id"] for s in mine}
    for s in mine:
        parent = s["parent_span_id"] if s["parent_span_id"] in ids else None
        children[parent].append(s)
    t0 = min(s["start_ns"] for s in mine)
    labels = {N.ATTR_CODE_FUNCTION: "fn", N.ATTR_PROCESS_PID: "pid", N.ATTR_PAYLOAD_BYTES: "bytes"}

    def show(s: dict[str, Any], depth: int) -> None:
        start = (s["start_ns"] - t0) / 1e6
        took = (s["end_ns"] - s["start_ns"]) / 1e6
        mark = " ERROR" if s["status_code"] == 2 else ""
        attrs = s["attributes"]
        extra = ", ".join(f"{label}={attrs[k]}" for k, label in labels.items() if k in attrs)
        print(f"  {start:8.1f} ms {'  ' * depth}{s['name']} ({took:.2f} ms){mark} {extra}")
        for event in s["events"]:
            facts = {k: v for k, v in event["attributes"].items() if "stacktrace" not in k}
            print(f"  {'':11} {'  ' * depth}  ! {event['name']} {facts}")
        for child in sorted(children[s["span_id"]], key=lambda c: c["start_ns"]):
            show(child, depth + 1)

    for root in sorted(children[None], key=lambda c: c["start_ns"]):
        show(root, 0)


def main() -> int:
    started = time.time_ns()
    setup = tracedpool.configure(service_name="tracedpool-demo")
    print(setup.describe())
    path = setup.trace_file
    if path is None:
        print(
            "(the waterfalls below read the embedded default's file: unset OTEL_TRACES_EXPORTER"
            " and OTEL_EXPORTER_OTLP_ENDPOINT, or add tracedpool_jsonl to OTEL_TRACES_EXPORTER)"
        )
    provider = setup.provider
    tracer = trace.get_tracer("demo")

    print("\n1) a request fans out into pool tasks: one trace, one waterfall")
    with (
        TracedProcessPoolExecutor(max_workers=2, name="thumbnails") as pool,
        tracer.start_as_current_span("GET /thumbnails") as request,
    ):
        print("   results:", list(pool.map(resize, [640, 800, 1024])))
    waterfall(path, provider, request)

    print("\n2) an argument that cannot be pickled: the part is named, the pool lives on")
    with (
        TracedProcessPoolExecutor(max_workers=2) as pool,
        tracer.start_as_current_span("POST /upload") as request,
    ):
        future = pool.submit(resize, threading.Lock())
        try:
            future.result()
        except TypeError as e:
            print(f"   caller sees: {type(e).__name__}: {e}")
            print(f"   located: {tracedpool.pickling_fault(e)}")
        print("   next task still works:", pool.submit(resize, 100).result())
    waterfall(path, provider, request)

    print("\n3) a worker is SIGKILLed (as by the OOM killer): pid, signal and lost task named")
    with (
        TracedProcessPoolExecutor(max_workers=2) as pool,
        tracer.start_as_current_span("POST /crash") as request,
    ):
        try:
            pool.submit(kill_me).result()
        except Exception as e:
            print(f"   caller sees: {type(e).__name__}: {e}")
    waterfall(path, provider, request)

    if path is not None:
        provider.force_flush()
        print(f"\nThe spans are OTLP/JSON lines in {path}")
        # The file keeps earlier runs too: the page shows this one.
        page = Path(os.environ.get("DEMO_TIMELINE", "timeline.html")).resolve()
        try:
            result = write_timeline(path, page, since_ns=started)
        except TimelineError as e:
            print(f"(no timeline page: {e})")
            return 0
        print(
            f"Timeline of this run ({result.tasks} tasks, {result.faults} faults): "
            f"{page.as_uri()}\n  open it in a browser; "
            f"`tracedpool timeline --last 60` rebuilds it from the file"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
