"""tracedpool: an observable, diagnosable drop-in ``ProcessPoolExecutor``."""

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
