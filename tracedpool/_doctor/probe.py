"""``doctor --probe``: judge running pools from their heartbeat files alone. No ptrace,
no subprocess, a few file reads: fresh and not stalled is healthy, a stale heartbeat
means a frozen process (or a stall watcher that cannot run), a stalled one names its
report. Files left by exited processes (pid gone, or reused) are counted, not judged.
Orphaned workers (``orphans``) are added when there are any.
"""

from __future__ import annotations

import time
from pathlib import Path

from .._diagnosis import heartbeat as _heartbeat
from .._telemetry import names as N
from .orphans import orphans_check
from .result import Check, DoctorError, Result

PROBE_MAX_AGE = 30.0  # seconds: six heartbeat intervals


def probe(
    directory: Path | None = None,
    *,
    pid: int | None = None,
    max_age: float | None = None,
    require: bool = False,
) -> Result:
    """Judge the pools from their heartbeat files: fresh and not stalled is healthy."""
    import psutil

    t0 = time.monotonic()
    if directory is None:
        directory = _heartbeat.default_dir()
        if directory is None:
            raise DoctorError(
                f"heartbeats are turned off ({N.ENV_HEARTBEAT_DIR}=none)",
                f"unset {N.ENV_HEARTBEAT_DIR} in the service and here",
            )
    limit = PROBE_MAX_AGE if max_age is None else max_age
    try:
        beats = _heartbeat.read_all(directory)
    except FileNotFoundError:
        beats = []
    except OSError as e:
        raise DoctorError(
            f"cannot read the heartbeat directory {directory}: {e.strerror or e}",
            "run the probe as the service's user, or point --heartbeat-dir at its "
            f"{N.ENV_HEARTBEAT_DIR}",
        ) from None
    checks: list[Check] = []
    now = time.time()
    gone = 0
    for beat in beats:
        bpid = beat.get("pid")
        if not isinstance(bpid, int) or (pid is not None and bpid != pid):
            continue
        try:
            alive = psutil.Process(bpid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        written_by = beat.get("start_ticks")
        if alive and isinstance(written_by, int):
            now_ticks = _heartbeat.start_ticks(bpid)
            # The pid now belongs to another process: the writer died and it was reused.
            alive = now_ticks is None or now_ticks == written_by
        if not alive:
            gone += 1  # left by a process that was killed; nothing to judge
            continue
        age = max(0.0, now - float(beat.get("written_at") or 0))
        subject = f"pool {beat.get('pool_id')} (pid {bpid})"
        data = {
            k: beat.get(k)
            for k in (
                "pid",
                "pool_id",
                "pool_name",
                "pending",
                "seconds_since_progress",
                "stalled",
                "last_report",
                "path",
            )
        }
        data["age_seconds"] = round(age, 3)
        data["max_age_seconds"] = limit
        if age > limit:
            checks.append(
                Check(
                    "probe.heartbeat",
                    "fail",
                    f"{subject}: heartbeat {age:.0f} s old (limit {limit:g} s): the process is "
                    "frozen or its stall watcher cannot run",
                    f"inspect it: tracedpool doctor --pid {bpid} (needs ptrace)",
                    data,
                )
            )
        elif beat.get("stalled"):
            report = beat.get("last_report")
            checks.append(
                Check(
                    "probe.heartbeat",
                    "fail",
                    f"{subject} is stalled: no progress for "
                    f"{float(beat.get('seconds_since_progress') or 0):.0f} s with "
                    f"{beat.get('pending')} task(s) pending",
                    (f"read the report: tracedpool report {report}; " if report else "")
                    + f"inspect it: tracedpool doctor --pid {bpid}",
                    data,
                )
            )
        else:
            checks.append(
                Check(
                    "probe.heartbeat",
                    "ok",
                    f"{subject}: {beat.get('pending')} task(s) pending, last progress "
                    f"{float(beat.get('seconds_since_progress') or 0):.1f} s ago, heartbeat "
                    f"{age:.1f} s old",
                    data=data,
                )
            )
    if not checks:
        where = f" for pid {pid}" if pid is not None else ""
        checks.append(
            Check(
                "probe.heartbeat",
                "fail" if require else "skip",
                f"no live traced pool heartbeat{where} in {directory}"
                + (f" ({gone} left by exited processes)" if gone else ""),
                "a pool writes its heartbeat once it has had work, while its stall detector "
                f"is on; check {N.ENV_HEARTBEAT_DIR} matches the service's"
                if require
                else None,
                {"directory": str(directory), "stale_files": gone},
            )
        )
    orphans = orphans_check(pid)
    if orphans is not None:
        checks.append(orphans)
    return Result("probe", checks, time.monotonic() - t0)
