#!/usr/bin/env python3
"""Run CPython's own ProcessPoolExecutor tests three ways per Python, and compare.

For every supported CPython (3.11 to 3.15) whose test suite has test_concurrent_futures,
the ProcessPool* test classes run in three modes, each in its own virtualenv:

* ``baseline``: the plain stdlib (``.venv-stdlib-X.Y-baseline``, nothing installed);
* ``traced``: ``tracedpool.TracedProcessPoolExecutor`` substituted for
  ``concurrent.futures.ProcessPoolExecutor``, no OpenTelemetry SDK
  (``.venv-stdlib-X.Y``);
* ``traced-sdk``: substituted, and an always-on SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` over a null exporter set as the global provider
  (``.venv-stdlib-X.Y-sdk``), so every span is built and exported.

A ``.pth`` start-up hook (tools/stdlib_suite/_tracedpool_stdlib_suite.py) does the
substitution and installs the provider in every interpreter the venv starts, including
the ``-I`` children and the spawn and forkserver workers that the tests start; a fresh
``-I`` interpreter and a spawn worker are checked before each run. Each test has its own
deadline (tools/stdlib_suite/runner.py). A traced mode's failure counts only if the
plain stdlib passes that test: failures that the baseline run does not share are re-run
on the plain stdlib, each with the tests of its module that ran before it.

It exits non-zero when a traced mode fails a test that passes on the plain stdlib, or
when a run could not happen. ``--mode`` picks modes (``--baseline`` is ``--mode
baseline``). It prints each run's counts (ran, failed, skipped) and a table at the end.

Where the Pythons and tests come from:

* 3.11: pyenv's build, with Debian bookworm's ``libpython3.11-testsuite`` (installed
  here with apt-get when missing): pyenv's 3.11 ships no test_concurrent_futures.
* 3.12: skipped. pyenv's build ships no test_concurrent_futures, and no Debian suite
  packages Python 3.12 (see NO_TEST_SOURCE).
* 3.13: pyenv's build, with its own tests.
* 3.14, 3.15: Debian unstable's ``python3.1X`` with ``libpython3.1X-testsuite``, in the
  cached root of tools/sid_root.py (their binaries need a newer glibc than the host's).
  Where that root cannot be built, one line says why and they are skipped.

Outputs (logs, JSON-lines results) go to build/stdlib-suite/.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sid_root  # a sibling module, not an installed package

REPO = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "stdlib_suite"
RUNNER = HELPERS / "runner.py"
HOOKS = HELPERS / "_tracedpool_stdlib_suite.py"
KNOWN_FAILURES = HELPERS / "known_failures.txt"
OUT_DIR = REPO / "build" / "stdlib-suite"
# Sorts after setuptools' __editable__*.pth, whose import hook must be in place before ours
# imports tracedpool.
PTH_NAME = "zz_tracedpool_stdlib_suite.pth"

TEST_MODULE = "test_concurrent_futures"
TRACED = "TracedProcessPoolExecutor"
STDLIB = "ProcessPoolExecutor"
SUPPORTED = ("3.11", "3.12", "3.13", "3.14", "3.15")
BASELINE, TRACED_MODE, SDK_MODE = "baseline", "traced", "traced-sdk"
MODES = (BASELINE, TRACED_MODE, SDK_MODE)
# Why a supported Python has no test_concurrent_futures to run, where that is known and
# no tool here can change it (printed in its one-line skip).
NO_TEST_SOURCE = {
    "3.12": (
        "pyenv's 3.12 build ships no test_concurrent_futures, and no Debian suite packages "
        "Python 3.12 (bookworm has 3.11, trixie 3.13, forky/unstable/experimental 3.13 to "
        "3.15; bookworm-backports none), so there is no libpython3.12-testsuite; PyPI has "
        "no package of CPython's tests"
    ),
}
FAILED = frozenset({"fail", "error", "timeout", "crash"})
SUBPROCESS_TIMEOUT = 600  # venv creation, pip, apt-get: generous, but never unbounded
DEFAULT_JOBS = 3  # the tests mostly sleep: three Pythons at once fit two cores (measured)
STOP = threading.Event()  # set on Ctrl-C: runs in progress end like at their deadline
STACK_DUMP_GRACE = 0.3  # seconds for one process of a hung run to write its stacks
STACKS_MARKER = "=== stdlib-suite: stacks of the processes left in the run (SIGUSR1) ==="


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Interpreter:
    version: tuple[int, int, int]
    executable: Path  # inside *root* when there is one
    root: sid_root.Root | None = None  # the chroot it runs in; None: the host

    def command(self, argv: list[str], cwd: Path = REPO) -> list[str]:
        """*argv* (paths as the interpreter sees them) run where this interpreter runs.

        Paths in the checkout are the same inside the root: it is bound at its own path.
        """
        return argv if self.root is None else self.root.command(argv, cwd)

    def host_path(self, path: Path) -> Path:
        """Where the interpreter's *path* is seen from the host."""
        return path if self.root is None else self.root.host_path(path)

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full(self) -> str:
        return ".".join(map(str, self.version))


@dataclass(frozen=True)
class TestSource:
    """Where an interpreter's test_concurrent_futures lives."""

    description: str
    external_dir: Path | None  # None: in the interpreter's own ``test`` package


@dataclass(frozen=True)
class KnownFailure:
    version_prefix: str
    id_glob: str
    reason: str


@dataclass
class Record:
    id: str
    outcome: str  # pass fail error skip timeout crash not-run
    detail: str = ""
    seconds: float = 0.0
    env_changed: bool = False


@dataclass
class RunResult:
    planned: list[str] = field(default_factory=list)  # in run order
    records: dict[str, Record] = field(default_factory=dict)
    fatal: str = ""
    seconds: float = 0.0
    log: Path | None = None

    def failed_ids(self) -> list[str]:
        return [r.id for r in self.records.values() if r.outcome in FAILED]


@dataclass
class Verdict:
    """The outcome for one Python in one mode: what ran, how its failures were classified."""

    interp: Interpreter
    source: TestSource
    mode: str
    result: RunResult
    new: list[str] = field(default_factory=list)  # fail with tracedpool, pass on the stdlib
    preexisting: list[str] = field(default_factory=list)  # fail on the stdlib too
    deselected: list[KnownFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.result.fatal and not self.new


@dataclass(frozen=True)
class Options:
    pythons: list[str]
    modes: list[str]
    keywords: list[str]
    run_timeout: float
    test_timeout: float
    run_known: bool
    jobs: int


# --------------------------------------------------------------------------- processes


def clean_env() -> dict[str, str]:
    """The caller's environment without PYTHON* and venv variables.

    The Makefile's venv and a developer's shell must not leak into the interpreters under
    test; the tests themselves still start their children the usual way.
    """
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    }


def run_quiet(
    cmd: list[str], timeout: float = SUBPROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a helper command (venv, pip, apt-get), capturing its output.

    Never raises on failure or timeout; on timeout its whole process group is killed, so
    nothing it started (pip's build backends, dpkg) outlives it.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ntimed out after {timeout:.0f}s"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_in_group(cmd: list[str], cwd: Path, log: Path, deadline: float) -> int | None:
    """Run *cmd* in a process group of its own; kill the whole group once it is done.

    Returns the exit code, or None when *deadline* (time.monotonic) passed first. The group
    is killed even after a normal exit: a test that died by its faulthandler deadline leaves
    pool workers (and maybe a forkserver) behind, and they must not outlive the run. After
    an abnormal end, every process still in the group is first asked for its stacks
    (SIGUSR1, see the start-up hook), so a worker-side hang shows in the log too.
    """
    with log.open("a", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            start_new_session=True,
        )
    try:
        while True:
            # WNOWAIT leaves the leader a zombie, so its pid (our group id) cannot be
            # reused before killpg below.
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None or time.monotonic() >= deadline or STOP.is_set():
                break
            time.sleep(0.2)
        if info is None or info.si_code != os.CLD_EXITED or info.si_status != 0:
            dump_group_stacks(proc.pid, log)
    finally:
        signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return code if info is not None else None


def dump_group_stacks(pgid: int, log: Path) -> None:
    """Ask each live process of the group, one at a time so dumps don't interleave, for its
    stacks; they land in *log* after STACKS_MARKER."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n{STACKS_MARKER}\n")
    for pid in group_members(pgid):
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            continue
        time.sleep(STACK_DUMP_GRACE)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group *pgid*, from Linux's /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:  # gone meanwhile
            continue
        # After the parenthesised command name come: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # nobody left in the group
        pass


# --------------------------------------------------------------------------- discovery


def pyenv_root() -> Path | None:
    if shutil.which("pyenv"):
        done = run_quiet(["pyenv", "root"], timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    for candidate in (os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")):
        if candidate and (Path(candidate) / "versions").is_dir():
            return Path(candidate)
    return None


def discover_interpreters(root: Path) -> list[Interpreter]:
    """The newest CPython of each minor version under pyenv's versions/ (X.Y.Z names only)."""
    newest: dict[tuple[int, int], Interpreter] = {}
    for path in (root / "versions").iterdir():
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", path.name)
        # Python 2 builds have no bin/python3; they are reported as too old, like 3.9.
        python = next(
            (p for p in (path / "bin" / "python3", path / "bin" / "python") if p.exists()), None
        )
        if not match or python is None:
            continue
        major, minor, micro = (int(g) for g in match.groups())
        interp = Interpreter((major, minor, micro), python)
        if (major, minor) not in newest or newest[(major, minor)].version < interp.version:
            newest[(major, minor)] = interp
    return [newest[key] for key in sorted(newest)]


def root_interpreters(root: sid_root.Root) -> list[Interpreter]:
    """Debian unstable's Pythons in the root (tools/sid_root.py), with their versions."""
    found = []
    for minor in sid_root.PYTHONS:
        executable = Path(f"/usr/bin/python{minor}")
        probe = "import sys; print(*sys.version_info[:3])"
        interp = Interpreter((0, 0, 0), executable, root)
        done = run_quiet(interp.command([str(executable), "-c", probe]), timeout=60)
        if done.returncode != 0:
            print(f"skip {minor}: cannot run {executable} in {root.path}: {done.stderr[-200:]}")
            continue
        major, minor_no, micro = (int(x) for x in done.stdout.split())
        found.append(Interpreter((major, minor_no, micro), executable, root))
    return found


def has_tests(test_dir: Path) -> bool:
    return (test_dir / f"{TEST_MODULE}.py").is_file() or (
        test_dir / TEST_MODULE / "__init__.py"
    ).is_file()


def find_tests(interp: Interpreter) -> TestSource | str:
    """Where *interp*'s tests are, or why there are none (one line)."""
    query = "import sysconfig; print(sysconfig.get_path('stdlib'))"
    done = run_quiet(interp.command([str(interp.executable), "-c", query]))
    if done.returncode != 0:
        return f"cannot run {interp.executable}: {done.stderr.strip()[-200:]}"
    if has_tests(interp.host_path(Path(done.stdout.strip()) / "test")):
        if interp.root is None:
            return TestSource(f"its own ({interp.full})", None)
        # Debian's python3.1X keeps its test package in libpython3.1X-testsuite.
        package = f"libpython{interp.minor}-testsuite"
        query_version = ["dpkg-query", "-W", "-f", "${Version}", package]
        version = run_quiet(interp.command(query_version), timeout=30)
        label = version.stdout.strip() if version.returncode == 0 else "unknown version"
        return TestSource(f"Debian unstable {package} {label}", None)
    if interp.minor in NO_TEST_SOURCE:
        return NO_TEST_SOURCE[interp.minor]
    return find_debian_tests(interp.minor)


def find_debian_tests(minor: str) -> TestSource | str:
    """Debian's libpythonX.Y-testsuite: installed with apt-get here when missing."""
    package = f"libpython{minor}-testsuite"
    test_dir = Path(f"/usr/lib/python{minor}/test")
    missing = f"pyenv's {minor} build ships no {TEST_MODULE}"
    if not has_tests(test_dir):
        # Debian packages the test suite only for its own Python versions.
        if not (test_dir.parent / "os.py").is_file():
            return f"{missing}, and Debian has no python{minor} here (so no {package})"
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            return f"{missing}; install {package} (needs apt-get as root)"
        problem = apt_install(package)
        if problem:
            return f"{missing}, and installing {package} failed: {problem}"
    version = run_quiet(["dpkg-query", "-W", "-f", "${Version}", package], timeout=30)
    label = version.stdout.strip() if version.returncode == 0 else "unknown version"
    return TestSource(f"Debian {package} {label}", test_dir)


def apt_install(package: str) -> str:
    """Install *package*; empty string on success, else the last line apt printed."""
    print(f"  installing {package} with apt-get (CPython's tests as Debian packages them)")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    done = run_quiet(env_prefix + install)
    if done.returncode != 0:
        # A clean machine may have no (or stale) package lists; failures of unrelated
        # sources during the update are not ours to judge, the retried install decides.
        run_quiet([*env_prefix, "apt-get", "update", "-q"])
        done = run_quiet(env_prefix + install)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return ""


def load_known_failures() -> list[KnownFailure]:
    """tools/stdlib_suite/known_failures.txt: ``version-prefix  id-glob  reason`` per line."""
    known = []
    for line in KNOWN_FAILURES.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            version, id_glob, reason = line.split(maxsplit=2)
            known.append(KnownFailure(version, id_glob, reason))
    return known


# --------------------------------------------------------------------------- venvs


def venv_dir(interp: Interpreter, mode: str) -> Path:
    suffix = {BASELINE: "-baseline", TRACED_MODE: "", SDK_MODE: "-sdk"}[mode]
    return REPO / f".venv-stdlib-{interp.minor}{suffix}"


def venv_stamp(interp: Interpreter, mode: str) -> str:
    """Identifies what a venv was built from; a different stamp means rebuild it."""
    pyproject = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return json.dumps(
        {
            "python": str(interp.executable),
            "version": interp.full,
            "root": str(interp.root.path) if interp.root else None,
            "mode": mode,
            "repo": str(REPO),  # an editable install points at one checkout
            "pyproject": pyproject if mode != BASELINE else None,
        },
        sort_keys=True,
    )


_VENV_LOCK = threading.Lock()


def prepare_venv(interp: Interpreter, source: TestSource, mode: str) -> Path | str:
    """The venv's python, built or reused, with the start-up hook for *source* in place.

    One venv at a time: `pip install -e` writes build metadata into the checkout, and
    several at once (--jobs) can leave one venv with a broken install; and two checks
    of one traced mode's failures share the baseline venv.
    """
    with _VENV_LOCK:
        return _prepare_venv(interp, source, mode)


def _prepare_venv(interp: Interpreter, source: TestSource, mode: str) -> Path | str:
    root = venv_dir(interp, mode)
    python = root / "bin" / "python"
    stamp_file = root / ".stdlib-suite-stamp"
    stamp = venv_stamp(interp, mode)
    if not stamp_file.is_file() or stamp_file.read_text(encoding="utf-8") != stamp:
        shutil.rmtree(root, ignore_errors=True)
        create = [str(interp.executable), "-m", "venv", str(root)]
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        # The baseline venv runs the plain stdlib: nothing gets installed into it. The SDK
        # mode's venv gets the SDK through the project's own extra.
        steps = {
            BASELINE: [[*create, "--without-pip"]],
            TRACED_MODE: [create, [*pip, "-e", str(REPO)]],
            SDK_MODE: [create, [*pip, "-e", f"{REPO}[sdk]"]],
        }[mode]
        for step in steps:
            done = run_quiet(interp.command(step))
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip()[-400:]
                return f"`{' '.join(step)}` failed: {tail}"
        stamp_file.write_text(stamp, encoding="utf-8")
    return install_hook(interp, python, source, mode)


def install_hook(interp: Interpreter, python: Path, source: TestSource, mode: str) -> Path | str:
    """(Re)write the hook module and the .pth line that runs it at every start-up."""
    query = [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    done = run_quiet(interp.command(query))
    if done.returncode != 0:
        return f"cannot query {python}: {done.stderr.strip()[-300:]}"
    site = interp.host_path(Path(done.stdout.strip()))
    calls = ["h.dump_stacks_on_sigusr1()"]
    if source.external_dir is not None:
        calls.append(f"h.add_test_dir({str(source.external_dir)!r}, {TEST_MODULE!r})")
    if mode == SDK_MODE:
        calls.append("h.install_sdk()")
    if mode != BASELINE:
        calls.append("h.substitute()")
    shutil.copy2(HOOKS, site / HOOKS.name)
    # site.py executes a .pth line that starts with "import"; it must be one line.
    (site / PTH_NAME).write_text(
        f"import {HOOKS.stem} as h; {'; '.join(calls)}\n", encoding="utf-8"
    )
    return python


def check_substitution(interp: Interpreter, python: Path, mode: str) -> str:
    """Empty if a fresh isolated interpreter of the venv is silent and set up for *mode*.

    A silently inactive patch must not pass: this is what the ``-I`` children of the tests
    see (the runner checks a spawn worker as well).
    """
    silent = run_quiet(interp.command([str(python), "-I", "-c", "pass"]), timeout=60)
    if silent.returncode != 0 or silent.stdout or silent.stderr:
        return f"start-up is not silent (exit {silent.returncode}): {silent.stderr.strip()[-600:]}"
    probe = (
        "import concurrent.futures as f, concurrent.futures.process as p, importlib.util as u\n"
        "from concurrent.futures import ProcessPoolExecutor as P\n"
        "try:\n"
        "    from opentelemetry import trace\n"
        "    provider = type(trace.get_tracer_provider()).__module__\n"
        "except ImportError:\n"
        "    provider = 'none'\n"
        f"print(f.ProcessPoolExecutor.__name__, P.__name__, p.ProcessPoolExecutor.__name__,"
        f" u.find_spec('test.{TEST_MODULE}') is not None, provider)"
    )
    done = run_quiet(interp.command([str(python), "-I", "-c", probe]), timeout=60)
    expected = executor_name(mode)
    # The API's own default is a proxy provider (opentelemetry.trace); the SDK's lives in
    # opentelemetry.sdk.trace.
    provider = {
        BASELINE: "none",
        TRACED_MODE: "opentelemetry.trace",
        SDK_MODE: "opentelemetry.sdk.trace",
    }[mode]
    want = f"{expected} {expected} {expected} True {provider}"
    if done.returncode != 0 or done.stdout.strip() != want:
        got = done.stdout.strip() or done.stderr.strip()[-600:]
        return f"isolated interpreter check: expected {want!r}, got {got!r}"
    return ""


def executor_name(mode: str) -> str:
    return STDLIB if mode == BASELINE else TRACED


# --------------------------------------------------------------------------- running


def read_new_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    with path.open(encoding="utf-8") as stream:
        stream.seek(offset)
        text = stream.read()
    # A runner killed mid-write may leave a partial last line: leave it unread.
    complete, _, _ = text.rpartition("\n")
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return events, offset + len(complete.encode("utf-8")) + (1 if complete else 0)


def run_tests(
    python: Path,
    interp: Interpreter,
    mode: str,
    opts: Options,
    ids: list[str] | None = None,
    exclude: Iterable[str] = (),
) -> RunResult:
    """Run the runner until every planned test has an outcome, resuming after a hang.

    *ids* restricts the run to those test ids (re-runs); *exclude* deselects id globs.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{interp.full}-{mode}"
    results, log = OUT_DIR / f"{stem}.jsonl", OUT_DIR / f"{stem}.log"
    results.write_text("", encoding="utf-8")
    log.write_text("", encoding="utf-8")
    run = RunResult(log=log)
    started = time.monotonic()
    deadline = started + opts.run_timeout
    expected = STDLIB if mode.startswith("baseline") else TRACED
    base_cmd = [
        str(python),
        str(RUNNER),
        "--results",
        str(results),
        "--expect-executor",
        expected,
        "--test-timeout",
        str(opts.test_timeout),
        *(f"-k{k}" for k in opts.keywords),
        *(f"--exclude={g}" for g in exclude),
    ]
    remaining = ids
    offset = 0
    # In the checkout, so that an interpreter in the root sees it at the same path.
    with tempfile.TemporaryDirectory(prefix="tmp-", dir=OUT_DIR) as tmp:
        while True:
            cmd = list(base_cmd)
            if remaining is not None:
                ids_file = Path(tmp) / "ids.txt"
                ids_file.write_text("\n".join(remaining) + "\n", encoding="utf-8")
                cmd += ["--ids-file", str(ids_file)]
            log_start = log.stat().st_size
            code = run_in_group(interp.command(cmd, Path(tmp)), Path(tmp), log, deadline)
            events, offset = read_new_lines(results, offset)
            remaining = absorb(run, events, code, log, log_start)
            if run.fatal or not remaining:
                break
            if time.monotonic() >= deadline or STOP.is_set():
                for test_id in remaining:
                    run.records[test_id] = Record(test_id, "not-run", "run time budget used up")
                break
    run.seconds = time.monotonic() - started
    if ids is None and not run.records and not run.fatal:
        run.fatal = "no tests selected (check -k)"
    return run


def absorb(
    run: RunResult, events: list[dict[str, Any]], code: int | None, log: Path, log_start: int
) -> list[str]:
    """Fold one runner attempt into *run*; return the planned ids still to run (if any)."""
    plan: list[str] | None = None
    running: str | None = None
    last_ended: str | None = None  # the last test this attempt finished
    for event in events:
        kind = event["event"]
        if kind == "fatal":
            run.fatal = str(event["detail"])
            return []
        if kind == "plan":
            plan = [str(i) for i in event["ids"]]
            run.planned = run.planned or plan  # the first attempt plans the whole run
        elif kind == "start":
            running = str(event["id"])
        elif kind == "end":
            test_id = str(event["id"])
            run.records[test_id] = Record(
                test_id,
                str(event["outcome"]),
                str(event.get("detail", "")),
                float(event.get("seconds", 0.0)),
                bool(event.get("env_changed", False)),
            )
            running = None if running == test_id else running
            last_ended = test_id
        elif kind == "done":
            for test_id in plan or []:
                # Never started: a fixture of its module or class failed or was skipped,
                # which has a record of its own.
                run.records.setdefault(test_id, Record(test_id, "not-run", "never started"))
            return []
    if plan is None:
        tail = log_tail(log, log_start)
        run.fatal = f"runner ended (exit {code}) before selecting tests:\n{tail}"
        return []
    if running is not None:
        # Died inside a test: a faulthandler deadline, a crash, or our run budget. The
        # runner's own last words come before the marker, the leftover processes' after.
        own = log_text(log, log_start).partition(STACKS_MARKER)[0]
        see_log = f"\n(stacks of the processes left behind: {log})"
        if code is None:
            outcome, detail = "timeout", "the run's time budget ran out in this test"
        elif "Timeout (" in own:
            outcome, detail = "timeout", own[own.index("Timeout (") :][:8000] + see_log
        else:
            last_lines = "\n".join(own.strip().splitlines()[-30:])
            outcome, detail = "crash", f"runner exit {code}\n{last_lines}{see_log}"
        run.records[running] = Record(running, outcome, detail)
    elif code is not None and last_ended is not None:
        # Died between tests, after progress: a module or class fixture hung or crashed
        # (a tearDownModule waiting for a forkserver that never exits, say). It gets a
        # record of its own, named like unittest's fixture placeholders so that a re-run
        # on the plain stdlib covers its module; the later tests still run.
        own = log_text(log, log_start).partition(STACKS_MARKER)[0]
        module = last_ended.rsplit(".", 2)[0]
        fixture = f"fixture ({module})"
        outcome = "timeout" if "Timeout (" in own else "crash"
        last_lines = "\n".join(own.strip().splitlines()[-30:])
        detail = (
            f"runner exit {code} between tests, after {last_ended}\n{last_lines}"
            f"\n(stacks of the processes left behind: {log})"
        )
        run.records[fixture] = Record(fixture, outcome, detail)
    elif code is not None:
        # Died between tests before finishing any (the interpreter itself): don't retry
        # for ever, and keep the runner's last words with every test it never reached.
        detail = f"runner exit {code} outside any test\n{log_tail(log, log_start)}"
        for test_id in plan:
            run.records.setdefault(test_id, Record(test_id, "crash", detail))
        return []
    return [test_id for test_id in plan if test_id not in run.records]


def log_text(log: Path, start: int) -> str:
    """What *log* got from byte offset *start* on."""
    return log.read_bytes()[start:].decode("utf-8", errors="replace")


def log_tail(log: Path, start: int, lines: int = 25) -> str:
    return "\n".join(log_text(log, start).strip().splitlines()[-lines:])


def context_ids(failed: Iterable[str], planned: list[str]) -> list[str]:
    """The planned ids to re-run so that each failure meets the state it failed in.

    That is every test of its module up to and including it, in run order: a test can fail
    because of what an earlier one left behind (a stale executor, a dangling thread). A failed
    module or class fixture has a pseudo id such as ``setUpModule (test.x.y)``; the tests in
    its scope stand for it. A module that failed to import is imported again by every run.
    """

    def module_of(test_id: str) -> str:
        return test_id.rsplit(".", 2)[0]

    last_needed: dict[str, int] = {}
    for test_id in failed:
        scope = re.fullmatch(r"\w+ \((.+)\)", test_id)
        prefix = f"{scope.group(1)}." if scope else None
        for index, planned_id in enumerate(planned):
            if planned_id == test_id or (prefix and planned_id.startswith(prefix)):
                module = module_of(planned_id)
                last_needed[module] = max(last_needed.get(module, -1), index)
    return [t for i, t in enumerate(planned) if i <= last_needed.get(module_of(t), -1)]


def failing_in(failed: list[str], other: RunResult) -> set[str]:
    """Those of *failed* that failed in *other* as well."""
    return {i for i in failed if i in other.records and other.records[i].outcome in FAILED}


def run_mode(interp: Interpreter, source: TestSource, mode: str, opts: Options) -> Verdict:
    """One whole run of one Python in one mode (its failures are classified later)."""
    known = [k for k in load_known_failures() if interp.full.startswith(k.version_prefix)]
    deselected = [] if opts.run_known else known
    verdict = Verdict(interp, source, mode, RunResult(), deselected=deselected)
    python = prepare_and_check(interp, source, mode)
    if isinstance(python, str):
        verdict.result.fatal = python
        return verdict
    exclude = [k.id_glob for k in deselected]
    verdict.result = run_tests(python, interp, mode, opts, exclude=exclude)
    if mode == BASELINE:
        verdict.preexisting = verdict.result.failed_ids()
    return verdict


def classify(verdict: Verdict, baseline: Verdict | None, opts: Options) -> None:
    """Split a traced run's failures into new ones and those the plain stdlib shares.

    A failure that the whole baseline run shares is pre-existing. The others are re-run
    on the plain stdlib with the tests of their module that ran before them (a test can
    fail because of what an earlier one left behind), so a stdlib flake seen only once
    is not charged to tracedpool.
    """
    failed = verdict.result.failed_ids()
    if verdict.result.fatal or not failed or STOP.is_set():
        return
    shared: set[str] = set()
    if baseline is not None and not baseline.result.fatal:
        shared = failing_in(failed, baseline.result)
    unexplained = [i for i in failed if i not in shared]
    if unexplained:
        plain = prepare_and_check(verdict.interp, verdict.source, BASELINE)
        if isinstance(plain, str):
            verdict.result.fatal = f"baseline venv: {plain}"
            return
        check = run_tests(
            plain,
            verdict.interp,
            f"baseline-check-{verdict.mode}",
            opts,
            ids=context_ids(unexplained, verdict.result.planned),
            exclude=[k.id_glob for k in verdict.deselected],
        )
        if check.fatal:
            verdict.result.fatal = f"the baseline check could not run: {check.fatal}"
            return
        shared |= failing_in(unexplained, check)
    verdict.preexisting = [i for i in failed if i in shared]
    verdict.new = [i for i in failed if i not in shared]


def prepare_and_check(interp: Interpreter, source: TestSource, mode: str) -> Path | str:
    python = prepare_venv(interp, source, mode)
    if isinstance(python, str):
        return python
    problem = check_substitution(interp, python, mode)
    return problem or python


# --------------------------------------------------------------------------- reporting


MODE_TITLES = {
    BASELINE: "baseline (plain stdlib)",
    TRACED_MODE: f"traced ({TRACED}, no SDK)",
    SDK_MODE: f"traced-sdk ({TRACED}, always-on SDK provider)",
}


def tally(run: RunResult) -> tuple[int, int, int]:
    """(ran, failed, skipped): ran counts what executed; skipped includes never started."""
    counts = Counter(r.outcome for r in run.records.values())
    failed = sum(counts[o] for o in FAILED)
    return counts["pass"] + failed, failed, counts["skip"] + counts["not-run"]


def summarize(verdict: Verdict) -> Counter[str]:
    """Print the compact summary of one Python in one mode; return its outcome counts."""
    run = verdict.result
    counts = Counter(r.outcome for r in run.records.values())
    print(
        f"== Python {verdict.interp.full}, {MODE_TITLES[verdict.mode]}; "
        f"tests: {verdict.source.description}"
    )
    if run.fatal:
        print(f"  ERROR: {run.fatal}")
        return counts
    env_changed = sum(r.env_changed for r in run.records.values())
    ran, failed, skipped = tally(run)
    print(f"  ran {ran}, failed {failed}, skipped {skipped}")
    print(
        f"  {len(run.records)} tests: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['error']} errors, {counts['timeout']} timeouts, {counts['crash']} crashes, "
        f"{counts['skip']} skipped, {counts['not-run']} not run; "
        f"{env_changed} left threads, processes or replaced sys streams behind "
        f"[{run.seconds:.1f}s]"
    )
    for known in verdict.deselected:
        print(f"  deselected {known.id_glob}: {known.reason}")
    for title, ids in (
        (
            "pre-existing (fails on the plain stdlib too)"
            if verdict.mode != BASELINE
            else "failing on the plain stdlib",
            verdict.preexisting,
        ),
        ("NEW (fails with tracedpool, passes on the plain stdlib)", verdict.new),
    ):
        for test_id in ids:
            print(f"  {title}: {test_id} [{run.records[test_id].outcome}]")
    for test_id in verdict.new + (verdict.preexisting if verdict.mode == BASELINE else []):
        print(f"  --- {test_id}")
        print(excerpt(run.records[test_id]))
    if not verdict.ok:
        print(f"  log: {run.log}")
    return counts


def excerpt(record: Record) -> str:
    """The telling part of a failure: a hang's or crash's first stacks, a traceback's end."""
    lines = record.detail.strip().splitlines()
    if record.outcome == "timeout" and len(lines) > 21:
        lines = [*lines[:20], "...", lines[-1]]  # the hung process's stacks come first
    elif record.outcome != "timeout":
        lines = lines[-16:]
    return "    | " + "\n    | ".join(lines)


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="X.Y",
        help="only this Python (repeatable); default: every supported one found",
    )
    parser.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        default=[],
        help="only this mode (repeatable); default: all three",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="the plain stdlib only (--mode baseline: finds pre-existing failures)",
    )
    parser.add_argument(
        "-k",
        dest="keywords",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only test ids matching (unittest -k: glob or substring)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        metavar="SECONDS",
        help="time budget of each run (one Python, one mode); default %(default)s",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="per-test deadline: a hang dumps all stacks; default %(default)s",
    )
    parser.add_argument(
        "--run-known",
        action="store_true",
        help=f"also run the tests listed in {KNOWN_FAILURES.relative_to(REPO)}",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help="runs (one Python, one mode) at once; default %(default)s",
    )
    args = parser.parse_args(argv)
    modes = [m for m in MODES if m in args.mode or (args.baseline and m == BASELINE)]
    return Options(
        args.python,
        modes or list(MODES),
        args.keywords,
        args.timeout,
        args.test_timeout,
        args.run_known,
        max(1, args.jobs),
    )


def select_interpreters(opts: Options, root: sid_root.Root | str | None) -> list[Interpreter]:
    """The supported Pythons: pyenv's, and Debian unstable's in *root* (a string: why not)."""
    found: list[Interpreter] = []
    pyenv = pyenv_root()
    if pyenv is None:
        print("skip pyenv's Pythons: pyenv not found (no `pyenv root`, $PYENV_ROOT or ~/.pyenv)")
    else:
        # The root's Pythons, where there is one, win over a pyenv build of the same minor.
        found = [i for i in discover_interpreters(pyenv) if i.minor not in sid_root.PYTHONS]
    if isinstance(root, sid_root.Root):
        found += root_interpreters(root)
    elif isinstance(root, str):
        print(f"skip {', '.join(sid_root.PYTHONS)}: {root}")
    unsupported = [i.full for i in found if i.minor not in SUPPORTED]
    if unsupported:
        print(
            f"skip {', '.join(unsupported)}: "
            f"outside the supported {SUPPORTED[0]} to {SUPPORTED[-1]}"
        )
    chosen = [i for i in found if i.minor in SUPPORTED]
    if opts.pythons:
        chosen = [i for i in chosen if any(i.full.startswith(p) for p in opts.pythons)]
        for wanted in opts.pythons:
            if not any(i.full.startswith(wanted) for i in chosen):
                print(f"skip {wanted}: no such supported Python here")
    return sorted(chosen, key=lambda i: i.version)


def wants_root(opts: Options) -> bool:
    return not opts.pythons or any(
        m.startswith(p) or p.startswith(m) for p in opts.pythons for m in sid_root.PYTHONS
    )


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    # A terminated harness must still kill its runs: they are in sessions of their own, out
    # of reach of the signal that stops it.
    signal.signal(signal.SIGTERM, interrupt)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with (OUT_DIR / ".lock").open("w") as lock:
        # Two runs in one checkout would share the venvs and overwrite each other's results.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"stdlib-suite: another run is using this checkout ({lock.name})")
            return 1
        if not wants_root(opts):
            return run_all(opts, None)
        reason = sid_root.ensure_built()
        if reason:
            return run_all(opts, f"the Debian unstable root cannot be built here: {reason}")
        with contextlib.ExitStack() as stack:
            try:
                root = stack.enter_context(sid_root.session(REPO))
            except sid_root.RootUnavailable as exc:
                return run_all(opts, f"the Debian unstable root cannot be used here: {exc}")
            return run_all(opts, root)


def run_all(opts: Options, root: sid_root.Root | str | None) -> int:
    targets: list[tuple[Interpreter, TestSource]] = []
    for interp in select_interpreters(opts, root):
        source = find_tests(interp)  # may apt-get install: done here, one at a time
        if isinstance(source, str):
            print(f"skip {interp.full}: {source}")
        else:
            targets.append((interp, source))
    if not targets:
        print("stdlib-suite: no Python with CPython's process-pool tests ran")
        return 1
    names = ", ".join(interp.full for interp, _ in targets)
    print(f"running {', '.join(opts.modes)} on {names}, {opts.jobs} run(s) at a time", flush=True)

    verdicts: dict[tuple[Interpreter, str], Verdict] = {}
    # Threads suffice: each run is a subprocess and the tests mostly sleep.
    pool = ThreadPoolExecutor(max_workers=opts.jobs)
    try:
        runs = {
            pool.submit(run_mode, interp, source, mode, opts): (interp, mode)
            for interp, source in targets
            for mode in opts.modes
        }
        for future in as_completed(runs):
            verdict = future.result()
            verdicts[runs[future]] = verdict
            ran, failed, skipped = tally(verdict.result)
            state = (
                f"ERROR: {verdict.result.fatal.splitlines()[0]}"
                if verdict.result.fatal
                else (f"ran {ran}, failed {failed}, skipped {skipped}")
            )
            print(
                f"  done: {verdict.interp.full} {verdict.mode}: {state} "
                f"[{verdict.result.seconds:.0f}s]",
                flush=True,
            )
        checks = [
            pool.submit(classify, v, verdicts.get((interp, BASELINE)), opts)
            for (interp, mode), v in verdicts.items()
            if mode != BASELINE
        ]
        for check in checks:
            check.result()
    except KeyboardInterrupt:
        STOP.set()  # every run kills its process group and returns
        pool.shutdown(wait=True, cancel_futures=True)
        print("stdlib-suite: interrupted")
        return 130
    pool.shutdown()
    ordered = [verdicts[(i, m)] for i, _ in targets for m in opts.modes]
    totals: Counter[str] = Counter()
    for verdict in ordered:
        totals += summarize(verdict)
    return report_totals(ordered, totals, opts)


def report_totals(verdicts: list[Verdict], totals: Counter[str], opts: Options) -> int:
    """Print the table and the closing lines; return the exit status."""
    print("\nstdlib-suite: ran/failed/skipped per mode; new: failures the plain stdlib lacks")
    header = f"  {'Python':<8}" + "".join(f"  {m:<24}" for m in opts.modes)
    print(header)
    by_python: dict[str, dict[str, Verdict]] = {}
    for verdict in verdicts:
        by_python.setdefault(verdict.interp.full, {})[verdict.mode] = verdict
    for full, modes in by_python.items():
        cells = []
        for mode in opts.modes:
            verdict = modes[mode]
            ran, failed, skipped = tally(verdict.result)
            cell = "could not run" if verdict.result.fatal else f"{ran}/{failed}/{skipped}"
            if mode != BASELINE and not verdict.result.fatal:
                cell += f" new {len(verdict.new)}"
            cells.append(f"  {cell:<24}")
        print(f"  {full:<8}" + "".join(cells))
    traced = [v for v in verdicts if v.mode != BASELINE]
    new = sum(len(v.new) for v in traced)
    preexisting = sum(len(v.preexisting) for v in verdicts)
    broken = [f"{v.interp.full} {v.mode}" for v in verdicts if v.result.fatal]
    print(
        f"pre-existing stdlib failures: {preexisting}; could not run: {', '.join(broken) or 'none'}"
    )
    # The plain closing line that CI reads. "failed" counts what the run is judged on: in
    # the traced modes, failures the plain stdlib does not have (pre-existing ones are
    # listed above, not counted); with the baseline alone, every failure.
    failed = new if traced else preexisting
    passed = totals["pass"]
    skipped = totals["skip"] + totals["not-run"]
    print(f"stdlib-suite: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if new or broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
