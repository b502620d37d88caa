"""The stall detector: notice a pool that stopped making progress, say what is stuck and
where, and leave a report an engineer can read after the incident.

One watcher thread per pool. It sleeps on an event while no work is pending (an idle
pool costs nothing) and otherwise wakes every ``min(timeout / 4, MAX_TICK)`` to compare
the pool's progress signals:

* futures completed (results delivered, pickling faults, breakage), counted by the hooks;
* each worker's CPU time and I/O counters (psutil).

A stall is declared when work is pending and none of these moved for ``stall_timeout``
seconds. A task that burns CPU is slow, not stuck. One report is written per episode:
the episode ends when progress resumes. The diagnosis comes from the stack evidence and
the process states: the manager thread's frame, the feeder thread, and each worker's
status, CPU and stack. Each worker's last log records (``recent_logs``, when the pool
captures worker logs) go in the report beside its stack: what a task said before it
stopped is often why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._threads import start_daemon
from .._version import __version__
from .heartbeat import Heartbeat

log = logging.getLogger("tracedpool")

SCHEMA = "tracedpool.stall-report/1"
DEFAULT_TIMEOUT = 60.0
KEEP_REPORTS = 50
SNAPSHOT_BUDGET = 2.0  # seconds for every stack snapshot of one stall, all in parallel
#: Longest wait between two checks while work is pending. A check only sees *that*
#: progress happened since the previous one, so the stall's start is known to within one
#: interval: this bounds the detection's lateness (stall_timeout + 1 s is the promise, and
#: the snapshots take ~0.05-0.15 s). Each check costs ~0.1 ms per worker (psutil reads):
#: about 0.1% of a core with 8 workers busy; nothing at all while no work is pending.
#: Measured in benchmarks/stall.py, recorded in docs/performance.md.
MAX_TICK = 0.75
DUMP_SIGNAL = signal.SIGUSR1
ACTIONS = ("report", "break")


def default_report_dir() -> Path:
    """A per-user directory: $XDG_STATE_HOME/tracedpool/stalls, else ~/.local/state/..."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tracedpool" / "stalls"


def dump_dir() -> Path:
    """Where workers write their signal-triggered stack dumps (private, per user)."""
    return Path(tempfile.gettempdir()) / f"tracedpool-{os.getuid()}"


@dataclass(frozen=True)
class StallConfig:
    timeout: float | None
    report_dir: Path
    on_stall: Any
    action: str

    @classmethod
    def from_options(cls, timeout: Any, report_dir: Any, on_stall: Any, action: Any) -> StallConfig:
        """Validate the executor's stall options; bad values raise naming the rule."""
        from .._telemetry import names as N

        if timeout is _DEFAULT:
            env = os.environ.get(N.ENV_STALL_TIMEOUT)
            if env is None or env.strip() == "":
                timeout = DEFAULT_TIMEOUT
            elif env.strip().lower() in ("none", "off", "0"):
                timeout = None
            else:
                try:
                    timeout = float(env)
                except ValueError:
                    raise ValueError(
                        f"{N.ENV_STALL_TIMEOUT} must be a number of seconds or 'none', not {env!r}"
                    ) from None
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError("stall_timeout must be a number of seconds or None")
            if not timeout > 0:
                raise ValueError("stall_timeout must be greater than 0 (None disables)")
        if on_stall is not None and not callable(on_stall):
            raise TypeError("on_stall must be a callable taking the report, or None")
        if action not in ACTIONS:
            raise ValueError(f"stall_action must be one of {ACTIONS}, not {action!r}")
        if report_dir is None:
            path = default_report_dir()
        elif isinstance(report_dir, (str, os.PathLike)):
            path = Path(report_dir)
        else:
            raise TypeError("stall_report_dir must be a path or None")
        return cls(None if timeout is None else float(timeout), path, on_stall, action)


_DEFAULT: Any = object()


# -- stacks ---------------------------------------------------------------------------------
def _frames_of(frame: Any) -> list[dict[str, Any]]:
    """Innermost first, as py-spy reports them."""
    out = []
    for summary in reversed(traceback.extract_stack(frame)):
        out.append({"function": summary.name, "file": summary.filename, "line": summary.lineno})
    return out


def parent_threads(roles: dict[int, str]) -> list[dict[str, Any]]:
    """Every thread of this process with its frames; no privilege needed."""
    names = {t.ident: t.name for t in threading.enumerate()}
    threads = []
    for ident, frame in sys._current_frames().items():
        threads.append(
            {
                "id": ident,
                "name": names.get(ident, "?"),
                "role": roles.get(ident, "other"),
                "frames": _frames_of(frame),
            }
        )
    return threads


def py_spy_path() -> str | None:
    """``TRACEDPOOL_PY_SPY`` (a path, or ``off``), else py-spy on PATH or beside Python."""
    from shutil import which

    from .._telemetry import names as N

    chosen = os.environ.get(N.ENV_PY_SPY, "").strip()
    if chosen.lower() in ("off", "0", "none", "no", "false"):
        return None
    if chosen:
        return which(chosen)
    found = which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else None


def py_spy_dump(pid: int, timeout: float) -> tuple[list[dict[str, Any]] | None, str]:
    """One process's threads via ``py-spy dump --json`` (it covers only that pid)."""
    exe = py_spy_path()
    if exe is None:
        return None, "py-spy is not installed"
    try:
        out = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--json", "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"py-spy failed: {type(e).__name__}"
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"py-spy refused: {reason}"
    try:
        data = json.loads(out.stdout)
    except ValueError:
        return None, "py-spy gave no JSON"
    threads = []
    for t in data if isinstance(data, list) else []:
        threads.append(
            {
                "id": t.get("thread_id"),
                "name": t.get("thread_name") or "?",
                "role": "main" if t.get("thread_name") == "MainThread" else "other",
                "active": t.get("active"),
                "frames": [
                    {"function": f.get("name"), "file": f.get("filename"), "line": f.get("line")}
                    for f in t.get("frames", [])
                ],
            }
        )
    return threads, "py-spy"


def signal_dump(pid: int, timeout: float) -> tuple[list[dict[str, Any]] | None, str]:
    """Fallback needing no privilege: the worker's faulthandler writes its stacks to a
    private file when it gets ``DUMP_SIGNAL`` (installed by tracedpool at worker start).
    A stopped process cannot answer."""
    path = dump_dir() / f"{pid}.stack"
    try:
        before = path.stat().st_size if path.exists() else 0
        os.kill(pid, DUMP_SIGNAL)
    except OSError as e:
        return None, f"signal dump failed: {e.strerror}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(OSError):
            if path.stat().st_size > before:
                time.sleep(0.05)  # let it finish writing
                text = path.read_text(errors="replace")[before:]
                return _parse_faulthandler(text), "faulthandler signal dump"
    return None, "no answer to the dump signal (stopped, or blocked in native code)"


def _parse_faulthandler(text: str) -> list[dict[str, Any]]:
    threads: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("Thread 0x", "Current thread 0x")):
            ident = line.split("0x", 1)[1].split()[0]
            current = {"id": ident, "name": "?", "role": "other", "frames": []}
            threads.append(current)
        elif line.startswith("File ") and current is not None:
            # File "path", line N in function
            try:
                path_part, rest = line[6:].split('", line ', 1)
                number, _, func = rest.partition(" in ")
                current["frames"].append({"function": func, "file": path_part, "line": int(number)})
            except ValueError:
                continue
    return threads


#: What a kernel wait channel (``/proc/PID/wchan``) says a blocked process waits on.
_WAITS = (
    ("futex", "a lock or condition (futex)"),
    ("nanosleep", "a sleep"),
    ("pipe_read", "a pipe read"),
    ("pipe_write", "a pipe write"),
    ("unix_stream", "a Unix socket"),
    ("sk_wait", "a socket read"),
    ("tcp", "a TCP socket"),
    ("inet", "a socket"),
    ("poll", "poll/select"),
    ("select", "poll/select"),
    ("ep_poll", "epoll"),
    ("do_wait", "a child process (wait)"),
    ("sigsuspend", "a signal"),
    ("sigtimedwait", "a signal"),
    ("folio", "disk I/O or page-in"),
    ("io_schedule", "disk I/O"),
)


def wait_channel(pid: int) -> str | None:
    """The kernel function a sleeping process waits in; needs no privilege over a
    process of the same user. None when unknown (not Linux, running, or hidden)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text if text and text != "0" else None


def wait_hint(wchan: str | None) -> str | None:
    if not wchan:
        return None
    for part, meaning in _WAITS:
        if part in wchan:
            return meaning
    return None


def add_source(threads: list[dict[str, Any]] | None, per_thread: int = 30) -> None:
    """Each frame's source line (read here, from the same files the process runs), so
    the report shows the statement a thread is stuck on; code, never argument values."""
    import linecache

    for t in threads or []:
        for f in (t.get("frames") or [])[:per_thread]:
            path, line = f.get("file"), f.get("line")
            if isinstance(path, str) and isinstance(line, int) and not path.startswith("<"):
                code = linecache.getline(path, line).strip()
                if code:
                    f["code"] = code


def install_worker_dump_handler() -> None:
    """Worker side: stacks to a private per-pid file on ``DUMP_SIGNAL``."""
    import faulthandler

    directory = dump_dir()
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.getuid():
        return  # someone else's directory: never write stacks there
    fd = os.open(
        directory / f"{os.getpid()}.stack",
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
        0o600,
    )
    stream = os.fdopen(fd, "w")
    faulthandler.register(DUMP_SIGNAL, file=stream, all_threads=True)
    _KEEP.append(stream)  # the handler writes to it for the worker's whole life


_KEEP: list[Any] = []


# -- reports ------------------------------------------------------------------------------
def write_report(report: dict[str, Any], directory: Path) -> Path:
    """Write JSON and text side by side; 0700 directory, 0600 files, never following a
    planted symlink; keep the newest ``KEEP_REPORTS``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.is_symlink():
        raise PermissionError(f"{directory} is a symlink; refusing to write reports there")
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    base = f"stall-{os.getpid()}-{stamp}-{report['pool']['id']}"
    json_path = directory / f"{base}.json"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for path, text in (
        (json_path, json.dumps(report, indent=2, default=str)),
        (directory / f"{base}.txt", render_text(report)),
    ):
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    _prune(directory)
    return json_path


def _prune(directory: Path) -> None:
    # The name (its UTC stamp, to the microsecond) breaks ties: file times are coarse.
    reports = sorted(directory.glob("stall-*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    for old in reports[:-KEEP_REPORTS]:
        for path in (old, old.with_suffix(".txt")):
            with contextlib.suppress(OSError):
                path.unlink()


def render_text(report: dict[str, Any]) -> str:
    """The report for a human."""
    pool = report.get("pool", {})
    lines = [
        f"tracedpool stall report ({report.get('schema')})",
        f"diagnosis: {report.get('diagnosis')}",
        f"kind:      {report.get('kind')}",
        f"detected:  {report.get('detected_at')}, after {report.get('stall_seconds', 0):.1f} s "
        "without progress",
        f"pool:      {pool.get('id')} {pool.get('name') or ''}"
        f" max_workers={pool.get('max_workers')} start_method={pool.get('start_method')}"
        f" python={pool.get('python')}",
        "",
        "tasks:",
    ]
    for t in report.get("tasks", []):
        age = t.get("age_seconds")
        lines.append(
            f"  {t.get('id')}  {t.get('function')}  stage={t.get('stage')}"
            f"  worker={t.get('worker_pid')}  age={'?' if age is None else f'{age:.1f}s'}"
        )
    lines.append("")
    lines.append("processes:")
    for p in report.get("processes", []):
        lines.append(
            f"  pid {p.get('pid')} ({p.get('role')}) status={p.get('status')}"
            f" cpu={p.get('cpu_seconds')} rss={p.get('rss_bytes')}"
            f" stacks via {p.get('stack_method')}"
        )
        if p.get("wchan"):
            hint = wait_hint(p["wchan"])
            lines.append(f"    kernel wait: {p['wchan']}" + (f" ({hint})" if hint else ""))
        if p.get("recent_logs"):
            lines.append("    last log records:")
            lines.extend(f"      {_log_line(r)}" for r in p["recent_logs"])
        for t in p.get("threads") or []:
            lines.append(f"    thread {t.get('name')} [{t.get('role')}]")
            for f in (t.get("frames") or [])[:25]:
                lines.append(f"      {f.get('function')} ({f.get('file')}:{f.get('line')})")
                if f.get("code"):
                    lines.append(f"          {f['code']}")
    return "\n".join(lines) + "\n"


def _log_line(record: dict[str, Any]) -> str:
    """One of a worker's recent log records (``tracedpool._pool.logs``), on one line."""
    try:
        when = datetime.fromtimestamp(float(record.get("t") or 0), UTC).strftime("%H:%M:%S.%f")
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?"
    message = str(record.get("message", "")).replace("\n", "\n          ")
    task = f" [task {record['task_id']}]" if record.get("task_id") else ""
    return f"{when[:12]} {record.get('level')} {record.get('logger')}: {message}{task}"


# -- the watcher ----------------------------------------------------------------------------
_STDLIB_PARTS = ("multiprocessing", "concurrent/futures", "threading.py", "selectors.py")


def _user_frame(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The innermost frame outside the stdlib's pool machinery and tracedpool; None when
    the thread is only in that machinery (e.g. a worker waiting for its next task)."""
    for f in frames:
        path = str(f.get("file") or "")
        if path.startswith("<") or "/tracedpool/_" in path:
            continue
        if not any(p in path for p in _STDLIB_PARTS):
            return f
    return None


def _where(frame: dict[str, Any] | None) -> str:
    if not frame:
        return "an unknown place"
    code = f": {frame['code']}" if frame.get("code") else ""
    return f"{frame.get('function')} ({frame.get('file')}:{frame.get('line')}{code})"


def _main_thread(worker: dict[str, Any]) -> dict[str, Any] | None:
    """The worker's main thread: named so by py-spy; in a faulthandler dump, the one
    running the worker loop."""
    threads: list[dict[str, Any]] = worker.get("threads") or []
    for t in threads:
        if t.get("role") == "main":
            return t
    for t in threads:
        if any(f.get("function") == "_process_worker" for f in t.get("frames") or []):
            return t
    return threads[0] if threads else None


def _waiting(worker: dict[str, Any]) -> str:
    """Where the worker's main thread is, and what the kernel says it waits on."""
    main = _main_thread(worker)
    if main is None:
        where = f"an unknown place (no stack: {worker.get('stack_method')})"
    else:
        frames = main.get("frames") or []
        where = _where(_user_frame(frames) or (frames[0] if frames else None))
    hint = wait_hint(worker.get("wchan"))
    wchan = worker.get("wchan")
    if hint:
        return f"{where}, waiting on {hint} [kernel: {wchan}]"
    return f"{where}" + (f" [kernel: {wchan}]" if wchan else "")


class Watcher:
    """Per-pool stall watcher thread; see the module docstring."""

    def __init__(
        self, state: Any, config: StallConfig, interpreter_exiting: Callable[[], bool]
    ) -> None:
        import weakref

        self._state: Any = weakref.proxy(state)
        self.config = config
        # Given by the pool (tracedpool._pool.cpython reads the stdlib's flag): the stall
        # detector reads no CPython internals itself and imports nothing of the hooks.
        self._interpreter_exiting = interpreter_exiting
        assert config.timeout is not None
        self.timeout: float = config.timeout
        self._tick = min(self.timeout / 4, MAX_TICK)
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.idle = True
        self.last_progress = time.monotonic()
        self._signature: Any = None
        self._in_episode = False
        self._procs: dict[int, Any] = {}
        self.reports: list[str] = []
        self.stalls = 0
        self.last_report: dict[str, Any] | None = None
        self._escalated = False
        self._warned_write = False
        self._heartbeat = Heartbeat(state.pool_id)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None and not self._stopping:
            name = f"tracedpool-stall-{self._state.pool_id}"
            thread = start_daemon(self._run, name, "this pool has no stall detection")
            if thread is None:
                self._stopping = True
                return
            self._thread = thread

    def wake(self) -> None:
        self.idle = False
        self._event.set()

    def stop(self) -> None:
        self._stopping = True
        self._event.set()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._heartbeat.beat(self)
                if self._state.pending() == 0:
                    self.idle = True
                    self._in_episode = False
                    if self._state.pending() == 0:  # re-check after publishing idle
                        # Idle: sleep until woken, refreshing the heartbeat file (if
                        # any) every few seconds.
                        while not self._event.wait(self._heartbeat.idle_wait):
                            self._heartbeat.beat(self, force=True)
                        self._event.clear()
                    self.idle = False
                    self.last_progress = time.monotonic()
                    self._signature = None
                    continue
                self._event.wait(self._tick)
                self._event.clear()
                if not self._stopping:
                    self.check()
        except ReferenceError:
            return  # the pool is gone
        except Exception:
            log.warning("tracedpool: the stall watcher failed and stopped", exc_info=True)
        finally:
            self._heartbeat.close()

    # -- progress --------------------------------------------------------------------------
    def _worker_signature(self, pids: list[int]) -> tuple[Any, ...]:
        import psutil

        out = []
        for pid in sorted(pids):
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                cpu = proc.cpu_times()
                try:
                    io = proc.io_counters()
                    io_total = io.read_chars + io.write_chars
                except (psutil.AccessDenied, AttributeError):
                    io_total = 0
                out.append((pid, round(cpu.user + cpu.system, 2), io_total))
            except psutil.Error:
                out.append((pid, None, None))
        return tuple(out)

    def check(self) -> None:
        state = self._state
        pids = list(state.worker_pids())
        workers = self._worker_signature(pids)
        signature = (state.completed, workers)
        now = time.monotonic()
        if signature != self._signature:
            previous, self._signature = self._signature, signature
            self.last_progress = now
            self._in_episode = False
            if previous is not None:
                self._note_slow(previous[1], workers)
            return
        if self._in_episode:
            self._follow_up()
            return
        stalled_for = now - self.last_progress
        if stalled_for < self.timeout:
            return
        self._in_episode = True
        self.handle(stalled_for)
        # Taking the snapshots made the workers run a little (a signal-triggered dump
        # runs Python code): that is not the pool's progress. Start from here.
        self._signature = (state.completed, self._worker_signature(list(state.worker_pids())))

    def _note_slow(self, before: tuple[Any, ...], now: tuple[Any, ...]) -> None:
        """Workers whose CPU time moved: a task there running past the timeout is slow."""
        cpu_before = {pid: cpu for pid, cpu, _io in before}
        moved = [
            pid
            for pid, cpu, _io in now
            if cpu is not None and cpu_before.get(pid) is not None and cpu > cpu_before[pid]
        ]
        if moved:
            try:
                self._state.note_slow_tasks(moved, self.timeout)
            except ReferenceError:
                raise
            except Exception:
                self._state.internal_error("slow-task")

    def _follow_up(self) -> None:
        """Still the same stall: finish a break in progress, or break the pool if the
        interpreter started exiting meanwhile (see ``_exiting``)."""
        state = self._state
        if state.stall_break is not None:
            manager = state.manager
            if state.break_info is None and manager is not None and manager.is_alive():
                # A result that arrived with the first wake-up used it up: wake again.
                state.break_for_stall(*state.stall_break)
            return
        if self.last_report is not None and not self._escalated and self._exiting(self.last_report):
            self.break_pool(self.last_report)

    def _exiting(self, report: dict[str, Any]) -> bool:
        """The interpreter is exiting and waits for this pool's manager thread, which
        waits for the stuck tasks. For a stall that cannot end by itself (a stopped
        worker, a dead feeder, no live worker, a result cut short by a dead worker)
        nobody can act on a report any more, so even with stall_action="report" the pool
        breaks, or the process would never end. A worker merely using no CPU may be in a
        long sleep or a slow read: it is waited for, as the stdlib waits (losing its
        result would be worse); stall_action="break" ends it too."""
        if self.config.action == "break" or not self._interpreter_exiting():
            return False
        kind = report.get("kind")
        dead = any(
            p.get("role") == "worker" and p.get("status") in ("dead", "zombie")
            for p in report.get("processes", [])
        )
        if kind not in _CANNOT_RECOVER and not (kind == "manager-blocked-read" and dead):
            return False
        self._escalated = True  # once: a pool that cannot be broken is not retried
        log.warning(
            "tracedpool: the interpreter is exiting while pool %s is stalled; breaking it "
            "so that the process can end",
            self._state.pool_id,
        )
        return True

    # -- one stall -------------------------------------------------------------------------
    def handle(self, stalled_for: float) -> dict[str, Any]:
        state = self._state
        report = self.build_report(stalled_for)
        path: str | None = None
        try:
            path = str(write_report(report, self.config.report_dir))
        except Exception as e:
            if not self._warned_write:
                self._warned_write = True
                log.warning(
                    "tracedpool: could not write the stall report to %s (%s); the pool "
                    "keeps working and the report goes to this log instead",
                    self.config.report_dir,
                    e,
                )
            log.warning("tracedpool: stall report:\n%s", render_text(report))
        report["report_path"] = path
        self.stalls += 1
        if path:
            self.reports.append(path)
        log.warning(
            "tracedpool: pool %s stalled: %s (report: %s)", state.pool_id, report["diagnosis"], path
        )
        try:
            state.on_stall_detected(report)
        except Exception:
            state.internal_error("stall")
        if self.config.on_stall is not None:
            try:
                self.config.on_stall(report)
            except Exception:
                log.warning("tracedpool: the on_stall callback raised", exc_info=True)
        self.last_report = report
        if self.config.action == "break" or self._exiting(report):
            self.break_pool(report)
        return report

    def break_pool(self, report: dict[str, Any]) -> None:
        """Kill the stuck workers (SIGKILL: SIGTERM does not end a stopped process, and
        the stdlib's own cleanup would then wait for it), then make the manager break
        the pool: every pending future fails with PoolStalledError."""
        state = self._state
        kind, diagnosis = report["kind"], report["diagnosis"]
        if kind in ("manager-blocked-callback", "manager-dead"):
            log.warning(
                "tracedpool: stall_action='break' cannot break pool %s: %s. Killing "
                "workers would not free the manager thread.",
                state.pool_id,
                diagnosis,
            )
            return
        workers = [p for p in report["processes"] if p.get("role") == "worker"]
        targets = set(report.get("stuck_pids") or [])
        # Any stopped worker, stuck or not: the stdlib's terminate would hang on it.
        targets.update(p["pid"] for p in workers if p.get("status") == "stopped")
        if kind == "manager-blocked-read":
            # Nobody may write into the result pipe while it is completed below.
            targets.update(p["pid"] for p in workers if p.get("status") != "dead")
        state.stall_killed = frozenset(targets)
        state.stall_break = (diagnosis, report.get("report_path"))
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if kind == "manager-blocked-read":
            for pid in targets:  # wait (bounded) until they are gone
                _wait_gone(pid, 2.0)
            state.unblock_manager_read(5.0)
        else:
            state.break_for_stall(diagnosis, report.get("report_path"))

    def build_report(self, stalled_for: float) -> dict[str, Any]:
        state = self._state
        t0 = time.monotonic()
        facts = state.stall_facts()  # tasks, processes, threads, from the pool's own view
        workers = facts["workers"]
        for w in workers:
            w["wchan"] = wait_channel(w["pid"])  # before the snapshots disturb them
        # A dead or zombie worker has no stack to read: asking would only spend the
        # snapshot budget waiting for an answer that cannot come.
        gone = {w["pid"] for w in workers if w.get("status") in ("dead", "zombie")}
        snapshots = snapshot_all([w["pid"] for w in workers if w["pid"] not in gone])
        for w in workers:
            if w["pid"] in gone:
                w["threads"], w["stack_method"] = None, f"none: the process is {w['status']}"
            else:
                w["threads"], w["stack_method"] = snapshots[w["pid"]]
        add_source(facts["parent"].get("threads"))
        for w in workers:
            add_source(w.get("threads"))
        snapshot_seconds = time.monotonic() - t0
        kind, diagnosis, stuck = classify(facts, self.timeout)
        return stall_report(
            kind,
            diagnosis,
            round(stalled_for, 3),
            facts["pool"],
            facts["tasks"],
            [facts["parent"], *workers],
            stuck,
            snapshot_seconds=round(snapshot_seconds, 3),
        )


def stall_report(
    kind: str,
    diagnosis: str,
    stall_seconds: float,
    pool: dict[str, Any],
    tasks: list[dict[str, Any]],
    processes: list[dict[str, Any]],
    stuck_pids: list[int],
    **extra: Any,
) -> dict[str, Any]:
    """A stall report (``SCHEMA``), as the in-process detector writes it and
    ``tracedpool doctor --pid`` prints it; ``render_text`` and ``tracedpool report``
    read this shape. ``extra`` keys go after the common ones."""
    return {
        "schema": SCHEMA,
        "kind": kind,
        "diagnosis": diagnosis,
        "detected_at": datetime.now(UTC).isoformat(),
        "stall_seconds": stall_seconds,
        "pool": pool,
        "tasks": tasks,
        "processes": processes,
        "stuck_pids": stuck_pids,
        **extra,
        "tracedpool_version": __version__,
    }


def snapshot_all(
    pids: list[int], budget: float = SNAPSHOT_BUDGET, *, signal_fallback: bool = True
) -> dict[int, tuple[list[dict[str, Any]] | None, str]]:
    """Every pid's threads, one py-spy call per pid, all in parallel, within ``budget``
    seconds in all; then (only for tracedpool's own workers, which handle
    ``DUMP_SIGNAL``: ``signal_fallback``) the signal dump. Plain daemon threads, not a
    ThreadPoolExecutor: that refuses work once the interpreter is exiting, which is when
    a stall can matter most."""
    deadline = time.monotonic() + budget
    results: dict[int, tuple[list[dict[str, Any]] | None, str]] = {}

    def one(pid: int) -> None:
        try:
            results[pid] = _snapshot(pid, deadline, signal_fallback)
        except Exception as e:
            results[pid] = (None, f"snapshot failed: {type(e).__name__}")

    threads = []
    for pid in pids:
        thread = threading.Thread(target=one, args=(pid,), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new threads (interpreter finalizing): do it here
            one(pid)
            continue
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 0.2)
    return {pid: results.get(pid, (None, "snapshot timed out")) for pid in pids}


def _snapshot(
    pid: int, deadline: float, signal_fallback: bool
) -> tuple[list[dict[str, Any]] | None, str]:
    threads, method = py_spy_dump(pid, max(0.1, (deadline - time.monotonic()) * 0.75))
    if threads is not None or not signal_fallback:
        return threads, method
    fallback, how = signal_dump(pid, max(0.1, deadline - time.monotonic()))
    return fallback, f"{how} ({method})"


def _wait_gone(pid: int, seconds: float) -> None:
    """Until ``pid`` has exited (a zombie counts), at most ``seconds``."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.01)


def process_state(status: str) -> str:
    """A process's state as every stall report says it: running, sleeping, stopped,
    zombie or dead, from psutil's finer ``status()`` values. Both the in-process
    detector and ``doctor --pid`` fold through here, so a worker a debugger holds
    (``tracing-stop``) is "stopped" to both, as a SIGSTOPped one is."""
    if status in ("stopped", "tracing-stop"):
        return "stopped"
    if status in ("zombie", "dead"):
        return status
    if status in ("running", "waking"):
        return "running"
    return "sleeping"


#: Stall kinds that cannot end by themselves: broken at interpreter exit even under
#: stall_action="report" (see Watcher._exiting).
_CANNOT_RECOVER = frozenset({"worker-stopped", "feeder-dead", "no-workers"})


def classify(facts: dict[str, Any], timeout: float) -> tuple[str, str, list[int]]:
    """(kind, one-line diagnosis, pids to kill on break) from the stack evidence."""
    tasks = facts["tasks"]
    pending = len(tasks)
    threads = {t["role"]: t for t in facts["parent"].get("threads", [])}
    manager = threads.get("manager")
    workers = facts["workers"]
    gone = [w for w in workers if w.get("status") in ("dead", "zombie")]
    live = [w for w in workers if w not in gone]
    stopped = [w for w in live if w.get("status") == "stopped"]
    if not facts["manager_alive"]:
        return (
            "manager-dead",
            f"the pool's manager thread is gone with {pending} task(s) pending",
            [],
        )
    if manager is not None:
        names = [f["function"] for f in manager["frames"]]
        if "_invoke_callbacks" in names:
            at = names.index("_invoke_callbacks")
            callback = _user_frame(manager["frames"][:at]) or (
                manager["frames"][at - 1] if at > 0 else None
            )
            return (
                "manager-blocked-callback",
                f"the manager thread ({manager['name']}) is blocked inside a done-callback, "
                f"{_where(callback)}, so no result can be delivered; innermost "
                f"{_where(manager['frames'][0])}",
                [],
            )
        if any(n in ("_recv", "_recv_bytes", "recv_bytes") for n in names[:6]):
            if gone:
                why = (
                    f"; worker pid {gone[0]['pid']} died, most likely while sending it, "
                    "and the rest of the message will never come"
                )
            elif stopped:
                why = f"; worker pid {stopped[0]['pid']}, which may be sending it, is stopped"
            else:
                why = ""
            return (
                "manager-blocked-read",
                f"the manager thread ({manager['name']}) is blocked reading a result message{why}",
                [w["pid"] for w in stopped],
            )
    unstarted = [t for t in tasks if t.get("worker_pid") is None]
    if not facts.get("feeder_alive", True) and (facts.get("feeder_backlog", 0) or unstarted):
        return (
            "feeder-dead",
            f"the call queue's feeder thread is dead with {facts.get('feeder_backlog', 0)} "
            f"call(s) waiting to be sent and {len(unstarted)} task(s) never started: no "
            "worker will receive them",
            [],
        )
    if not live:
        exited = ", ".join(str(w["pid"]) for w in gone)
        return (
            "no-workers",
            f"no live workers while {pending} task(s) are pending"
            + (
                f": worker pid(s) {exited} exited and the manager thread did not notice"
                if gone
                else " (e.g. gh-115634: retired workers were not replaced)"
            ),
            [],
        )
    running = {t["worker_pid"]: t for t in tasks if t.get("worker_pid")}
    if stopped:
        w = stopped[0]
        task = running.get(w["pid"])
        return (
            "worker-stopped",
            f"worker pid {w['pid']} is stopped (SIGSTOP, a debugger or a frozen container)"
            + (f" while running task {task['id']} ({task['function']})" if task else ""),
            [x["pid"] for x in stopped],
        )
    busy = [w for w in live if w["pid"] in running]
    if busy:
        w = busy[0]
        task = running[w["pid"]]
        return (
            "worker-blocked",
            f"worker pid {w['pid']} is alive but used no CPU for {timeout:g} s while running "
            f"task {task['id']} ({task['function']}); it is in {_waiting(w)}",
            [x["pid"] for x in busy],
        )
    # No task started anywhere: a worker stuck before its task (an initializer, or
    # unpickling the call) shows frames of its own outside the worker loop.
    held = [
        w
        for w in live
        if (main := _main_thread(w)) is not None and _user_frame(main.get("frames") or [])
    ]
    feeder = threads.get("feeder")
    if feeder is not None and any(
        f["function"] in ("_send", "send_bytes", "_send_bytes") for f in feeder["frames"][:4]
    ):
        return (
            "feeder-blocked",
            "the feeder thread is blocked writing a call to the call pipe and no worker reads "
            "it"
            + (
                f": worker pid {held[0]['pid']} has not started a task and is in "
                f"{_waiting(held[0])}"
                if held
                else ""
            ),
            [w["pid"] for w in (held or live)],
        )
    if held:
        w = held[0]
        return (
            "worker-blocked",
            f"worker pid {w['pid']} is alive but used no CPU for {timeout:g} s before starting "
            f"a task (in its initializer, or unpickling a call); it is in {_waiting(w)}",
            [x["pid"] for x in held],
        )
    return (
        "no-progress",
        f"no result and no worker CPU or I/O for {timeout:g} s with {pending} task(s) pending",
        [w["pid"] for w in live],
    )
