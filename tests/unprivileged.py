"""A world-readable runtime for the tests that run tracedpool as the unprivileged user
nobody: a copy of this interpreter's installation, the package under test and its runtime
dependencies (opentelemetry-api, psutil, ... and py-spy), in a fresh 0755 directory.

Why a copy: the nobody user cannot read this interpreter or this checkout wherever either
sits under a private directory (pyenv under a 0700 /root; a clone inside a 0700
directory). Running nobody on whatever it can read instead (the system's Python with our
site-packages) tests another interpreter, or nothing at all when none matches.

Files are hard-linked when that is safe (same file system, already world-readable: no
data is copied and the original is never modified), otherwise copied and made readable.
Only Linux, and only as root: switching user needs ``setpriv`` and the privilege to use it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from packaging.requirements import Requirement

NOBODY = 65534
#: Installed beside the package: the snapshot tests use it when present.
EXTRA_DISTRIBUTIONS = ("py-spy",)


class Unprivileged(NamedTuple):
    """How to run this Python as nobody."""

    argv: list[str]  # setpriv ... <python>: append the interpreter's arguments
    env: dict[str, str]  # a minimal environment; extend a copy of it
    home: Path  # a world-readable (0755) directory for the test's own files


def why_not() -> str | None:
    """The reason the unprivileged tests cannot run here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "runs as another user with Linux's setpriv"
    if os.geteuid() != 0:
        return "needs root to switch to the nobody user"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to switch to the nobody user"
    return None


def _reachable(path: Path) -> bool:
    """Every directory from / down to path may be searched by others."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _readable_base() -> Path:
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate).resolve()
        if path.is_dir() and _reachable(path):
            return path
    raise RuntimeError("no temporary directory that other users may enter")


def _mkdir(path: Path, mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)  # whatever the umask


def _place(src: Path, dst: Path) -> None:
    """dst is src, hard-linked if others may already read it, else a readable copy."""
    _mkdir(dst.parent)
    mode = src.stat().st_mode
    readable = mode & stat.S_IROTH and (mode & stat.S_IXOTH or not mode & stat.S_IXUSR)
    if readable:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)
    extra = stat.S_IRGRP | stat.S_IROTH
    if mode & stat.S_IXUSR:
        extra |= stat.S_IXGRP | stat.S_IXOTH
    os.chmod(dst, stat.S_IMODE(mode) | extra)


def _place_tree(src: Path, dst: Path, skip: frozenset[str] = frozenset()) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        if here == src:
            dirnames[:] = [d for d in dirnames if d not in skip]
        target = dst / here.relative_to(src)
        _mkdir(target)
        for name in filenames:
            path = here / name
            if path.is_file():  # not a dangling or special entry
                _place(path, target / name)


def _requirement_closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that names need at run time (no extras), names too."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _install_distribution(dist: metadata.Distribution, site: Path, prefix: Path) -> None:
    """Place the distribution's recorded files (scripts such as bin/py-spy included)."""
    for file in dist.files or []:
        src = Path(str(dist.locate_file(file)))
        dst = Path(os.path.normpath(site / file))
        if dst.is_relative_to(prefix) and src.is_file():
            _place(src, dst)


def build(package: Path) -> tuple[Unprivileged, Path]:
    """The runtime for the package directory `package`, and the directory to remove."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    libdir = Path(str(sysconfig.get_config_var("LIBDIR") or ""))
    ldlibrary = str(sysconfig.get_config_var("LDLIBRARY") or "")
    base_exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))

    root = Path(tempfile.mkdtemp(prefix="tracedpool-nobody-", dir=_readable_base()))
    os.chmod(root, 0o755)
    prefix = root / "python"
    # The layout getpath recognises (bin/pythonX.Y beside lib/pythonX.Y/os.py), so the copy
    # finds its own stdlib with no PYTHONHOME, in its worker processes too.
    python = prefix / "bin" / base_exe.name
    _place(base_exe, python)
    lib = prefix / "lib"
    _place_tree(
        stdlib,
        lib / stdlib.name,
        skip=frozenset({"site-packages", "test", "idlelib", "turtledemo", "ensurepip"}),
    )
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    if shared:  # its RUNPATH names the original, private lib directory
        for so in libdir.glob(f"{ldlibrary.split('.so', maxsplit=1)[0]}.so*"):
            _place(so, lib / so.name)
    site = lib / stdlib.name / "site-packages"
    for dist in _requirement_closure(["tracedpool", *EXTRA_DISTRIBUTIONS]):
        if dist.metadata["Name"] != "tracedpool":  # its files are the editable hook
            _install_distribution(dist, site, prefix)
    _place_tree(package, site / package.name, skip=frozenset({"__pycache__"}))
    home = root / "home"
    _mkdir(home)
    scratch = root / "tmp"
    _mkdir(scratch, 0o1777)  # nobody's TMPDIR: multiprocessing's sockets live there

    env = {
        "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        # Named, not left to site.py: Debian's interpreters (3.14 and 3.15 here) look in
        # dist-packages instead of the prefix's site-packages.
        "PYTHONPATH": str(site),
    }
    if shared:
        env["LD_LIBRARY_PATH"] = str(lib)
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(python)]
    runtime = Unprivileged(argv, env, home)
    _check(runtime, prefix, package.name)
    return runtime, root


def _check(runtime: Unprivileged, prefix: Path, package: str) -> None:
    """As nobody, the copy is this very interpreter and imports the package from itself."""
    code = (
        f"import os, sys, {package}, psutil, opentelemetry.trace;"
        f"print(os.geteuid(), sys.version, sys.prefix, {package}.__file__, sep='|')"
    )
    out = subprocess.run(
        [*runtime.argv, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=runtime.home,
        env=runtime.env,
        check=False,
    )
    expected = [str(NOBODY), sys.version, str(prefix)]
    got = out.stdout.strip().split("|")
    if out.returncode != 0 or got[:3] != expected or not got[3].startswith(str(prefix)):
        raise RuntimeError(
            f"nobody cannot run the readable copy of this Python in {prefix}: "
            f"got {got!r}, expected {expected!r} and the package from the copy; "
            f"stderr: {out.stderr.strip()[-500:]}"
        )
