"""Large results at full size: the stdlib pool and the traced pool (an SDK recording
spans in memory) side by side, in alternated rounds, each returning one result of
``--mb`` MiB. Reports the time per result and the parent's peak RSS above its baseline
during the round (sampled every 5 ms), and checks every result arrived whole.

    python benchmarks/hostile.py                 # 300 MiB, 3 rounds per side
    python benchmarks/hostile.py --mb 1024 --rounds 1

tests/test_hostile.py runs the same case at 64 MiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tests"):  # tracedpool, and the tests' fault injectors
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psutil  # noqa: E402
from faults import bytes_of  # noqa: E402

from tracedpool import TracedProcessPoolExecutor  # noqa: E402
from tracedpool._telemetry import names as N  # noqa: E402
from tracedpool.testing import recording_provider  # noqa: E402

MIB = 1024 * 1024


def one_round(pool: Any, size: int) -> tuple[float, int]:
    """(seconds for the result, peak parent RSS above the round's start)."""
    me = psutil.Process()
    base = me.memory_info().rss
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    result = pool.submit(bytes_of, size).result(timeout=600)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join(5)
    ok = len(result) == size and result[:1] == b"x" and result[-1:] == b"x"
    del result
    if not ok:
        raise SystemExit("a result did not arrive whole")
    return seconds, peak - base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--mb", type=int, default=300, help="result size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-method", default="fork")
    args = parser.parse_args(argv)
    size = args.mb * MIB
    ctx = multiprocessing.get_context(args.start_method)
    provider, exporter = recording_provider()
    pools: dict[str, Any] = {
        "stdlib": ProcessPoolExecutor(1, mp_context=ctx),
        "traced": TracedProcessPoolExecutor(1, mp_context=ctx, tracer_provider=provider),
    }
    figures: dict[str, list[tuple[float, int]]] = {name: [] for name in pools}
    try:
        for pool in pools.values():  # start the workers before any payload
            pool.submit(bytes_of, 1).result(timeout=60)
        for _ in range(args.rounds):
            for name, pool in pools.items():
                figures[name].append(one_round(pool, size))
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    print(f"{args.mb} MiB result, {args.rounds} round(s) per side, {args.start_method}")
    for name, rows in figures.items():
        secs = statistics.median(s for s, _ in rows)
        peak = max(p for _, p in rows)
        print(
            f"  {name:6s}: median {secs:.2f} s per result ({args.mb / secs:.0f} MiB/s); "
            f"peak parent RSS above baseline {peak / MIB:.0f} MiB ({peak / size:.1f}x the result)"
        )
    spans = [s for s in exporter.get_finished_spans() if s.name == N.SPAN_SENDBACK]
    print(f"  traced sendback spans: {len(spans)}, result bytes recorded on each (not the bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
