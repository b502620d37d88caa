"""``tracedpool doctor``: health checks for a machine, a configuration and a running pool.

Plain functions returning result objects; ``tracedpool._cli.main`` is the thin layer that
prints them. Three modes:

* ``run_checks(Options)``: the machine and configuration checks, by group (``python``,
  ``limits``, ``snapshots``, ``telemetry``, ``smoke``);
* ``inspect_pid(pid)``: a running process with a ``ProcessPoolExecutor`` (traced or
  not), seen from outside with py-spy, after checking that this user may inspect it;
* ``probe(directory)``: the heartbeat files traced pools keep fresh; no ptrace, no
  subprocess, a few file reads.

Every check has a stable id, a status (ok, warn, fail, skip), a one-line finding, a fix
when not ok, and the facts it measured. The JSON schema is documented in docs/doctor.md.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import math
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._diagnosis import heartbeat as _heartbeat
from .._telemetry import names as N
from .._version import __version__
from .._worker import lifeline as _lifeline

SCHEMA = "tracedpool.doctor/1"
STATUSES = ("ok", "warn", "fail", "skip")
GROUPS = ("python", "limits", "snapshots", "telemetry", "smoke")
PROBE_MAX_AGE = 30.0  # seconds: six heartbeat intervals

_CONTAINER_FIX = (
    "grant the container CAP_SYS_PTRACE: `docker run --cap-add=SYS_PTRACE ...`, or in "
    "Kubernetes `securityContext: {capabilities: {add: [SYS_PTRACE]}}`"
)


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
        except Exception as e:
            found = [
                Check(
                    f"{group}.error",
                    "fail",
                    f"the {group} checks themselves failed: {_crash_text(e)}",
                    _BUG_FIX,
                )
            ]
        spent = time.monotonic() - started
        for c in found:
            if not c.seconds:
                c.seconds = round(spent / len(found), 3)
        checks += found
    return Result("checks", checks, time.monotonic() - t0)


_BUG_FIX = "report this as a tracedpool bug, with the output of `--json`"


def _crash_text(e: BaseException) -> str:
    """An unexpected exception for a finding, with any configured OTLP header value
    masked: header values are credentials, and exceptions may quote them."""
    text = f"{type(e).__name__}: {e}"
    for value in _header_values():
        for form in {value, repr(value)[1:-1], repr(value.encode("utf-8", "replace"))[2:-1]}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


def _guarded(check_id: str, run: Callable[..., Check], *args: Any) -> Check:
    """``run(*args)``, or a fail of ``check_id`` when it raises: one check crashing must
    not hide the other checks of its group."""
    try:
        return run(*args)
    except Exception as e:
        return Check(check_id, "fail", f"the check itself failed: {_crash_text(e)}", _BUG_FIX)


def default_max_workers() -> int:
    """What ``ProcessPoolExecutor()`` picks: process_cpu_count() on 3.13+ (gh-109649
    made it honour the affinity mask), else cpu_count()."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


def _workers(opts: Options) -> tuple[int, str]:
    if opts.max_workers is not None:
        return opts.max_workers, f"max_workers={opts.max_workers}"
    n = default_max_workers()
    return n, f"max_workers={n} (the default)"


# -- python --------------------------------------------------------------------------------
def python_checks(opts: Options) -> list[Check]:
    return [
        _guarded("python.version", _version_check),
        _guarded("python.start-method", start_method_check, opts),
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
        "use a Python tracedpool supports fully (3.10 to 3.14), or upgrade tracedpool",
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


# -- limits ---------------------------------------------------------------------------------
def _own_cgroup_paths(controller: str) -> list[Path]:
    """This process's cgroup directory for ``controller`` and its ancestors, innermost
    first (v2 unified and v1 layouts)."""
    roots: list[tuple[Path, str]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            roots.append((Path("/sys/fs/cgroup"), rel))
        elif controller in controllers.split(","):
            for name in (controllers, controller):
                base = Path("/sys/fs/cgroup") / name
                if base.is_dir():
                    roots.append((base, rel))
                    break
    out: list[Path] = []
    for base, rel in roots:
        path = base / rel.lstrip("/")
        while True:
            out.append(path)
            if path == base or base not in path.parents:
                break
            path = path.parent
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_quota() -> float | None:
    """The tightest cgroup CPU quota in CPUs (v2 cpu.max, v1 cfs_quota/period), or None."""
    best: float | None = None
    for d in _own_cgroup_paths("cpu"):
        quota = period = None
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            q, _, p = v2.partition(" ")
            if q != "max" and q.isdigit() and p.isdigit():
                quota, period = int(q), int(p)
        else:
            q1, p1 = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if q1 and p1 and q1.lstrip("-").isdigit() and p1.isdigit() and int(q1) > 0:
                quota, period = int(q1), int(p1)
        if quota and period:
            cpus = quota / period
            best = cpus if best is None else min(best, cpus)
    return best


def cgroup_memory() -> tuple[int | None, int | None, int | None]:
    """(limit, usage, inactive file cache) in bytes for the tightest cgroup memory limit,
    where set and readable; see ``working_set``."""
    best: tuple[int | None, int | None, int | None] = (None, None, None)
    for d in _own_cgroup_paths("memory"):
        for limit_name, usage_name, inactive_key in (
            ("memory.max", "memory.current", "inactive_file"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
        ):
            text = _read(d / limit_name)
            if text and text.isdigit() and int(text) < 1 << 60:
                limit = int(text)
                if best[0] is not None and limit >= best[0]:
                    continue
                usage = _read(d / usage_name)
                if usage is None or not usage.isdigit():
                    best = (limit, None, None)
                    continue
                inactive = memory_stat_value(_read(d / "memory.stat"), inactive_key)
                best = (limit, int(usage), inactive)
    return best


def memory_stat_value(text: str | None, key: str) -> int | None:
    """One counter of a cgroup ``memory.stat`` ("key value" lines), or None."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def working_set(usage: int, inactive_file: int | None) -> int:
    """Usage less the inactive file cache, never below 0 (the kubelet's working set):
    usage (v2 ``memory.current``, v1 ``memory.usage_in_bytes``) counts page cache the
    kernel reclaims before it OOM-kills anything, and a long-running container's usage is
    mostly that cache. The usage itself when the cache is unknown."""
    return max(0, usage - (inactive_file or 0))


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n < 10 << 30 else f"{n / (1 << 30):.1f} GiB"


def limit_checks(opts: Options) -> list[Check]:
    return [
        _guarded("limits.semaphores", _semaphores, opts),
        _guarded("limits.dev-shm", _dev_shm),
        _guarded("limits.open-files", _open_files, opts),
        _guarded("limits.cpu", _cpus, opts),
        _guarded("limits.memory", _memory, opts),
    ]


def _semaphores(opts: Options) -> Check:
    data: dict[str, Any] = {}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        data["sem_nsems_max"] = os.sysconf("SC_SEM_NSEMS_MAX")
    if data.get("sem_nsems_max") not in (None, -1) and data["sem_nsems_max"] < 256:
        return Check(
            "limits.semaphores",
            "fail",
            f"the system allows only {data['sem_nsems_max']} semaphores: "
            "ProcessPoolExecutor refuses to start below 256",
            "raise the POSIX semaphore limit (kern.posix.sem.max on BSDs)",
            data,
        )
    try:
        lock = multiprocessing.get_context(opts.start_method).Lock()
        acquired = lock.acquire(timeout=1)
        if acquired:
            lock.release()
    except (OSError, ImportError, ValueError) as e:
        acquired, data["error"] = False, f"{type(e).__name__}: {e}"
    if not acquired:
        data.setdefault("error", "a fresh semaphore could not be acquired")
        return Check(
            "limits.semaphores",
            "fail",
            f"POSIX semaphores do not work here ({data['error']}): no process pool can start",
            "mount a writable tmpfs on /dev/shm (some serverless runtimes have none; use a "
            "thread pool there)",
            data,
        )
    limit = data.get("sem_nsems_max")
    shown = "unlimited" if limit in (None, -1) else str(limit)
    return Check("limits.semaphores", "ok", f"POSIX semaphores work (limit {shown})", data=data)


def _dev_shm() -> Check:
    path = Path("/dev/shm")
    if not sys.platform.startswith("linux"):
        return Check("limits.dev-shm", "skip", f"no /dev/shm check on {sys.platform}")
    if not path.is_dir():
        return Check(
            "limits.dev-shm",
            "fail",
            "/dev/shm is missing: semaphores and shared memory cannot be created",
            "mount a tmpfs there (Docker does by default; `--shm-size=256m` sets its size)",
        )
    st = os.statvfs(path)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    data = {"total_bytes": total, "free_bytes": free, "writable": os.access(path, os.W_OK)}
    if not data["writable"]:
        return Check(
            "limits.dev-shm",
            "fail",
            "/dev/shm is not writable by this user: semaphores cannot be created",
            "make /dev/shm a world-writable sticky tmpfs (mode 1777)",
            data,
        )
    if free < 64 << 20:
        return Check(
            "limits.dev-shm",
            "warn",
            f"/dev/shm has {_mib(free)} free of {_mib(total)}: enough for the pool's "
            "semaphores, not for tasks that pass data through shared memory",
            "give it more room: `docker run --shm-size=256m`, or in Kubernetes an emptyDir "
            "with medium: Memory mounted at /dev/shm",
            data,
        )
    return Check("limits.dev-shm", "ok", f"/dev/shm: {_mib(free)} free of {_mib(total)}", data=data)


def _open_fds() -> int | None:
    for d in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(d)) - 1  # minus the listing's own descriptor
    return None


def _open_files(opts: Options) -> Check:
    try:
        import resource
    except ImportError:
        return Check("limits.open-files", "skip", "no RLIMIT_NOFILE on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    workers, which = _workers(opts)
    # The parent holds, per pool: call and result pipes, the wakeup pipe, tracedpool's
    # status pipe and their locks (about 12), plus one sentinel per worker; spawn and
    # forkserver hold two more briefly while a worker starts.
    need = 16 + 2 * workers
    in_use = _open_fds() or 0
    data = {"soft": soft, "hard": hard, "needed": need, "in_use": in_use, "workers": workers}
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    if soft != resource.RLIM_INFINITY and soft < in_use + need:
        return Check(
            "limits.open-files",
            "fail",
            f"open-file limit {shown} < {in_use} in use + {need} a pool with {which} needs",
            f"raise it: `ulimit -n {max(1024, 4 * need)}` (hard limit {hard}), or "
            "LimitNOFILE= in a systemd unit, or --ulimit nofile=... in Docker",
            data,
        )
    if soft != resource.RLIM_INFINITY and soft < in_use + need + 256:
        return Check(
            "limits.open-files",
            "warn",
            f"open-file limit {shown} leaves under 256 descriptors for your own files once "
            f"a pool with {which} is running",
            f"raise it: `ulimit -n {max(1024, 4 * need)}` (hard limit {hard})",
            data,
        )
    return Check(
        "limits.open-files",
        "ok",
        f"open-file limit {shown}: a pool with {which} needs about {need}",
        data=data,
    )


def _cpus(opts: Options) -> Check:
    count = os.cpu_count() or 1
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    quota = cgroup_cpu_quota()
    workers, which = _workers(opts)
    data = {"cpu_count": count, "affinity": affinity, "cgroup_quota_cpus": quota}
    data["workers"] = workers
    usable = min(x for x in (count, affinity, quota) if x is not None)
    if quota is not None and workers > math.ceil(quota):
        return Check(
            "limits.cpu",
            "warn",
            f"{which} but the cgroup CPU quota is {quota:g} CPUs ({count} visible): the "
            "workers are throttled and tasks run slower than with fewer workers",
            f"pass max_workers={max(1, math.ceil(quota))} (the quota), not the CPU count",
            data,
        )
    if affinity is not None and workers > affinity:
        return Check(
            "limits.cpu",
            "warn",
            f"{which} but this process may run on only {affinity} of {count} CPUs",
            f"pass max_workers={affinity}",
            data,
        )
    quota_text = "no cgroup CPU quota" if quota is None else f"cgroup quota {quota:g} CPUs"
    return Check(
        "limits.cpu",
        "ok",
        f"{which} for {usable:g} usable CPUs ({count} CPUs, {quota_text})",
        data=data,
    )


def _memory(opts: Options) -> Check:
    import psutil

    available = psutil.virtual_memory().available
    limit, usage, inactive = cgroup_memory()
    workers, which = _workers(opts)
    free = available
    in_use = None if usage is None else working_set(usage, inactive)
    if limit is not None:
        free = min(free, max(0, limit - (in_use or 0)))
    per_worker = free // max(1, workers)
    data = {
        "available_bytes": available,
        "cgroup_limit_bytes": limit,
        "cgroup_usage_bytes": usage,
        "cgroup_inactive_file_bytes": inactive,
        "cgroup_working_set_bytes": in_use,
        "per_worker_bytes": per_worker,
        "workers": workers,
    }
    where = "under the cgroup limit" if limit is not None else "available"
    finding = f"{_mib(free)} {where}: {_mib(per_worker)} per worker with {which}"
    if per_worker < 64 << 20:
        return Check(
            "limits.memory",
            "fail",
            finding + "; a Python worker alone needs about 20-40 MiB",
            "use fewer workers or raise the memory limit; the OOM killer will end workers "
            "(tracedpool reports it as a likely OOM kill)",
            data,
        )
    if per_worker < 256 << 20:
        return Check(
            "limits.memory",
            "warn",
            finding + ": little room for real tasks",
            "use fewer workers or raise the memory limit",
            data,
        )
    return Check("limits.memory", "ok", finding, data=data)


# -- ptrace and stack snapshots -----------------------------------------------------------
def yama_scope() -> int | None:
    text = _read(Path("/proc/sys/kernel/yama/ptrace_scope"))
    return int(text) if text and text.isdigit() else None


def has_cap_sys_ptrace() -> bool:
    """CAP_SYS_PTRACE (bit 19) in this process's effective set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 19))
    except (OSError, ValueError, IndexError):
        pass
    return False


def in_container() -> str | None:
    """A short reason when this looks like a container, else None."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "Kubernetes"
    if Path("/.dockerenv").exists():
        return "Docker"
    if Path("/run/.containerenv").exists():
        return "Podman"
    text = _read(Path("/proc/1/cgroup")) or ""
    for marker, name in (("kubepods", "Kubernetes"), ("docker", "Docker"), ("lxc", "LXC")):
        if marker in text:
            return name
    return None


def _py_spy_file_caps(path: str | None) -> bool:
    if path is None:
        return False
    try:
        return bool(os.getxattr(path, "security.capability"))
    except (OSError, AttributeError):
        return False


@dataclass
class Access:
    """Whether py-spy, run by this user, may read ``pid``'s memory, and if not, why."""

    allowed: bool
    reason: str
    fix: str | None = None


def ptrace_fix() -> str:
    scope = yama_scope()
    if scope == 3:
        return (
            "Yama ptrace_scope is 3, which only a reboot lifts; use `tracedpool doctor "
            "--probe`, which needs no ptrace"
        )
    if in_container():
        return _CONTAINER_FIX
    if scope in (1, 2):
        return (
            f"Yama ptrace_scope is {scope}: run as root (`sudo tracedpool doctor ...`), or "
            "give py-spy the capability: `sudo setcap cap_sys_ptrace=eip $(command -v py-spy)`"
        )
    return "run as the user that owns the process, or as root"


def may_inspect(pid: int) -> Access:
    """The kernel's rule for reading another process's memory, checked before running
    py-spy: same uid and gid (or CAP_SYS_PTRACE), then Yama. Under ptrace_scope 1 only
    an ancestor may attach, and py-spy, a child of this process, is never the target's
    ancestor: CAP_SYS_PTRACE is needed there too."""
    import psutil

    scope = yama_scope()
    cap = has_cap_sys_ptrace() or _py_spy_file_caps(_py_spy())
    if scope == 3:
        return Access(False, "Yama ptrace_scope is 3: no process may be attached", ptrace_fix())
    try:
        proc = psutil.Process(pid)
        uids, gids = proc.uids(), proc.gids()
    except psutil.NoSuchProcess:
        return Access(False, f"no process with pid {pid}")
    if cap:
        return Access(True, "CAP_SYS_PTRACE")
    me, my_gid = os.geteuid(), os.getegid()
    if {uids.real, uids.effective, uids.saved} != {me} or {
        gids.real,
        gids.effective,
        gids.saved,
    } != {my_gid}:
        return Access(
            False,
            f"pid {pid} runs as uid {uids.effective} and you are uid {me}, without CAP_SYS_PTRACE",
            ptrace_fix() if scope in (1, 2) else _same_user_fix(uids.effective),
        )
    if scope in (1, 2):
        return Access(
            False,
            f"Yama ptrace_scope is {scope}: even the same user may not attach without "
            "CAP_SYS_PTRACE",
            ptrace_fix(),
        )
    return Access(True, "same user" + (", Yama ptrace_scope 0" if scope == 0 else ""))


def _same_user_fix(uid: int) -> str:
    if in_container():
        return f"run it as uid {uid} (e.g. `kubectl exec` / `docker exec -u {uid}`), or " + (
            _CONTAINER_FIX
        )
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        name = str(uid)
    return f"run it as that user (`sudo -u {name} tracedpool doctor ...`) or as root"


def _is_same_user(uids: Any) -> bool:
    return os.geteuid() == 0 or (uids is not None and uids.real == os.geteuid())


def _py_spy() -> str | None:
    from .._diagnosis.stall import py_spy_path

    return py_spy_path()


def snapshot_checks(opts: Options) -> list[Check]:
    try:
        exe = _py_spy()
    except Exception:
        exe = None
    return [
        _guarded("snapshots.py-spy", _py_spy_check, exe, opts.timeout),
        _guarded("snapshots.ptrace", _ptrace_check, exe),
        _guarded("snapshots.attach", _attach_check, exe, opts.timeout),
    ]


def _py_spy_check(exe: str | None, timeout: float) -> Check:
    if exe is None:
        return Check(
            "snapshots.py-spy",
            "warn",
            "py-spy is not installed: stall reports fall back to faulthandler dumps, "
            "which a stopped or natively blocked worker cannot give, and `doctor --pid` "
            "cannot work",
            "pip install py-spy (in the service's environment)",
        )
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout)
        version = out.stdout.strip().split()[-1] if out.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired) as e:
        version = f"? ({type(e).__name__})"
    return Check(
        "snapshots.py-spy",
        "ok",
        f"py-spy {version} at {exe}",
        data={"path": exe, "version": version},
    )


def _ptrace_check(exe: str | None) -> Check:
    scope = yama_scope()
    cap = has_cap_sys_ptrace()
    file_caps = _py_spy_file_caps(exe)
    container = in_container()
    data = {
        "yama_ptrace_scope": scope,
        "cap_sys_ptrace": cap,
        "py_spy_file_caps": file_caps,
        "euid": os.geteuid(),
        "container": container,
    }
    scope_text = "no Yama" if scope is None else f"Yama ptrace_scope {scope}"
    if scope == 3:
        return Check(
            "snapshots.ptrace",
            "warn",
            "Yama ptrace_scope is 3: no stack snapshots on this machine",
            ptrace_fix(),
            data,
        )
    if cap or file_caps:
        who = "this process has" if cap else "the py-spy binary has"
        return Check(
            "snapshots.ptrace",
            "ok",
            f"{who} CAP_SYS_PTRACE ({scope_text}): workers can be snapshotted",
            data=data,
        )
    if scope in (1, 2):
        return Check(
            "snapshots.ptrace",
            "warn",
            f"{scope_text} without CAP_SYS_PTRACE: py-spy cannot attach to the pool's "
            "workers (they are not its descendants); stall reports use faulthandler dumps",
            ptrace_fix(),
            data,
        )
    return Check(
        "snapshots.ptrace",
        "ok",
        f"{scope_text}: processes of the same user can be snapshotted"
        + (
            f" (in {container}: seccomp may still refuse; see the attach check)"
            if container
            else ""
        ),
        data=data,
    )


def _attach_check(exe: str | None, timeout: float) -> Check:
    """py-spy attached for real to a child Python process, a sibling of py-spy as a
    pool's workers are."""
    from .._diagnosis.stall import py_spy_dump

    if exe is None:
        return Check("snapshots.attach", "skip", "py-spy is not installed")
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as e:
        return Check(
            "snapshots.attach",
            "skip",
            f"could not start a test child process ({sys.executable}): {e.strerror or e}",
        )
    try:
        assert child.stdout is not None
        ready = _readline_within(child.stdout, timeout)
        if ready.strip() != b"ready":
            # Not a fail: this check never fails (docs/doctor.md); a slow or loaded
            # machine can miss the deadline without anything being wrong with snapshots.
            return Check(
                "snapshots.attach",
                "warn",
                f"the test child process did not print 'ready' within {timeout:g} s: "
                "attaching was not tried",
                "run again on a less loaded machine, or with a larger --timeout",
                {"timeout": timeout},
            )
        t0 = time.monotonic()
        threads, method = py_spy_dump(child.pid, timeout)
        spent = time.monotonic() - t0
    finally:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
        if child.stdout is not None:
            child.stdout.close()
    data: dict[str, Any] = {"pid": child.pid, "seconds": round(spent, 3)}
    if threads is None:
        data["error"] = method
        return Check(
            "snapshots.attach",
            "warn",
            f"py-spy could not attach to a child process: {method}",
            ptrace_fix(),
            data,
        )
    frames = [f["function"] for t in threads for f in t["frames"]]
    ok = "<module>" in frames
    return Check(
        "snapshots.attach",
        "ok" if ok else "warn",
        f"py-spy attached to a child process and read its stack in {spent * 1000:.0f} ms"
        if ok
        else "py-spy attached but the stack did not show the expected frame",
        None if ok else "check the py-spy version against this Python",
        data,
    )


def _readline_within(stream: Any, timeout: float) -> bytes:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return bytes(stream.readline())


# -- telemetry -------------------------------------------------------------------------------
def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def telemetry_checks(opts: Options) -> list[Check]:
    return [
        _guarded("telemetry.sdk", _sdk_check),
        _guarded("telemetry.service-name", _service_name_check),
        _guarded("telemetry.endpoint", endpoint_check, opts.otlp_endpoint, opts.timeout),
    ]


def _sdk_check() -> Check:
    from opentelemetry import trace

    env = os.environ
    data: dict[str, Any] = {
        "api": _dist_version("opentelemetry-api"),
        "sdk": _dist_version("opentelemetry-sdk"),
        "exporter_otlp_http": _dist_version("opentelemetry-exporter-otlp-proto-http"),
        "exporter_otlp_grpc": _dist_version("opentelemetry-exporter-otlp-proto-grpc"),
        "global_provider": type(trace.get_tracer_provider()).__name__,
        "traces_exporter": env.get("OTEL_TRACES_EXPORTER", "otlp"),
        "sampler": env.get("OTEL_TRACES_SAMPLER"),
    }
    if data["sdk"] is None:
        return Check(
            "telemetry.sdk",
            "warn",
            "opentelemetry-sdk is not installed: tracedpool records nothing (and costs nothing)",
            "pip install opentelemetry-sdk and configure a TracerProvider, or run the service "
            "under opentelemetry-instrument",
            data,
        )
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_SDK_DISABLED=true: the SDK is switched off, no span is recorded",
            "unset OTEL_SDK_DISABLED",
            data,
        )
    exporters = {x.strip() for x in data["traces_exporter"].split(",")}
    if exporters == {"none"}:
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_TRACES_EXPORTER=none: spans are recorded but never exported",
            "set OTEL_TRACES_EXPORTER=otlp (or the exporter you use)",
            data,
        )
    if (data["sampler"] or "").strip() == "always_off":
        return Check(
            "telemetry.sdk",
            "warn",
            "OTEL_TRACES_SAMPLER=always_off: no task is sampled",
            "use parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG",
            data,
        )
    endpoint_set = any(k in env for k in _ENDPOINT_VARS)
    if (
        "otlp" in exporters
        and endpoint_set
        and not (data["exporter_otlp_http"] or data["exporter_otlp_grpc"])
    ):
        return Check(
            "telemetry.sdk",
            "warn",
            f"opentelemetry-sdk {data['sdk']} but no OTLP exporter package, although an OTLP "
            "endpoint is configured",
            "pip install opentelemetry-exporter-otlp",
            data,
        )
    configured = (
        "configured in this process"
        if data["global_provider"] not in ("ProxyTracerProvider", "NoOpTracerProvider")
        else "not configured in this process (the service configures its own)"
    )
    # What tracedpool.configure() would pick, by its documented precedence (its default,
    # the trace file, differs from opentelemetry-instrument's, OTLP).
    from .._telemetry import configure as _configure
    from .._telemetry.otlpjson import file_settings

    try:
        names, rule = _configure.exporter_names()
        if "otlp" in names:
            _configure.otlp_protocol()
        _configure.sampler_from_env()
        trace_file = file_settings()[0]
    except ValueError as e:
        return Check(
            "telemetry.sdk",
            "fail",
            f"tracedpool.configure() would refuse this configuration: {e}",
            "fix the variable named above",
            data,
        )
    chosen = ", ".join(names) or "none"
    if _configure.EXPORTER_NAME in names:
        chosen += f" -> {trace_file}"
    data["configure_exporters"], data["configure_rule"] = names, rule
    return Check(
        "telemetry.sdk",
        "ok",
        f"opentelemetry-sdk {data['sdk']}; global provider {configured}; "
        f"opentelemetry-instrument would export with {data['traces_exporter']}, "
        f"tracedpool.configure() with {chosen} (by {rule})",
        data=data,
    )


def service_name() -> tuple[str | None, str]:
    """(service.name, where it came from) as the SDK would resolve it from the env."""
    name = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return name, "OTEL_SERVICE_NAME"
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return urllib.parse.unquote(value.strip()), "OTEL_RESOURCE_ATTRIBUTES"
    return None, "unset"


def _service_name_check() -> Check:
    name, source = service_name()
    if name is None:
        return Check(
            "telemetry.service-name",
            "warn",
            "service.name is not set: spans arrive as unknown_service:python",
            "export OTEL_SERVICE_NAME=<your service> (or set it on the TracerProvider's Resource)",
            {"service_name": None, "source": source},
        )
    return Check(
        "telemetry.service-name",
        "ok",
        f"service.name={name} (from {source})",
        data={"service_name": name, "source": source},
    )


_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def otlp_target(override: str | None = None) -> dict[str, Any] | None:
    """The traces endpoint, protocol, headers and timeout from the OTEL_* variables (the
    specification's rules: a signal-specific endpoint is used as given, the generic one
    gets ``/v1/traces`` appended for HTTP), or None when none is configured."""
    env = os.environ
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if override:
        url, source = override, "--otlp-endpoint"
        if protocol.startswith("http") and urllib.parse.urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/v1/traces"
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url, source = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip(), _ENDPOINT_VARS[0]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url, source = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip(), _ENDPOINT_VARS[1]
        if protocol.startswith("http"):
            url = url.rstrip("/") + "/v1/traces"
    else:
        return None
    headers_source, headers = _otlp_headers()
    compression = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
        or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        or "none"
    ).strip()
    return {
        "url": url,
        "source": source,
        "protocol": protocol,
        "headers": headers,
        "compression": compression,
        "headers_source": headers_source,
        "certificate": env.get(_CERT_VARS[0]) or env.get(_CERT_VARS[1]),
        "certificate_source": _CERT_VARS[0] if env.get(_CERT_VARS[0]) else _CERT_VARS[1],
    }


_HEADER_VARS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
_CERT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")


def _otlp_headers() -> tuple[str, dict[str, str]]:
    """(the variable they came from, the headers) as the exporter would send them."""
    env = os.environ
    source = _HEADER_VARS[0] if env.get(_HEADER_VARS[0]) else _HEADER_VARS[1]
    headers: dict[str, str] = {}
    for pair in env.get(source, "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return source, headers


def _header_values() -> list[str]:
    try:
        return [v for v in _otlp_headers()[1].values() if v]
    except Exception:
        return []


def _bad_header(headers: dict[str, str]) -> tuple[str, str] | None:
    """(key, what is wrong) for the first header http.client would refuse, naming only
    the key: the value is a credential and must never be printed."""
    for key, value in headers.items():
        if not key or any(c in key for c in ":\r\n\0") or key != key.strip():
            return key, "its name is not a valid HTTP header name"
        if any(c in value for c in "\r\n\0"):
            return key, "its value contains a line break or NUL (after %-decoding)"
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return key, "its value has characters HTTP headers cannot carry (not Latin-1)"
    return None


# A hand-written encoder for the one ExportTraceServiceRequest the check sends, so the
# check needs no exporter package (opentelemetry/proto/trace/v1/trace.proto).
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_kv(key: str, value: str) -> bytes:
    any_value = _len_field(1, value.encode())  # AnyValue.string_value
    return _len_field(1, key.encode()) + _len_field(2, any_value)


def encode_test_span(service: str, trace_id: bytes, span_id: bytes, start: int, end: int) -> bytes:
    span = (
        _len_field(1, trace_id)
        + _len_field(2, span_id)
        + _len_field(5, N.SPAN_DOCTOR_TEST.encode())
        + _varint(6 << 3 | 0)
        + _varint(1)  # SPAN_KIND_INTERNAL
        + _varint(7 << 3 | 1)
        + struct.pack("<Q", start)
        + _varint(8 << 3 | 1)
        + struct.pack("<Q", end)
    )
    scope = _len_field(1, b"tracedpool") + _len_field(2, __version__.encode())
    scope_spans = _len_field(1, scope) + _len_field(2, span)
    resource = _len_field(1, _string_kv("service.name", service))
    resource_spans = _len_field(1, resource) + _len_field(2, scope_spans)
    return _len_field(1, resource_spans)


def _fields(buf: bytes) -> dict[int, list[Any]]:
    """Top-level fields of a protobuf message (varint and length-delimited only)."""
    out: dict[int, list[Any]] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            size, i = _read_varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def endpoint_check(override: str | None, timeout: float) -> Check:
    target = otlp_target(override)
    if target is None:
        return Check(
            "telemetry.endpoint",
            "skip",
            "no OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT set: no endpoint to test",
        )
    data = {k: v for k, v in target.items() if k != "headers"}
    data["header_names"] = sorted(target["headers"])
    url = target["url"]
    if target["protocol"] == "grpc":
        # The gRPC exporter takes a bare host:port, which urlsplit would read as a scheme.
        return _grpc_reachable(
            urllib.parse.urlsplit(url if "://" in url else "//" + url), target, data, timeout
        )
    parts = urllib.parse.urlsplit(url)
    if target["protocol"] != "http/protobuf":
        return Check(
            "telemetry.endpoint",
            "skip",
            f"protocol {target['protocol']}: only http/protobuf and grpc can be tested",
            data=data,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or _bad_port(parts):
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not an http(s) URL with a valid host "
            "and port",
            f"set {target['source']} to e.g. http://otel-collector:4318",
            data,
        )
    bad = _bad_header(target["headers"])
    if bad is not None:
        data["bad_header"] = bad[0]
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['headers_source']}: header {bad[0]!r} cannot be sent: {bad[1]}",
            f"fix {target['headers_source']} (comma-separated key=value pairs, values "
            "%-encoded; no line breaks)",
            data,
        )
    name, _ = service_name()
    start = time.time_ns()
    body = encode_test_span(
        name or "unknown_service:python", os.urandom(16), os.urandom(8), start, start + 1000
    )
    headers = {"Content-Type": "application/x-protobuf", **target["headers"]}
    if target["compression"] == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(target["url"], data=body, headers=headers, method="POST")
    context = None
    if parts.scheme == "https":
        import ssl

        try:
            context = ssl.create_default_context(cafile=target["certificate"] or None)
        except (OSError, ValueError) as e:  # a missing file, or not PEM (ssl.SSLError)
            source = target["certificate_source"] if target["certificate"] else "the system"
            data["error"] = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
            return Check(
                "telemetry.endpoint",
                "fail",
                f"{source} CA certificates cannot be loaded"
                + (f" from {target['certificate']!r}" if target["certificate"] else "")
                + f": {data['error']}",
                f"point {target['certificate_source']} at a readable PEM file of the CA that "
                "signed the collector's certificate, or unset it",
                data,
            )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, reply = response.status, response.read(65536)
    except http.client.InvalidURL as e:  # a ValueError: the URL only, no header in it
        data["error"] = str(e)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not a valid URL: {e}",
            f"set {target['source']} to e.g. http://otel-collector:4318",
            data,
        )
    except ValueError as e:
        # Anything else http.client refuses: its message may quote a header value, a
        # credential, so only the type is kept.
        data["error"] = type(e).__name__
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} could not be requested ({type(e).__name__}): the URL in "
            f"{target['source']} or a header in {target['headers_source']} is invalid",
            f"check {target['source']} and {target['headers_source']}",
            data,
        )
    except urllib.error.HTTPError as e:
        data["http_status"] = e.code
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} refused the test span: HTTP {e.code} {e.reason}",
            _http_fix(e.code, target["source"]),
            data,
        )
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        data["error"] = str(reason)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} is not reachable: {reason}",
            f"start the collector, or fix {target['source']} (host, port 4318 for "
            "http/protobuf, http vs https)",
            data,
        )
    spent = time.monotonic() - t0
    data.update(http_status=status, seconds=round(spent, 3))
    try:
        partial = _fields(reply).get(1)
        rejected = _fields(partial[0]).get(1, [0])[0] if partial else 0
        message = _fields(partial[0]).get(2, [b""])[0] if partial else b""
    except (ValueError, IndexError, TypeError):
        rejected, message = 0, b""  # a JSON or empty body from a proxy: 2xx is acceptance
    if rejected:
        data["rejected_spans"] = rejected
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['url']} rejected the test span: {bytes(message).decode(errors='replace')}",
            "check the collector's logs and its receiver configuration",
            data,
        )
    return Check(
        "telemetry.endpoint",
        "ok",
        f"{target['url']} accepted a test span ({N.SPAN_DOCTOR_TEST}, HTTP {status}, "
        f"{spent * 1000:.0f} ms)",
        data=data,
    )


def _http_fix(code: int, source: str) -> str:
    if code in (401, 403):
        return "set the credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=...)"
    if code == 404:
        return (
            f"check the path in {source}: OTEL_EXPORTER_OTLP_ENDPOINT is a base URL (/v1/traces "
            "is appended), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as given"
        )
    if code == 415:
        return "the endpoint does not take OTLP protobuf: is it the collector's OTLP/HTTP port?"
    return "check the collector's logs"


def _bad_port(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - parsing it is the check: it raises on "43l8" or 70000
    except ValueError:
        return True
    return False


def _grpc_reachable(
    parts: urllib.parse.SplitResult, target: dict[str, Any], data: dict[str, Any], timeout: float
) -> Check:
    if not parts.hostname or _bad_port(parts):
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{target['source']}={target['url']!r} is not a valid gRPC endpoint (host:port)",
            f"set {target['source']} to e.g. http://otel-collector:4317",
            data,
        )
    host, port = parts.hostname, parts.port or 4317
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        data["error"] = str(e)
        return Check(
            "telemetry.endpoint",
            "fail",
            f"{host}:{port} (OTLP/gRPC) is not reachable: {e}",
            "start the collector, or fix the endpoint (port 4317 for gRPC)",
            data,
        )
    return Check(
        "telemetry.endpoint",
        "ok",
        f"{host}:{port} (OTLP/gRPC) accepts connections; no test span is sent over gRPC "
        "(set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and port 4318 to test one)",
        data=data,
    )


# -- smoke test -------------------------------------------------------------------------------
def _echo(value: Any) -> Any:
    return value


def _round_trip(pool: Any, value: int, timeout: float) -> None:
    # Not an assert: under `python -O` the task would never be submitted at all.
    got = pool.submit(_echo, value).result(timeout=timeout)
    if got != value:
        raise RuntimeError(f"a task returned {got!r} instead of {value!r}")


def smoke_checks(opts: Options) -> list[Check]:
    from .._errors import pickling_fault
    from .._pool.executor import TracedProcessPoolExecutor

    have_sdk = _dist_version("opentelemetry-sdk") is not None
    provider = exporter = None
    if have_sdk:
        from ..testing import recording_provider

        provider, exporter = recording_provider()
    context = multiprocessing.get_context(opts.start_method) if opts.start_method else None
    method = (context or multiprocessing.get_context()).get_start_method()
    checks: list[Check] = []
    pool = TracedProcessPoolExecutor(
        1, context, tracer_provider=provider, name="doctor", stall_timeout=None
    )
    clean = False
    try:
        t0 = time.perf_counter()
        first = pool.submit(_echo, 1).result(timeout=opts.timeout)
        first_s = time.perf_counter() - t0
        laps = []
        for i in range(20):
            t = time.perf_counter()
            _round_trip(pool, i, opts.timeout)
            laps.append(time.perf_counter() - t)
        median = statistics.median(laps)
        checks.append(
            Check(
                "smoke.round-trip",
                "ok" if first == 1 else "fail",
                f"a task round-trips in {median * 1000:.2f} ms (median of 20; the first, "
                f"with the worker's start-up under {method}: {first_s * 1000:.0f} ms)",
                data={
                    "start_method": method,
                    "first_seconds": round(first_s, 6),
                    "median_seconds": round(median, 6),
                    "max_seconds": round(max(laps), 6),
                    "samples": len(laps),
                },
            )
        )
        located: tuple[str, str, str, int] | None = None
        try:
            pool.submit(_echo, threading.Lock()).result(timeout=opts.timeout)
        except TypeError as e:
            located = pickling_fault(e)
        except Exception as e:
            located = ("unexpected", type(e).__name__, str(e), -1)
        if located is not None and located[:2] == ("feeder-serialize", "args[0]"):
            checks.append(
                Check(
                    "smoke.fault-located",
                    "ok",
                    f"an unpicklable argument is located: {located[1]} ({located[2]}) at "
                    f"stage {located[0]}",
                    data={"stage": located[0], "target": located[1], "type": located[2]},
                )
            )
        else:
            checks.append(
                Check(
                    "smoke.fault-located",
                    "fail",
                    f"an unpicklable argument was not located (got {located!r})",
                    "report this as a tracedpool bug, with the output of `--json`",
                )
            )
        _round_trip(pool, 2, opts.timeout)
        clean = True
    except Exception as e:
        checks.append(
            Check(
                "smoke.round-trip",
                "fail",
                f"a traced pool could not run a task: {type(e).__name__}: {e}",
                "run `tracedpool doctor --json` and read the limits and python checks",
                {"start_method": method},
            )
        )
    finally:
        if not clean:  # a hung worker must not hang the doctor's exit
            for wpid in pool._tp_state.worker_pids():
                with contextlib.suppress(OSError):
                    os.kill(wpid, signal.SIGKILL)
        pool.shutdown(wait=clean, cancel_futures=True)
    if exporter is None:
        checks.append(Check("smoke.spans", "skip", "opentelemetry-sdk is not installed"))
    else:
        names = {s.name for s in exporter.get_finished_spans()}
        expected = {N.SPAN_TASK, *N.STAGE_SPANS[:5]}
        missing = sorted(expected - names)
        count = len(exporter.get_finished_spans())
        checks.append(
            Check(
                "smoke.spans",
                "ok" if not missing else "fail",
                f"{count} spans reached the provider: the task span and its five stages"
                if not missing
                else f"spans missing from the provider: {', '.join(missing)}",
                None if not missing else "report this as a tracedpool bug",
                {"spans": count, "names": sorted(names)},
            )
        )
    return checks


# -- --probe: heartbeat files -------------------------------------------------------------------
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
