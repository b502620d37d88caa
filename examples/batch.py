"""A batch job on a process pool: one trace per run, progress, and failures that are
located without aborting the batch.

What it shows:

* A job-level span (``batch-job``) is the root of the run's trace, with one child span
  per phase; every pool task is a child of the phase that submitted it.
* Phase 1 parses every record with ``pool.map(..., chunksize=8)``. The stdlib sends a
  chunk of items as one task; tracedpool names the task after the mapped function
  (``parse_record``, not the stdlib's internal chunk runner) and records the chunk's size.
* Phase 2 scores each record with ``submit`` + ``as_completed`` and per-item error
  handling, so one bad item costs one item. Two items fail on purpose: one raises in the
  worker (its task span carries the error type and the worker's stack), and one returns
  a result that cannot be pickled: tracedpool locates that fault ("could not pickle
  result (generator) at stage sendback") and the pool goes on with the rest.
* No values are recorded: spans carry types, sizes and function names only.

Run it (after ``make demo`` created ``.venv``, or ``pip install 'tracedpool[sdk]'``)::

    .venv/bin/python examples/batch.py [--items 60] [--workers 2]

``tracedpool.configure()`` sets up tracing from the standard OTEL_* variables. With none
set, spans go to the embedded default: OTLP/JSON lines in a local file (printed at start;
``$TRACEDPOOL_TRACE_FILE`` moves it); ``tracedpool timeline`` turns them into a page.
With ``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` they go to Jaeger or a
collector instead (see ``collectors/README.md``; needs ``tracedpool[otlp]``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, as_completed
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

import tracedpool
from tracedpool import TracedProcessPoolExecutor

tracer = trace.get_tracer("examples.batch")

CHUNKSIZE = 8
CORRUPT = 13  # this record's reading is garbage: scoring it raises in the worker
LAZY = 29  # scoring this record returns a generator: the result cannot be pickled
ITEM_TIMEOUT = 60.0  # seconds to wait for any one result; a batch must never hang


# -- the work: runs in the pool's worker processes --------------------------------------


def parse_record(line: str) -> tuple[int, list[float]]:
    """``"id;r1,r2,..."`` -> (id, readings)."""
    ident, _, readings = line.partition(";")
    return int(ident), [float(r) if r != "??" else float("nan") for r in readings.split(",")]


def score(record: tuple[int, list[float]]) -> Any:
    """A little CPU work per record. Two records misbehave, as real data does."""
    ident, readings = record
    if any(math.isnan(r) for r in readings):  # a reading that failed to parse
        raise ValueError("a reading could not be parsed (NaN)")
    if ident == LAZY:
        # A lazy code path: fine in-process, but a generator cannot cross to the parent.
        return (r * r for r in readings)
    total = 0.0
    for _ in range(10_000):
        total = sum(r * r for r in readings) ** 0.5
    return round(total, 3)


# -- the job: runs in the parent ---------------------------------------------------------


def make_input(items: int) -> list[str]:
    """The batch's input, as a file's lines would be."""
    lines = []
    for i in range(items):
        readings = [f"{(i * 7 + k) % 50 / 10:.1f}" for k in range(12)]
        if i == CORRUPT:
            readings[5] = "??"
        lines.append(f"{i};{','.join(readings)}")
    return lines


def progress(done: Iterator[Future[Any]], total: int) -> Iterator[Future[Any]]:
    """Pass futures through, printing a progress line at every quarter."""
    marks = {total * q // 4 for q in (1, 2, 3, 4)}
    for n, future in enumerate(done, 1):
        if n in marks:
            print(f"  scored {n}/{total}")
        yield future


def run(pool: TracedProcessPoolExecutor, lines: list[str]) -> tuple[dict[int, Any], dict[int, str]]:
    with tracer.start_as_current_span("parse") as span:
        # One task per chunk of CHUNKSIZE lines, each traced as parse_record.
        records = list(pool.map(parse_record, lines, chunksize=CHUNKSIZE, timeout=ITEM_TIMEOUT))
        span.set_attribute("batch.records", len(records))
        print(f"parsed {len(records)} records in {-(-len(lines) // CHUNKSIZE)} map chunks")

    scores: dict[int, Any] = {}
    failures: dict[int, str] = {}
    with tracer.start_as_current_span("score") as span:
        futures = {pool.submit(score, record): record[0] for record in records}
        for future in progress(as_completed(futures, timeout=ITEM_TIMEOUT * 2), len(futures)):
            ident = futures[future]
            try:
                scores[ident] = future.result()
            except Exception as e:  # one bad item costs one item, not the batch
                # Where a pickling fault struck (also a note on the exception, 3.11+).
                fault = tracedpool.pickling_fault(e)
                failures[ident] = f"{type(e).__name__}: {e}" + (f" [{fault}]" if fault else "")
        span.set_attribute("batch.failed", len(failures))
    return scores, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60, help="records in the batch (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="pool size (default 2)")
    args = parser.parse_args(argv)

    setup = tracedpool.configure(service_name="tracedpool-example-batch")
    print(setup.describe())
    lines = make_input(args.items)
    started = time.monotonic()

    with (
        TracedProcessPoolExecutor(max_workers=args.workers, name="batch") as pool,
        tracer.start_as_current_span("batch-job", attributes={"batch.items": len(lines)}) as job,
    ):
        scores, failures = run(pool, lines)
        job.set_attribute("batch.failed", len(failures))
        if failures:
            # The job finished, but not cleanly: mark it, so a tail-sampling collector
            # keeps this trace (collectors/README.md).
            job.set_status(Status(StatusCode.ERROR, f"{len(failures)} item(s) failed"))
        trace_id = format(job.get_span_context().trace_id, "032x")

    took = time.monotonic() - started
    print(f"\nsummary: {len(lines)} items in {took:.2f} s: ", end="")
    print(f"{len(scores)} scored, {len(failures)} failed")
    for ident, why in sorted(failures.items()):
        print(f"  item {ident}: {why}")

    flush = getattr(setup.provider, "force_flush", None)
    if flush is not None:
        flush()
    print(f"\ntrace id {trace_id} (search for it in Jaeger, or see the timeline page)")
    if setup.trace_file is not None:
        seconds = int(took) + 5
        print(f"The spans are OTLP/JSON lines in {setup.trace_file}. A page of this run:")
        print(f"  tracedpool timeline {setup.trace_file} -o timeline.html --last {seconds}")
    # The two planted failures are the point of the example; any other is a real one.
    return 0 if set(failures) <= {CORRUPT, LAZY} else 1


if __name__ == "__main__":
    sys.exit(main())
