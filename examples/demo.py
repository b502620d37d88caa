"""tracedpool demo: a request fanned out into pool tasks, a pickling fault, a killed worker.

Run with ``make demo``. Spans go to an SDK provider with the embedded default: every span
is written as one JSON line to ``demo-traces.jsonl`` (nothing needs to be running), and
the demo prints each trace as a waterfall so you can see where the time went and what
failed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tracedpool import TracedProcessPoolExecutor
from tracedpool import _names as N

OUT = Path(os.environ.get("TRACEDPOOL_DEMO_OUT", "demo-traces.jsonl"))


class Collect(SpanExporter):
    """Keeps spans for the printout and appends them to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.spans: list[Any] = []
        self._file = path.open("w", encoding="utf-8")

    def export(self, spans: Any) -> SpanExportResult:
        for span in spans:
            self.spans.append(span)
            self._file.write(span.to_json(indent=None) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS


def resize(width: int) -> int:
    """A task: pretend to resize an image, with a span of its own in the worker."""
    with trace.get_tracer("demo").start_as_current_span("resize") as span:
        span.set_attribute("image.width", width)
        time.sleep(0.02)
    return width // 2


def kill_me() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def waterfall(spans: list[Any], trace_id: int) -> None:
    mine = [s for s in spans if s.context.trace_id == trace_id]
    children: dict[int | None, list[Any]] = defaultdict(list)
    ids = {s.context.span_id for s in mine}
    for s in mine:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children[parent].append(s)
    t0 = min(s.start_time for s in mine)

    def show(span: Any, depth: int) -> None:
        start = (span.start_time - t0) / 1e6
        took = (span.end_time - span.start_time) / 1e6
        mark = " ERROR" if span.status.status_code.name == "ERROR" else ""
        attrs = span.attributes or {}
        labels = {
            N.ATTR_CODE_FUNCTION: "fn",
            N.ATTR_PROCESS_PID: "pid",
            N.ATTR_PAYLOAD_BYTES: "bytes",
        }
        extra = ", ".join(f"{label}={attrs[k]}" for k, label in labels.items() if k in attrs)
        print(f"  {start:8.1f} ms {'  ' * depth}{span.name} ({took:.2f} ms){mark} {extra}")
        for event in span.events:
            facts = {k: v for k, v in event.attributes.items() if "stacktrace" not in k}
            print(f"  {'':11} {'  ' * depth}  ! {event.name} {facts}")
        for child in sorted(children[span.context.span_id], key=lambda s: s.start_time):
            show(child, depth + 1)

    for root in sorted(children[None], key=lambda s: s.start_time):
        show(root, 0)


def main() -> int:
    exporter = Collect(OUT)
    provider = TracerProvider(resource=Resource.create({"service.name": "tracedpool-demo"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("demo")

    print("1) a request fans out into pool tasks: one trace, one waterfall")
    with (
        TracedProcessPoolExecutor(max_workers=2, name="thumbnails") as pool,
        tracer.start_as_current_span("GET /thumbnails") as request,
    ):
        print("   results:", list(pool.map(resize, [640, 800, 1024])))
    waterfall(exporter.spans, request.get_span_context().trace_id)

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
            for note in getattr(e, "__notes__", []):
                print(f"   note: {note}")
        print("   next task still works:", pool.submit(resize, 100).result())
    waterfall(exporter.spans, request.get_span_context().trace_id)

    print("\n3) a worker is SIGKILLed (as by the OOM killer): pid, signal and lost task named")
    with (
        TracedProcessPoolExecutor(max_workers=2) as pool,
        tracer.start_as_current_span("POST /crash") as request,
    ):
        try:
            pool.submit(kill_me).result()
        except Exception as e:
            print(f"   caller sees: {type(e).__name__}: {e}")
    waterfall(exporter.spans, request.get_span_context().trace_id)

    print(f"\nAll {len(exporter.spans)} spans were written to {OUT.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
