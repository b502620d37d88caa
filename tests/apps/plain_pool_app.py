"""An application that knows nothing of tracedpool: a plain stdlib process pool.

Run as ``python plain_pool_app.py START_METHOD TASKS``. Each task also makes a span of its
own through the OpenTelemetry API, as instrumented task code would.
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from opentelemetry import trace


def work(x: int) -> int:
    with trace.get_tracer("plain-app").start_as_current_span("app.inner"):
        return x * x


if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(work, range(int(sys.argv[2]))))
    print("RESULTS", results, file=sys.stderr)
