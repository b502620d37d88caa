"""tracedpool: an observable, diagnosable drop-in ``ProcessPoolExecutor``."""

from ._errors import ResultUnpicklingError, TracedBrokenProcessPool
from ._executor import TracedProcessPoolExecutor
from ._version import __version__

__all__ = [
    "ResultUnpicklingError",
    "TracedBrokenProcessPool",
    "TracedProcessPoolExecutor",
    "__version__",
]
