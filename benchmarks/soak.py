"""Soak: a million trivial tasks through a traced pool with an always-on SDK.

What must hold (each is checked; the exit status is 1 if one fails):

* every future resolves, with the right result;
* the parent's RSS grows by less than ``--max-rss-growth-mb`` (50) from the point where
  10% of the tasks are done to the end;
* after ``shutdown()`` the process has the file descriptors and threads it had before
  the pool was created (and after the provider's shutdown, the ones it had before that);
* once the pool is gone, no executor, future, span or task record object is left:
  weak references to samples of each are dead, and ``gc.get_objects()`` holds no
  instance of tracedpool's per-task and per-pool classes or the stdlib's work items.

    python benchmarks/soak.py                          # 1,000,000 tasks, ~2-3 minutes
    python benchmarks/soak.py --tasks 30000            # the CI size (tests/test_soak.py)
    python benchmarks/soak.py --markdown docs/performance.md --json soak.json

Tasks are submitted in windows of ``--window`` (10,000): submit a window, wait for it,
check it, drop it. The measurement is then about the pool, not about the script's own
list of a million futures. The exporter behind the ``BatchSpanProcessor`` (default
settings) counts spans and drops them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import faulthandler
import gc
import json
import logging
import multiprocessing
import os
import platform
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MD_START = "<!-- soak:start -->"
MD_END = "<!-- soak:end -->"

#: Classes whose instances must all be gone once the pool is (module, qualname).
TRACKED = (
    ("tracedpool._pool.executor", "TracedProcessPoolExecutor"),
    ("tracedpool._pool.observer", "PoolState"),
    ("tracedpool._pool.views", "PoolViews"),
    ("tracedpool._telemetry.emit", "TaskRecord"),
    ("tracedpool._telemetry.emit", "WakeRecord"),
    ("tracedpool._telemetry.emit", "Emitter"),
    ("tracedpool._worker.wire", "_Task"),
    ("tracedpool._worker.wire", "StatusReader"),
    ("tracedpool._diagnosis.stall", "Watcher"),
    ("tracedpool._pool.cpython", "TracedManagerThread"),
    ("concurrent.futures._base", "Future"),
    ("concurrent.futures.process", "_WorkItem"),
    ("concurrent.futures.process", "_CallItem"),
    ("concurrent.futures.process", "_ResultItem"),
    ("opentelemetry.sdk.trace", "ReadableSpan"),
    ("opentelemetry.sdk.trace", "Span"),
)


def noop(x: int) -> int:
    return x


# -- what the process holds ---------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
    return fds


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def tracked_counts() -> dict[str, int]:
    wanted = {qual: mod for mod, qual in TRACKED}
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        cls = type(obj)
        mod = wanted.get(cls.__qualname__)
        if mod is not None and cls.__module__ == mod:
            counts[f"{mod}.{cls.__qualname__}"] += 1
    return {f"{m}.{q}": counts.get(f"{m}.{q}", 0) for m, q in TRACKED}


@dataclass
class Holdings:
    fds: dict[int, str]
    threads: list[str]
    os_threads: int

    @classmethod
    def now(cls) -> Holdings:
        return cls(open_fds(), thread_names(), os_threads())

    def diff(self, later: Holdings, *, threads: bool = True) -> list[str]:
        out = []
        extra = {fd: t for fd, t in later.fds.items() if self.fds.get(fd) != t}
        if len(later.fds) != len(self.fds) or extra:
            out.append(f"fds {len(self.fds)} -> {len(later.fds)}, new: {extra}")
        # An OS thread counted in the baseline may still have been exiting (a joined
        # Python thread outlives its join() by a moment): only more threads is a leak.
        if threads and (later.threads != self.threads or later.os_threads > self.os_threads):
            out.append(
                f"threads {self.threads} ({self.os_threads} OS) -> "
                f"{later.threads} ({later.os_threads} OS)"
            )
        return out


def settle_to(baseline: Holdings, seconds: float) -> tuple[Holdings, float]:
    """Wait (bounded) for threads that are stopping to be gone: (holdings, seconds waited)."""
    t0 = time.monotonic()
    while True:
        gc.collect()
        now = Holdings.now()
        if not baseline.diff(now) or time.monotonic() - t0 > seconds:
            return now, time.monotonic() - t0
        time.sleep(0.02)


# -- telemetry ----------------------------------------------------------------------------------
@dataclass
class Sdk:
    provider: Any
    exporter: Any
    processor: Any


class LogCounter(logging.Handler):
    """Counts every log record by (logger, message template), to check what repeats."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        # tracedpool's own messages by their text (each names its pool: "once" means
        # once per pool); the SDK's by their template, which is what repeats.
        text = record.getMessage() if record.name == "tracedpool" else str(record.msg)
        with self.lock_:
            self.counts[(record.name, record.levelno, text[:160])] += 1

    def summary(self, min_level: int = logging.WARNING) -> list[dict[str, Any]]:
        with self.lock_:
            items = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return [
            {"logger": name, "level": logging.getLevelName(level), "message": msg, "count": n}
            for (name, level, msg), n in items
            if level >= min_level
        ]


def install_log_counter() -> LogCounter:
    counter = LogCounter()
    root = logging.getLogger()
    root.addHandler(counter)
    root.setLevel(logging.INFO)
    # The SDK and exporters log through their own loggers (propagating to the root);
    # count them, but keep the console quiet: the summary reports them.
    return counter


def counting_sdk(exporter: Any = None, **bsp: Any) -> Sdk:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class CountingExporter(SpanExporter):  # type: ignore[misc]
        def __init__(self) -> None:
            self.spans = 0
            self.batches = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.spans += len(spans)
            self.batches += 1
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    if exporter is None:
        exporter = CountingExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    processor = BatchSpanProcessor(exporter, **bsp)
    provider.add_span_processor(processor)
    return Sdk(provider, exporter, processor)


def queue_drops(processor: Any) -> int | None:
    """Spans the batch processor dropped (queue full), if this SDK version counts them."""
    return getattr(processor, "tp_dropped", None)


def count_bsp_drops(processor: Any) -> None:
    """Count the spans the batch processor drops: the SDK logs "Queue full" but (1.45)
    keeps no count unless its internal metrics are on. Wraps the bound method that
    records the drop, on this instance only."""
    inner = getattr(processor, "_batch_processor", None)
    metrics = getattr(inner, "_metrics", None)
    if metrics is None:
        return
    processor.tp_dropped = 0
    original = metrics.drop_items

    def drop_items(count: int, *args: Any, **kwargs: Any) -> None:
        processor.tp_dropped += count
        original(count, *args, **kwargs)

    try:
        metrics.drop_items = drop_items
    except AttributeError:  # a slotted metrics object: no count
        del processor.tp_dropped


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Params:
    tasks: int = 1_000_000
    workers: int = 2
    window: int = 10_000
    start_method: str = ""
    max_rss_growth_mb: float = 50.0
    timeout: float = 1800.0


@dataclass
class SoakResult:
    tasks: int = 0
    seconds: float = 0.0
    tasks_per_s: float = 0.0
    rss_curve: list[tuple[int, float]] = field(default_factory=list)  # (tasks done, MB)
    rss_at_10pct_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_mb: float = 0.0
    rss_after_shutdown_mb: float = 0.0
    wrong_results: int = 0
    unresolved: int = 0
    spans_exported: int = 0
    spans_dropped_by_processor: int | None = None
    emitter_dropped: int = 0
    before_pool: dict[str, Any] = field(default_factory=dict)
    right_after_shutdown: dict[str, Any] = field(default_factory=dict)
    emitter_backlog_at_shutdown_end: int = 0
    after_shutdown: dict[str, Any] = field(default_factory=dict)
    after_provider_shutdown: dict[str, Any] = field(default_factory=dict)
    shutdown_seconds: float = 0.0
    settle_seconds: float = 0.0
    leftovers: dict[str, int] = field(default_factory=dict)
    weakrefs_alive: list[str] = field(default_factory=list)
    holdings_diff: list[str] = field(default_factory=list)
    provider_holdings_diff: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def holdings_dict(h: Holdings) -> dict[str, Any]:
    return {"fds": len(h.fds), "threads": h.threads, "os_threads": h.os_threads}


def windows(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(total, start + size))


def run_windows(
    pool: Any,
    params: Params,
    result: SoakResult,
    on_window: Callable[[int], None] | None = None,
) -> list[Any]:
    """Submit and check every window; returns weak references to sample objects."""
    samples: list[Any] = []
    curve_every = max(1, params.tasks // 50)
    next_point = 0
    t0 = time.perf_counter()
    ten_pct = max(1, params.tasks // 10)
    rss_10 = None
    for idx, win in enumerate(windows(params.tasks, params.window)):
        futures = [pool.submit(noop, i) for i in win]
        done, not_done = concurrent.futures.wait(futures, timeout=120)
        result.unresolved += len(not_done)
        for i, f in zip(win, futures, strict=True):
            if f.done() and (f.exception() is not None or f.result() != i):
                result.wrong_results += 1
        if idx == 0:
            first = futures[0]
            samples.append(("Future", weakref.ref(first)))
            for cb in getattr(first, "_done_callbacks", []):
                if type(cb).__name__ == "TaskRecord":
                    samples.append(("TaskRecord", weakref.ref(cb)))
        del futures, done, not_done
        finished = win.stop
        if rss_10 is None and finished >= ten_pct:
            gc.collect()
            rss_10 = rss_bytes()
            result.rss_at_10pct_mb = rss_10 / 2**20
        if finished >= next_point or finished == params.tasks:
            result.rss_curve.append((finished, round(rss_bytes() / 2**20, 1)))
            next_point = finished + curve_every
        if on_window is not None:
            on_window(finished)
        if result.unresolved:
            break
    result.seconds = time.perf_counter() - t0
    gc.collect()
    result.rss_end_mb = rss_bytes() / 2**20  # as at 10%: after a collection
    result.rss_growth_mb = result.rss_end_mb - result.rss_at_10pct_mb
    result.tasks = params.tasks
    result.tasks_per_s = params.tasks / result.seconds if result.seconds else 0.0
    return samples


def soak(params: Params, sdk: Sdk | None = None) -> SoakResult:
    from opentelemetry.sdk.trace import ReadableSpan

    import tracedpool

    result = SoakResult()
    ctx = multiprocessing.get_context(params.start_method or None)
    # multiprocessing's process-wide helpers (the resource tracker; the fork server, the
    # default from 3.14) start on first use and live as long as the process: start them
    # with one plain stdlib pool, so the baseline holds their descriptors and only what
    # the traced pool keeps counts as left over.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as warm:
        warm.submit(int).result(timeout=60)
    before_provider = Holdings.now()
    if sdk is None:
        sdk = counting_sdk()
    count_bsp_drops(sdk.processor)
    # A span the processor still holds is the SDK's, not ours: count ReadableSpans only
    # after a flush, and take a live one's reference to check it is released.
    span_probe: list[Any] = []

    class Probe:
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            pass

        def on_end(self, span: ReadableSpan) -> None:
            if not span_probe:
                span_probe.append(weakref.ref(span))

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    sdk.provider.add_span_processor(Probe())
    gc.collect()
    baseline = Holdings.now()
    result.before_pool = holdings_dict(baseline)
    pool = tracedpool.TracedProcessPoolExecutor(
        params.workers, mp_context=ctx, tracer_provider=sdk.provider, name="soak"
    )
    samples = [("TracedProcessPoolExecutor", weakref.ref(pool))]
    state = pool._tp_state  # type: ignore[attr-defined]
    samples.append(("PoolState", weakref.ref(state)))
    samples += run_windows(pool, params, result)
    result.emitter_dropped = state.emitter.dropped
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    result.shutdown_seconds = time.monotonic() - t0
    right_after = Holdings.now()
    result.right_after_shutdown = holdings_dict(right_after)
    result.emitter_backlog_at_shutdown_end = len(state.emitter._queue)
    # Descriptors: shutdown() itself must have closed them, with the pool still
    # referenced (no help from the garbage collector).
    result.holdings_diff = [f"right after: {d}" for d in baseline.diff(right_after, threads=False)]
    # Threads: shutdown() waits at most 2 s for the emitter; a backlog left then is
    # emitted in the background. Wait for that (bounded), the pool still referenced.
    now, result.settle_seconds = settle_to(baseline, 10.0)
    result.after_shutdown = holdings_dict(now)
    result.holdings_diff += baseline.diff(now)
    del state, pool
    # Flush the processor, so that spans still in the SDK's queue are not counted as
    # left over by the pool.
    sdk.provider.force_flush(30_000)
    samples += [("ReadableSpan", r) for r in span_probe]
    gc.collect()
    result.weakrefs_alive = [name for name, ref in samples if ref() is not None]
    result.leftovers = {k: v for k, v in tracked_counts().items() if v}
    result.rss_after_shutdown_mb = rss_bytes() / 2**20
    result.spans_dropped_by_processor = queue_drops(sdk.processor)
    sdk.provider.shutdown()
    result.spans_exported = getattr(sdk.exporter, "spans", -1)
    del sdk
    later, _ = settle_to(before_provider, 10.0)
    result.after_provider_shutdown = holdings_dict(later)
    result.provider_holdings_diff = before_provider.diff(later)
    check(result, params)
    return result


def check(result: SoakResult, params: Params) -> None:
    f = result.failures
    if result.unresolved:
        f.append(f"{result.unresolved} futures did not resolve within 120 s of their window")
    if result.wrong_results:
        f.append(f"{result.wrong_results} futures resolved with a wrong result or an exception")
    if result.rss_growth_mb >= params.max_rss_growth_mb:
        f.append(
            f"RSS grew {result.rss_growth_mb:.1f} MB from 10% to the end "
            f"(limit {params.max_rss_growth_mb} MB)"
        )
    f += [f"after shutdown(): {d}" for d in result.holdings_diff]
    f += [f"after the provider's shutdown: {d}" for d in result.provider_holdings_diff]
    if result.leftovers:
        f.append(f"objects left after the pool is gone: {result.leftovers}")
    if result.weakrefs_alive:
        f.append(f"still referenced after the pool is gone: {result.weakrefs_alive}")


# -- output -------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    from importlib import metadata

    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?"
            )
    except OSError:
        model = "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_implementation() + " " + platform.python_version(),
        "platform": platform.platform(),
        "sdk": metadata.version("opentelemetry-sdk"),
        "start_method": multiprocessing.get_start_method(),
        "load": os.getloadavg()[0],
    }


def render(result: SoakResult, params: Params, info: dict[str, Any], argv: list[str]) -> str:
    curve = result.rss_curve
    picks = [curve[int(i * (len(curve) - 1) / 10)] for i in range(11)] if curve else []
    lines = [
        f"- {info['date']}; {info['cpus']} CPUs ({info['cpu']}); {info['python']}; "
        f"OpenTelemetry SDK {info['sdk']}; start method {info['start_method']}; "
        f"load average {info['load']:.2f}",
        f"- command: `python benchmarks/soak.py {' '.join(argv)}`".replace("  ", " "),
        f"- {result.tasks:,} tasks, {params.workers} workers, windows of {params.window:,}, "
        "always-on sampling, `BatchSpanProcessor` (defaults) + counting exporter",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | {result.seconds:.1f} s ({result.tasks_per_s:,.0f} tasks/s) |",
        f"| futures resolved / wrong | {result.tasks - result.unresolved:,} / "
        f"{result.wrong_results} |",
        f"| RSS at 10% / end / growth | {result.rss_at_10pct_mb:.1f} MB / "
        f"{result.rss_end_mb:.1f} MB / {result.rss_growth_mb:+.1f} MB "
        f"(limit +{params.max_rss_growth_mb:.0f}); {result.rss_after_shutdown_mb:.1f} MB "
        "once the pool is gone |",
        "| RSS curve (tasks done: MB) | "
        + ", ".join(f"{n // 1000}k: {mb:.0f}" for n, mb in picks)
        + " |",
        f"| fds before pool / right after shutdown() | {result.before_pool.get('fds')} / "
        f"{result.right_after_shutdown.get('fds')} |",
        f"| threads before pool / after shutdown | {len(result.before_pool.get('threads', []))}"
        f" ({result.before_pool.get('os_threads')} OS) / "
        f"{len(result.after_shutdown.get('threads', []))}"
        f" ({result.after_shutdown.get('os_threads')} OS) |",
        f"| threads right after shutdown() returned | "
        f"{len(result.right_after_shutdown.get('threads', []))} "
        f"({result.emitter_backlog_at_shutdown_end:,} span records still queued); all gone "
        f"{result.settle_seconds:.2f} s later |",
        f"| shutdown(wait=True) | {result.shutdown_seconds:.2f} s |",
        f"| objects left (tracked classes, weakref samples) | "
        f"{sum(result.leftovers.values())}, {len(result.weakrefs_alive)} |",
        f"| spans exported / dropped by the processor (queue full) / by the emitter | "
        f"{result.spans_exported:,} / {result.spans_dropped_by_processor or 0:,} / "
        f"{result.emitter_dropped:,} task records |",
        f"| verdict | {'PASS' if not result.failures else 'FAIL: ' + '; '.join(result.failures)} |",
    ]
    return "\n".join(lines)


def update_markdown(path: Path, block: str, start: str = MD_START, end: str = MD_END) -> None:
    """Replace what is between the ``start`` and ``end`` markers in ``path`` (appending
    the block if they are missing); the rest of the file is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    new = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + new + tail
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text, encoding="utf-8")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Params]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=Params.tasks)
    p.add_argument("--workers", type=int, default=Params.workers)
    p.add_argument("--window", type=int, default=Params.window, help="futures in flight, at most")
    p.add_argument("--start-method", default="", help="fork, spawn or forkserver")
    p.add_argument("--max-rss-growth-mb", type=float, default=Params.max_rss_growth_mb)
    p.add_argument("--timeout", type=float, default=Params.timeout, help="dump stacks and exit")
    p.add_argument("--json", type=Path, metavar="PATH")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="update the soak block in PATH")
    a = p.parse_args(argv)
    params = Params(a.tasks, a.workers, a.window, a.start_method, a.max_rss_growth_mb, a.timeout)
    return a, params


def main(argv: Sequence[str] | None = None) -> int:
    args, params = parse_args(argv)
    faulthandler.dump_traceback_later(params.timeout, exit=True)
    logs = install_log_counter()
    result = soak(params)
    result.warnings = logs.summary()
    info = machine()
    text = render(result, params, info, list(sys.argv[1:] if argv is None else argv))
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "params": vars(params), "result": vars(result)},
                indent=2,
                default=str,
            )
        )
    if args.markdown:
        update_markdown(args.markdown, text)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
