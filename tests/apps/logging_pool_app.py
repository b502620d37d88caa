"""An application that knows nothing of tracedpool and logs from its tasks: a plain
stdlib process pool, and a parent handler whose format names the task and trace.

Run as ``python logging_pool_app.py START_METHOD TASKS``. Each task logs one warning;
the parent writes each record it handles as one ``LOG`` line on stderr.
"""

import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("app.work")


def work(x: int) -> int:
    log.warning("working on %d", x)
    return x * x


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "LOG %(levelname)s task=%(tracedpool_task_id)s trace=%(tracedpool_trace_id)s "
            "pid=%(process)d %(message)s",
            defaults={"tracedpool_task_id": "-", "tracedpool_trace_id": "-"},
        )
    )
    logging.getLogger().addHandler(handler)
    ctx = multiprocessing.get_context(sys.argv[1])
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(work, range(int(sys.argv[2]))))
    print("RESULTS", results, file=sys.stderr)
