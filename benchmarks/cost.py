"""The honest cost of tracing: every span built and exported inside the clock.

Each traced round's clock stops only once every span of the round has reached the
exporter: the pool's span-building backlog, the SDK's ``BatchSpanProcessor`` queue and
the export itself are all inside it, and so is the parent's CPU. The stdlib round is
the same work on a plain ``ProcessPoolExecutor``. Rounds alternate stdlib, traced,
stdlib, ... in one process; a row's ratio is the median of the per-pair ratios.

    python benchmarks/cost.py                     # every mode and workload (~10 min, 2 cores)
    python benchmarks/cost.py --quick             # smoke run (< 60 s): small N, 2 pairs
    python benchmarks/cost.py --modes sdk --workloads trivial_20k,cpu_1ms --pairs 5
    python benchmarks/cost.py --json cost.json

Modes (rows), each in a fresh interpreter (the global tracer provider is set once):

* ``sdk``: the user's own provider: SDK ``TracerProvider`` (always on) with a default
  ``BatchSpanProcessor`` in front of an exporter that only counts spans.
* ``file``: ``tracedpool.configure()`` with nothing set: the embedded default, OTLP/JSON
  lines in a file. The file is read back after every traced round (off the clock) and
  every span of the round must be in it. Its rotation bound is raised so that a
  100,000-task round is not rotated away before it is counted.
* ``otlp``: ``tracedpool.configure()`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
  ``tracedpool.testing.OtlpReceiver`` running in a separate process (a local collector's
  CPU is not the parent's), which decodes every request and counts its spans.
* ``sampled``: SDK provider with ``ParentBased(TraceIdRatioBased(0.01))``, the default
  batch processor and the counting exporter (as ``throughput.py``'s ``sdk-1pct``).
* ``no-sdk``: the API only; the global provider is never set.

Workloads: trivial tasks in bursts of 5,000, 20,000 and 100,000 (submit all, wait all);
a steady stream (a window of ``--stream-window`` tasks kept in flight for
``--stream-seconds``, whatever the burst sizes); 1 ms CPU-bound tasks (a loop calibrated
once to ~1 ms of CPU, so a worker that loses its core to the parent takes longer); 1 ms
sleeping tasks beside them; and 1 MB arguments.

"Spans dropped" counts the ``BatchSpanProcessor``'s queue drops (the SDK logs "Queue
full, dropping Span" but keeps no count: its drop hook is wrapped on each processor
instance, here in the benchmark) and the task records tracedpool's emitter dropped
(``pool.stats()["span_records_dropped"]``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run from a checkout without installing; at module level so that spawn and forkserver
# workers, which re-import this file, find tracedpool too.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from throughput import (  # noqa: E402  (the tasks, and the machine's description)
    machine_info,
    noop,
    payload_len,
    sleep_1ms,
    sleep_for,
)

PAYLOAD_BYTES = 1_000_000
#: The spans every successful task has (tracedpool's names registry, docs/names.md):
#: the task span and its five stage spans. Manager-wake spans are counted apart.
TASK_SPANS = (
    "tracedpool.task",
    "tracedpool.submit",
    "tracedpool.enqueue",
    "tracedpool.feeder-serialize",
    "tracedpool.worker-run",
    "tracedpool.sendback",
)
WAKE_SPAN = "tracedpool.manager-wake"
NAMES = (*TASK_SPANS, WAKE_SPAN)
TRACE_FILE_MAX_BYTES = "TRACEDPOOL_TRACE_FILE_MAX_BYTES"


# --- Tasks: module-level, so they pickle by reference under every start method (noop,
# sleep_1ms, payload_len and sleep_for are throughput.py's, imported above). ---


def spin(loops: int) -> int:
    """CPU-bound: a fixed amount of work, not a fixed wall time (a worker preempted by
    the parent's threads takes longer, which is the cost being measured)."""
    total = 0
    for i in range(loops):
        total += i
    return total


def calibrate_spin(target_s: float = 0.001) -> int:
    """Loops of ``spin`` that take ``target_s`` of CPU here (median of a few tries)."""
    loops = 10_000
    while True:
        t = time.process_time()
        spin(loops)
        if time.process_time() - t > 0.02:
            break
        loops *= 2
    per_loop = []
    for _ in range(7):
        t = time.process_time()
        spin(loops)
        per_loop.append((time.process_time() - t) / loops)
    return max(1, round(target_s / statistics.median(per_loop)))


# --- Workloads, modes, targets. ---


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    kind: str  # "burst", "stream"
    n: int
    quick_n: int
    group: str  # target column: trivial, cpu, sleep, arg


WORKLOADS: tuple[Workload, ...] = (
    Workload("trivial_5k", "trivial, burst of 5k", "burst", 5_000, 500, "trivial"),
    Workload("trivial_20k", "trivial, burst of 20k", "burst", 20_000, 1_000, "trivial"),
    Workload("trivial_100k", "trivial, burst of 100k", "burst", 100_000, 2_000, "trivial"),
    Workload("stream", "trivial, steady stream", "stream", 0, 0, "trivial"),
    Workload("cpu_1ms", "1 ms CPU-bound", "burst", 3_000, 100, "cpu"),
    Workload("sleep_1ms", "1 ms sleep", "burst", 1_000, 100, "sleep"),
    Workload("arg_1mb", "1 MB argument", "burst", 1_000, 20, "arg"),
)
BY_KEY = {w.key: w for w in WORKLOADS}

MODES: dict[str, str] = {
    "sdk": "user's provider (BSP + counting exporter)",
    "file": "configure(): embedded file (OTLP/JSON lines)",
    "otlp": "configure(): OTLP/HTTP to a local receiver",
    "sampled": "SDK 1% sampled (BSP + counting exporter)",
    "no-sdk": "no SDK (API only)",
}

#: Issue 13's goal, per mode: minimum traced/stdlib ratio per workload group, and the
#: most parent CPU per task, traced against stdlib. Sleeping tasks have no target there.
TARGETS: dict[str, tuple[dict[str, float], float]] = {
    "sdk": ({"trivial": 0.75, "cpu": 0.97, "arg": 0.97}, 1.3),
    "file": ({"trivial": 0.85, "cpu": 0.97, "arg": 0.97}, 1.2),
    "otlp": ({"trivial": 0.85, "cpu": 0.97, "arg": 0.97}, 1.2),
    "sampled": ({"trivial": 0.97, "cpu": 0.99, "arg": 0.99}, 1.05),
    "no-sdk": ({"trivial": 0.97, "cpu": 0.99, "arg": 0.99}, 1.05),
}


@dataclass(frozen=True)
class Params:
    workers: int
    pairs: int
    pairs_100k: int
    n: dict[str, int]  # burst sizes by workload key (selected workloads only)
    stream_seconds: float
    stream_window: int
    spin_loops: int
    start_method: str
    timeout: float
    warm_every: bool = True  # an unmeasured round before each workload (not only the first)

    def argv(self) -> list[str]:
        args = ["--workers", str(self.workers), "--pairs", str(self.pairs)]
        args += ["--pairs-100k", str(self.pairs_100k), "--workloads", ",".join(self.n)]
        args += ["--stream-seconds", str(self.stream_seconds)]
        args += ["--stream-window", str(self.stream_window), "--spin-loops", str(self.spin_loops)]
        args += ["--start-method", self.start_method, "--timeout", str(self.timeout)]
        if not self.warm_every:
            args.append("--warm-once")
        for key, n in self.n.items():
            if BY_KEY[key].kind == "burst":
                args += [f"--n-{key.replace('_', '-')}", str(n)]
        return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Where spans end up: a sink that counts them, per mode. ---


@dataclass
class SpanCounts:
    """Spans that reached the sink, by kind; and what was lost on the way."""

    task: int = 0
    wake: int = 0
    other: int = 0

    def add_names(self, names: Counter[str]) -> None:
        for name, count in names.items():
            if name in TASK_SPANS:
                self.task += count
            elif name == WAKE_SPAN:
                self.wake += count
            else:
                self.other += count


def counting_exporter(counts: SpanCounts) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class CountingExporter(SpanExporter):  # type: ignore[misc]
        """A cheap exporter: counts spans by kind and drops them."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            counts.add_names(Counter(s.name for s in spans))
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return CountingExporter()


def batch_processors(provider: Any) -> list[Any]:
    """The SDK ``BatchSpanProcessor``s of a provider (SDK internals, probed)."""
    multi = getattr(provider, "_active_span_processor", None)
    found = []
    for p in getattr(multi, "_span_processors", ()):
        if getattr(p, "_batch_processor", None) is not None:
            found.append(p)
    return found


class DropCounter:
    """Counts the spans a ``BatchSpanProcessor`` drops when its queue is full. The SDK
    (1.45) logs "Queue full" (at most once per 20 s) and keeps no count unless its
    internal metrics are on, so the drop hook of each instance is wrapped."""

    def __init__(self) -> None:
        self.dropped = 0
        self.hooked = 0

    def hook(self, processor: Any) -> None:
        metrics = getattr(getattr(processor, "_batch_processor", None), "_metrics", None)
        original = getattr(metrics, "drop_items", None)
        if original is None:
            return

        def drop_items(count: int, *args: Any, **kwargs: Any) -> Any:
            self.dropped += count
            return original(count, *args, **kwargs)

        try:
            metrics.drop_items = drop_items
        except AttributeError:  # a slotted metrics object: no count
            return
        self.hooked += 1


class QueueFullLog(logging.Handler):
    """Counts the SDK's "Queue full" warnings: a second witness of drops."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Queue full" in str(record.msg):
            self.count += 1


@dataclass
class Telemetry:
    """One mode's tracing set-up, as the rounds see it."""

    reached: Callable[[], int] | None = None  # task spans at the exporter so far (cheap)
    queued: Callable[[], int] | None = None  # spans waiting in the SDK's batch queues
    flush: Callable[[], None] = lambda: None  # push the SDK's queues through the exporter
    verify: Callable[[], SpanCounts] | None = None  # count the round's spans at the sink
    drops: DropCounter = field(default_factory=DropCounter)
    expect_all: bool = True  # every task sampled
    traced: bool = True  # spans at all
    close: Callable[[], None] = lambda: None
    describe: str = ""


def since_last(totals: Callable[[], Sequence[int]]) -> Callable[[], SpanCounts]:
    """A sink's running totals (task, wake, other) as counts since the previous call."""
    seen = [0, 0, 0]

    def verify() -> SpanCounts:
        now = list(totals())
        counts = SpanCounts(*(a - b for a, b in zip(now, seen, strict=True)))
        seen[:] = now
        return counts

    return verify


def install_sdk(ratio: float | None) -> Telemetry:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    counts = SpanCounts()
    sampler = ALWAYS_ON if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(counting_exporter(counts)))
    trace.set_tracer_provider(provider)
    tel = Telemetry(reached=lambda: counts.task, flush=provider.force_flush)
    tel.verify = since_last(lambda: (counts.task, counts.wake, counts.other))
    tel.expect_all = ratio is None
    tel.queued = batch_queue_length(provider)
    for p in batch_processors(provider):
        tel.drops.hook(p)
    return tel


def batch_queue_length(provider: Any) -> Callable[[], int] | None:
    """Spans waiting in the provider's batch processors' queues (SDK internals, probed),
    or None where they cannot be seen."""
    queues = [getattr(p._batch_processor, "_queue", None) for p in batch_processors(provider)]
    if not queues or any(q is None for q in queues):
        return None
    return lambda: sum(len(q) for q in queues)  # type: ignore[arg-type]


def wrap_exports(provider: Any, counts: SpanCounts) -> bool:
    """Count the spans each batch processor's exporter has returned from exporting (SDK
    internals, probed): what "reached the exporter" means for the file."""
    wrapped = False
    for p in batch_processors(provider):
        exporter = getattr(p._batch_processor, "_exporter", None)
        original = getattr(exporter, "export", None)
        if original is None:
            continue

        def export(spans: Sequence[Any], _original: Any = original) -> Any:
            result = _original(spans)
            counts.add_names(Counter(s.name for s in spans))
            return result

        p._batch_processor._exporter.export = export
        wrapped = True
        write = getattr(exporter, "write_encoded", None)
        if write is not None:
            # The pool writes its own spans to the file exporter (otel.FileSink), as
            # lines it encoded: they reach the exporter here, counted by name.
            def write_encoded(line: bytes, count: int, _write: Any = write) -> Any:
                result = _write(line, count)
                counts.add_names(
                    Counter({n: line.count(b'"name":"%s"' % n.encode()) for n in NAMES})
                )
                return result

            exporter.write_encoded = write_encoded
    return wrapped


def read_trace_files(directory: Path) -> SpanCounts:
    """Spans in every OTLP/JSON-lines file in ``directory`` (rotated ones too), which
    are then removed: each round is counted alone. The exporter reopens the file."""
    counts = SpanCounts()
    names: Counter[str] = Counter()
    for path in sorted(directory.glob("*.jsonl*")):
        with path.open("rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    request = json.loads(line)
                    for rs in request.get("resourceSpans", ()):
                        for ss in rs.get("scopeSpans", ()):
                            names.update(s.get("name", "") for s in ss.get("spans", ()))
        path.unlink()
    counts.add_names(names)
    return counts


def install_file(tmp: Path) -> Telemetry:
    import tracedpool

    directory = tmp / "traces"
    # The embedded default rotates at 16 MB and keeps 3 files; a 100k-task round writes
    # ~300 MB, so the round would rotate its own first spans away before they are
    # counted. Only the bound changes: the pipeline is the default one.
    os.environ[TRACE_FILE_MAX_BYTES] = str(1 << 40)
    setup = tracedpool.configure(trace_file=directory / "traces.jsonl")
    counts = SpanCounts()
    tel = Telemetry(flush=setup.provider.force_flush, describe=setup.describe())
    if wrap_exports(setup.provider, counts):
        tel.reached = lambda: counts.task
    tel.queued = batch_queue_length(setup.provider)
    tel.verify = lambda: read_trace_files(directory)
    for p in batch_processors(setup.provider):
        tel.drops.hook(p)
    return tel


def serve_receiver(shared: Any, ready: Any) -> None:
    """In its own process: an OTLP/HTTP receiver that decodes every request and counts
    its spans into ``shared`` (task, wake, other, requests)."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

    from tracedpool.testing import OtlpReceiver

    def on_request(path: str, headers: dict[str, str], body: bytes) -> None:
        request = pb.ExportTraceServiceRequest()
        request.ParseFromString(body)
        names: Counter[str] = Counter()
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                names.update(s.name for s in ss.spans)
        c = SpanCounts()
        c.add_names(names)
        with shared.get_lock():
            shared[0] += c.task
            shared[1] += c.wake
            shared[2] += c.other
            shared[3] += 1

    receiver = OtlpReceiver(on_request=on_request)
    ready.send(receiver.url)
    threading.Event().wait()  # until terminated


def install_otlp() -> Telemetry:
    import tracedpool

    ctx = multiprocessing.get_context("spawn")  # no inherited threads or provider
    shared = ctx.Array("q", 4)
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=serve_receiver, args=(shared, child_end), daemon=True)
    proc.start()
    if not parent_end.poll(60):
        raise RuntimeError("the OTLP receiver process did not start")
    url = parent_end.recv()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
    setup = tracedpool.configure()
    tel = Telemetry(
        reached=lambda: int(shared[0]),
        flush=setup.provider.force_flush,
        verify=since_last(lambda: shared[:3]),
        describe=setup.describe(),
    )
    tel.close = proc.terminate
    tel.queued = batch_queue_length(setup.provider)
    for p in batch_processors(setup.provider):
        tel.drops.hook(p)
    return tel


def install_telemetry(mode: str, tmp: Path) -> Telemetry:
    if mode == "sdk":
        return install_sdk(None)
    if mode == "sampled":
        return install_sdk(0.01)
    if mode == "file":
        return install_file(tmp)
    if mode == "otlp":
        return install_otlp()
    return Telemetry(expect_all=False, traced=False)


# --- Rounds. ---


def emitter_state(pool: Executor) -> tuple[int, int]:
    """(span records waiting, task records dropped) of a traced pool; (0, 0) otherwise.
    Called only when the sink stops moving (``stats()`` is cheap now, but was ~0.5 ms)."""
    stats = getattr(pool, "stats", None)
    if stats is None:
        return 0, 0
    s = stats()
    return int(s.get("span_backlog", 0)), int(s.get("span_records_dropped", 0))


def drain(pool: Executor, tel: Telemetry, expected: int | None, task0: int) -> None:
    """On the clock: return once every span of the round has reached the exporter.

    With every task sampled, the round's task spans are known (6 per task): once they
    are all exported or waiting in the SDK's batch queue, and the pool has no span
    records left, the queue is flushed through the exporter (synchronously) and the
    clock stops. Otherwise (1% sampling, or queues that cannot be seen) the sink's
    count is polled; once it has stopped moving for 5 ms the pool is asked for its
    backlog (``stats()``); with none left, the SDK's queues are flushed.
    Flushing waits until then, so the batch processor exports in its own batch sizes."""
    reached, queued = tel.reached, tel.queued
    last, still_since = -1, time.perf_counter()
    while True:
        got = reached() - task0 if reached is not None else None
        if got is not None and expected is not None:
            if got >= expected:
                break
            if queued is not None and got + queued() >= expected and not emitter_state(pool)[0]:
                tel.flush()
                break
        now = time.perf_counter()
        if got != last:
            last, still_since = got if got is not None else -1, now
        elif now - still_since >= 0.005 or got is None:
            if not emitter_state(pool)[0]:
                tel.flush()
                break
            still_since = now
        time.sleep(0.001)
    # An exporter that hands spans on asynchronously (a receiver in another process
    # counts after decoding) gets 0.5 s more to deliver the rest.
    settle_until = time.perf_counter() + 0.5
    while reached is not None and expected is not None:
        if reached() - task0 >= expected or time.perf_counter() > settle_until:
            break
        time.sleep(0.001)


def settle(pool: Executor, tel: Telemetry, max_wait: float = 10.0) -> None:
    """Off the clock, between rounds: no span work left over, threads idle."""
    deadline = time.perf_counter() + max_wait
    while emitter_state(pool)[0] and time.perf_counter() < deadline:
        time.sleep(0.01)
    while time.perf_counter() < deadline:
        tel.flush()
        cpu = time.process_time()
        time.sleep(0.01)
        if time.process_time() - cpu < 0.001:
            return


@dataclass
class RoundResult:
    n: int
    wall_s: float
    cpu_s: float
    wrong: int = 0


def run_burst(pool: Executor, w: Workload, n: int, arg: Any, expected_result: Any) -> int:
    fn = {"trivial": noop, "cpu": spin, "sleep": sleep_1ms, "arg": payload_len}[w.group]
    futures = [pool.submit(fn, arg) for _ in range(n)]
    return sum(1 for f in futures if f.result() != expected_result)


def run_stream(pool: Executor, seconds: float, window: int) -> tuple[int, int]:
    """Keep ``window`` trivial tasks in flight for ``seconds``; (tasks, wrong results)."""
    slots = threading.BoundedSemaphore(window)
    wrong = [0]

    def done(f: Future[Any]) -> None:
        if f.exception() is not None or f.result() != 1:
            wrong[0] += 1
        slots.release()

    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        slots.acquire()
        pool.submit(noop, 1).add_done_callback(done)
        n += 1
    for _ in range(window):  # every task done
        slots.acquire()
    return n, wrong[0]


def one_round(
    pool: Executor, w: Workload, params: Params, tel: Telemetry | None
) -> tuple[RoundResult, dict[str, Any]]:
    """A timed round; ``tel`` is None for the stdlib pool. Returns the round and, for a
    traced round, its span accounting."""
    arg: Any = 1
    expected_result: Any = 1
    if w.group == "arg":
        arg, expected_result = b"\0" * PAYLOAD_BYTES, PAYLOAD_BYTES
    elif w.group == "cpu":
        arg, expected_result = params.spin_loops, params.spin_loops * (params.spin_loops - 1) // 2
    gc.collect()
    task0 = tel.reached() if tel is not None and tel.reached is not None else 0
    drops0 = tel.drops.dropped if tel is not None else 0
    emitter_drops0 = emitter_state(pool)[1] if tel is not None else 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if w.kind == "stream":
        n, wrong = run_stream(pool, params.stream_seconds, params.stream_window)
    else:
        n = params.n[w.key]
        wrong = run_burst(pool, w, n, arg, expected_result)
    expected = n * len(TASK_SPANS) if tel is not None and tel.expect_all else None
    if tel is not None and tel.traced:
        drain(pool, tel, expected, task0)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    spans: dict[str, Any] = {}
    if tel is not None and tel.traced:
        settle(pool, tel)
        reached = tel.reached() - task0 if tel.reached is not None else None
        spans = {
            "expected_task_spans": expected,
            "task_spans_in_clock": reached,  # at the exporter when the clock stopped
            "bsp_dropped": tel.drops.dropped - drops0,
            "emitter_dropped_records": emitter_state(pool)[1] - emitter_drops0,
        }
        if tel.verify is not None:
            found = tel.verify()  # read back at the destination, after settling
            spans["found_task_spans"] = found.task
            spans["found_wake_spans"] = found.wake
    return RoundResult(n, wall, cpu, wrong), spans


def start_workers(pool: Executor, workers: int) -> None:
    """Start every worker before anything else goes through the parent (under fork, a
    worker forked after 1 MB payloads inherits a different heap: throughput.py)."""
    list(pool.map(sleep_for, [0.05] * (2 * workers)))


def run_mode(mode: str, params: Params) -> dict[str, Any]:
    """Every selected workload, alternated stdlib/traced rounds, in this process."""
    queue_full = QueueFullLog()
    logging.getLogger().addHandler(queue_full)
    tmp = Path(tempfile.mkdtemp(prefix="tracedpool-cost-"))
    try:
        tel = install_telemetry(mode, tmp)
        from tracedpool import TracedProcessPoolExecutor

        ctx = multiprocessing.get_context(params.start_method)
        stdlib = ProcessPoolExecutor(params.workers, mp_context=ctx)
        traced = TracedProcessPoolExecutor(params.workers, mp_context=ctx)
        try:
            start_workers(stdlib, params.workers)
            start_workers(traced, params.workers)
            out: dict[str, Any] = {"mode": mode, "describe": tel.describe, "workloads": {}}
            for i, key in enumerate(params.n):
                warm = params.warm_every or i == 0
                out["workloads"][key] = measure(BY_KEY[key], params, stdlib, traced, tel, warm)
            out["bsp_drop_hooks"] = tel.drops.hooked
            out["queue_full_logged"] = queue_full.count
            return out
        finally:
            stdlib.shutdown()
            traced.shutdown()
            tel.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(
    w: Workload,
    params: Params,
    stdlib: Executor,
    traced: Executor,
    tel: Telemetry,
    warm_up: bool = True,
) -> dict[str, Any]:
    log(f"  {w.key}")
    if warm_up:  # one small unmeasured round each
        warm = Params(**{**asdict(params), "n": {w.key: max(1, params.n[w.key] // 10)}})
        warm = Params(**{**asdict(warm), "stream_seconds": min(0.2, params.stream_seconds)})
        for pool, t in ((stdlib, None), (traced, tel)):
            one_round(pool, w, warm, t)
            settle(traced, tel)
    pairs = params.pairs_100k if w.key == "trivial_100k" else params.pairs
    raw: dict[str, Any] = {"stdlib": [], "traced": [], "spans": []}
    for _ in range(pairs):
        s, _spans = one_round(stdlib, w, params, None)
        settle(traced, tel)
        t, spans = one_round(traced, w, params, tel)
        raw["stdlib"].append(asdict(s))
        raw["traced"].append(asdict(t))
        raw["spans"].append(spans)
        if s.wrong or t.wrong:
            raise RuntimeError(f"{w.key}: a task returned a wrong result")
    return raw


# --- Summaries and verdicts. ---


def summarize(mode: str, key: str, raw: dict[str, Any]) -> dict[str, Any]:
    std, trc = raw["stdlib"], raw["traced"]
    ratios = sorted(
        (t["n"] / t["wall_s"]) / (s["n"] / s["wall_s"]) for s, t in zip(std, trc, strict=True)
    )
    cpu_std = statistics.median(s["cpu_s"] / s["n"] for s in std) * 1e6
    cpu_trc = statistics.median(t["cpu_s"] / t["n"] for t in trc) * 1e6
    spans = raw["spans"]

    def total(name: str) -> int | None:
        values = [s.get(name) for s in spans]
        return None if not spans or any(v is None for v in values) else sum(values)

    expected, found = total("expected_task_spans"), total("found_task_spans")
    dropped = (total("bsp_dropped") or 0, total("emitter_dropped_records") or 0)
    ratio_targets, cpu_target = TARGETS[mode]
    target = ratio_targets.get(BY_KEY[key].group)
    ratio = statistics.median(ratios)
    cpu_x = cpu_trc / cpu_std if cpu_std else float("inf")
    lost = expected - found if expected is not None and found is not None else None
    in_clock = total("task_spans_in_clock")
    return {
        "pairs": len(ratios),
        "n": statistics.median(t["n"] for t in trc),
        "stdlib_tps": statistics.median(s["n"] / s["wall_s"] for s in std),
        "traced_tps": statistics.median(t["n"] / t["wall_s"] for t in trc),
        "ratio": ratio,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "stdlib_cpu_us": cpu_std,
        "traced_cpu_us": cpu_trc,
        "cpu_x": cpu_x,
        "expected_task_spans": expected,
        "found_task_spans": found,
        "task_spans_in_clock": in_clock,
        "wake_spans": total("found_wake_spans"),
        "lost_task_spans": lost,
        "bsp_dropped": dropped[0],
        "emitter_dropped_records": dropped[1],
        "ratio_target": target,
        "ratio_met": None if target is None else ratio >= target,
        "cpu_target": cpu_target,
        "cpu_met": cpu_x <= cpu_target,
        "drops_met": dropped == (0, 0) and not lost,
    }


def mark(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**missed**")


HEADER = (
    "mode",
    "workload",
    "N",
    "pairs",
    "stdlib/s",
    "traced/s",
    "traced/stdlib (min-max)",
    "target",
    "parent CPU us/task",
    "CPU x",
    "CPU target",
    "task spans expected / exported",
    "dropped (BSP spans / emitter records)",
)


def table(modes: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for mode, result in modes.items():
        if isinstance(result, str):
            lines.append(f"| {MODES[mode]} | FAILED: {result} |" + " |" * (len(HEADER) - 2))
            continue
        for key, raw in result["workloads"].items():
            s = raw["summary"]
            exp = "~1%" if s["expected_task_spans"] is None else f"{s['expected_task_spans']:,}"
            found = "-" if s["found_task_spans"] is None else f"{s['found_task_spans']:,}"
            spans = "n/a" if mode == "no-sdk" else f"{exp} / {found}"
            if s["lost_task_spans"]:
                spans += " (**lost**)"
            target = "info" if s["ratio_target"] is None else f">= {s['ratio_target']:.2f}"
            drops = (
                "n/a"
                if mode == "no-sdk"
                else f"{s['bsp_dropped']:,} / {s['emitter_dropped_records']:,}"
                + ("" if s["drops_met"] else " **missed**")
            )
            lines.append(
                "| "
                + " | ".join(
                    (
                        MODES[mode],
                        BY_KEY[key].label,
                        f"{s['n']:,.0f}",
                        str(s["pairs"]),
                        f"{s['stdlib_tps']:,.0f}",
                        f"{s['traced_tps']:,.0f}",
                        f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})",
                        f"{target} {mark(s['ratio_met'])}".strip(),
                        f"{s['stdlib_cpu_us']:.0f} -> {s['traced_cpu_us']:.0f}",
                        f"{s['cpu_x']:.2f}x",
                        f"<= {s['cpu_target']:.2f}x {mark(s['cpu_met'])}",
                        spans,
                        drops,
                    )
                )
                + " |"
            )
    return "\n".join(lines)


# --- Command line (the machine is described by throughput.machine_info). ---


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s): small N, 2 pairs")
    p.add_argument("--pairs", type=int, help="round pairs per workload (3; quick 2)")
    p.add_argument("--pairs-100k", type=int, help="round pairs for the 100k burst (3; quick 2)")
    p.add_argument("--workers", type=int, default=2)
    for w in WORKLOADS:
        if w.kind == "burst":
            p.add_argument(f"--n-{w.key.replace('_', '-')}", type=int, help=f"default {w.n}")
    p.add_argument("--stream-seconds", type=float, help="length of a stream round (4; quick 0.3)")
    p.add_argument("--stream-window", type=int, default=1000, help="tasks in flight (1000)")
    p.add_argument("--spin-loops", type=int, help="loops of the CPU-bound task (calibrated)")
    p.add_argument("--workloads", default=",".join(BY_KEY), help="comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, run in order")
    p.add_argument("--mode", choices=MODES, help="run one mode in this process")
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # --mode's output file
    p.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=multiprocessing.get_start_method(),
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per mode (900)")
    p.add_argument(
        "--warm-once", action="store_true", help="warm up before the first workload only (quick)"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure")
    args = p.parse_args(argv)
    for name, values, known in (
        ("workload", args.workloads, BY_KEY),
        ("mode", args.modes, MODES),
    ):
        unknown = [v for v in values.split(",") if v not in known]
        if unknown:
            p.error(f"unknown {name}(s): {', '.join(unknown)}")
    return args


def resolve_params(args: argparse.Namespace) -> Params:
    n = {}
    for key in args.workloads.split(","):
        w = BY_KEY[key]
        n[key] = getattr(args, f"n_{key}", None) or (w.quick_n if args.quick else w.n)
    return Params(
        workers=args.workers,
        pairs=args.pairs or (2 if args.quick else 3),
        pairs_100k=args.pairs_100k or (2 if args.quick else 3),
        n=n,
        stream_seconds=args.stream_seconds or (0.2 if args.quick else 4.0),
        stream_window=args.stream_window,
        spin_loops=args.spin_loops or calibrate_spin(),
        start_method=args.start_method,
        timeout=args.timeout,
        warm_every=not (args.quick or args.warm_once),
    )


def run_mode_subprocess(mode: str, params: Params) -> dict[str, Any] | str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "mode.json"
        cmd = [sys.executable, __file__, "--mode", mode, "--result", str(result)]
        try:
            proc = subprocess.run(
                [*cmd, *params.argv()],
                env=env,
                timeout=params.timeout + 30,
                start_new_session=True,
                stdout=subprocess.PIPE,
                text=True,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {params.timeout + 30:.0f} s"
        if proc.returncode != 0 or not result.exists():
            return f"exit status {proc.returncode}"
        doc: dict[str, Any] = json.loads(result.read_text())
        return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = resolve_params(args)
    if args.mode:
        import faulthandler

        faulthandler.dump_traceback_later(params.timeout, exit=True)
        log(f"mode {args.mode}")
        doc = run_mode(args.mode, params)
        if args.result:
            args.result.write_text(json.dumps(doc))
        else:
            print(json.dumps(doc))
        return 0

    started = time.perf_counter()
    meta = machine_info()
    given = sys.argv[1:] if argv is None else list(argv)
    meta["command"] = " ".join(["python", "benchmarks/cost.py", *given])
    modes: dict[str, Any] = {}
    for mode in args.modes.split(","):
        modes[mode] = run_mode_subprocess(mode, params)
        if isinstance(modes[mode], str):
            log(f"mode {mode}: FAILED ({modes[mode]})")
            continue
        for key, raw in modes[mode]["workloads"].items():
            raw["summary"] = summarize(mode, key, raw)
    meta["wall_s"] = time.perf_counter() - started
    doc = {"meta": meta, "params": asdict(params), "modes": modes}
    load = meta["loadavg_at_start"]
    print(
        "**Tracing at its honest cost: every span exported inside the clock**\n\n"
        f"- {meta['date_utc']} UTC; {meta['cpu_count']} CPUs ({meta['cpu_model']});"
        f" {meta['python']}; start method {params.start_method}; load average {load[0]:.2f};"
        f" OpenTelemetry SDK {meta['opentelemetry_sdk']}; git {meta['git_commit']}\n"
        f"- max_workers={params.workers}; {params.pairs} alternated stdlib/traced round pairs"
        f" per workload ({params.pairs_100k} for 100k); ratio = median of per-pair ratios;"
        f" stream: {params.stream_window} tasks in flight for {params.stream_seconds:g} s;"
        f" CPU-bound task: {params.spin_loops:,} loops (~1 ms of CPU)\n"
        f"- parent CPU: the whole process (all threads), first submit to last span"
        f" exported; workers not included\n"
        f"- command: `{meta['command']}`; total wall time {meta['wall_s']:.0f} s\n\n" + table(modes)
    )
    for mode, result in modes.items():
        if isinstance(result, dict) and result.get("describe"):
            print(f"\n- {mode}: {result['describe']}")
        if isinstance(result, dict) and result.get("queue_full_logged"):
            print(f"- {mode}: the SDK logged 'Queue full' {result['queue_full_logged']} time(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 2 if any(isinstance(r, str) for r in modes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
