"""A worker's tie to the process that owns its pool: no worker outlives its owner.

The stdlib's workers wait on the call queue for ever once their owner is gone (SIGKILL,
the OOM killer): an idle one blocks in a read that never ends, a busy one finishes its
task and then blocks. Every traced worker therefore starts, from its initializer, two
things that need no help from the owner (docs/rationale.md, "No worker outlives its
owner"):

* a **watcher thread** blocked on a pidfd of the owner (Linux 5.3+; readable once the
  owner exits; no CPU while it waits). It logs one line and SIGKILLs its own process.
  Where no pidfd can be had, it checks once a second instead (``os.getppid()``, and
  the owner's ``/proc`` entry).
* **PR_SET_PDEATHSIG**, for what a thread cannot do: a stopped worker, or one whose
  task holds the GIL in native code. The kernel sends the signal when the *thread* that
  forked the worker ends, so SIGKILL is armed only where that thread outlives the
  worker: the fork server's loop (forkserver), the owner's main thread (which ends only
  with the process), and a traced pool's manager thread (it joins its workers before
  it ends). A worker started from any other thread (``submit()`` from a request thread
  that later exits, 3.11 to 3.13) gets SIGCONT instead: harmless to a running worker,
  it wakes a stopped one, whose watcher then ends it. And the first watcher to act
  SIGKILLs the owner's other workers still there half a second later (one holding the
  GIL, say), so only a pool whose every worker is stuck in native code waits for the
  GIL's release.
  Forkserver workers also close their inherited copy of the fork server's alive pipe
  (``_cpython.release_forkserver_alive_fd``): while any worker held it, the fork
  server, and so that parent-death signal, outlived the owner.

The owner is ``multiprocessing.parent_process()``: the process that created the
worker's ``Process`` object, under every start method (under forkserver the worker's
real parent is the fork server, a child of the owner). The pidfd is opened first and
only then is the owner confirmed to still be the worker's parent (or its parent's
parent), so a reused pid can never be watched by mistake.

The watcher thread's name, ``tpowner:<owner pid>`` (also the kernel's thread name,
readable in ``/proc/PID/task/TID/comm``), lets ``tracedpool doctor`` find a traced
worker whose owner is gone without ptrace (``scan_orphans``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

log = logging.getLogger("tracedpool")

#: The watcher thread's name is this prefix and the owner's pid (at most 15 bytes, the
#: kernel's limit for a thread name).
THREAD_PREFIX = "tpowner:"
POLL_SECONDS = 1.0  # the fallback's interval, where no pidfd can be opened
LOG_SECONDS = 1.0  # the last log line may take this long (a handler may block)
SIBLING_GRACE = 0.5  # seconds siblings get to end themselves before they are SIGKILLed

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")


class StartedBy:
    """Whether the thread that starts a worker outlives that worker, judged in the
    thread itself. It travels in the worker initializer's arguments.

    Under spawn and forkserver those arguments are pickled by the thread that calls
    ``Process.start()``, so ``__reduce__`` judges there. Under fork nothing is pickled:
    the worker's only thread is a copy of the forking thread, whose ``Thread`` object
    it keeps, and the worker judges that thread itself (``outlives_worker``)."""

    __slots__ = ("_main", "lasting")

    def __init__(self, lasting: bool | None = None) -> None:
        self.lasting = lasting
        self._main = threading.main_thread() if lasting is None else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (StartedBy, (_lasting(threading.main_thread()),))

    def outlives_worker(self) -> bool:
        return self.lasting if self.lasting is not None else _lasting(self._main)


def _lasting(main: Any) -> bool:
    thread = threading.current_thread()
    # A traced manager thread marks itself: it joins every worker it started before it
    # ends (tracedpool._pool.cpython.TracedManagerThread).
    return thread is main or bool(getattr(thread, "_tp_outlives_workers", False))


def start(
    started_by: StartedBy | None,
    current_work: Callable[[], int],
    forkserver_child: Callable[[], None] | None = None,
) -> None:
    """In a new worker, before the user's initializer: tie it to its owner. Never
    raises; the owner being gone already ends the worker here. ``current_work`` gives
    the work item running, for the last log line; ``forkserver_child`` is called in a
    worker the fork server started (it lets the fork server exit with the owner)."""
    try:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return
        _start(parent.pid, started_by, current_work, forkserver_child)
    except Exception:
        log.debug("tracedpool: could not tie worker %d to its owner", os.getpid(), exc_info=True)


def _start(
    owner: int,
    started_by: StartedBy | None,
    current_work: Callable[[], int],
    forkserver_child: Callable[[], None] | None,
) -> None:
    pidfd = -1
    if _LINUX and hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(owner)
        except ProcessLookupError:
            _die(owner, "before the worker started", current_work)
        except OSError:
            pidfd = -1  # ENOSYS (before 5.3) or refused by seccomp: poll instead
    ppid = os.getppid()
    direct = ppid == owner
    grandparent = None if direct or not _LINUX else ppid_of(ppid)
    if grandparent is not None and grandparent != owner:
        # Neither our parent (fork, spawn) nor our parent's parent (the fork server's
        # owner): the owner died before we looked, and we were reparented. (An
        # unreadable /proc proves nothing: then the watcher decides.)
        _die(owner, "before the worker started", current_work)
    # Checked after the pidfd was opened: the owner was alive then, so the pidfd is it.
    if direct:
        lasting = started_by is not None and started_by.outlives_worker()
        deathsig = signal.SIGKILL if lasting else signal.SIGCONT
    else:
        # Forked by the fork server's single-threaded loop, which exits when the owner
        # does, once no worker holds its alive pipe open.
        deathsig = signal.SIGKILL
        if forkserver_child is not None:
            forkserver_child()
    if _LINUX and _prctl(_PR_SET_PDEATHSIG, int(deathsig)) and os.getppid() != ppid:
        _die(owner, "before the worker started", current_work)  # the parent died before prctl took
    # The owner's start time, read once it is known alive, tells a reused pid apart.
    fields = _stat(owner) if _LINUX else None
    ticks = _ticks(fields) if fields else None
    thread = threading.Thread(
        target=_watch,
        args=(owner, ppid, pidfd, ticks, current_work),
        name=f"{THREAD_PREFIX}{owner}",
        daemon=True,
    )
    thread.start()


def _watch(
    owner: int, ppid: int, pidfd: int, ticks: int | None, current_work: Callable[[], int]
) -> None:
    _prctl(_PR_SET_NAME, f"{THREAD_PREFIX}{owner}".encode()[:15])
    if pidfd >= 0:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll()
    # Woken by the pidfd, or polling without one. A wake is believed only when the owner
    # is seen gone: a task may have closed the descriptor (or reused its number), which
    # wakes the poll too; then this thread checks once a second instead.
    while not _owner_gone(owner, ppid, ticks):
        time.sleep(POLL_SECONDS)
    _die(owner, "", current_work, end_siblings=True)


def _owner_gone(owner: int, ppid: int, ticks: int | None) -> bool:
    """Our parent changed (the owner under fork and spawn, the fork server, which exits
    with the owner, under forkserver), or /proc shows the owner exited, a zombie, or
    its pid held by a process that started at another time."""
    if os.getppid() != ppid:
        return True
    if not _LINUX or ticks is None:
        return False
    fields = _stat(owner)
    return fields is None or fields[0] in ("Z", "X") or _ticks(fields) != ticks


def _end_stuck_siblings(owner: int) -> None:
    """SIGKILL the owner's other workers still here after ``SIBLING_GRACE`` seconds:
    stopped, or holding the GIL, where their parent-death signal could not be SIGKILL.
    The others end themselves (and log) meanwhile. Found by the same /proc scan as the
    doctor's, so only processes of this user that name this owner and whose parent is
    no longer it (a reused pid's own workers are its children)."""
    me = os.getpid()
    deadline = time.monotonic() + SIBLING_GRACE
    while True:
        left = [o.pid for o in scan_orphans(owner) if o.pid != me]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not left:
        return
    _log("tracedpool: worker %d: ending stuck sibling worker(s) %s", me, ", ".join(map(str, left)))
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _die(
    owner: int, when: str, current_work: Callable[[], int], *, end_siblings: bool = False
) -> NoReturn:
    """Log one line (bounded: a handler may block), end the stuck siblings, then end
    without running the user's atexit hooks or finalizers (they could wait for the
    owner for ever)."""
    try:
        work_id = current_work() if _main_thread_busy() else -1
        running = f"; work item {work_id} was running" if work_id >= 0 else ""
    except Exception as e:  # broad: nothing may keep a worker whose owner is gone alive
        running = f"; the running work item is unknown ({type(e).__name__})"
    _log(
        "tracedpool: worker %d: its pool's owner (pid %d) is gone%s%s; exiting",
        os.getpid(),
        owner,
        f" {when}" if when else "",
        running,
    )
    if end_siblings:
        with contextlib.suppress(Exception):
            _end_stuck_siblings(owner)
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _log(message: str, *args: Any) -> None:
    """One WARNING, given at most LOG_SECONDS: a handler may block for ever."""
    line = threading.Thread(target=log.warning, args=(message, *args), daemon=True)
    with contextlib.suppress(Exception):
        line.start()
        line.join(LOG_SECONDS)
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _main_thread_busy() -> bool:
    """Whether the worker's main thread is in a task (or sending its result) rather
    than waiting for the next call: the frame just inside ``_process_worker``. Read only
    here, at the end, so that no task pays for it."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    inner = None
    while frame is not None:
        if frame.f_code.co_name == "_process_worker":
            return inner is not None and inner.f_code.co_name != "get"
        inner, frame = frame, frame.f_back
    return False


_libc: Any = None


def _prctl(option: int, arg: int | bytes) -> bool:
    """prctl(2) through ctypes; False where it is not available."""
    global _libc
    if not _LINUX:
        return False
    import ctypes

    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return bool(_libc.prctl(option, arg, 0, 0, 0) == 0)
    except (OSError, AttributeError, ctypes.ArgumentError):  # no libc, no prctl, bad arg
        return False


def ppid_of(pid: int) -> int | None:
    """``pid``'s parent, from ``/proc/PID/stat`` (Linux), or None."""
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/PID/stat`` (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        # the command name (field 2) may hold spaces and parentheses: split after it
        return text[text.rindex(b")") + 2 :].decode().split()
    except (OSError, ValueError):
        return None


def _ticks(fields: list[str]) -> int | None:
    """The start time (field 22, clock ticks since boot) from ``_stat``'s fields."""
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class Orphan(NamedTuple):
    """A traced pool's worker whose owner is gone."""

    pid: int
    owner: int  # the pid its pool's owner had
    ppid: int  # who it was reparented to
    state: str  # /proc's one-letter state: R, S, T (stopped), Z...


def scan_orphans(owner: int | None = None) -> list[Orphan]:
    """Traced workers of this user whose owner is gone: a process with a
    ``tpowner:<pid>`` thread whose parent is not that pid, nor a child of it (the fork
    server). Reads ``/proc`` only (milliseconds, no ptrace); [] elsewhere. With
    ``owner``, only the workers of that owner."""
    if not _LINUX:
        return []
    uid = os.getuid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            tids = os.listdir(f"/proc/{name}/task")
        except OSError:
            continue
        marked = _marked_owner(name, tids)
        if marked is None or (owner is not None and marked != owner):
            continue
        fields = _stat(int(name))
        if fields is None:
            continue
        ppid = int(fields[1])
        if ppid == marked or ppid_of(ppid) == marked:
            continue  # its owner (or the owner's fork server) is still its parent
        found.append(Orphan(int(name), marked, ppid, fields[0]))
    return found


def _marked_owner(pid: str, tids: list[str]) -> int | None:
    prefix = THREAD_PREFIX.encode()
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith(prefix):
            with contextlib.suppress(ValueError):
                return int(comm[len(prefix) :])
    return None
