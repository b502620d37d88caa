"""``tracedpool doctor --pid PID``: a running process's pool, seen from outside.

Works on any ``ProcessPoolExecutor`` (traced or plain stdlib), with py-spy, after
checking that this user may read the process (``ptrace.may_inspect``): never attaches
otherwise. What it finds:

* the workers (children whose main thread runs ``_process_worker``; under forkserver,
  the forkserver's children) and their states, and orphaned workers on this machine;
* the parent's manager threads (frames of ``_ExecutorManagerThread.run`` /
  ``wait_result_broken_or_wakeup``) and feeder threads (``multiprocessing.queues
  .Queue._feed``), and what each is blocked on;
* whether its pools capture their workers' log records: a ``tracedpool-logs-*`` reader
  thread in the parent, and the level each pool's heartbeat file names (``logs_check``);
* a diagnosis in the stall report's terms (``_diagnosis.stall.classify``), judged with
  each worker's CPU and I/O over a short sampling window, and a report in the stall
  report's schema so that ``tracedpool report`` renders it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._diagnosis import heartbeat as _heartbeat
from .._diagnosis.stall import (
    _user_frame,
    _where,
    classify,
    process_state,
    py_spy_path,
    render_text,
    snapshot_all,
    stall_report,
    write_report,
)
from .._telemetry import names as N
from .._worker import lifeline as _lifeline
from .ptrace import is_same_user, may_inspect
from .result import Check, DoctorError, Result

SNAPSHOT_BUDGET = 5.0  # seconds for every stack, in parallel
MAX_ORPHAN_CANDIDATES = 32


def _short(name: str | None) -> str:
    """py-spy 0.4 names methods ``Class.method``; the stall classifier wants ``method``."""
    return (name or "?").rsplit(".", 1)[-1]


def _names(frames: list[dict[str, Any]]) -> list[str]:
    return [_short(f.get("function")) for f in frames]


def _in(frames: list[dict[str, Any]], function: str, path_part: str) -> bool:
    return any(
        _short(f.get("function")) == function and path_part in str(f.get("file") or "")
        for f in frames
    )


def thread_role(thread: dict[str, Any]) -> str:
    """manager, feeder, tracedpool-*, main or other, from the frames and the name."""
    frames = thread.get("frames") or []
    qualnames = [str(f.get("function") or "") for f in frames]
    if "wait_result_broken_or_wakeup" in _names(frames) or any(
        q.endswith(("_ExecutorManagerThread.run", "TracedManagerThread.run")) for q in qualnames
    ):
        return "manager"
    if _in(frames, "_feed", "multiprocessing"):
        return "feeder"
    name = str(thread.get("name") or "")
    if name.startswith("tracedpool-emitter"):
        return "emitter"
    if name.startswith("tracedpool-stall"):
        return "stall-watcher"
    if name.startswith("tracedpool-logs"):
        return "log-reader"
    if name == "MainThread":
        return "main"
    return "other"


def manager_blocked_on(frames: list[dict[str, Any]]) -> tuple[str, bool]:
    """(what the manager thread is doing, whether that is a problem)."""
    names = _names(frames)
    if "_invoke_callbacks" in names:
        at = names.index("_invoke_callbacks")
        callback = frames[at - 1] if at > 0 else None
        return f"blocked inside a done-callback, {_where(callback)}", True
    if any(n in ("_recv", "_recv_bytes", "recv_bytes") for n in names[:6]):
        return "blocked reading a result message from the result pipe", True
    if "join" in names[:4] or "_join_executor_internals" in names:
        return "joining the feeder and the workers (shutting down)", False
    if "wait_result_broken_or_wakeup" in names and any(
        # _poll_wait: a traced pool's manager, blocked in select.poll (a C call that
        # leaves no Python frame of its own)
        n in ("select", "poll", "wait", "_poll_wait")
        for n in names[:4]
    ):
        return "waiting for a result, a worker exit or new work (normal)", False
    if names and names[0] in ("acquire", "__enter__"):
        return f"waiting for a lock, {_where(frames[1] if len(frames) > 1 else None)}", True
    return f"running {_where(frames[0] if frames else None)}", False


def feeder_blocked_on(frames: list[dict[str, Any]]) -> tuple[str, bool]:
    names = _names(frames)
    if any(n in ("_send", "send_bytes", "_send_bytes") for n in names[:4]):
        return "writing a call to the call pipe, which is full: no worker is reading it", True
    if "_feed" in names and names and names[0] == "wait":
        return "waiting for calls to send (normal)", False
    if any(n in ("dumps", "__reduce__", "__reduce_ex__") for n in names[:6]):
        return "pickling a call", False
    if names and names[0] in ("acquire", "__enter__"):
        return "waiting for the call pipe's write lock", True
    return f"running {_where(frames[0] if frames else None)}", False


def worker_activity(threads: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What a worker's main thread is doing: idle (waiting for a call), running a task
    (the function and where it is), or sending a result. ``is_worker`` is False when
    the stack shows no ``_process_worker``."""
    main = next((t for t in threads or [] if t.get("name") == "MainThread"), None)
    if main is None and threads:
        main = threads[-1]
    frames = (main or {}).get("frames") or []
    names = _names(frames)
    if "_process_worker" not in names:
        return {"is_worker": bool(threads is None), "doing": "unknown (no stack)"}
    inner = frames[: names.index("_process_worker")]
    user = [
        f
        for f in inner
        if "/tracedpool/_" not in str(f.get("file") or "")
        and not any(p in str(f.get("file") or "") for p in ("multiprocessing", "concurrent/"))
    ]
    if user:
        task = user[-1]  # outermost user frame: the task's function
        where = _user_frame(inner)
        return {
            "is_worker": True,
            "doing": "task",
            "function": f"{Path(str(task.get('file'))).stem}.{_short(task.get('function'))}",
            "where": _where(where),
        }
    inner_names = _names(inner)
    if any(n in ("put", "send_bytes", "_send_bytes", "_send") for n in inner_names):
        return {"is_worker": True, "doing": "sending a result"}
    if any(n in ("get", "recv_bytes", "_recv_bytes", "_recv") for n in inner_names):
        return {"is_worker": True, "doing": "idle"}
    return {"is_worker": True, "doing": f"in {_where(inner[0] if inner else None)}"}


def _cpu_io(proc: Any) -> tuple[float, int] | None:
    import psutil

    try:
        cpu = proc.cpu_times()
        try:
            io = proc.io_counters()
            io_total = int(io.read_chars + io.write_chars)
        except (psutil.AccessDenied, AttributeError):
            io_total = 0
        return cpu.user + cpu.system, io_total
    except psutil.Error:
        return None


def _is_python(proc: Any) -> tuple[bool, str]:
    """A Python interpreter, or a program embedding libpython."""
    import psutil

    try:
        exe = proc.exe()
    except psutil.Error:
        exe = ""
    base = os.path.basename(exe).lower()
    if base.startswith(("python", "pypy")):
        return True, exe
    with (
        contextlib.suppress(OSError),
        open(f"/proc/{proc.pid}/maps", encoding="ascii", errors="replace") as f,
    ):
        if any("libpython" in line for line in f):
            return True, exe
    try:
        cmd0 = os.path.basename((proc.cmdline() or [""])[0]).lower()
    except psutil.Error:
        cmd0 = ""
    return cmd0.startswith(("python", "pypy")), exe or cmd0


@dataclass
class Inspection:
    pid: int
    sample_seconds: float
    parent: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)


def check_target(pid: int) -> Any:
    """The psutil.Process for ``pid``, or DoctorError: no such pid, permission denied
    (checked before anything attaches), not Python, py-spy missing."""
    import psutil

    if pid <= 0:
        raise DoctorError(f"{pid} is not a process id")
    if pid == os.getpid():
        raise DoctorError("tracedpool doctor cannot inspect itself")
    try:
        proc = psutil.Process(pid)
        status = proc.status()
    except psutil.NoSuchProcess:
        raise DoctorError(f"no process with pid {pid}") from None
    if status == psutil.STATUS_ZOMBIE:
        raise DoctorError(f"pid {pid} has exited (a zombie waiting for its parent to reap it)")
    access = may_inspect(pid)
    if not access.allowed:
        raise DoctorError(f"permission denied: {access.reason}", access.fix)
    python, exe = _is_python(proc)
    if not python:
        raise DoctorError(f"pid {pid} is not a Python process ({exe or proc.name()})")
    if py_spy_path() is None:
        raise DoctorError(
            "py-spy is not installed: it is what reads the process's stacks",
            "pip install py-spy; or use `tracedpool doctor --probe`, which reads the "
            "heartbeat a traced pool keeps",
        )
    return proc


def inspect_pid(pid: int, sample: float = 1.0) -> Result:
    """Inspect ``pid``; raises DoctorError (exit 2) when it cannot."""
    import psutil

    t0 = time.monotonic()
    proc = check_target(pid)
    insp = Inspection(pid, sample)
    cmdline = _cmdline(proc)
    candidates: list[tuple[Any, str]] = []
    for child in proc.children():
        cmd = _cmdline(child)
        if "multiprocessing.resource_tracker" in cmd:
            insp.others.append(_facts(child, "resource-tracker"))
        elif "multiprocessing.forkserver" in cmd:
            insp.others.append(_facts(child, "forkserver"))
            with contextlib.suppress(psutil.Error):
                candidates += [(c, "forkserver") for c in child.children()]
        else:
            method = "spawn" if "--multiprocessing-fork" in cmd else "fork"
            candidates.append((child, method))
    orphans = _orphan_candidates(proc, cmdline)
    # Traced workers name their owner (tracedpool._worker.lifeline): no stack needed to know.
    marked = {o.pid: o for o in _lifeline.scan_orphans()}
    for o_pid in marked.keys() - {p.pid for p in orphans}:
        with contextlib.suppress(psutil.Error):
            orphans.append(psutil.Process(o_pid))
    procs = {p.pid: p for p, _ in candidates} | {p.pid: p for p in orphans}
    before = {p_pid: _cpu_io(p) for p_pid, p in procs.items()}
    allowed = [p_pid for p_pid in procs if may_inspect(p_pid).allowed]
    started = time.monotonic()
    snaps = snapshot_all([pid, *allowed], SNAPSHOT_BUDGET, signal_fallback=False)
    time.sleep(max(0.0, sample - (time.monotonic() - started)))
    after = {p_pid: _cpu_io(p) for p_pid, p in procs.items()}

    parent_threads, parent_method = snaps.get(pid, (None, "not snapshotted"))
    if parent_threads is None:
        raise DoctorError(
            f"could not read pid {pid}'s stacks: {parent_method}",
            "if py-spy was refused, see `tracedpool doctor --only snapshots`",
        )
    for t in parent_threads:
        t["role"] = thread_role(t)
    insp.parent = _facts(proc, "parent")
    insp.parent.update(threads=parent_threads, stack_method=parent_method)
    for child, method in candidates:
        facts = _facts(child, "worker")
        facts["threads"], facts["stack_method"] = snaps.get(child.pid, (None, "not permitted"))
        facts.update(worker_activity(facts["threads"]))
        facts["start_method"] = method
        facts["progress"] = _progressed(before.get(child.pid), after.get(child.pid))
        if facts.pop("is_worker"):
            insp.workers.append(facts)
        else:
            facts["role"] = "child"
            insp.others.append(facts)
    for orphan in orphans:
        facts = _facts(orphan, "orphan")
        facts["threads"], facts["stack_method"] = snaps.get(orphan.pid, (None, "not permitted"))
        activity = worker_activity(facts["threads"])
        traced = marked.get(orphan.pid)
        if (activity.pop("is_worker") and facts["threads"] is not None) or traced:
            facts.update(activity)
            if traced is not None:
                facts["owner_pid"] = traced.owner
            insp.orphans.append(facts)
    report = build_report(insp)
    checks = _checks(insp, report, cmdline)
    checks.insert(-1, logs_check(pid, parent_threads))  # the diagnosis stays last
    return Result("pid", checks, time.monotonic() - t0, report)


def logs_check(pid: int, threads: list[dict[str, Any]], directory: Path | None = None) -> Check:
    """Whether ``pid``'s pools capture their workers' log records, from outside: a
    ``tracedpool-logs-*`` thread (``thread_role`` "log-reader") reads a pool's log pipe;
    a pool's heartbeat file, when its stall detector keeps one, names the level."""
    readers = sorted(
        str(t.get("name"))[len("tracedpool-logs-") :]
        for t in threads
        if (t.get("role") or thread_role(t)) == "log-reader"
    )
    levels: dict[str, str | None] = {}
    directory = _heartbeat.default_dir() if directory is None else directory
    if directory is not None:
        with contextlib.suppress(OSError):
            ticks = _heartbeat.start_ticks(pid)
            for beat in _heartbeat.read_all(directory):
                same = beat.get("pid") == pid and beat.get("start_ticks") in (None, ticks)
                if same and "log_level" in beat:
                    levels[str(beat.get("pool_id"))] = beat["log_level"]
    capturing = sorted(set(readers) | {p for p, level in levels.items() if level})
    data = {"log_readers": readers, "heartbeat_levels": levels}
    if capturing:
        named = ", ".join(
            f"pool {p}" + (f" from {levels[p]}" if levels.get(p) else " (level: no heartbeat)")
            for p in capturing
        )
        return Check(
            "pid.logs",
            "ok",
            f"worker log records reach the parent's logging: {named}",
            data=data,
        )
    off = sorted(p for p, level in levels.items() if not level)
    return Check(
        "pid.logs",
        "skip",
        (
            f"pool(s) {', '.join(off)} do not capture worker logs (log_level=None or "
            f"{N.ENV_LOG_LEVEL}=off)"
            if off
            else "no pool here captures worker logs (no tracedpool-logs thread; a traced "
            "pool starts it on its first submit): workers log through their own handlers"
        ),
        data=data,
    )


def _cmdline(proc: Any) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _facts(proc: Any, role: str) -> dict[str, Any]:
    import psutil

    facts: dict[str, Any] = {"pid": proc.pid, "role": role}
    try:
        with proc.oneshot():
            status = proc.status()
            facts["status"] = process_state(status)
            facts["raw_status"] = status
            facts["ppid"] = proc.ppid()
            cpu = proc.cpu_times()
            facts["cpu_seconds"] = round(cpu.user + cpu.system, 3)
            facts["rss_bytes"] = proc.memory_info().rss
    except psutil.NoSuchProcess:
        facts["status"] = "dead"
    except psutil.Error as e:
        facts["status"] = f"unknown ({type(e).__name__})"
    return facts


def _progressed(a: tuple[float, int] | None, b: tuple[float, int] | None) -> bool | None:
    if a is None or b is None:
        return None
    return b[0] - a[0] >= 0.01 or b[1] != a[1]


def _orphan_candidates(target: Any, target_cmdline: str) -> list[Any]:
    """Processes of this user that look like pool workers and whose parent is not a
    Python process (they were reparented to init or a subreaper): spawn and forkserver
    workers by their command line, fork workers by the target's command line."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "uids"]):
        info = p.info
        if info["pid"] == target.pid or not info.get("cmdline"):
            continue
        cmd = " ".join(info["cmdline"])
        looks = (
            "--multiprocessing-fork" in cmd
            or "multiprocessing.forkserver" in cmd
            or cmd == target_cmdline
        )
        if not looks or not is_same_user(info.get("uids")):
            continue
        try:
            parent = psutil.Process(info["ppid"]) if info["ppid"] else None
            parent_python = parent is not None and _is_python(parent)[0]
        except psutil.Error:
            parent_python = False
        if not parent_python:
            out.append(p)
        if len(out) >= MAX_ORPHAN_CANDIDATES:
            break
    return out


def build_report(insp: Inspection) -> dict[str, Any]:
    """The diagnosis, in the stall report's schema."""
    threads = insp.parent.get("threads") or []
    managers = [t for t in threads if t["role"] == "manager"]
    feeders = [t for t in threads if t["role"] == "feeder"]
    tasks = [
        {
            "id": "?",
            "function": w["function"],
            "stage": "worker-run",
            "worker_pid": w["pid"],
            "age_seconds": None,
            "where": w.get("where"),
        }
        for w in insp.workers
        if w.get("doing") == "task"
    ]
    # classify reads the frames' short names, as sys._current_frames gives them.
    short_parent = dict(insp.parent)
    short_parent["threads"] = [
        {**t, "frames": [{**f, "function": _short(f.get("function"))} for f in t["frames"]]}
        for t in threads
    ]
    facts = {
        "tasks": tasks,
        "parent": short_parent,
        "workers": insp.workers,
        "manager_alive": bool(managers),
        "feeder_alive": True,
        "feeder_backlog": 0,
    }
    stuck_manager = any(manager_blocked_on(t["frames"])[1] for t in managers)
    stuck_feeder = any(feeder_blocked_on(t["frames"])[1] for t in feeders)
    stopped = [w for w in insp.workers if w.get("status") in ("stopped", "zombie", "dead")]
    busy = [w for w in insp.workers if w.get("doing") == "task"]
    moving = [w for w in busy if w.get("progress")]
    methods = {w.get("start_method") for w in insp.workers}
    pool = {
        "id": f"pid-{insp.pid}",
        "name": None,
        "pid": insp.pid,
        "max_workers": len(insp.workers) or None,
        "start_method": methods.pop() if len(methods) == 1 else "?",
        "python": insp.parent.get("python"),
        "source": "tracedpool doctor --pid",
    }
    stuck: list[int]
    if not managers:
        kind, diagnosis, stuck = (
            (
                "manager-dead",
                f"{len(insp.workers)} pool worker(s) but no manager thread: "
                "no result will be collected",
                [],
            )
            if insp.workers
            else (
                "no-pool",
                f"no ProcessPoolExecutor at work in pid {insp.pid} (no manager "
                "thread: none started yet, or every pool is shut down)",
                [],
            )
        )
    elif stopped or stuck_manager or stuck_feeder or (busy and not moving):
        kind, diagnosis, stuck = classify(facts, insp.sample_seconds)
        # From outside, task ids are unknown: say "task (function)", not "task ? (...)".
        diagnosis = diagnosis.replace("task ? (", "task (")
    elif busy:
        kind = "busy"
        diagnosis = (
            f"busy: {len(busy)} of {len(insp.workers)} worker(s) running tasks, "
            f"{len(moving)} using CPU or doing I/O"
        )
        stuck = []
    else:
        kind, stuck = "idle", []
        diagnosis = f"idle: {len(insp.workers)} worker(s) waiting for work, manager waiting"
    healthy = kind in ("idle", "busy", "no-pool")
    return stall_report(
        kind,
        diagnosis,
        0.0 if healthy else insp.sample_seconds,
        pool,
        tasks,
        [insp.parent, *insp.workers, *insp.others, *insp.orphans],
        stuck,
    )


def _checks(insp: Inspection, report: dict[str, Any], cmdline: str) -> list[Check]:
    checks = [
        Check(
            "pid.process",
            "ok",
            f"pid {insp.pid}: {cmdline[:120] or '?'} ({len(insp.parent['threads'])} threads, "
            f"stacks via {insp.parent.get('stack_method')})",
            data={k: v for k, v in insp.parent.items() if k != "threads"},
        )
    ]
    states: dict[str, int] = {}
    for w in insp.workers:
        states[w.get("status", "?")] = states.get(w.get("status", "?"), 0) + 1
    bad = [w for w in insp.workers if w.get("status") in ("stopped", "zombie", "dead")]
    shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    checks.append(
        Check(
            "pid.workers",
            "fail" if bad else "ok",
            f"{len(insp.workers)} worker(s): {shown}"
            + "".join(
                f"; pid {w['pid']} {w.get('status')}"
                + (f" in {w['function']}" if w.get("doing") == "task" else "")
                for w in bad
            ),
            "SIGCONT a stopped worker (kill -CONT PID) if a debugger left it, or SIGKILL it "
            "so the pool breaks instead of hanging"
            if bad
            else None,
            {
                "workers": [
                    {
                        k: w.get(k)
                        for k in (
                            "pid",
                            "status",
                            "doing",
                            "function",
                            "where",
                            "cpu_seconds",
                            "progress",
                            "start_method",
                        )
                    }
                    for w in insp.workers
                ]
            },
        )
    )
    checks.append(
        Check(
            "pid.orphans",
            "warn" if insp.orphans else "ok",
            (
                f"{len(insp.orphans)} orphaned pool worker(s) whose parent is gone: "
                + ", ".join(f"pid {o['pid']} ({o.get('doing')})" for o in insp.orphans)
            )
            if insp.orphans
            else "no orphaned pool workers of this user",
            "they wait for ever for work that will not come: kill them "
            f"(kill {' '.join(str(o['pid']) for o in insp.orphans)})"
            if insp.orphans
            else None,
            {
                "orphans": [
                    {k: o.get(k) for k in ("pid", "ppid", "status", "doing", "owner_pid")}
                    for o in insp.orphans
                ]
            },
        )
    )
    threads = insp.parent["threads"]
    for role, describe in (("manager", manager_blocked_on), ("feeder", feeder_blocked_on)):
        found = [t for t in threads if t["role"] == role]
        if not found:
            checks.append(
                Check(
                    f"pid.{role}",
                    "skip",
                    f"no {role} thread (a pool starts it on its first submit)",
                )
            )
            continue
        for t in found:
            doing, problem = describe(t["frames"])
            checks.append(
                Check(
                    f"pid.{role}",
                    "fail" if problem else "ok",
                    f"{role} thread {t.get('name')} ({t.get('id')}): {doing}",
                    None,
                    {"thread": t.get("name"), "frames": t["frames"][:8]},
                )
            )
    kind = report["kind"]
    status = (
        "ok"
        if kind in ("idle", "busy")
        else ("warn" if kind in ("no-pool", "worker-blocked") else "fail")
    )
    fix = None
    if kind == "worker-blocked":
        fix = (
            f"no CPU or I/O in {insp.sample_seconds:g} s may still be a slow sleep or network "
            "call: re-run with a longer --sample to be sure, then see the worker's frame"
        )
    elif status == "fail":
        fix = "write the full report with --report PATH; `tracedpool report PATH` renders it"
    checks.append(
        Check(
            "pid.diagnosis",
            status,
            report["diagnosis"],
            fix,
            {"kind": kind, "stuck_pids": report["stuck_pids"]},
        )
    )
    return checks


def save_report(report: dict[str, Any], path: Path) -> Path:
    """``--report PATH``: a directory gets a stall-style named file; any other path gets
    the JSON there and the text beside it (0600, never following a symlink)."""
    if path.is_dir():
        return write_report(report, path)
    if path.suffix != ".json":
        path = path.with_suffix(path.suffix + ".json") if path.suffix else path.with_suffix(".json")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    for target, text in (
        (path, json.dumps(report, indent=2, default=str)),
        (path.with_suffix(".txt"), render_text(report)),
    ):
        fd = os.open(target, flags, 0o600)
        # O_CREAT's mode applies only to a new file: an existing one keeps its mode
        # unless it is set here (a report holds stacks, file paths and command lines).
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    return path
