"""Worker logs: what capturing a record costs, against the stdlib's QueueHandler recipe.

Two measures, side by side in one run:

1. **Cost per record**, arms alternated round by round, medians with the IQR:

   * ``tracedpool``: ``TracedProcessPoolExecutor`` (untraced, default ``log_level``):
     each record goes down the pool's log pipe, and its reader thread re-emits it;
   * ``tracedpool A/A``: the same arm again, to show the noise;
   * ``stdlib recipe``: a ``ProcessPoolExecutor`` whose initializer puts a
     ``QueueHandler`` on a ``multiprocessing.Queue`` in every worker, and a
     ``QueueListener`` in the parent (the logging cookbook's recipe);
   * ``baseline``: a ``TracedProcessPoolExecutor`` running the same tasks, which log
     nothing: what every arm pays without records.

   A round submits ``TASKS`` tasks that each log ``RECORDS`` WARNING records (within
   the default per-worker bound of 2,000 a second, so nothing is dropped; the dropped
   count is checked). Its clock runs from the first submit until the parent's handler
   has seen every record: the reader or listener thread's work is inside the clock.
   Reported per record, minus the baseline: the parent's CPU (``time.process_time``,
   all its threads) and the wall time end to end.

2. **Calls per task for tasks that log nothing** (``benchmarks/calls.py``'s counting),
   before (``log_level=None``: no pipe, no reader thread) and after (the default), each
   in a fresh interpreter.

    python benchmarks/logs.py                 # ~1 minute
    python benchmarks/logs.py --rounds 5      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TASKS = 4
RECORDS = 450  # per task: 1,800 a round, below one worker's 2,000 a second at worst
ARMS = ("tracedpool", "tracedpool A/A", "stdlib recipe", "baseline")
LOGGER = "bench.logs"
ROUND_TIMEOUT = 60.0


def log_records(n: int) -> int:
    log = logging.getLogger(LOGGER)
    for i in range(n):
        log.warning("record %d of a task", i)
    return n


def noop(x: int) -> int:
    return x


def _queue_initializer(queue: Any) -> None:
    """The stdlib recipe's worker side: every record to the queue, nothing else."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))


class Counter(logging.Handler):
    """The parent's handler: counts, and says when a round's records are all in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.target = -1
        self.done = threading.Event()

    def expect(self, n: int) -> None:
        self.seen, self.target = 0, n
        self.done.clear()

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # as a real handler would
        self.seen += 1
        if self.seen == self.target:
            self.done.set()


def _round(pool: Any, counter: Counter, n: int) -> tuple[float, float]:
    """(parent CPU seconds, wall seconds) for one round of TASKS tasks of n records."""
    counter.expect(TASKS * n)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for f in [pool.submit(log_records, n) for _ in range(TASKS)]:
        f.result(timeout=ROUND_TIMEOUT)
    if n and not counter.done.wait(ROUND_TIMEOUT):
        raise RuntimeError(f"only {counter.seen} of {counter.target} records arrived")
    return time.process_time() - cpu0, time.perf_counter() - t0


def cost_per_record(rounds: int, start_method: str) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    from tracedpool import TracedProcessPoolExecutor

    counter = Counter()
    counter.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(counter)
    root.setLevel(logging.WARNING)
    ctx = multiprocessing.get_context(start_method)
    queue = ctx.Queue()
    listener = logging.handlers.QueueListener(queue, counter)
    listener.start()
    pools = {
        "tracedpool": TracedProcessPoolExecutor(2, ctx, stall_timeout=None),
        "tracedpool A/A": TracedProcessPoolExecutor(2, ctx, stall_timeout=None),
        "stdlib recipe": ProcessPoolExecutor(
            2, ctx, initializer=_queue_initializer, initargs=(queue,)
        ),
        "baseline": TracedProcessPoolExecutor(2, ctx, stall_timeout=None),
    }
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    wall: dict[str, list[float]] = {a: [] for a in ARMS}
    try:
        for pool in pools.values():  # warm up: workers started, threads running
            for f in [pool.submit(noop, i) for i in range(8)]:
                f.result(timeout=ROUND_TIMEOUT)
        for r in range(rounds):
            order = ARMS if r % 2 == 0 else tuple(reversed(ARMS))
            for arm in order:
                c, w = _round(pools[arm], counter, 0 if arm == "baseline" else RECORDS)
                cpu[arm].append(c)
                wall[arm].append(w)
                time.sleep(1.05)  # a fresh second for the workers' rate bound
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
        listener.stop()
        root.removeHandler(counter)
    dropped = sum(
        pools[a].stats()["log_records_dropped"]  # type: ignore[attr-defined]
        for a in ("tracedpool", "tracedpool A/A")
    )
    n = TASKS * RECORDS

    def per_record(samples: dict[str, list[float]], arm: str) -> dict[str, float]:
        base = statistics.median(samples["baseline"])
        values = sorted((s - base) / n * 1e6 for s in samples[arm])
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return {"median_us": statistics.median(values), "q1_us": q[0], "q3_us": q[2]}

    return {
        "start_method": start_method,
        "rounds": rounds,
        "records_per_round": n,
        "dropped": dropped,
        "arms": {
            arm: {"parent_cpu": per_record(cpu, arm), "end_to_end": per_record(wall, arm)}
            for arm in ARMS
            if arm != "baseline"
        },
        "baseline_round_ms": {
            "parent_cpu": statistics.median(cpu["baseline"]) * 1e3,
            "end_to_end": statistics.median(wall["baseline"]) * 1e3,
        },
    }


def count_calls(log_level: str, n: int, window: int) -> dict[str, Any]:
    """Calls per trivial task per parent thread (as benchmarks/calls.py counts them), for
    a traced pool without SDK, capture on (``default``) or off (``none``)."""
    import calls

    from tracedpool import TracedProcessPoolExecutor

    def role(thread: threading.Thread) -> str:
        if thread.name.startswith("tracedpool-logs"):
            return "log reader"
        return calls._role(thread)

    kwargs: dict[str, Any] = {"log_level": None} if log_level == "none" else {}
    counts = calls.count_calls(
        lambda: TracedProcessPoolExecutor(max_workers=2, stall_timeout=None, **kwargs),
        n,
        window,
        role=role,
    )
    roles = sorted(counts)
    return {"log_level": log_level, "per_task": {r: counts[r] / n for r in roles}}


def _markdown(cost: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = [
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, max_workers=2, "
        f"{cost['start_method']}; {cost['rounds']} rounds per arm, alternated, of "
        f"{TASKS} tasks x {RECORDS} WARNING records; the parent's handler formats each "
        f"record. Per record, minus a baseline round of the same tasks logging nothing "
        f"(parent CPU {cost['baseline_round_ms']['parent_cpu']:.1f} ms, wall "
        f"{cost['baseline_round_ms']['end_to_end']:.1f} ms); median (IQR). "
        f"Records dropped: {cost['dropped']}.",
        "",
        "| arm | parent CPU per record | end to end per record |",
        "|---|---|---|",
    ]
    for arm, r in cost["arms"].items():
        cells = [
            f"{r[k]['median_us']:.1f} us ({r[k]['q1_us']:.1f}-{r[k]['q3_us']:.1f})"
            for k in ("parent_cpu", "end_to_end")
        ]
        lines.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "Calls per trivial task that logs nothing (traced pool, no SDK), per parent thread:",
        "",
    ]
    roles = sorted(set(before["per_task"]) | set(after["per_task"]))
    lines.append("| log_level | " + " | ".join(roles) + " | total |")
    lines.append("|---|" + "---|" * (len(roles) + 1))
    for label, r in (("None (before)", before), ("WARNING (default, after)", after)):
        cells = [f"{r['per_task'].get(role, 0):.1f}" for role in roles]
        total = sum(r["per_task"].values())
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {total:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="rounds per arm (15)")
    p.add_argument(
        "--start-method", default="fork", choices=multiprocessing.get_all_start_methods()
    )
    p.add_argument("-n", type=int, default=3000, help="tasks counted for calls per task (3000)")
    p.add_argument("--window", type=int, default=500, help="tasks in flight (500)")
    p.add_argument("--calls", choices=("none", "default"), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    args = p.parse_args(argv)
    if args.calls:
        print(json.dumps(count_calls(args.calls, args.n, args.window)))
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEDPOOL_"))}
    counted = {}
    for level in ("none", "default"):
        cmd = [sys.executable, __file__, "--calls", level, "-n", str(args.n)]
        out = subprocess.run(
            [*cmd, "--window", str(args.window)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        counted[level] = json.loads(out.stdout.strip().splitlines()[-1])
    cost = cost_per_record(args.rounds, args.start_method)
    print(_markdown(cost, counted["none"], counted["default"]))
    if args.json is not None:
        args.json.write_text(json.dumps({"cost": cost, "calls": counted}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
