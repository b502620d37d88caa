"""``probe.orphans``: traced pool workers of this user whose owner is gone, found from
``/proc`` alone (``tracedpool._worker.lifeline.scan_orphans``: the watcher thread's name
carries the owner's pid). ``doctor --pid`` reports the orphans of one process its own way
(``inspect``).
"""

from __future__ import annotations

import time

from .._worker import lifeline as _lifeline
from .result import Check


def orphans_check(owner: int | None = None) -> Check | None:
    """``probe.orphans``: traced workers of this user whose owner is gone, from /proc
    alone (their watcher thread's name carries the owner's pid). None when there are
    none: the probe stays one line per pool."""
    t0 = time.monotonic()
    found = _lifeline.scan_orphans(owner)
    if not found:
        return None
    shown = ", ".join(
        f"pid {o.pid} (owner pid {o.owner}{', stopped' if o.state in ('T', 't') else ''})"
        for o in found
    )
    return Check(
        "probe.orphans",
        "warn",
        f"{len(found)} traced pool worker(s) outlived their owner: {shown}",
        "they hold memory and files and will never get work: kill them "
        f"(kill -9 {' '.join(str(o.pid) for o in found)}); a worker normally ends within a "
        "second of its owner, so one left over held the GIL in native code or could not "
        "be signalled",
        {"orphans": [o._asdict() for o in found]},
        time.monotonic() - t0,
    )
