"""Throughput of TracedProcessPoolExecutor against the stdlib ProcessPoolExecutor.

Both pools run side by side in one process, in alternated rounds (stdlib, traced, stdlib, ...),
so that machine noise hits both sides alike; the reported number is the median of the
per-round-pair ratios traced/stdlib. Every telemetry mode runs in its own fresh interpreter,
because OpenTelemetry's global tracer provider can be set only once per process.

    python benchmarks/throughput.py                 # all modes, default parameters (~3-4 min)
    python benchmarks/throughput.py --quick         # smoke run (seconds)
    python benchmarks/throughput.py --markdown docs/performance.md --json results.json

See benchmarks/README.md for the method and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import SynchronizedArray

# Run from a checkout without installing: the repo root holds the `tracedpool` package. This is
# at module level (not under __main__) so spawn/forkserver workers that re-import this file can
# import tracedpool too.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MD_START = "<!-- bench:start -->"
MD_END = "<!-- bench:end -->"
PAYLOAD_BYTES = 1_000_000


# --- Tasks. Module-level functions, so they pickle by reference under every start method. ---


def noop(x: int) -> int:
    return x


def sleep_1ms(x: int) -> int:
    # Sleep, not busy-wait: the workers then leave the CPUs to the parent, so the ratio shows
    # whether the pool's per-task overhead (submit, feeder, manager, telemetry threads) stays
    # hidden behind 1 ms of task time, not how much CPU it would take from busy workers.
    time.sleep(0.001)
    return x


def payload_len(payload: bytes) -> int:
    return len(payload)


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


class IdenticalPool(ProcessPoolExecutor):
    """The A/A control: a subclass that adds nothing. Its ratio to the stdlib is the noise floor."""


# --- Workloads, modes and targets. ---


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    fn: Callable[[Any], Any]
    default_n: int
    quick_n: int
    # One submit-and-wait at a time: throughput is then 1/latency of a single round trip.
    sequential: bool = False


WORKLOADS: tuple[Workload, ...] = (
    Workload("trivial", "trivial task", noop, default_n=5000, quick_n=300),
    Workload("sleep_1ms", "1 ms task (sleep)", sleep_1ms, default_n=1000, quick_n=100),
    Workload("arg_1mb", "1 MB argument", payload_len, default_n=500, quick_n=30),
    Workload("latency", "trivial, one by one", noop, default_n=2500, quick_n=50, sequential=True),
)
WORKLOADS_BY_KEY = {w.key: w for w in WORKLOADS}

MODES: dict[str, str] = {
    "control": "A/A control",  # stdlib vs IdenticalPool, no SDK: measures the noise floor
    "no-sdk": "no SDK",
    "sdk-1pct": "SDK 1% sampled",
    "sdk-always": "SDK always-on",
}

# Minimum median ratio traced/stdlib. Workloads not listed (latency) are informational.
TARGETS: dict[tuple[str, str], float] = {
    ("no-sdk", "trivial"): 0.97,
    ("no-sdk", "sleep_1ms"): 0.97,
    ("no-sdk", "arg_1mb"): 0.97,
    ("sdk-1pct", "trivial"): 0.93,
    ("sdk-1pct", "sleep_1ms"): 0.93,
    ("sdk-1pct", "arg_1mb"): 0.93,
    ("sdk-always", "trivial"): 0.75,
    ("sdk-always", "sleep_1ms"): 0.95,
    ("sdk-always", "arg_1mb"): 0.95,
}


@dataclass(frozen=True)
class Params:
    workers: int
    rounds: int
    n: dict[str, int]  # tasks per round, by workload key (only the selected workloads)
    timeout: float  # seconds allowed per mode before its process is stopped
    start_method: str  # of both pools' workers

    def argv(self) -> list[str]:
        """The flags that reproduce these parameters exactly (passed to each mode's process)."""
        args = ["--workers", str(self.workers), "--rounds", str(self.rounds)]
        args += ["--workloads", ",".join(self.n), "--timeout", str(self.timeout)]
        args += ["--start-method", self.start_method]
        for key, n in self.n.items():
            args += [f"--n-{key.replace('_', '-')}", str(n)]
        return args


# --- Tracer-call counting for the no-SDK mode. ---
#
# With no SDK installed, the traced pool should not call the tracing API per task at all. We wrap
# the API's proxy/no-op entry points with counters. The counters live in shared memory so that
# calls made inside pool workers are counted too: slots [0, n) count the benchmark process,
# slots [n, 2n) count the workers. Nested calls (ProxyTracer.start_span -> NoOpTracer.start_span)
# count at every layer; any non-zero count is a finding, so double counting is harmless.

_COUNTS: SynchronizedArray[int] | None = None
_SIDE = 0  # 0 in the benchmark process, 1 in pool workers (set by the pool initializer)


def _hook_targets() -> list[tuple[Any, str]]:
    from opentelemetry import trace

    return [
        (trace, "get_tracer"),
        (trace.ProxyTracerProvider, "get_tracer"),
        (trace.NoOpTracerProvider, "get_tracer"),
        (trace.ProxyTracer, "start_span"),
        (trace.ProxyTracer, "start_as_current_span"),
        (trace.NoOpTracer, "start_span"),
        (trace.NoOpTracer, "start_as_current_span"),
    ]


def hook_labels() -> list[str]:
    return [f"{owner.__name__}.{attr}" for owner, attr in _hook_targets()]


def _counting(fn: Callable[..., Any], slot: int, n_slots: int) -> Callable[..., Any]:
    @functools.wraps(fn)
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts = _COUNTS
        if counts is not None:
            with counts.get_lock():
                counts[_SIDE * n_slots + slot] += 1
        return fn(*args, **kwargs)

    counted.__dict__["_bench_counted"] = True
    return counted


def install_counters(counts: SynchronizedArray[int], side: int) -> None:
    """Count calls to the tracing API in this process. Idempotent: forked workers inherit the
    parent's wrappers and only need to learn which side they count on."""
    global _COUNTS, _SIDE
    _COUNTS, _SIDE = counts, side
    targets = _hook_targets()
    for slot, (owner, attr) in enumerate(targets):
        original = getattr(owner, attr)
        if not getattr(original, "_bench_counted", False):
            setattr(owner, attr, _counting(original, slot, len(targets)))


def init_counting_worker(counts: SynchronizedArray[int]) -> None:
    """Pool initializer (no-SDK mode only, given to both pools so they stay configured alike)."""
    install_counters(counts, side=1)


# --- Telemetry set-up, one mode per process. ---


@dataclass
class Telemetry:
    spans: Callable[[], int] = lambda: 0  # spans exported so far by this process
    flush: Callable[[], None] = lambda: None
    shutdown: Callable[[], None] = lambda: None
    counts: SynchronizedArray[int] | None = None


def install_sdk(ratio: float | None) -> Telemetry:
    """A global SDK provider with a BatchSpanProcessor (default settings) and a null exporter.
    ratio=None samples everything; otherwise ParentBased(TraceIdRatioBased(ratio))."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    exported = [0]

    class NullExporter(SpanExporter):
        """Drops every span: the SDK's cost without any I/O. Counting is for the report."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exported[0] += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    sampler = ALWAYS_ON if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    trace.set_tracer_provider(provider)

    def flush() -> None:
        provider.force_flush()

    return Telemetry(spans=lambda: exported[0], flush=flush, shutdown=provider.shutdown)


def install_telemetry(mode: str, ctx: BaseContext) -> Telemetry:
    if mode == "sdk-1pct":
        return install_sdk(0.01)
    if mode == "sdk-always":
        return install_sdk(None)
    if mode == "no-sdk":
        counts: SynchronizedArray[int] = ctx.Array("q", 2 * len(_hook_targets()))
        install_counters(counts, side=0)
        return Telemetry(counts=counts)
    return Telemetry()  # control: API only, nothing counted


_CLASS_BOILERPLATE = {"__module__", "__qualname__", "__doc__", "__firstlineno__"}
_CLASS_BOILERPLATE |= {"__static_attributes__", "__dict__", "__weakref__"}


def is_placeholder(cls: type) -> bool:
    """True while the traced pool is a bare subclass (every mode is then an A/A comparison)."""
    own = set(vars(cls)) - _CLASS_BOILERPLATE
    return cls.__bases__ == (ProcessPoolExecutor,) and not own


def source_fingerprint(cls: type) -> str | None:
    """A short hash of the traced package's sources as imported by this mode's process."""
    if cls is IdenticalPool:
        return None
    package = sys.modules[cls.__module__.partition(".")[0]]
    root = Path(package.__file__ or "").parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def traced_class(mode: str) -> type[ProcessPoolExecutor]:
    if mode == "control":
        return IdenticalPool
    # Imported only now, after telemetry is set up: import-time bindings (e.g. a module-level
    # `from opentelemetry.trace import get_tracer`) then see the counting wrappers.
    from tracedpool import TracedProcessPoolExecutor

    return TracedProcessPoolExecutor


# --- Measurement. ---


def task_arg(workload: Workload) -> Any:
    return b"\0" * PAYLOAD_BYTES if workload.key == "arg_1mb" else 1


def expected_result(workload: Workload) -> Any:
    return PAYLOAD_BYTES if workload.key == "arg_1mb" else 1


def settle(flush: Callable[[], None], interval: float = 0.01, max_wait: float = 3.0) -> None:
    """Wait until this process's background threads (pool managers and feeders, span emitters
    and processors) are idle. Without this, the traced side's leftover telemetry work runs
    during the next stdlib round and is billed to the stdlib pool."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        flush()
        cpu = time.process_time()
        time.sleep(interval)
        if time.process_time() - cpu < interval / 10:  # under 10% of a core: idle
            return
    log(f"  (background threads still busy after {max_wait:.0f} s; measuring anyway)")


def wait_for_span_backlog(pool: Executor, max_wait: float = 60.0) -> None:
    """A traced pool builds a burst's spans once the burst is over (tracedpool/_telemetry/emit.py);
    wait until it has, so that this work is not billed to the next (stdlib) round."""
    stats = getattr(pool, "stats", None)
    deadline = time.perf_counter() + max_wait
    while stats is not None and stats().get("span_backlog", 0) and time.perf_counter() < deadline:
        time.sleep(0.01)


def timed_round(
    pool: Executor, workload: Workload, arg: Any, n: int, flush: Callable[[], None]
) -> tuple[float, float]:
    """Run n tasks: submit all then wait all (or one at a time, if sequential). Returns the
    wall seconds until the last result, and this process's CPU seconds (all threads) until its
    background work has drained: work deferred past the last result still shows there."""
    fn, expected = workload.fn, expected_result(workload)
    gc.collect()  # outside the timing: don't bill one side for the other's garbage
    cpu = time.process_time()
    start = time.perf_counter()
    if workload.sequential:
        results = [pool.submit(fn, arg).result() for _ in range(n)]
    else:
        futures = [pool.submit(fn, arg) for _ in range(n)]
        results = [f.result() for f in futures]
    elapsed = time.perf_counter() - start
    wait_for_span_backlog(pool)
    settle(flush)
    cpu = time.process_time() - cpu
    if results.count(expected) != n:  # a fast wrong answer must not count as throughput
        raise RuntimeError(f"{workload.key}: a task returned an unexpected result")
    return elapsed, cpu


def start_workers(pool: Executor, workers: int) -> None:
    """The first submits start the worker processes; get that out of the measured rounds. Tasks
    that block for a while force one process per task even where workers start on demand."""
    list(pool.map(sleep_for, [0.05] * (2 * workers)))


def no_active_span() -> bool:
    from opentelemetry import trace

    return not trace.get_current_span().get_span_context().is_valid


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ModeResult:
    mode: str
    traced_class: str
    traced_is_placeholder: bool
    traced_source: str | None  # fingerprint of the package's sources, to catch edits mid-run
    start_method: str
    rounds: dict[str, dict[str, Any]] = field(default_factory=dict)  # workload -> n, seconds
    spans_per_task: float | None = None
    tracer_calls: dict[str, Any] | None = None
    wall_s: float = 0.0


def snapshot(telemetry: Telemetry) -> list[int]:
    return list(telemetry.counts[:]) if telemetry.counts is not None else []


def tracer_call_report(
    labels: list[str], setup: list[int], after: list[int], tasks: int
) -> dict[str, Any]:
    """Calls made during the measured rounds (per traced task) vs before them (pool start and
    warm-up: a constant per pool)."""
    n = len(labels)
    during = [b - a for a, b in zip(setup, after, strict=True)]
    return {
        "hooks": labels,
        "setup_parent": setup[:n],
        "setup_workers": setup[n:],
        "rounds_parent": during[:n],
        "rounds_workers": during[n:],
        "traced_tasks": tasks,
        "per_task": sum(during) / tasks if tasks else 0.0,
    }


def run_mode(mode: str, params: Params) -> ModeResult:
    """Measure one telemetry mode in this process (which must not have set up telemetry)."""
    wall = time.perf_counter()
    # The pools' context: shared counters must come from it too (a fork-context lock cannot
    # be handed to a spawned worker).
    ctx = multiprocessing.get_context(params.start_method)
    telemetry = install_telemetry(mode, ctx)
    cls = traced_class(mode)
    result = ModeResult(
        mode=mode,
        traced_class=f"{cls.__module__}.{cls.__qualname__}",
        traced_is_placeholder=is_placeholder(cls),
        traced_source=source_fingerprint(cls),
        start_method=ctx.get_start_method(),
    )
    kwargs: dict[str, Any] = {"max_workers": params.workers, "mp_context": ctx}
    if telemetry.counts is not None:
        kwargs.update(initializer=init_counting_worker, initargs=(telemetry.counts,))
    workloads = [WORKLOADS_BY_KEY[key] for key in params.n]
    if not no_active_span():
        raise RuntimeError("tasks must be submitted with no active span (each a sampling root)")

    # Each pool is created once and reused by every round: steady-state throughput.
    with ProcessPoolExecutor(**kwargs) as stdlib, cls(**kwargs) as traced:
        # Start every worker of both pools before any payload goes through the parent. Under
        # fork, a worker forked after the parent has handled 1 MB payloads inherits a different
        # malloc state and runs 1 MB tasks ~2x slower: that pool would lose for no fault of its own.
        for pool in (stdlib, traced):
            start_workers(pool, params.workers)
        for pool in (stdlib, traced):
            for w in workloads:  # one unmeasured round each: warm pickling paths and pipes
                n_warm = min(params.n[w.key], max(10, params.n[w.key] // 5))
                timed_round(pool, w, task_arg(w), n_warm, telemetry.flush)
        setup_counts, spans_before = snapshot(telemetry), telemetry.spans()

        for w in workloads:
            n, arg = params.n[w.key], task_arg(w)
            times: dict[str, list[float]] = {}
            for _ in range(params.rounds):  # alternate, so noise hits both sides alike
                for side, pool in (("stdlib", stdlib), ("traced", traced)):
                    wall_s, cpu_s = timed_round(pool, w, arg, n, telemetry.flush)
                    times.setdefault(f"{side}_s", []).append(wall_s)
                    times.setdefault(f"{side}_cpu_s", []).append(cpu_s)
            result.rounds[w.key] = {"n": n, **times}
            pairs = zip(times["stdlib_s"], times["traced_s"], strict=True)
            ratio = statistics.median(s / t for s, t in pairs)
            log(f"  [{mode}] {w.key:<10} n={n:<5} median ratio {ratio:.3f}")

        traced_tasks = params.rounds * sum(params.n.values())
        if mode.startswith("sdk-"):
            result.spans_per_task = (telemetry.spans() - spans_before) / traced_tasks
        rounds_counts = snapshot(telemetry)
    if telemetry.counts is not None:
        result.tracer_calls = tracer_call_report(
            hook_labels(), setup_counts, rounds_counts, traced_tasks
        )
    telemetry.shutdown()
    result.wall_s = time.perf_counter() - wall
    return result


# --- Running every mode, each in a fresh interpreter. ---


@contextlib.contextmanager
def _killed_on_exit(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Leave nothing of a mode's process group behind: the mode itself if we leave early, and
    pool workers orphaned by a mode that died (they would wait for work forever)."""
    try:
        yield proc
    finally:
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError):  # the usual case: all gone already
                os.killpg(proc.pid, signal.SIGKILL)
        elif proc.poll() is None:
            proc.kill()
        proc.wait()


def run_mode_subprocess(mode: str, params: Params) -> dict[str, Any] | str:
    """Run one mode in a fresh interpreter. Returns its raw result, or why it failed."""
    # OTEL_* variables (e.g. OTEL_PYTHON_TRACER_PROVIDER, OTEL_BSP_*) would change what a mode
    # measures; every mode starts from the same clean slate.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mode.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--json", str(out)]
        proc = subprocess.Popen(
            [*cmd, *params.argv()],
            env=env,
            stdout=subprocess.DEVNULL,  # its table is ours to print; progress goes to stderr
            start_new_session=hasattr(os, "killpg"),
        )
        with _killed_on_exit(proc):
            try:
                # The mode dumps its stacks and exits at params.timeout; this is the backstop.
                code = proc.wait(timeout=params.timeout + 30)
            except subprocess.TimeoutExpired:
                return f"timed out after {params.timeout + 30:.0f} s"
        if code != 0 or not out.exists():
            return f"exited with status {code}"
        doc = json.loads(out.read_text(encoding="utf-8"))
        return dict(doc["modes"][mode])


# --- Statistics and reporting. ---


@dataclass(frozen=True)
class Summary:
    stdlib_tps: float  # median over rounds, tasks/s
    traced_tps: float
    ratio: float  # median of per-round-pair ratios traced/stdlib
    q1: float
    q3: float
    lo: float
    hi: float
    delta_us: float  # extra wall time per task on the traced side, from the medians
    stdlib_cpu_us: float  # median CPU of the benchmark process per task (all its threads)
    traced_cpu_us: float


def summarize(raw: dict[str, Any]) -> Summary:
    """Statistics of one workload's alternated rounds (raw: as run_mode records them)."""
    n, stdlib_s, traced_s = raw["n"], raw["stdlib_s"], raw["traced_s"]
    ratios = sorted(s / t for s, t in zip(stdlib_s, traced_s, strict=True))
    stdlib_tps = statistics.median(n / s for s in stdlib_s)
    traced_tps = statistics.median(n / t for t in traced_s)
    q1, q3 = ratios[0], ratios[-1]
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return Summary(
        stdlib_tps=stdlib_tps,
        traced_tps=traced_tps,
        ratio=statistics.median(ratios),
        q1=q1,
        q3=q3,
        lo=ratios[0],
        hi=ratios[-1],
        delta_us=1e6 / traced_tps - 1e6 / stdlib_tps,
        stdlib_cpu_us=statistics.median(raw["stdlib_cpu_s"]) * 1e6 / n,
        traced_cpu_us=statistics.median(raw["traced_cpu_s"]) * 1e6 / n,
    )


def verdict(mode: str, workload: str, s: Summary) -> tuple[str, bool]:
    """Target text for a table cell, and whether the target is met (True when there is none).
    "marginal": the target lies inside the IQR of the per-pair ratios, so this run's noise is
    as large as the margin and another run may well flip the verdict."""
    target = TARGETS.get((mode, workload))
    if target is None:
        return ("noise floor" if mode == "control" else "info"), True
    ok = s.ratio >= target
    marginal = " (marginal)" if s.q1 <= target <= s.q3 else ""
    return f">= {target:.2f} {'✓' if ok else '✗'}{marginal}", ok


HEADER: tuple[str, ...] = ("mode", "workload", "N", "stdlib/s", "traced/s", "ratio", "IQR")
HEADER += ("min-max", "Δμs/task", "CPU μs/task", "target")


def table_rows(modes: dict[str, Any]) -> tuple[list[tuple[str, ...]], bool]:
    rows: list[tuple[str, ...]] = []
    all_ok = True
    for mode, result in modes.items():
        if isinstance(result, str):
            rows.append((MODES[mode], f"FAILED: {result}", *[""] * (len(HEADER) - 2)))
            all_ok = False
            continue
        for key, raw in result["rounds"].items():
            s = summarize(raw)
            target, ok = verdict(mode, key, s)
            all_ok &= ok
            rows.append(
                (
                    MODES[mode],
                    WORKLOADS_BY_KEY[key].label,
                    str(raw["n"]),
                    f"{s.stdlib_tps:,.0f}",
                    f"{s.traced_tps:,.0f}",
                    f"{s.ratio:.3f}",
                    f"{s.q1:.3f}-{s.q3:.3f}",
                    f"{s.lo:.3f}-{s.hi:.3f}",
                    f"{s.delta_us:+.1f}",
                    f"{s.stdlib_cpu_us:.0f} → {s.traced_cpu_us:.0f}",
                    target,
                )
            )
    return rows, all_ok


def text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    left = {0, 1, len(HEADER) - 1}  # text columns; numbers align right

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    header = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(header + ["| " + " | ".join(r) + " |" for r in rows])


def noise_floor_lines(modes: dict[str, Any]) -> list[str]:
    control = modes.get("control")
    if not isinstance(control, dict):
        return []
    lines = []
    for key, raw in control["rounds"].items():
        s = summarize(raw)
        lines.append(
            f"{WORKLOADS_BY_KEY[key].label}: median {s.ratio:.3f}, IQR {s.q1:.3f}-{s.q3:.3f}"
            f" (±{(s.q3 - s.q1) / 2 * 100:.1f}%), min-max {s.lo:.3f}-{s.hi:.3f}"
        )
    return lines


def tracer_call_lines(modes: dict[str, Any]) -> tuple[list[str], bool]:
    """The no-SDK check: tracing API calls per task must be 0 (a per-pool constant is fine)."""
    result = modes.get("no-sdk")
    if not isinstance(result, dict) or result.get("tracer_calls") is None:
        return [], True
    calls = result["tracer_calls"]
    per_task = calls["per_task"]
    ok = per_task == 0
    lines = [
        f"tracer API calls per task with no SDK: {per_task:.3f} (target 0) {'✓' if ok else '✗'};"
        f" before the rounds (pool start + warm-up): {sum(calls['setup_parent'])} in this process,"
        f" {sum(calls['setup_workers'])} in workers"
    ]
    for side in ("parent", "workers"):
        for label, count in zip(calls["hooks"], calls[f"rounds_{side}"], strict=True):
            if count:
                lines.append(f"  during rounds, {side}: {label} x{count}")
    return lines, ok


def notes(modes: dict[str, Any]) -> list[str]:
    lines = []
    results = [r for r in modes.values() if isinstance(r, dict) and r["mode"] != "control"]
    placeholder = [MODES[r["mode"]] for r in results if r["traced_is_placeholder"]]
    if placeholder:
        lines.append(
            f"{results[0]['traced_class']} is a bare subclass of ProcessPoolExecutor in:"
            f" {', '.join(placeholder)}: those rows are A/A comparisons (ratios should be ~1.0)."
        )
    sources = {r["mode"]: r["traced_source"] for r in results}
    if len(set(sources.values())) > 1:
        lines.append(
            "WARNING: tracedpool's sources changed during the run; modes measured different code"
            f" ({', '.join(f'{m}: {h}' for m, h in sources.items())}). Run again."
        )
    elif sources:
        lines.append(f"tracedpool sources fingerprint: {next(iter(sources.values()))}")
    for r in results:
        if r["spans_per_task"] is not None:
            lines.append(
                f"spans exported per traced task in {MODES[r['mode']]} (this process only):"
                f" {r['spans_per_task']:.3f}"
            )
            silent = r["mode"] == "sdk-always" and r["spans_per_task"] == 0
            if silent and not r["traced_is_placeholder"]:
                lines.append("  (no spans recorded: this mode did not measure tracing)")
    return lines


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> str | None:
    """HEAD, marked when the measured package differs from it (uncommitted edits)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--", "tracedpool"):
        commit += " + uncommitted changes in tracedpool/"
    return commit or None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "opentelemetry_api": package_version("opentelemetry-api"),
        "opentelemetry_sdk": package_version("opentelemetry-sdk"),
        "git_commit": git_commit(),
    }


def describe(meta: dict[str, Any], params: Params) -> list[str]:
    load = meta["loadavg_at_start"]
    return [
        f"date {meta['date_utc']} UTC; {meta['cpu_count']} CPUs ({meta['cpu_model']});"
        f" {meta['platform']}; {meta['python']}; start method {params.start_method}"
        + (f"; load average {load[0]:.2f}" if load else ""),
        f"OpenTelemetry API {meta['opentelemetry_api']}, SDK {meta['opentelemetry_sdk']};"
        f" git {meta['git_commit'] or 'n/a'}",
        f"max_workers={params.workers}, {params.rounds} alternated stdlib/traced round pairs"
        f" per workload; tasks per round: {', '.join(f'{k}={n}' for k, n in params.n.items())}",
        f"command: {meta['command']}",
    ]


def render(doc: dict[str, Any], params: Params, markdown: bool) -> tuple[str, bool]:
    rows, targets_ok = table_rows(doc["modes"])
    calls, calls_ok = tracer_call_lines(doc["modes"])
    floor = noise_floor_lines(doc["modes"])
    extra = calls + notes(doc["modes"])
    title = "traced/stdlib throughput: median of per-round-pair ratios (>1 is faster)"
    if markdown:
        parts = [f"**{title}**", ""]
        parts += [f"- {line}" for line in describe(doc["meta"], params)]
        parts += ["", markdown_table(rows), ""]
        if floor:
            parts += ["Noise floor (A/A: stdlib vs an identical bare subclass):", ""]
            parts += [f"- {line}" for line in floor] + [""]
        parts += [f"- {line.strip()}" for line in extra]
    else:
        parts = [title, *describe(doc["meta"], params), "", text_table(rows), ""]
        if floor:
            parts += ["noise floor (A/A, stdlib vs identical bare subclass):"]
            parts += [f"  {line}" for line in floor]
        parts += extra
    return "\n".join(parts).rstrip() + "\n", targets_ok and calls_ok


def update_markdown(path: Path, block: str) -> None:
    """Replace what is between the markers, keeping the rest of the file."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n\n"
    start, end = text.find(MD_START), text.find(MD_END)
    if start == -1 or end < start:
        text = text.rstrip("\n") + f"\n\n{MD_START}\n{MD_END}\n"
        start, end = text.find(MD_START), text.find(MD_END)
    text = text[: start + len(MD_START)] + "\n" + block + text[end:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- Command line. ---


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small N, 3 rounds")
    p.add_argument("--rounds", type=int, help="alternated round pairs per workload (default 15)")
    p.add_argument("--workers", type=int, default=2, help="max_workers of both pools (default 2)")
    for w in WORKLOADS:
        p.add_argument(
            f"--n-{w.key.replace('_', '-')}",
            type=int,
            help=f"tasks per round, {w.label} (default {w.default_n}, quick {w.quick_n})",
        )
    p.add_argument("--workloads", default=",".join(WORKLOADS_BY_KEY), help="comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, run in order")
    p.add_argument("--mode", choices=MODES, help="run only this mode, in this process")
    p.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=multiprocessing.get_start_method(),
        help="of both pools (default: this platform's, %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds per mode (default 600)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write raw per-round numbers")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="update the table in PATH")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    choices: dict[str, tuple[str, Sequence[str]]] = {
        "workload": (args.workloads, list(WORKLOADS_BY_KEY)),
        "mode": (args.modes, list(MODES)),
    }
    for name, (values, known) in choices.items():
        unknown = [v for v in values.split(",") if v not in known]
        if unknown:
            p.error(f"unknown {name}(s): {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def resolve_params(args: argparse.Namespace) -> Params:
    n = {}
    for key in args.workloads.split(","):
        w = WORKLOADS_BY_KEY[key]
        override = getattr(args, f"n_{key}")
        n[key] = override or (w.quick_n if args.quick else w.default_n)
    rounds = args.rounds or (3 if args.quick else 15)
    return Params(args.workers, rounds, n, args.timeout, args.start_method)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = resolve_params(args)
    started = time.perf_counter()
    meta = machine_info()
    given = sys.argv[1:] if argv is None else list(argv)
    meta["command"] = " ".join(["python", "benchmarks/throughput.py", *given])
    modes: dict[str, Any] = {}
    if args.mode:  # one mode, here: this is how the orchestrating run below calls us
        import faulthandler

        # A hung pool shows where it hangs, instead of stalling the whole benchmark.
        faulthandler.dump_traceback_later(params.timeout, exit=True)
        modes[args.mode] = asdict(run_mode(args.mode, params))
    else:
        for mode in args.modes.split(","):
            log(f"mode {mode}: starting a fresh interpreter")
            modes[mode] = run_mode_subprocess(mode, params)
            if isinstance(modes[mode], str):
                log(f"mode {mode}: FAILED ({modes[mode]})")
    meta["wall_s"] = time.perf_counter() - started
    for result in modes.values():
        for raw in result["rounds"].values() if isinstance(result, dict) else ():
            raw["summary"] = asdict(summarize(raw))  # for readers of --json; derived from raw
    doc = {"meta": meta, "params": asdict(params), "modes": modes}

    text, ok = render(doc, params, markdown=False)
    print(text + f"\ntotal wall time {meta['wall_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        update_markdown(args.markdown, render(doc, params, markdown=True)[0])
    if any(isinstance(r, str) for r in modes.values()):
        return 2
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    # The table has ✓, μ and →; never fail on a terminal that cannot show them.
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    sys.exit(main())
