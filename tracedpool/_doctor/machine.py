"""The ``limits`` checks: what this machine lets a process pool have, judged against the
workers asked for. POSIX semaphores, /dev/shm, the open-file limit, CPUs (count,
affinity, cgroup quota) and memory (available, and the cgroup limit less the working
set). Cgroup facts come from ``tracedpool._diagnosis.cgroup``, the reader forensics
uses for its OOM verdict, so the two never disagree about a nested cgroup.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from .._diagnosis import cgroup as _cgroup
from .result import Check, Options, guarded


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


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n < 10 << 30 else f"{n / (1 << 30):.1f} GiB"


def limit_checks(opts: Options) -> list[Check]:
    return [
        guarded("limits.semaphores", _semaphores, opts),
        guarded("limits.dev-shm", _dev_shm),
        guarded("limits.open-files", _open_files, opts),
        guarded("limits.cpu", _cpus, opts),
        guarded("limits.memory", _memory, opts),
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
    quota = _cgroup.cpu_quota()
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
    limit, usage, inactive = _cgroup.memory()
    workers, which = _workers(opts)
    free = available
    in_use = None if usage is None else _cgroup.working_set(usage, inactive)
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
