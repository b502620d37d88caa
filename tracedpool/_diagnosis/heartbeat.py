"""Heartbeat files: a liveness signal that needs no ptrace to read.

Each traced pool's stall watcher keeps one small JSON file fresh in a private per-user
directory (0700; files 0600, written to a temporary name and renamed into place, so a
reader never sees half a file). ``tracedpool doctor --probe`` reads them: a file that is
too old means the process is frozen or its watcher cannot run (the GIL held by native
code, a SIGSTOP); ``stalled: true`` means the stall detector has declared a stall.
``log_level`` says whether the pool captures its workers' log records (the level name,
or null), for ``tracedpool doctor --pid``.

Cost: at most one small write per ``INTERVAL`` seconds per pool, done by the watcher
thread on wake-ups it makes anyway while work is pending; an idle pool's watcher wakes
once per ``INTERVAL`` only to refresh its file. The file is removed when the watcher
stops (pool shutdown or garbage collection). Failures are logged once and swallowed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from .._telemetry import names as N

log = logging.getLogger("tracedpool")

SCHEMA = "tracedpool.heartbeat/1"
INTERVAL = 5.0  # seconds between refreshes
DISABLED = ("none", "off", "0", "false")


def default_dir() -> Path | None:
    """``$TRACEDPOOL_HEARTBEAT_DIR`` (``none`` disables), else a private per-user
    directory under the temporary directory."""
    env = os.environ.get(N.ENV_HEARTBEAT_DIR, "").strip()
    if env.lower() in DISABLED:
        return None
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"tracedpool-{os.getuid()}" / "heartbeats"


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc/PID/stat`` field
    22), or None. Unlike a wall-clock start time it does not move with clock steps, so a
    heartbeat and a later reader agree on it exactly: a different value means the pid
    was reused by another process after the heartbeat's writer died."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        # the command name (field 2) may hold spaces and parentheses: split after it
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _private_dir(directory: Path, *, private_parent: bool = False) -> None:
    """Create ``directory`` (0700) and refuse one that another user owns or a symlink,
    or one whose parent another (non-root) user owns: the default parent's name in the
    shared temporary directory is predictable, and whoever owns it could swap our
    directory for a symlink between two writes.

    With ``private_parent`` (the default location: ``tracedpool-<uid>`` in the shared
    temporary directory, which the workers' stack dumps share) the parent must pass the
    same test as the directory: a real directory of ours, never a symlink, as the
    stack dumps already require."""
    if private_parent:
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        _refuse_unless_private(directory.parent)
    else:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent = os.lstat(directory.parent)
        if parent.st_uid not in (os.getuid(), 0):
            raise PermissionError(
                f"{directory.parent} belongs to another user (uid {parent.st_uid})"
            )
    directory.mkdir(mode=0o700, exist_ok=True)
    _refuse_unless_private(directory)


def _refuse_unless_private(directory: Path) -> None:
    st = os.lstat(directory)  # a symlink is not a directory here
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{directory} is not a private directory of this user")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)


class Heartbeat:
    """One pool's heartbeat file. ``beat()`` is cheap when not due and raises nothing but
    ReferenceError (the pool was garbage collected, which ends the watcher)."""

    def __init__(self, pool_id: str, directory: Path | None = None) -> None:
        self.directory = default_dir() if directory is None else directory
        self._private_parent = (
            directory is None and not os.environ.get(N.ENV_HEARTBEAT_DIR, "").strip()
        )
        self.pool_id = pool_id
        self.path: Path | None = None
        self._due = 0.0
        self._last_stalled = False
        self._failed = False
        self._start_ticks: int | None = None

    @property
    def idle_wait(self) -> float | None:
        """How long an idle watcher may sleep: None (for ever) when disabled."""
        return None if self.directory is None or self._failed else INTERVAL

    def beat(self, watcher: Any, *, force: bool = False) -> None:
        if self.directory is None or self._failed:
            return
        now = time.monotonic()
        stalled = bool(watcher._in_episode)
        if not force and now < self._due and stalled == self._last_stalled:
            return
        self._due = now + INTERVAL
        self._last_stalled = stalled
        try:
            self._write(watcher, stalled, now)
        except ReferenceError:
            raise  # the pool is gone: the watcher stops, and close() removes the file
        except Exception as e:
            self._failed = True
            log.warning(
                "tracedpool: could not write the heartbeat file in %s (%s); "
                "`tracedpool doctor --probe` will not see pool %s",
                self.directory,
                e,
                self.pool_id,
            )

    def _write(self, watcher: Any, stalled: bool, now: float) -> None:
        assert self.directory is not None
        if self.path is None:
            _private_dir(self.directory, private_parent=self._private_parent)
            self.path = self.directory / f"{os.getpid()}-{self.pool_id}.json"
            self._start_ticks = start_ticks(os.getpid())
        state = watcher._state
        body = {
            "schema": SCHEMA,
            "pid": os.getpid(),
            "start_ticks": self._start_ticks,
            "pool_id": self.pool_id,
            "pool_name": getattr(state, "name", None),
            "written_at": time.time(),
            "interval": INTERVAL,
            "pending": state.pending(),
            "seconds_since_progress": 0.0
            if watcher.idle
            else round(now - watcher.last_progress, 3),
            "stall_timeout": watcher.timeout,
            "stalled": stalled,
            "last_report": watcher.reports[-1] if watcher.reports else None,
            # Whether (and from which level) workers' log records reach the parent's
            # logging: `doctor --pid` cannot see a pool's options from outside.
            "log_level": getattr(state, "log_level", None),
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(body))
        os.replace(tmp, self.path)

    def close(self) -> None:
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every heartbeat in ``directory`` (each with its ``path``); unreadable or foreign
    files are skipped. Raises OSError when the directory itself cannot be listed."""
    out = []
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and body.get("schema") == SCHEMA:
            body["path"] = str(path)
            out.append(body)
    return out
