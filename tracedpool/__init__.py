"""tracedpool: an observable, diagnosable drop-in ``ProcessPoolExecutor``."""

from ._errors import PoolStalledError, ResultUnpicklingError, TracedBrokenProcessPool
from ._executor import TracedProcessPoolExecutor
from ._instrument import instrument, is_instrumented, uninstrument
from ._version import __version__

__all__ = [
    "PoolStalledError",
    "ResultUnpicklingError",
    "TracedBrokenProcessPool",
    "TracedProcessPoolExecutor",
    "__version__",
    "instrument",
    "is_instrumented",
    "uninstrument",
]
