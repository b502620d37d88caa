"""Interpreter exit with the collector down: how long a traced program takes to end.

Each run is a fresh interpreter that submits ``--n`` trivial tasks to a traced pool of 2
workers, shuts the pool down and exits normally, with its OTLP/HTTP endpoint on
127.0.0.1 either

``refused``
    bound, never listening: every connection is refused at once;
``blackhole``
    listening, never read: connections open and no answer ever comes.

Two set-ups, each in its own runs:

``configure``
    ``tracedpool.configure()`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, nothing else:
    tracedpool owns the pipeline and bounds the export at exit
    (``TRACEDPOOL_EXIT_EXPORT_TIMEOUT``, 3 s by default);
``sdk``
    the SDK alone: a ``TracerProvider`` with a default ``BatchSpanProcessor`` and the
    SDK's ``OTLPSpanExporter`` to the same endpoint, passed to the pool. Its shutdown at
    exit waits on the exporter's retries (issue 13 measured 31.5 s). ``--setups
    configure`` leaves it out (it takes about half a minute a run).

Reported per run: the time from ``pool.shutdown()`` returning to the process's end,
the whole run, the exit status and what tracedpool said at exit. The table gives the
medians of ``--repeat`` runs; the last run's words follow it. Nothing is asserted:
tests/test_exit.py holds the bound.

    python benchmarks/exit.py                       # both set-ups, 3 runs each: ~4 minutes
    python benchmarks/exit.py --setups configure    # ~30 s
    python benchmarks/exit.py --json exit.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("refused", "blackhole")
SETUPS = ("configure", "sdk")

# The program under test: it prints the wall clock when pool.shutdown() has returned,
# then ends as any program does (atexit, the SDK's and tracedpool's exit hooks).
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from tracedpool import TracedProcessPoolExecutor
if {setup!r} == "configure":
    import tracedpool
    tracedpool.configure(service_name="exit-time")
    provider = None
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
pool = TracedProcessPoolExecutor(2, tracer_provider=provider)
assert list(pool.map(abs, range(-{n}, 0))) == list(range({n}, 0, -1))
pool.shutdown()
print("shut down at", time.time(), flush=True)
"""


@contextmanager
def endpoint(kind: str) -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback where the collector is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == "blackhole":
            sock.listen(64)  # the kernel completes the handshakes; nobody reads
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_once(setup: str, kind: str, n: int, timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    env["TRACEDPOOL_HEARTBEAT_DIR"] = "none"
    with endpoint(kind) as url:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD.format(root=str(ROOT), setup=setup, n=n)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        t_end = time.time()
    marks = [line for line in proc.stdout.splitlines() if line.startswith("shut down at ")]
    said = [line for line in proc.stderr.splitlines() if line.startswith("tracedpool:")]
    return {
        "setup": setup,
        "kind": kind,
        "returncode": proc.returncode,
        "after_shutdown_s": t_end - float(marks[-1].split()[-1]) if marks else None,
        "whole_s": t_end - t0,
        "said": said[-1] if said else "",
        "stderr_tail": "" if proc.returncode == 0 else proc.stderr[-2000:],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="tasks per run (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per set-up and kind")
    p.add_argument("--setups", default=",".join(SETUPS), help="configure, sdk or both")
    p.add_argument("--kinds", default=",".join(KINDS), help="refused, blackhole or both")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    p.add_argument("--json", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    for name, allowed in (("setups", SETUPS), ("kinds", KINDS)):
        chosen = [s for s in getattr(args, name).split(",") if s]
        unknown = sorted(set(chosen) - set(allowed))
        if unknown or not chosen:
            p.error(f"--{name}: choose from {', '.join(allowed)} (got {getattr(args, name)!r})")
        setattr(args, name, chosen)
    if args.n < 1 or args.repeat < 1:
        p.error("--n and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    for setup in args.setups:
        for kind in args.kinds:
            for _ in range(args.repeat):
                run = run_once(setup, kind, args.n, args.timeout)
                runs.append(run)
                shown = run["after_shutdown_s"]
                print(
                    f"{setup} {kind}: exit status {run['returncode']}, "
                    f"{'?' if shown is None else f'{shown:.1f}'} s after shutdown(), "
                    f"{run['whole_s']:.1f} s in all",
                    flush=True,
                )
                if run["stderr_tail"]:
                    print(run["stderr_tail"], file=sys.stderr)
    print(f"\n{args.n} trivial tasks, 2 workers, then a normal exit; medians of {args.repeat}\n")
    print("| set-up | collector | pool shutdown to exit | whole run | exit status |")
    print("|---|---|---|---|---|")
    said = []
    for setup in args.setups:
        for kind in args.kinds:
            mine = [r for r in runs if r["setup"] == setup and r["kind"] == kind]
            after = [r["after_shutdown_s"] for r in mine if r["after_shutdown_s"] is not None]
            whole = statistics.median(r["whole_s"] for r in mine)
            shown = f"{statistics.median(after):.1f} s" if after else "no shutdown mark"
            codes = ", ".join(sorted({str(r["returncode"]) for r in mine}))
            print(f"| {setup} | {kind} | {shown} | {whole:.1f} s | {codes} |")
            said.append(f"- {setup}, {kind}: {mine[-1]['said'] or 'nothing'}")
    print("\nWhat tracedpool said at exit (the last run of each row):\n")
    print("\n".join(said))
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "runs": runs}, indent=2) + "\n")
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
