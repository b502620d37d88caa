"""CPython's ``test_no_stale_references`` (Issue #16284), against TracedProcessPoolExecutor
with an always-on SDK: a batch processor and a null exporter, as the stdlib-suite run
with an SDK installs. The submitted bound method's object must be freed (by reference
counting alone, no ``gc.collect()``) once its discarded future is done.

    python tools/no_stale_references.py          # every start method; exit status 1 on a leak
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from tracedpool import TracedProcessPoolExecutor


class NullExporter(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class MyObject:
    def my_method(self) -> None:
        pass


def check(method: str, provider: TracerProvider) -> bool:
    context = multiprocessing.get_context(method)
    with TracedProcessPoolExecutor(2, mp_context=context, tracer_provider=provider) as pool:
        pool.submit(MyObject().my_method).result(timeout=60)  # the workers are up
        my_object = MyObject()
        collected = threading.Event()
        my_object_callback = weakref.ref(my_object, lambda obj: collected.set())  # noqa: F841
        pool.submit(my_object.my_method)  # deliberately discarding the future
        del my_object
        return collected.wait(timeout=30)


def main() -> int:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    failed = 0
    for method in multiprocessing.get_all_start_methods():
        ok = check(method, provider)
        failed += not ok
        print(f"test_no_stale_references [{method}, always-on SDK]: {'ok' if ok else 'FAIL'}")
    provider.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
