"""The doctor's vocabulary: a ``Check`` (one finding), a ``Result`` (one run's findings,
its status, exit code and JSON document), the ``Options`` of a checks run, and
``DoctorError`` (a usage or environment error: the CLI prints it and exits 2).

Every check has a stable id (``group.name``), a status (ok, warn, fail, skip), a
one-line finding, a fix when not ok, and the facts it measured; the JSON schema is
documented in docs/doctor.md. ``guarded`` runs one check so that its crash is a fail of
that check, never an exception, with any configured OTLP header value masked.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .._version import __version__
from .otel_env import header_values

SCHEMA = "tracedpool.doctor/1"
STATUSES = ("ok", "warn", "fail", "skip")
GROUPS = ("python", "limits", "snapshots", "telemetry", "smoke")
BUG_FIX = "report this as a tracedpool bug, with the output of `--json`"


@dataclass
class Check:
    """One finding. ``id`` is stable (``group.name``); ``data`` holds what was measured."""

    id: str
    status: str
    finding: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]


@dataclass
class Result:
    """What one ``tracedpool doctor`` run found."""

    mode: str  # "checks", "pid" or "probe"
    checks: list[Check]
    seconds: float = 0.0
    report: dict[str, Any] | None = None  # --pid: a stall-report-shaped diagnosis

    @property
    def status(self) -> str:
        found = {c.status for c in self.checks}
        return "fail" if "fail" in found else ("warn" if "warn" in found else "ok")

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "fail" else 0

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "status": self.status,
            "exit_code": self.exit_code,
            "counts": counts,
            "seconds": round(self.seconds, 3),
            "tracedpool_version": __version__,
            "python": platform.python_version(),
            "pid": os.getpid(),
            "checks": [{**asdict(c), "group": c.group} for c in self.checks],
            "report": self.report,
        }


class DoctorError(Exception):
    """A usage or environment error: the CLI prints it (and the fix) and exits 2."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass
class Options:
    max_workers: int | None = None  # None: what the stdlib's default would be
    start_method: str | None = None  # None: the default context's
    otlp_endpoint: str | None = None  # None: from the OTEL_* variables
    groups: tuple[str, ...] = GROUPS
    timeout: float = 10.0  # per network request, attach or smoke task


def crash_text(e: BaseException) -> str:
    """An unexpected exception for a finding, with any configured OTLP header value
    masked: header values are credentials, and exceptions may quote them."""
    text = f"{type(e).__name__}: {e}"
    for value in header_values():
        for form in {value, repr(value)[1:-1], repr(value.encode("utf-8", "replace"))[2:-1]}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


def guarded(check_id: str, run: Callable[..., Check], *args: Any) -> Check:
    """``run(*args)``, or a fail of ``check_id`` when it raises: one check crashing must
    not hide the other checks of its group."""
    try:
        return run(*args)
    except Exception as e:  # any bug in a check: reported as that check's fail
        return Check(check_id, "fail", f"the check itself failed: {crash_text(e)}", BUG_FIX)
