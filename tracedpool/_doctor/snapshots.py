"""The ``snapshots`` checks: can a stalled pool's workers be seen? Is py-spy there,
do the ptrace rules (``ptrace``) let it attach to a pool's workers, and does a real
attach to a child Python process read its stack? When they cannot, stall reports fall
back to the workers' faulthandler dumps, and ``doctor --pid`` cannot work.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Any

from .._diagnosis.stall import py_spy_dump, py_spy_path
from .._telemetry import names as N
from .ptrace import has_cap_sys_ptrace, in_container, ptrace_fix, py_spy_file_caps, yama_scope
from .result import Check, Options, guarded


def snapshot_checks(opts: Options) -> list[Check]:
    lookup_error = None
    try:
        exe = py_spy_path()
    except (OSError, ValueError) as e:  # a PATH entry it may not stat; no sys.executable
        exe, lookup_error = None, f"{type(e).__name__}: {e}"
    return [
        guarded("snapshots.py-spy", _py_spy_check, exe, opts.timeout, lookup_error),
        guarded("snapshots.ptrace", _ptrace_check, exe),
        guarded("snapshots.attach", _attach_check, exe, opts.timeout),
    ]


def _py_spy_check(exe: str | None, timeout: float, lookup_error: str | None = None) -> Check:
    if lookup_error is not None:
        return Check(
            "snapshots.py-spy",
            "warn",
            f"py-spy could not be looked up ({lookup_error}): stall reports fall back to "
            "faulthandler dumps, and `doctor --pid` cannot work",
            f"point {N.ENV_PY_SPY} at the py-spy executable",
            {"error": lookup_error},
        )
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
    file_caps = py_spy_file_caps(exe)
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
