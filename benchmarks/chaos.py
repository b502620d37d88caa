"""Chaos: kill, crash, stop and resume workers of a loaded traced pool, round after round.

Each round runs a steady stream of small tasks from a few submitter threads through a
``TracedProcessPoolExecutor`` (an SDK recording spans in memory, a short stall timeout)
while a "monkey" thread, at random moments, sends real signals to the pool's workers:

* ``SIGKILL`` / ``SIGSEGV`` to one worker (the pool breaks; a new pool takes the load);
* ``SIGSTOP`` one worker for a while, then ``SIGCONT`` (its tasks must complete);
* ``SIGSTOP`` one worker, kill another and never resume the first (the stdlib's
  shutdown then waits for the stopped worker for ever);
* ``SIGSTOP`` every worker for longer than the stall timeout: with ``stall_action=
  "report"`` a stall report must be written and, after ``SIGCONT``, every task completes;
  with ``"break"`` the stall detector kills them and the futures fail with
  ``PoolStalledError``.

Then every future must have resolved, within a bound, with its own result or with a
located ``TracedBrokenProcessPool`` naming a pid and signal that the monkey (or, under
"break", the stall detector) really sent, and every pool must shut down within a bound.
A stuck round dumps every thread's stack (faulthandler).

    python benchmarks/chaos.py                          # 36 rounds, fork/spawn/forkserver
    python benchmarks/chaos.py --rounds 6 --seed 7      # a quick run
    python benchmarks/chaos.py --only 13 --seed 7 -v    # replay one round's plan
    python benchmarks/chaos.py --markdown docs/reliability.md --json chaos.json

The seed fixes each round's plan (start method, stall action, actions, victims' indices,
delays); the timing of the machine does the rest. Exit status 1 if any round failed.
``tests/test_chaos.py`` runs a shortened version with the same checks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import faulthandler
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run from a checkout without installing (and let spawn/forkserver workers, which
# re-import this file as __mp_main__, import tracedpool too).
REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tests"):  # tracedpool, and the tests' fault injectors
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from faults import quiet_deliberate_crash, sleep_then  # noqa: E402

from tracedpool import (  # noqa: E402
    PoolStalledError,
    TracedBrokenProcessPool,
    TracedProcessPoolExecutor,
)
from tracedpool._telemetry import names as N  # noqa: E402
from tracedpool.testing import recording_provider  # noqa: E402

MD_START = "<!-- chaos:start -->"
MD_END = "<!-- chaos:end -->"
START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
STALL_ACTIONS = ("report", "break")
KILL_SIGNALS = (signal.SIGKILL, signal.SIGSEGV)
# Action kinds and their weights in a random plan.
ACTIONS = {"kill": 4, "stop-one": 3, "stop-kill": 2, "stop-all": 2}


@dataclass
class Settings:
    """What every round shares (the script's flags; the CI test passes smaller ones)."""

    workers: int = 2
    submitters: int = 2
    inflight: int = 16  # futures outstanding per submitter thread
    task_seconds: float = 0.002
    stall_timeout: float = 2.0
    actions: tuple[int, int] = (2, 4)  # actions per round, inclusive range
    gap: tuple[float, float] = (0.05, 0.8)  # seconds of load before each action
    tail: float = 0.3  # seconds of load after the last action
    settle: float = 60.0  # bound on every wait: futures, replacement, shutdown
    budget: float = 180.0  # a round taking longer dumps every stack


@dataclass
class Action:
    kind: str
    delay: float
    signum: int = 0  # the kill signal, for kill and stop-kill
    pick: float = 0.0  # which worker (index = pick * number of live workers)
    pick2: float = 0.0
    stop_seconds: float = 0.0


@dataclass
class Generation:
    """One pool of a round; a broken pool is replaced by the next generation."""

    index: int
    pool: TracedProcessPoolExecutor
    futures: list[tuple[Future[Any], int]] = field(default_factory=list)
    fatal: dict[int, int] = field(default_factory=dict)  # pid -> kill signal sent
    stopped: set[int] = field(default_factory=set)  # pids ever SIGSTOPped
    reports: list[dict[str, Any]] = field(default_factory=list)
    submit_errors: list[BaseException] = field(default_factory=list)


@dataclass
class RoundResult:
    round: int
    start_method: str
    stall_action: str
    plan: list[str]
    seconds: float = 0.0
    pools: int = 0
    submitted: int = 0
    results: int = 0
    broken: int = 0  # futures failed with a located TracedBrokenProcessPool
    stalled: int = 0  # futures failed with PoolStalledError
    signals: dict[str, int] = field(default_factory=dict)  # signal name -> times sent
    stall_reports: int = 0
    long_stops: int = 0
    task_spans: int = 0
    hung: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.hung


def make_plan(rng: random.Random, settings: Settings, must: tuple[str, ...] = ()) -> list[Action]:
    """A round's actions; ``must`` kinds come first (in random order), then random ones."""
    n = rng.randint(*settings.actions)
    kinds = list(must)
    rng.shuffle(kinds)
    names, weights = tuple(ACTIONS), tuple(ACTIONS.values())
    while len(kinds) < n:
        kinds.append(rng.choices(names, weights)[0])
    plan = []
    for kind in kinds:
        plan.append(
            Action(
                kind,
                rng.uniform(*settings.gap),
                signum=int(rng.choice(KILL_SIGNALS)),
                pick=rng.random(),
                pick2=rng.random(),
                stop_seconds=rng.uniform(0.1, 0.5 * settings.stall_timeout),
            )
        )
    return plan


def describe(action: Action) -> str:
    sig = signal.Signals(action.signum).name
    return {
        "kill": f"kill({sig})",
        "stop-one": f"stop-one({action.stop_seconds:.2f}s)",
        "stop-kill": f"stop-kill({sig})",
        "stop-all": "stop-all(long)",
    }[action.kind]


class ChaosRound:
    """One round: load, monkey, then the checks."""

    def __init__(
        self,
        number: int,
        start_method: str,
        stall_action: str,
        plan: list[Action],
        settings: Settings,
        report_dir: Path,
        *,
        verbose: bool = False,
    ) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context(start_method)
        self.stall_action = stall_action
        self.plan = plan
        self.report_dir = report_dir
        self.verbose = verbose
        self.provider, self.exporter = recording_provider()
        self.lock = threading.Lock()
        self.generations: list[Generation] = []
        self.current = self._new_generation()
        self.stop = threading.Event()
        self.result = RoundResult(number, start_method, stall_action, [describe(a) for a in plan])
        self.sent: Counter[str] = Counter()

    # -- pools -----------------------------------------------------------------------------
    def _new_generation(self) -> Generation:
        gen: Generation

        def on_stall(report: dict[str, Any]) -> None:
            gen.reports.append(report)

        pool = TracedProcessPoolExecutor(
            self.settings.workers,
            mp_context=self.context,
            # The monkey's SIGSEGVs are deliberate: no faulthandler stacks for them. A
            # crash it did not cause still fails the round (_check_broken).
            initializer=quiet_deliberate_crash,
            tracer_provider=self.provider,
            stall_timeout=self.settings.stall_timeout,
            stall_action=self.stall_action,
            stall_report_dir=self.report_dir,
            on_stall=on_stall,
        )
        gen = Generation(len(self.generations), pool)
        self.generations.append(gen)
        return gen

    def _replace(self, gen: Generation) -> None:
        with self.lock:
            if self.current is gen and not self.stop.is_set():
                self.current = self._new_generation()
                self.log(f"pool {gen.index} broken; pool {self.current.index} takes the load")

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  [{time.monotonic() % 1000:8.3f}] {text}", flush=True)

    # -- load ------------------------------------------------------------------------------
    def _submitter(self, k: int) -> None:
        room = threading.Semaphore(self.settings.inflight)
        i = 0
        while not self.stop.is_set():
            if not room.acquire(timeout=0.1):
                continue
            gen = self.current
            value = k * 1_000_000_000 + i
            try:
                future = gen.pool.submit(sleep_then, value, self.settings.task_seconds)
            except BrokenProcessPool as e:
                room.release()
                gen.submit_errors.append(e)
                self._replace(gen)
                continue
            except RuntimeError as e:  # shut down: only once the round is over
                room.release()
                if not self.stop.is_set():
                    gen.submit_errors.append(e)
                    time.sleep(0.01)
                continue
            i += 1
            future.add_done_callback(lambda _f: room.release())
            gen.futures.append((future, value))

    # -- the monkey ------------------------------------------------------------------------
    def _live_pids(self, gen: Generation) -> list[int]:
        # The stdlib's own table of this pool's workers (a test-side read of a private
        # attribute, as the tests' make_pool fixture does).
        processes = dict(gen.pool._processes or {})  # type: ignore[attr-defined]
        return sorted(pid for pid in processes if pid not in gen.fatal)

    def _await_workers(self, gen: Generation, n: int) -> list[int]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not gen.pool._broken:  # type: ignore[attr-defined]
            pids = self._live_pids(gen)
            if len(pids) >= n:
                return pids
            time.sleep(0.02)
        return []

    def _send(self, gen: Generation, pid: int, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in KILL_SIGNALS:
            gen.fatal[pid] = signum
        elif signum == signal.SIGSTOP:
            gen.stopped.add(pid)
        self.sent[name] += 1
        self.log(f"pool {gen.index}: {name} -> {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def _await_replacement(self, gen: Generation, why: str) -> None:
        deadline = time.monotonic() + self.settings.settle
        while self.current is gen and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.current is gen:
            self.hang(f"pool {gen.index} was not replaced {self.settings.settle:.0f} s after {why}")

    def _monkey(self) -> None:
        try:
            for action in self.plan:
                if self.stop.wait(action.delay):
                    return
                self._act(action)
        except Exception as e:
            self.result.errors.append(f"monkey failed: {type(e).__name__}: {e}")
        finally:
            self.stop.wait(self.settings.tail)
            self.stop.set()

    def _act(self, action: Action) -> None:
        gen = self.current
        need = self.settings.workers if action.kind in ("stop-kill", "stop-all") else 1
        pids = self._await_workers(gen, need)
        if not pids:
            self.log(f"pool {gen.index}: skipped {action.kind} (not enough workers)")
            return
        victim = pids[int(action.pick * len(pids))]
        if action.kind == "kill":
            self._send(gen, victim, action.signum)
            self._await_replacement(gen, f"{signal.Signals(action.signum).name} to {victim}")
        elif action.kind == "stop-one":
            self._send(gen, victim, signal.SIGSTOP)
            time.sleep(action.stop_seconds)
            self._send(gen, victim, signal.SIGCONT)
        elif action.kind == "stop-kill":
            others = [p for p in pids if p != victim]
            other = others[int(action.pick2 * len(others))]
            # The stopped worker is never resumed here: the broken pool must end it.
            self._send(gen, victim, signal.SIGSTOP)
            time.sleep(action.stop_seconds)
            self._send(gen, other, action.signum)
            self._await_replacement(gen, f"{signal.Signals(action.signum).name} to {other}")
        elif action.kind == "stop-all":
            self._stop_all(gen, pids)

    def _stop_all(self, gen: Generation, pids: list[int]) -> None:
        """Stop every worker for longer than the stall timeout: a report must come."""
        self.result.long_stops += 1
        before = len(gen.reports)
        t0 = time.monotonic()
        for pid in pids:
            self._send(gen, pid, signal.SIGSTOP)
        timeout = self.settings.stall_timeout
        deadline = t0 + timeout + 15  # detection ticks + stack snapshots, on a busy box
        while len(gen.reports) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        stopped_for = time.monotonic() - t0
        for pid in pids:
            self._send(gen, pid, signal.SIGCONT)
        if len(gen.reports) == before:
            self.result.errors.append(
                f"pool {gen.index}: every worker stopped for {stopped_for:.1f} s "
                f"(stall timeout {timeout} s) and no stall report came"
            )
            return
        report = gen.reports[before]
        if report.get("kind") != "worker-stopped" or not set(report["stuck_pids"]) <= set(pids):
            self.result.errors.append(
                f"pool {gen.index}: stall report for stopped workers {pids} says "
                f"{report.get('kind')}: {report.get('diagnosis')} (stuck {report['stuck_pids']})"
            )
        if not report.get("report_path") or not Path(report["report_path"]).exists():
            self.result.errors.append(f"pool {gen.index}: stall report not written to disk")
        if self.stall_action == "break":
            self._await_replacement(gen, "the stall detector broke it")

    # -- the round -------------------------------------------------------------------------
    def hang(self, text: str) -> None:
        self.result.hung.append(text)
        print(f"HANG: {text}; every thread's stack follows", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(sys.stderr, all_threads=True)

    def run(self) -> RoundResult:
        t0 = time.monotonic()
        faulthandler.dump_traceback_later(self.settings.budget, exit=False)
        try:
            threads = [
                threading.Thread(target=self._submitter, args=(k,), name=f"chaos-submit-{k}")
                for k in range(self.settings.submitters)
            ]
            threads.append(threading.Thread(target=self._monkey, name="chaos-monkey"))
            for t in threads:
                t.start()
            for t in threads:
                t.join(self.settings.budget)
                if t.is_alive():
                    self.stop.set()
                    self.hang(f"thread {t.name} still running after {self.settings.budget} s")
            self._settle()
            self._check()
        finally:
            faulthandler.cancel_dump_traceback_later()
            self._cleanup()
        self.result.seconds = round(time.monotonic() - t0, 2)
        self.result.pools = len(self.generations)
        self.result.signals = dict(self.sent)
        return self.result

    def _settle(self) -> None:
        futures = [f for gen in self.generations for f, _ in gen.futures]
        _, not_done = concurrent.futures.wait(futures, timeout=self.settings.settle)
        if not_done:
            self.hang(f"{len(not_done)} of {len(futures)} futures unresolved after the load")
        for gen in self.generations:
            processes = list((gen.pool._processes or {}).values())  # type: ignore[attr-defined]
            t = threading.Thread(target=gen.pool.shutdown, kwargs={"wait": True}, daemon=True)
            t.start()
            t.join(self.settings.settle)
            if t.is_alive():
                self.hang(f"pool {gen.index}: shutdown(wait=True) did not return")
                continue
            left = [p.pid for p in processes if p.exitcode is None]
            if left:
                self.result.errors.append(f"pool {gen.index}: workers {left} outlived shutdown()")

    def _cleanup(self) -> None:
        for gen in self.generations:
            processes = dict(gen.pool._processes or {})  # type: ignore[attr-defined]
            for p in processes.values():
                with contextlib.suppress(Exception):
                    p.kill()
            if processes:
                gen.pool.shutdown(wait=False, cancel_futures=True)

    # -- checks ----------------------------------------------------------------------------
    def _check(self) -> None:
        r = self.result
        spans: Counter[str] = Counter()
        for s in self.exporter.get_finished_spans():
            if s.name == N.SPAN_TASK:
                spans[str((s.attributes or {}).get(N.ATTR_TASK_ID, "")).split(":")[0]] += 1
        for gen in self.generations:
            r.submitted += len(gen.futures)
            r.stall_reports += len(gen.reports)
            for e in gen.submit_errors:
                if not isinstance(e, TracedBrokenProcessPool) and not isinstance(
                    e, BrokenProcessPool
                ):
                    r.errors.append(f"pool {gen.index}: submit raised {e!r}")
            broke = False
            for future, value in gen.futures:
                if not future.done():
                    continue  # counted as a hang already
                if future.cancelled():
                    r.errors.append(f"pool {gen.index}: a future was cancelled")
                    continue
                exc = future.exception()
                if exc is None:
                    if future.result() != value:
                        r.errors.append(f"pool {gen.index}: wrong result {future.result()}")
                    r.results += 1
                    continue
                broke = True
                problem = self._check_broken(gen, exc)
                if problem:
                    r.errors.append(f"pool {gen.index}: {problem}")
                elif isinstance(exc, PoolStalledError):
                    r.stalled += 1
                else:
                    r.broken += 1
            if not broke and gen.fatal and gen.futures:
                # A kill that broke no future: the pool broke with nothing pending. It
                # must still refuse work, naming the signal.
                errors = [e for e in gen.submit_errors if isinstance(e, BrokenProcessPool)]
                if not gen.pool._broken:  # type: ignore[attr-defined]
                    r.errors.append(f"pool {gen.index}: {gen.fatal} sent, pool not broken")
                elif errors and not any(
                    signal.Signals(s).name in str(e) for e in errors for s in gen.fatal.values()
                ):
                    r.errors.append(f"pool {gen.index}: submit error does not name the signal")
            if self.stall_action == "report" and gen.reports and not gen.fatal:
                failed = [f for f, _ in gen.futures if f.done() and f.exception() is not None]
                if failed:
                    r.errors.append(f"pool {gen.index}: {len(failed)} failed in report mode")
            if spans[gen.pool.pool_id] != len(gen.futures):
                r.errors.append(
                    f"pool {gen.index}: {spans[gen.pool.pool_id]} task spans for "
                    f"{len(gen.futures)} futures"
                )
            r.task_spans += spans[gen.pool.pool_id]

    def _check_broken(self, gen: Generation, exc: BaseException) -> str | None:
        """None if ``exc`` is a located breakage naming a pid and signal really sent."""
        if not isinstance(exc, TracedBrokenProcessPool):
            return f"unlocated failure {type(exc).__name__}: {exc}"
        pid, sig = exc.worker_pid, exc.signal
        if isinstance(exc, PoolStalledError):
            stuck = {p for rep in gen.reports for p in rep.get("stuck_pids", ())}
            if self.stall_action != "break" or not gen.reports:
                return f"PoolStalledError without a stall break: {exc}"
            if pid in gen.fatal and sig == signal.Signals(gen.fatal[pid]).name:
                return None  # the monkey's kill landed first
            if pid not in stuck or sig != "SIGKILL":
                return f"PoolStalledError names pid {pid} {sig}, the detector killed {stuck}"
            return None
        if exc.reason != "worker-died":
            return f"broken for reason {exc.reason!r}, expected worker-died: {exc}"
        if pid not in gen.fatal:
            return f"breakage names pid {pid} ({sig}); signals were sent to {gen.fatal}: {exc}"
        expected = signal.Signals(gen.fatal[pid])
        if sig != expected.name or exc.exitcode != -expected.value:
            return f"pid {pid} got {expected.name}, the error says {sig}/{exc.exitcode}: {exc}"
        if str(pid) not in str(exc) or expected.name not in str(exc):
            return f"the message does not name pid {pid} and {expected.name}: {exc}"
        return None


def run_round(
    number: int,
    seed: int,
    settings: Settings,
    report_dir: Path,
    *,
    start_method: str | None = None,
    stall_action: str | None = None,
    must: tuple[str, ...] = (),
    verbose: bool = False,
) -> RoundResult:
    """Round ``number`` of the run seeded ``seed``: its start method and stall action
    cycle through every combination unless given."""
    rng = random.Random(f"{seed}:{number}")
    combos = [(m, a) for a in STALL_ACTIONS for m in START_METHODS]
    method, action = combos[number % len(combos)]
    plan = make_plan(rng, settings, must)
    chaos = ChaosRound(
        number,
        start_method or method,
        stall_action or action,
        plan,
        settings,
        report_dir,
        verbose=verbose,
    )
    return chaos.run()


# -- the script -------------------------------------------------------------------------------
def summarize(results: list[RoundResult], total_seconds: float) -> dict[str, Any]:
    signals: Counter[str] = Counter()
    by: dict[str, Counter[str]] = {}
    for r in results:
        signals.update(r.signals)
        c = by.setdefault(f"{r.start_method}/{r.stall_action}", Counter())
        c.update(
            rounds=1,
            pools=r.pools,
            futures=r.submitted,
            results=r.results,
            broken=r.broken,
            stalled=r.stalled,
            stall_reports=r.stall_reports,
            long_stops=r.long_stops,
            failed_rounds=0 if r.ok else 1,
        )
        for name in ("SIGKILL", "SIGSEGV", "SIGSTOP"):
            c[name] += r.signals.get(name, 0)
    return {
        "rounds": len(results),
        "failed_rounds": [r.round for r in results if not r.ok],
        "hangs": sum(len(r.hung) for r in results),
        "futures": sum(r.submitted for r in results),
        "unresolved": sum(1 for r in results for h in r.hung if "unresolved" in h),
        "signals": dict(signals),
        "seconds": round(total_seconds, 1),
        "by_combination": {k: dict(v) for k, v in by.items()},
    }


def markdown(summary: dict[str, Any], argv: list[str], seed: int) -> str:
    lines = [
        f"- date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; "
        f"{platform.platform()}; CPython {platform.python_version()}; "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        f"- command: python benchmarks/chaos.py {' '.join(argv)} (seed {seed})",
        f"- {summary['rounds']} rounds in {summary['seconds']:.0f} s; "
        f"{summary['futures']:,} futures, every one resolved"
        if not summary["hangs"]
        else f"- {summary['rounds']} rounds; **{summary['hangs']} hang(s)**",
        "- signals sent: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["signals"].items())),
        f"- failed rounds: {summary['failed_rounds'] or 'none'}",
        "",
        "| start method / stall action | rounds | pools | futures | results | located "
        "BrokenProcessPool | PoolStalledError | SIGKILL | SIGSEGV | SIGSTOP | long stops | "
        "stall reports | failed rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in sorted(summary["by_combination"].items()):
        lines.append(
            f"| {key} | {c['rounds']} | {c['pools']} | {c['futures']:,} | {c['results']:,} | "
            f"{c['broken']:,} | {c['stalled']:,} | {c['SIGKILL']} | {c['SIGSEGV']} | "
            f"{c['SIGSTOP']} | {c['long_stops']} | {c['stall_reports']} | {c['failed_rounds']} |"
        )
    return "\n".join(lines)


def write_markdown(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    new = f"{MD_START}\n{block}\n{MD_END}"
    if MD_START in text and MD_END in text:
        head, rest = text.split(MD_START, 1)
        text = head + new + rest.split(MD_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + new + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=36)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, nargs="*", help="run only these round numbers")
    parser.add_argument("--start-method", choices=START_METHODS, help="instead of cycling")
    parser.add_argument("--stall-action", choices=STALL_ACTIONS, help="instead of cycling")
    parser.add_argument("--workers", type=int, default=Settings.workers)
    parser.add_argument("--stall-timeout", type=float, default=Settings.stall_timeout)
    parser.add_argument("--budget", type=float, default=Settings.budget, help="s per round")
    parser.add_argument("--markdown", type=Path, help="update this file's chaos block")
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(workers=args.workers, stall_timeout=args.stall_timeout, budget=args.budget)
    # Killed workers must not write core files, whatever the shell's limit.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    report_dir = Path(tempfile.mkdtemp(prefix="tracedpool-chaos-"))
    numbers = args.only if args.only else list(range(args.rounds))
    results: list[RoundResult] = []
    t0 = time.monotonic()
    try:
        for number in numbers:
            r = run_round(
                number,
                args.seed,
                settings,
                report_dir,
                start_method=args.start_method,
                stall_action=args.stall_action,
                verbose=args.verbose,
            )
            results.append(r)
            status = "ok" if r.ok else "FAILED"
            print(
                f"round {r.round:3d} {r.start_method:10s} {r.stall_action:6s} {r.seconds:5.1f}s "
                f"pools={r.pools} futures={r.submitted} results={r.results} "
                f"broken={r.broken} stalled={r.stalled} reports={r.stall_reports} "
                f"plan={','.join(r.plan)} {status}",
                flush=True,
            )
            for line in r.hung + r.errors:
                print(f"    {line}", flush=True)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
    summary = summarize(results, time.monotonic() - t0)
    print(json.dumps({k: v for k, v in summary.items() if k != "by_combination"}, indent=1))
    if args.json:
        args.json.write_text(
            json.dumps({"summary": summary, "rounds": [asdict(r) for r in results]}, indent=1)
        )
    if args.markdown:
        write_markdown(args.markdown, markdown(summary, argv, args.seed))
    return 1 if summary["failed_rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
