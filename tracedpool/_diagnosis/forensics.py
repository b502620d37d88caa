"""Why a pool broke: dead workers, their exit codes and signals, and the tasks lost.

Runs once, on the manager thread, when the stdlib is about to declare the pool broken.
The stdlib gives one sentence for seven causes; this module tells them apart from the
workers' exit codes (read only after joining the dead process: ``Process.exitcode`` is
still None right after the sentinel fires in most fork runs), the status pipe's records
and the result message that could not be read.
"""

from __future__ import annotations

import multiprocessing.connection
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from . import cgroup as _cgroup

#: The OOM verdict's two facts, read from this process's own cgroup chain by the module
#: the doctor's limits checks also read (``_diagnosis.cgroup``), so that the two agree in
#: a nested cgroup. Plain assignments (not imports) keep them this module's names.
cgroup_oom_kills = _cgroup.oom_kills
cgroup_memory_limit = _cgroup.memory_limit


def signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


class RssSampler:
    """The workers' resident memory, sampled now and then on the manager thread, so that
    a worker that is later SIGKILLed can be judged against the OOM killer."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}
        self.last: dict[int, tuple[int, float]] = {}  # pid -> (rss bytes, monotonic time)

    def sample(self, pids: Any) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a dependency
            return
        now = time.monotonic()
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                self.last[pid] = (proc.memory_info().rss, now)
            except Exception:  # gone, or not ours to read
                self._procs.pop(pid, None)
        for pid in [p for p in self._procs if p not in pids]:
            self._procs.pop(pid, None)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass
class DeadWorker:
    pid: int
    exitcode: int | None
    signal: str | None
    oom_suspected: bool = False
    last_rss: int | None = None
    rss_age: float | None = None  # seconds between the last RSS sample and the death
    oom_evidence: str = ""

    def describe(self) -> str:
        if self.signal is not None:
            how = f"was killed by {self.signal} (exit code {self.exitcode})"
        elif self.exitcode is None:
            how = "ended with an unknown exit code"
        else:
            how = f"exited with code {self.exitcode}"
        if self.last_rss is not None:
            how += f"; its last sampled RSS was {_size(self.last_rss)}"
            if self.rss_age is not None:
                how += f", {self.rss_age:.1f} s before"
        if self.oom_suspected:
            how += f"; the OOM killer is the likely cause ({self.oom_evidence})"
        return f"worker pid {self.pid} {how}"


@dataclass(frozen=True)
class ForcedShutdown:
    """A call to ``terminate_workers()`` or ``kill_workers()`` (3.14+), as it began."""

    operation: str  # "terminate" or "kill"
    signal: str  # what it sends: SIGTERM or SIGKILL
    pids: tuple[int, ...]  # the workers alive when it was called
    pending: frozenset[int]  # work ids not yet done then: each may be lost
    t_ns: int

    def describe(self) -> str:
        who = ", ".join(map(str, self.pids)) if self.pids else "none alive"
        return f"{self.operation}_workers() sent {self.signal} to worker pid {who}"


#: The stdlib's own break reasons (3.14+, where ``terminate_broken`` takes a message),
#: told apart by the words of their sentences; tracedpool's name for each.
_STDLIB_REASONS = (
    ("garbage collected", "executor-collected"),
    ("forcefully shut down", "forced-shutdown"),
    ("could not be started", "replacement-failed"),
)


def stdlib_reason(message: str) -> str:
    """``tracedpool.broken.reason`` for a break the stdlib explained in *message*.

    A sentence tracedpool does not know (a later CPython) is ``stdlib-reason``: the
    message itself still leads the exception."""
    for words, reason in _STDLIB_REASONS:
        if words in message:
            return reason
    return "stdlib-reason"


@dataclass
class BreakInfo:
    """Everything known about one breakage, shared by every future it fails."""

    reason: str
    dead: list[DeadWorker] = field(default_factory=list)
    running_on: dict[int, int] = field(default_factory=dict)  # work id -> worker pid
    culprits: set[int] = field(default_factory=set)  # work ids
    fault: dict[str, Any] | None = None
    init_failure: dict[str, Any] | None = None
    cause_text: str | None = None
    lost: list[int] = field(default_factory=list)  # work ids failed by the breakage
    stdlib_message: str | None = None  # the stdlib's own sentence for this breakage
    forced: ForcedShutdown | None = None  # terminate_workers() / kill_workers()
    task_ids: dict[int, str] = field(default_factory=dict)  # work id -> task id
    names: dict[int, str] = field(default_factory=dict)  # work id -> function name

    def dead_worker(self, pid: int | None) -> DeadWorker | None:
        for d in self.dead:
            if d.pid == pid:
                return d
        return None

    def primary(self) -> DeadWorker | None:
        return self.dead[0] if self.dead else None


def reap_dead_workers(
    processes: dict[int, Any], oom_before: int | None, rss: RssSampler | None = None
) -> list[DeadWorker]:
    """The workers that have ended, with exit codes read after a bounded join."""
    by_sentinel = {}
    for pid, p in processes.items():
        try:
            by_sentinel[p.sentinel] = (pid, p)
        except (ValueError, AttributeError):
            continue
    try:
        ready = multiprocessing.connection.wait(list(by_sentinel), timeout=0)
    except OSError:
        ready = []
    oom_now = cgroup_oom_kills() if ready else None
    oom_rose = oom_before is not None and oom_now is not None and oom_now > oom_before
    dead = []
    for sentinel in ready:
        pid, p = by_sentinel[sentinel]
        try:
            p.join(timeout=1.0)
        except (ValueError, AssertionError, OSError):
            pass  # closed or reaped already: its exit code is read below either way
        code = p.exitcode
        name = signal_name(code)
        worker = DeadWorker(pid, code, name)
        sampled = rss.last.get(pid) if rss is not None else None
        if sampled is not None:
            worker.last_rss = sampled[0]
            worker.rss_age = max(0.0, time.monotonic() - sampled[1])
        if name == "SIGKILL":
            limit = cgroup_memory_limit()
            if oom_rose:
                worker.oom_suspected = True
                worker.oom_evidence = "the cgroup's oom_kill count rose"
            elif limit and worker.last_rss is not None and worker.last_rss >= 0.8 * limit:
                worker.oom_suspected = True
                worker.oom_evidence = (
                    f"its RSS was at {worker.last_rss / limit:.0%} of the cgroup memory limit"
                )
        dead.append(worker)
    return dead


_HINTS = {
    "initializer-failed": (
        "The initializer raised in the worker; every worker runs it, so fix it (its "
        "traceback is this exception's __cause__)."
    ),
    "worker-unpickle-failed": (
        "The call could not be rebuilt in the worker. Under spawn and forkserver, "
        "functions and classes must be importable by the workers (not defined only "
        "under `if __name__ == '__main__':`). The worker's traceback is the __cause__."
    ),
    "result-unpickle-failed": (
        "A task's result or exception pickled in the worker but could not be unpickled "
        "in the parent (often an exception whose __init__ takes other arguments than "
        "its args). Pass rescue_unpicklable_results=True to fail only that future."
    ),
    "result-read-failed": "Reading a result from the result pipe failed; see the __cause__.",
    "enqueue-failed": (
        "The stdlib breaks the pool when that fails (3.12+); the __cause__ is the error. "
        '"can\'t create new thread at interpreter shutdown" (3.12) means the program '
        "ended with tasks still queued before the thread that feeds the workers had started: "
        "wait for the futures (or leave the `with` block) before the program ends."
    ),
    "executor-collected": (
        "Keep a reference to the pool (or use it in a `with` block) until its futures are done."
    ),
    "replacement-failed": (
        "The worker that retired at max_tasks_per_child could not be replaced; the "
        "__cause__ is the error from starting it (often a limit on processes, memory or "
        "open files: `tracedpool doctor` checks them)."
    ),
    "stdlib-reason": "The stdlib's own message above says why.",
}


def hint(info: BreakInfo) -> str:
    if info.reason in _HINTS:
        return _HINTS[info.reason]
    if info.reason == "forced-shutdown":
        if info.forced is None:  # the flag was set without the public methods
            return "The pool was being forcefully shut down; queued tasks were not run."
        return (
            f"{info.forced.describe()}: the tasks it had not finished were lost, as "
            "that call intends."
        )
    d = info.primary()
    if d is None:
        return "No dead worker was found; see the __cause__, if any."
    if d.signal == "SIGKILL":
        return (
            "Something sent SIGKILL: check the container's memory limit and the kernel log "
            "for the OOM killer, or a supervisor/timeout that kills processes."
        )
    if d.signal in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE"):
        return (
            "Native code crashed in the worker (an extension module). Run the task in a "
            "single process with faulthandler enabled to see where."
        )
    if d.signal is not None:
        return f"Something sent {d.signal} to the worker."
    return "The task or a library it called ended the worker process (sys.exit/os._exit)."


def summary(info: BreakInfo) -> str:
    """One paragraph about the breakage as a whole."""
    task_ids, names = info.task_ids, info.names
    parts: list[str] = []
    if info.reason == "initializer-failed" and info.init_failure:
        f = info.init_failure
        parts.append(
            f"the initializer {f.get('initializer', '')} failed in worker pid {f.get('pid')}: "
            f"{f.get('exc_type')}: {f.get('message', '')}".rstrip(": ")
        )
    elif info.reason == "enqueue-failed" and info.cause_text:
        lines = info.cause_text.strip().splitlines()
        parts.append(
            "the manager thread could not put a task on the call queue: "
            + (lines[-1] if lines else "see the __cause__")
        )
    elif info.fault is not None:
        f = info.fault
        work_id = f.get("work_id", -1)
        who = task_ids.get(work_id, "an unknown task")
        where = "in worker pid {}".format(f["pid"]) if f.get("pid") else "in the parent"
        verb = "unpickle" if str(f.get("stage", "")).endswith("unpickle") else "pickle"
        parts.append(
            f"{f.get('target', 'part')} of task {who} ({names.get(work_id, '?')}) could not be "
            f"{verb}d {where} (stage {f.get('stage')}): {f.get('exc_type')}"
            + (f": {f['message']}" if f.get("message") else "")
        )
    for d in info.dead:
        running = [s for s, pid in info.running_on.items() if pid == d.pid]
        line = d.describe()
        if running:
            line += " while running task " + ", ".join(
                f"{task_ids.get(s, s)} ({names.get(s, '?')})" for s in running
            )
        parts.append(line)
    if info.lost:
        shown = [task_ids.get(s, str(s)) for s in info.lost[:10]]
        more = f" and {len(info.lost) - 10} more" if len(info.lost) > 10 else ""
        parts.append(f"tasks lost: {', '.join(shown)}{more}")
    text = "; ".join(parts) if parts else "cause unknown"
    return f"[tracedpool] {text}. {hint(info)}"


def role_of(info: BreakInfo, work_id: int) -> str:
    if work_id in info.culprits:
        return "culprit"
    if work_id in info.running_on:
        return "bystander"
    return "queued"
