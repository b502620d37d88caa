"""tracedpool: an observable, diagnosable drop-in ``ProcessPoolExecutor``.

This module is the public surface; everything behind it lives in private rooms, one
concern each. One sampled task's data goes through them in this order:

1. ``_pool``: ``TracedProcessPoolExecutor.submit`` samples the task in the caller's
   context and starts its ``TaskRecord``; the hooks in the stdlib's manager and feeder
   threads (``_pool.cpython``) report each stage to the pool's ``PoolState``
   (``_pool.observer``), which only stores timestamps.
2. ``_worker``: the task travels wrapped (``_worker.wire._Task``); in the worker it
   runs with its ``worker-run`` span current, and its stage timings ride back with
   the result.
3. ``_telemetry``: once the future is done, the pool's emitter thread turns the record
   into spans (``_telemetry.emit``) and hands them to the span sink (``_telemetry.otel``;
   the OpenTelemetry SDK's private names only in ``_telemetry.sdk``), which feeds the
   user's span processors or tracedpool's own pipeline (``_telemetry.configure``).
4. ``_diagnosis``: when the pool breaks, ``_pool.breakage`` reads the inventory with
   ``_diagnosis.forensics``; while work is pending, the stall watcher
   (``_diagnosis.stall``) reads the pool through ``_pool.views`` and writes reports.

Around them: ``_doctor`` (health checks), ``_timeline`` (the HTML page of a trace
file) and ``_cli`` (the command line), which read what the rooms above leave behind.
docs/rationale.md's "Architecture" section has the diagram and what each room may use.
"""

from ._errors import (
    PicklingFault,
    PoolStalledError,
    ResultUnpicklingError,
    TracedBrokenProcessPool,
    pickling_fault,
)
from ._pool.executor import TracedProcessPoolExecutor
from ._pool.instrument import instrument, is_instrumented, uninstrument
from ._telemetry.configure import TracingSetup, configure
from ._version import __version__

__all__ = [
    "PicklingFault",
    "PoolStalledError",
    "ResultUnpicklingError",
    "TracedBrokenProcessPool",
    "TracedProcessPoolExecutor",
    "TracingSetup",
    "__version__",
    "configure",
    "instrument",
    "is_instrumented",
    "pickling_fault",
    "uninstrument",
]
