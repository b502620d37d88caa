"""The stall detector: notice a pool that stopped making progress, say what is stuck and
where, and leave a report an engineer can read after the incident.

One watcher thread per pool. It sleeps on an event while no work is pending (an idle
pool costs nothing) and otherwise wakes every ``min(timeout / 4, 5 s)`` to compare the
pool's progress signals:

* futures completed (results delivered, pickling faults, breakage), counted by the hooks;
* each worker's CPU time and I/O counters (psutil).

A stall is declared when work is pending and none of these moved for ``stall_timeout``
seconds. A task that burns CPU is slow, not stuck. One report is written per episode:
the episode ends when progress resumes. The diagnosis comes from the stack evidence and
the process states: the manager thread's frame, the feeder thread, and each worker's
status, CPU and stack.
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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._heartbeat import Heartbeat
from ._threads import start_daemon
from ._version import __version__

log = logging.getLogger("tracedpool")

SCHEMA = "tracedpool.stall-report/1"
DEFAULT_TIMEOUT = 60.0
KEEP_REPORTS = 50
SNAPSHOT_BUDGET = 2.0  # seconds for every stack snapshot of one stall, all in parallel
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
        from . import _names as N

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
    from shutil import which

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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
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
    reports = sorted(directory.glob("stall-*.json"), key=lambda p: p.stat().st_mtime)
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
        for t in p.get("threads") or []:
            lines.append(f"    thread {t.get('name')} [{t.get('role')}]")
            for f in (t.get("frames") or [])[:25]:
                lines.append(f"      {f.get('function')} ({f.get('file')}:{f.get('line')})")
    return "\n".join(lines) + "\n"


# -- the watcher ----------------------------------------------------------------------------
_STDLIB_PARTS = ("multiprocessing", "concurrent/futures", "threading.py", "selectors.py")


def _user_frame(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The innermost frame outside the stdlib's pool machinery and tracedpool."""
    for f in frames:
        path = str(f.get("file") or "")
        if not any(p in path for p in _STDLIB_PARTS) and "/tracedpool/_" not in path:
            return f
    return frames[0] if frames else None


def _where(frame: dict[str, Any] | None) -> str:
    if not frame:
        return "an unknown place"
    return f"{frame.get('function')} ({frame.get('file')}:{frame.get('line')})"


class Watcher:
    """Per-pool stall watcher thread; see the module docstring."""

    def __init__(self, state: Any, config: StallConfig) -> None:
        import weakref

        self._state: Any = weakref.proxy(state)
        self.config = config
        assert config.timeout is not None
        self.timeout: float = config.timeout
        self._tick = min(self.timeout / 4, 5.0)
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
                    io_total = io.read_chars + io.write_chars  # type: ignore[attr-defined]
                except (psutil.AccessDenied, AttributeError):
                    io_total = 0
                out.append((pid, round(cpu.user + cpu.system, 2), io_total))
            except psutil.Error:
                out.append((pid, None, None))
        return tuple(out)

    def check(self) -> None:
        state = self._state
        pids = list(state.worker_pids())
        signature = (state.completed, self._worker_signature(pids))
        now = time.monotonic()
        if signature != self._signature:
            self._signature = signature
            self.last_progress = now
            self._in_episode = False
            return
        stalled_for = now - self.last_progress
        if self._in_episode or stalled_for < self.timeout:
            return
        self._in_episode = True
        self.handle(stalled_for)
        # Taking the snapshots made the workers run a little (a signal-triggered dump
        # runs Python code): that is not the pool's progress. Start from here.
        self._signature = (state.completed, self._worker_signature(list(state.worker_pids())))

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
        if self.config.action == "break":
            self.break_pool(report)
        return report

    def break_pool(self, report: dict[str, Any]) -> None:
        """Kill the stuck workers (SIGKILL also ends a stopped process); the pool then
        breaks and every pending future fails with PoolStalledError."""
        targets = report.get("stuck_pids") or [
            p["pid"] for p in report["processes"] if p.get("role") == "worker"
        ]
        if not targets:
            log.warning(
                "tracedpool: stall_action='break' found no worker to kill (%s)",
                report["diagnosis"],
            )
            return
        self._state.stall_break = (report["diagnosis"], report.get("report_path"))
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def build_report(self, stalled_for: float) -> dict[str, Any]:
        state = self._state
        facts = state.stall_facts()  # tasks, processes, threads, from the pool's own view
        workers = facts["workers"]
        snapshots = snapshot_all([w["pid"] for w in workers])
        for w in workers:
            w["threads"], w["stack_method"] = snapshots[w["pid"]]
        kind, diagnosis, stuck = classify(facts, self.timeout)
        return {
            "schema": SCHEMA,
            "kind": kind,
            "diagnosis": diagnosis,
            "detected_at": datetime.now(timezone.utc).isoformat(),
            "stall_seconds": round(stalled_for, 3),
            "pool": facts["pool"],
            "tasks": facts["tasks"],
            "processes": [facts["parent"], *workers],
            "stuck_pids": stuck,
            "tracedpool_version": __version__,
        }


def snapshot_all(
    pids: list[int], budget: float = SNAPSHOT_BUDGET, *, signal_fallback: bool = True
) -> dict[int, tuple[list[dict[str, Any]] | None, str]]:
    """Every pid's threads, all in parallel within ``budget`` seconds: py-spy, then (only
    for tracedpool's own workers, which handle ``DUMP_SIGNAL``) the signal dump."""
    # Plain daemon threads, not a ThreadPoolExecutor: that refuses work once the
    # interpreter is exiting, which is exactly when a pool left with a stuck worker
    # (interpreter exit waits for its pending work) most needs its stall reported.
    results: dict[int, tuple[list[dict[str, Any]] | None, str]] = {}

    def take(pid: int) -> None:
        try:
            results[pid] = _snapshot(pid, budget, signal_fallback)
        except Exception as e:
            results[pid] = (None, f"snapshot failed: {type(e).__name__}")

    threads = []
    for pid in pids:
        thread = threading.Thread(target=take, args=(pid,), name=f"tracedpool-snapshot-{pid}")
        thread.daemon = True
        try:
            thread.start()
        except RuntimeError:  # no new threads (late in interpreter shutdown): one by one
            take(pid)
            continue
        threads.append(thread)
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {pid: results.get(pid, (None, "snapshot timed out")) for pid in pids}


def _snapshot(
    pid: int, budget: float, signal_fallback: bool
) -> tuple[list[dict[str, Any]] | None, str]:
    threads, method = py_spy_dump(pid, budget * 0.8)
    if threads is not None or not signal_fallback:
        return threads, method
    fallback, how = signal_dump(pid, budget * 0.5)
    return fallback, f"{how} ({method})"


def classify(facts: dict[str, Any], timeout: float) -> tuple[str, str, list[int]]:
    """(kind, one-line diagnosis, pids to kill on break) from the stack evidence."""
    pending = len(facts["tasks"])
    threads = {t["role"]: t for t in facts["parent"].get("threads", [])}
    manager = threads.get("manager")
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
            callback = manager["frames"][at - 1] if at > 0 else None
            return (
                "manager-blocked-callback",
                f"the manager thread ({manager['name']}) is blocked inside a done-callback, "
                f"{_where(callback)}, so no result can be delivered; innermost "
                f"{_where(manager['frames'][0])}",
                [],
            )
        if any(n in ("_recv", "_recv_bytes", "recv_bytes") for n in names[:6]):
            dead = [w["pid"] for w in facts["workers"] if w.get("status") == "dead"]
            return (
                "manager-blocked-read",
                f"the manager thread ({manager['name']}) is blocked reading a result message"
                + (f"; worker pid {dead[0]} died, likely mid-send" if dead else ""),
                [],
            )
    feeder = threads.get("feeder")
    if facts.get("feeder_backlog", 0) > 0 and not facts.get("feeder_alive", True):
        return (
            "feeder-dead",
            f"the call queue's feeder thread is dead with {facts['feeder_backlog']} call(s) "
            "waiting to be sent",
            [],
        )
    live = [w for w in facts["workers"] if w.get("status") not in ("dead", "zombie")]
    if not live:
        return (
            "no-workers",
            f"no live workers while {pending} task(s) are pending (e.g. gh-115634)",
            [],
        )
    running = {t["worker_pid"]: t for t in facts["tasks"] if t.get("worker_pid")}
    stopped = [w for w in live if w.get("status") == "stopped"]
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
        main = next((t for t in w.get("threads") or [] if t.get("role") == "main"), None)
        where = _where(_user_frame(main["frames"])) if main else "an unknown place (no stack)"
        return (
            "worker-blocked",
            f"worker pid {w['pid']} is alive but used no CPU for {timeout:.0f} s, waiting in "
            f"{where} while running task {task['id']} ({task['function']}): a lock, a "
            "sleep or I/O",
            [x["pid"] for x in busy],
        )
    if feeder is not None and any(
        f["function"] in ("_send", "send_bytes") for f in feeder["frames"][:4]
    ):
        return (
            "feeder-blocked",
            "the feeder thread is blocked writing to the call pipe and no worker reads it",
            [w["pid"] for w in live],
        )
    return (
        "no-progress",
        f"no result and no worker CPU or I/O for {timeout:.0f} s with {pending} task(s) pending",
        [w["pid"] for w in live],
    )
