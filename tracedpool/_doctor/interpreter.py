"""The ``python`` checks: this interpreter's version (can tracedpool observe every
stage here?) and the start method a pool would use (``fork`` warns: a worker forked
while another thread holds a lock can deadlock).
"""

from __future__ import annotations

import multiprocessing
import platform
import sys
from typing import Any

from .result import Check, Options, guarded


def python_checks(opts: Options) -> list[Check]:
    return [
        guarded("python.version", _version_check),
        guarded("python.start-method", start_method_check, opts),
    ]


def _version_check() -> Check:
    from .._pool import cpython as _cpython

    version = platform.python_version()
    data: dict[str, Any] = {
        "version": version,
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "hooks_available": _cpython.HOOKS_AVAILABLE,
        "has_max_tasks_per_child": _cpython.HAS_MAX_TASKS_PER_CHILD,
        "has_replace_dead_worker": _cpython.HAS_REPLACE_DEAD_WORKER,
    }
    if _cpython.HOOKS_AVAILABLE:
        return Check(
            "python.version",
            "ok",
            f"Python {version} ({data['implementation']}): all six stages are observable",
            data=data,
        )
    return Check(
        "python.version",
        "warn",
        f"Python {version}: concurrent.futures internals unknown to tracedpool; only "
        "submit, completion and worker-side stages are traced (degraded)",
        "use a Python tracedpool supports fully (CPython 3.11 to 3.15), or upgrade tracedpool",
        data,
    )


def start_method_check(opts: Options) -> Check:
    default = multiprocessing.get_start_method(allow_none=True) or (
        multiprocessing.get_context().get_start_method()
    )
    method = opts.start_method or default
    data = {
        "start_method": method,
        "default": default,
        "available": multiprocessing.get_all_start_methods(),
        "python": platform.python_version(),
    }
    if method not in data["available"]:
        return Check(
            "python.start-method",
            "fail",
            f"start method {method!r} is not available here (available: {data['available']})",
            "pass one of the available methods to multiprocessing.get_context()",
            data,
        )
    if method != "fork":
        why = "the default" if method == default else "chosen"
        return Check(
            "python.start-method",
            "ok",
            f"start method {method} ({why}): workers do not inherit the parent's threads",
            data=data,
        )
    note = (
        "Python 3.12+ emits a DeprecationWarning when a process with threads forks"
        if sys.version_info >= (3, 12)
        else "Python 3.14 makes forkserver the default on POSIX"
    )
    return Check(
        "python.start-method",
        "warn",
        "start method fork: a worker forked while another thread (an OpenTelemetry batch "
        "processor, tracedpool's emitter, your own) holds a lock can deadlock; " + note,
        "pass mp_context=multiprocessing.get_context('forkserver') (or 'spawn'); it is "
        "the default from Python 3.14",
        data,
    )
