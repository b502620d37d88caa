"""``run_checks``: the machine and configuration checks, group by group, in order.

The groups and their modules: ``python`` (``interpreter``), ``limits`` (``machine``),
``snapshots`` (``snapshots``), ``telemetry`` (``telemetry``, ``endpoint``), ``smoke``
(``smoke``). One crashing group is a fail of that group; its siblings still run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .interpreter import python_checks
from .machine import limit_checks
from .result import BUG_FIX, GROUPS, Check, Options, Result, crash_text
from .smoke import smoke_checks
from .snapshots import snapshot_checks
from .telemetry import telemetry_checks


def run_checks(options: Options | None = None) -> Result:
    """Every check of the selected groups, in order; one crashing check is a fail of that
    check (its siblings still run), never an exception."""
    opts = options or Options()
    t0 = time.monotonic()
    runners: dict[str, Callable[[Options], list[Check]]] = {
        "python": python_checks,
        "limits": limit_checks,
        "snapshots": snapshot_checks,
        "telemetry": telemetry_checks,
        "smoke": smoke_checks,
    }
    checks: list[Check] = []
    for group in GROUPS:
        if group not in opts.groups:
            continue
        started = time.monotonic()
        try:
            found = runners[group](opts)
        except Exception as e:  # a bug in a group: reported as its fail
            found = [
                Check(
                    f"{group}.error",
                    "fail",
                    f"the {group} checks themselves failed: {crash_text(e)}",
                    BUG_FIX,
                )
            ]
        spent = time.monotonic() - started
        for c in found:
            if not c.seconds:
                c.seconds = round(spent / len(found), 3)
        checks += found
    return Result("checks", checks, time.monotonic() - t0)
