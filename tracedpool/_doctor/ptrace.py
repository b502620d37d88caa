"""Who may read another process's memory (ptrace): the kernel's rules as py-spy meets
them, and the fix to give when it may not.

The facts: Yama's ``ptrace_scope``, ``CAP_SYS_PTRACE`` in this process or as a file
capability on the py-spy binary, the users involved, and whether this is a container.
``may_inspect`` applies them before ``doctor --pid`` runs py-spy on a process (it never
attaches otherwise); the snapshots checks report them for the pool's own workers. The
in-process stall detector does not decide this: it tries py-spy and falls back to the
workers' signal dump, so these rules have no second copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._diagnosis.stall import py_spy_path

_CONTAINER_FIX = (
    "grant the container CAP_SYS_PTRACE: `docker run --cap-add=SYS_PTRACE ...`, or in "
    "Kubernetes `securityContext: {capabilities: {add: [SYS_PTRACE]}}`"
)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


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


def py_spy_file_caps(path: str | None) -> bool:
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
    cap = has_cap_sys_ptrace() or py_spy_file_caps(py_spy_path())
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


def is_same_user(uids: Any) -> bool:
    """Whether a process with these psutil ``uids`` is this user's to look at (root's:
    all of them); None (unknown) is not."""
    return os.geteuid() == 0 or (uids is not None and uids.real == os.geteuid())
