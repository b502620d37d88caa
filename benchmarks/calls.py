"""Python calls per trivial task, per parent thread: a cost measure that noise cannot move.

Throughput ratios on a shared 2-core machine move by several percent between runs (see
the A/A control in throughput.py). The number of Python-level calls (and calls into C
functions) that each parent thread makes per task does not: it is counted with
``threading.setprofile``, identical from run to run for the same code and Python, and it
tracks the parent's CPU cost, which is what bounds a process pool's throughput on
trivial tasks (the parent's threads share one GIL).

    python benchmarks/calls.py                    # stdlib, traced without SDK, 1%, always-on
    python benchmarks/calls.py --markdown docs/performance.md

Each mode runs in a fresh interpreter (the global tracer provider is set once). Workers
are not counted: they run in other processes and have CPU to spare on trivial tasks.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODES = {
    "stdlib": "stdlib ProcessPoolExecutor",
    "no-sdk": "traced, no SDK",
    "sdk-1pct": "traced, SDK 1% sampled",
    "sdk-always": "traced, SDK always-on",
}
MD_START = "<!-- calls:start -->"
MD_END = "<!-- calls:end -->"
ROLES = ("submitter", "manager", "feeder", "emitter", "other")


def noop(x: int) -> int:
    return x


def _role(thread: threading.Thread) -> str:
    name = thread.name
    if thread is threading.main_thread():
        return "submitter"
    if name == "QueueFeederThread":
        return "feeder"
    if name.startswith("tracedpool-emitter"):
        return "emitter"
    if type(thread).__name__ in ("_ExecutorManagerThread", "TracedManagerThread"):
        return "manager"
    return "other"


def count_calls(
    make_pool: Callable[[], Any],
    n: int,
    window: int,
    *,
    role: Callable[[threading.Thread], str] = _role,
    set_up: Callable[[], None] | None = None,
) -> collections.Counter[str]:
    """Calls each parent thread (by ``role``) makes while ``n`` trivial tasks run in
    windows of ``window``, after a warm-up window. ``set_up`` runs once profiling
    reaches new threads, before the pool exists (a tracer provider's batch thread)."""
    counts: collections.Counter[str] = collections.Counter()
    on = False

    def count(frame: Any, event: str, arg: Any) -> None:
        if on and event in ("call", "c_call"):
            counts[role(threading.current_thread())] += 1

    # Before any thread starts (the SDK's batch thread included): setprofile reaches only
    # threads started after it.
    threading.setprofile(count)
    try:
        if set_up is not None:
            set_up()
        sys.setprofile(count)
        with make_pool() as pool:
            for f in [pool.submit(noop, i) for i in range(window)]:  # warm up: workers, threads
                f.result()
            time.sleep(0.3)
            on = True
            for _ in range(n // window):
                for f in [pool.submit(noop, i) for i in range(window)]:
                    f.result()
            time.sleep(0.5)  # let the emitter finish the last window's spans
            on = False
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return counts


def _install_sdk(mode: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class Null(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = ALWAYS_ON if mode == "sdk-always" else ParentBased(TraceIdRatioBased(0.01))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Null()))
    trace.set_tracer_provider(provider)


def measure(mode: str, n: int, window: int) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    from tracedpool import TracedProcessPoolExecutor

    cls = ProcessPoolExecutor if mode == "stdlib" else TracedProcessPoolExecutor
    counts = count_calls(
        lambda: cls(max_workers=2),
        n,
        window,
        set_up=(lambda: _install_sdk(mode)) if mode in ("sdk-1pct", "sdk-always") else None,
    )
    per_task = {r: counts[r] / n for r in ROLES}
    return {"mode": mode, "n": n, "per_task": per_task, "total": sum(per_task.values())}


def _markdown(results: list[dict[str, Any]]) -> str:
    base = next((r["total"] for r in results if r["mode"] == "stdlib"), None)
    lines = [
        f"Python {sys.version.split()[0]}, max_workers=2, fork; calls per trivial task "
        "(Python calls and calls into C functions), counted with `threading.setprofile`.",
        "",
        "| pool | " + " | ".join(ROLES) + " | total | vs stdlib |",
        "|---|" + "---|" * (len(ROLES) + 2),
    ]
    for r in results:
        ratio = f"{r['total'] / base:.2f}x" if base else ""
        cells = " | ".join(f"{r['per_task'][role]:.0f}" for role in ROLES)
        lines.append(f"| {MODES[r['mode']]} | {cells} | {r['total']:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    p.add_argument("--mode", choices=MODES, help="run one mode in this process")
    p.add_argument("-n", type=int, default=3000, help="tasks counted per mode (3000)")
    p.add_argument("--window", type=int, default=500, help="tasks in flight (500)")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="update the table in PATH")
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args.mode, args.n, args.window)))
        return 0
    results = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for mode in args.modes.split(","):
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        cmd = [sys.executable, __file__, "--mode", mode, "-n", str(args.n)]
        cmd += ["--window", str(args.window)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = _markdown(results)
    print(table)
    if args.markdown is not None:
        text = args.markdown.read_text()
        start, end = text.index(MD_START) + len(MD_START), text.index(MD_END)
        args.markdown.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
