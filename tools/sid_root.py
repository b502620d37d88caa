#!/usr/bin/env python3
"""A cached Debian unstable root, for the Pythons that this host's glibc cannot run.

CPython 3.14 and 3.15 come from Debian unstable (``python3.1X``, ``python3.1X-venv`` and
``libpython3.1X-testsuite``). Their binaries need a newer glibc than the host's Debian 12,
so they run in a chroot: a ``debootstrap --variant=minbase`` root built once per machine
and cached at ``/var/cache/tracedpool/sid-root`` (``TRACEDPOOL_SID_ROOT`` moves it).
tools/other_pythons.py and tools/stdlib_suite.py use it like this::

    reason = sid_root.ensure_built()          # "" when ready, else one line saying why not
    with sid_root.session(checkout) as root:  # mounts, pip configuration, the checkout
        subprocess.run(root.command(["python3.14", "-V"], cwd=checkout))

``session`` raises ``RootUnavailable`` when a mount fails; callers skip 3.14 and 3.15
with one line then, as when the root cannot be built.

Building: a stamp in the root records the suite, mirror and package list; a different
list builds a new root beside the old one and swaps it in, so a run still using the old
one is not disturbed. An fcntl lock serialises builders. Building needs root, network
and ``debootstrap`` (installed with apt-get when missing). Where that is impossible,
``ensure_built`` says why in one line and callers skip 3.14 and 3.15.

A session makes the root usable for the host's checkout:

* ``/proc``, ``/sys``, ``/dev``, ``/dev/shm`` and ``/dev/pts`` (pseudo-terminals, for
  the tests of a tty) are bound in when not already mounted, and so are the host
  directories that the pip configuration points to (find-links, ``file://`` indexes).
  These are the same for every run, so they are left in place: unmounting them could
  pull them from under a concurrent run.
* ``/etc/resolv.conf``, the CA bundle and every pip configuration file that exists on
  the host (and the files they name, such as constraints) are copied in at the same
  paths; pip's ``PIP_*`` variables pass through the environment unchanged.
* The checkout is bound at its own absolute path, so editable venvs made inside work
  there, and the host sees the same files. That mount is counted: each session holds a
  shared fcntl lock on a file for the mount point, and the last session to leave (the
  one that can take the lock exclusively) unmounts it, and only if a session made it. A
  checkout already visible at its path (an earlier, hand-made mount of a parent) is
  used as it is.

Run ``python tools/sid_root.py`` (as root) to build or check the root by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(os.environ.get("TRACEDPOOL_SID_ROOT", "/var/cache/tracedpool/sid-root"))
SUITE = "sid"
MIRROR = "http://deb.debian.org/debian"
PYTHONS = ("3.14", "3.15")
PACKAGES = tuple(
    sorted(
        pkg
        for minor in PYTHONS
        for pkg in (f"python{minor}", f"python{minor}-venv", f"libpython{minor}-testsuite")
    )
)
STAMP_NAME = ".tracedpool-root.json"
SYSTEM_MOUNTS = ("/proc", "/sys", "/dev", "/dev/shm", "/dev/pts")  # /dev before the mounts under it
COPIED_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")
PIP_CONFIG_FILES = ("/etc/pip.conf", "~/.config/pip/pip.conf", "~/.pip/pip.conf")
PIP_CONFIG_DIRS = ("/etc/xdg/pip",)  # copied whole: pip reads pip.conf there, and constraints
PIP_PATH_VARIABLES = (
    "PIP_CONFIG_FILE",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CONSTRAINT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
)
BUILD_TIMEOUT = 1200  # debootstrap took 42 s here; a slow mirror gets 20 minutes
APT_TIMEOUT = 600


class RootUnavailable(Exception):
    """The root exists but could not be prepared for a session (a mount failed)."""


@dataclass(frozen=True)
class Root:
    """A prepared root: where it is, and how to run a command in it."""

    path: Path

    def command(self, argv: list[str], cwd: Path) -> list[str]:
        """*argv* run inside the root with working directory *cwd* (a path inside too)."""
        return ["chroot", str(self.path), "/usr/bin/env", f"--chdir={cwd}", *argv]

    def host_path(self, inside: str | Path) -> Path:
        """Where the root's *inside* (an absolute path) is seen from the host."""
        return self.path / Path(inside).relative_to("/")


# --------------------------------------------------------------------------- building


def stamp_text() -> str:
    return json.dumps({"suite": SUITE, "mirror": MIRROR, "packages": list(PACKAGES)}, indent=1)


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    """(exit code, last line of its output); never raises for a failing command."""
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return 127, str(exc)
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return done.returncode, lines[-1] if lines else f"exit {done.returncode}"


def cannot_build() -> str:
    """Why this process cannot build or use a root at all; empty when it can."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (chroot, mount, debootstrap)"
    if shutil.which("chroot") is None:
        return "no chroot command"
    return ""


def ensure_debootstrap() -> str:
    """Install debootstrap with apt-get if missing; empty string when it is there."""
    if shutil.which("debootstrap"):
        return ""
    if shutil.which("apt-get") is None:
        return "no debootstrap, and no apt-get to install it"
    print("  sid-root: installing debootstrap with apt-get", flush=True)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
    code, last = _run(install, APT_TIMEOUT)
    if code != 0:  # a fresh machine may have no package lists yet
        _run(["apt-get", "update", "-q"], APT_TIMEOUT)
        code, last = _run(install, APT_TIMEOUT)
    return "" if code == 0 and shutil.which("debootstrap") else f"installing debootstrap: {last}"


def installed_ok(root: Path) -> bool:
    """Whether every package of the list is installed in *root* (by its own dpkg)."""
    code, _ = _run(["chroot", str(root), "dpkg-query", "-W", *PACKAGES], 60)
    if code != 0:
        return False
    query = ["chroot", str(root), "dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n", *PACKAGES]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    states = done.stdout.split("\n")[: len(PACKAGES)]
    return done.returncode == 0 and all(s.strip() == "ii" for s in states)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below *path*, from /proc/self/mountinfo."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        # Field 5 is the mount point, with spaces and such escaped as octal.
        target = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if target == str(path) or target.startswith(prefix):
            found.append(target)
    return found


def remove_tree(path: Path) -> bool:
    """Delete *path* unless anything is mounted under it (a bound checkout would go too)."""
    if not path.exists():
        return True
    if mounts_under(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def ensure_built(root: Path = ROOT) -> str:
    """Make sure a root with PACKAGES exists at *root*; "" when ready, else why not."""
    problem = cannot_build()
    if problem:
        return problem
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # builders wait for each other; a build is ~1 min
        stamp = root / STAMP_NAME
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == stamp_text():
            return ""
        if not stamp.exists() and installed_ok(root):
            # A root made by hand with the same packages (the lead's first one): adopt it.
            stamp.write_text(stamp_text(), encoding="utf-8")
            return ""
        return build(root)


def build(root: Path) -> str:
    """debootstrap a new root beside *root*, then swap it in; "" on success."""
    problem = ensure_debootstrap()
    if problem:
        return problem
    fresh = root.with_name(f"{root.name}.new")
    if not remove_tree(fresh):
        return f"{fresh} is left from an earlier build and has mounts under it"
    print(f"  sid-root: building Debian {SUITE} in {root} (about a minute)", flush=True)
    started = time.monotonic()
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(fresh),
        MIRROR,
    ]
    code, last = _run(cmd, BUILD_TIMEOUT)
    if code != 0:
        remove_tree(fresh)
        return f"debootstrap {SUITE} failed (no network?): {last}"
    if not installed_ok(fresh):
        remove_tree(fresh)
        return f"debootstrap {SUITE} left some of {', '.join(PACKAGES)} uninstalled"
    (fresh / STAMP_NAME).write_text(stamp_text(), encoding="utf-8")
    # Swap by renames: a run still inside the old root keeps it (and its mounts) until
    # it ends; the old root is deleted now only if nothing is mounted in it.
    old = root.with_name(f"{root.name}.old-{os.getpid()}")
    if root.exists():
        root.rename(old)
    fresh.rename(root)
    if old.exists() and not remove_tree(old):
        print(f"  sid-root: {old} is still in use; delete it once nothing is mounted there")
    print(f"  sid-root: built in {time.monotonic() - started:.0f} s", flush=True)
    return ""


# --------------------------------------------------------------------------- sessions


def is_mountpoint(path: Path) -> bool:
    """Like mountpoint(1): os.path.ismount misses a bind mount within one filesystem."""
    return str(path) in mounts_under(path)


def bind(source: Path, target: Path) -> None:
    """Bind *source* at *target* (created as a directory or an empty file as needed)."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def copy_in(root: Root, host: Path) -> None:
    """Copy the host's file or directory *host* into the root at the same path."""
    target = root.host_path(host)
    if visible_inside(root, host):  # bound in by hand: it is the host's own
        return
    if host.is_dir():
        shutil.copytree(host, target, dirs_exist_ok=True)
    elif host.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != host.read_bytes():
            shutil.copyfile(host, target)


def pip_paths() -> tuple[list[Path], list[Path]]:
    """(files to copy, directories to bind) that the host's pip configuration names."""
    files = [Path(p).expanduser() for p in PIP_CONFIG_FILES]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    texts = [os.environ.get(name, "") for name in PIP_PATH_VARIABLES]
    for config in [*files, *(Path(d) / "pip.conf" for d in PIP_CONFIG_DIRS)]:
        with contextlib.suppress(OSError):
            texts.append(config.read_text(encoding="utf-8"))
    named = set()
    for text in texts:
        for token in re.findall(r"(?:file://)?(/[^\s\"',;]+)", text):
            named.add(Path(token))
    copies = [p for p in files if p.is_file()]
    dirs = set()
    for path in named:
        if path.is_file():
            copies.append(path)
        elif path.is_dir():
            # An index's pages link to ../../files beside simple/: bind its parent.
            dirs.add(path.parent if path.name == "simple" else path)
    return copies, sorted(dirs)


def counted_mount_lock(root: Root, target: Path) -> Path:
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:16]
    folder = root.path.with_name(f"{root.path.name}.mounts")
    folder.mkdir(exist_ok=True)
    return folder / digest


def visible_inside(root: Root, host: Path) -> bool:
    """Whether the root already shows the host's *host* (same inode) at the same path."""
    try:
        a, b = host.stat(), root.host_path(host).stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def session(checkout: Path, root_path: Path = ROOT) -> Iterator[Root]:
    """The built root at *root_path*, prepared for *checkout* while the block runs."""
    root = Root(root_path)
    checkout = checkout.resolve()
    guard = root.path.parent / f"{root.path.name}.lock"
    try:
        users, ours = _set_up(root, checkout, guard)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RootUnavailable(f"preparing {root.path} failed: {exc}") from exc
    try:
        yield root
    finally:
        _tear_down(root, checkout, guard, users, ours)


def _set_up(root: Root, checkout: Path, guard: Path) -> tuple[IO[str], Path]:
    """Mount and copy what a session needs; (the held user lock, the "we mounted" mark)."""
    with guard.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one session sets up or tears down at a time
        for mount in SYSTEM_MOUNTS:
            target = root.host_path(mount)
            if not is_mountpoint(target):
                bind(Path(mount), target)
        copies, dirs = pip_paths()
        for folder in dirs:
            target = root.host_path(folder)
            if not is_mountpoint(target) and not visible_inside(root, folder):
                bind(folder, target)
        for path in [*(Path(p) for p in COPIED_FILES), *copies, *map(Path, PIP_CONFIG_DIRS)]:
            copy_in(root, path)
        user_file = counted_mount_lock(root, checkout)
        ours = user_file.with_suffix(".ours")
        users = user_file.open("w")
        target = root.host_path(checkout)
        if is_mountpoint(target) and not visible_inside(root, checkout) and ours.exists():
            # Left by a killed run, of a checkout since deleted and cloned anew at the same
            # path: nobody can be using it, since it no longer shows the checkout.
            subprocess.run(["umount", str(target)], check=False)
        fcntl.flock(users, fcntl.LOCK_SH)  # held for the session: we use this mount
        if not visible_inside(root, checkout):
            try:
                bind(checkout, target)
            except BaseException:
                users.close()
                raise
            ours.write_text(str(checkout), encoding="utf-8")
    return users, ours


def _tear_down(root: Root, checkout: Path, guard: Path, users: IO[str], ours: Path) -> None:
    """Leave the session; the last one out unmounts the checkout, if a session mounted it."""
    with guard.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Exclusive only when no other session holds it shared: we are the last.
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except BlockingIOError:
            last = False
        target = root.host_path(checkout)
        if last and ours.exists() and is_mountpoint(target):
            subprocess.run(["umount", str(target)], check=False)
            ours.unlink()
        users.close()


def main() -> int:
    reason = ensure_built()
    if reason:
        print(f"sid-root: cannot be built here: {reason}")
        return 1
    with session(Path(__file__).resolve().parent.parent) as root:
        for minor in PYTHONS:
            cmd = root.command(
                [f"python{minor}", "-c", "import sys; print(sys.version)"], Path("/")
            )
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            print(f"python{minor}: {done.stdout.strip() or done.stderr.strip()}")
    print(f"sid-root: ready at {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
