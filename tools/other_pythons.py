#!/usr/bin/env python3
"""Run tracedpool's own test suite on every supported CPython (3.11 to 3.15) but this one.

The stdlib's process-pool internals differ per version, so the suite runs on each
interpreter other than the one running this tool (the Makefile's venv runs ``make unit``
on that one), each in its own virtualenv ``.venv-<X.Y>`` with the test extras:

* 3.11 to 3.13 from pyenv (the newest patch release of each minor version);
* 3.14 and 3.15 from Debian unstable, inside the cached root of tools/sid_root.py (their
  binaries need a newer glibc than the host's). The checkout is bound into the root at
  its own path, so the venv is made and the suite runs in the checkout itself.

tests/conftest.py runs the pool tests under fork, spawn and forkserver; tests that pass
no start method get the interpreter's default (forkserver on 3.14 and later), which each
version's line names. A version that is not there, or a root that cannot be built here,
is skipped with one line saying why. Per version it prints the counts (from pytest's
JUnit XML in build/other-pythons/), the counts per start method, and every failure with
its first error line. Exit status: non-zero if any suite failed.

Usage: python tools/other_pythons.py [--versions 3.12 3.14] [-- pytest args]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import progress_plugin  # sibling modules, not an installed package
import sid_root

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "build" / "other-pythons"
WANTED = ("3.11", "3.12", "3.13", "3.14", "3.15")
SUITE_TIMEOUT = 1800  # seconds per interpreter; pytest-timeout bounds each test inside
START_METHODS = ("fork", "spawn", "forkserver")


@dataclass
class Target:
    minor: str
    python: str  # the interpreter, as a path on the host or inside the root
    root: sid_root.Root | None = None

    def command(self, argv: list[str]) -> list[str]:
        return argv if self.root is None else self.root.command(argv, ROOT)


@dataclass
class Outcome:
    minor: str
    code: int
    seconds: float
    counts: Counter[str] = field(default_factory=Counter)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (test id, first line)
    note: str = ""


def pyenv_pythons() -> dict[str, Path]:
    """Minor version -> interpreter, from pyenv (newest patch release of each minor)."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        root = out.stdout.strip() or root
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    versions = Path(root) / "versions"
    for entry in sorted(versions.iterdir()) if versions.is_dir() else []:
        parts = entry.name.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        minor = ".".join(parts[:2])
        exe = entry / "bin" / "python3"
        key = tuple(int(p) for p in parts)
        if exe.exists() and (minor not in found or key > found[minor][0]):
            found[minor] = (key, exe)
    return {minor: exe for minor, (_key, exe) in found.items()}


def clean_env() -> dict[str, str]:
    """Without the Makefile venv's variables, which would leak into the other Pythons."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    }


def ensure_venv(target: Target) -> Path:
    """The venv's python (a path inside the root for 3.14+), built when stale."""
    venv = ROOT / f".venv-{target.minor}"
    py = venv / "bin" / "python"
    stamp = venv / ".stamp"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return py
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for step in (
        [target.python, "-m", "venv", "--clear", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, "-e", f"{ROOT}[test]"],
    ):
        # Quiet unless it fails: setuptools' deprecation notices would bury the results.
        done = subprocess.run(
            target.command(step), capture_output=True, text=True, check=False, env=clean_env()
        )
        if done.returncode != 0:
            print((done.stdout + done.stderr)[-3000:])
            raise subprocess.CalledProcessError(done.returncode, step)
    stamp.touch()
    return py


def read_junit(path: Path, outcome: Outcome) -> None:
    """Fill *outcome*'s counts, per-start-method counts and failures from JUnit XML."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        outcome.note = f"no JUnit XML ({exc})"
        return
    for case in tree.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        kind = "passed"
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        if problem is not None:
            kind = "failed" if problem.tag == "failure" else "errors"
            outcome.failures.append((test_id, first_error_line(problem)))
        elif any(c.tag == "skipped" for c in case):
            kind = "skipped"
        outcome.counts[kind] += 1
        param = re.search(r"\[([^\]]*)\]$", case.get("name", ""))
        for method in START_METHODS:
            if param and re.search(rf"(^|-){method}($|-)", param.group(1)):
                outcome.by_method.setdefault(method, Counter())[kind] += 1


def first_error_line(problem: ET.Element) -> str:
    """The line that says what went wrong; for an assertion quoting a child's traceback,
    the child's first exception (with its message, which may be on the next line)."""
    first = (problem.get("message") or problem.text or "").strip().splitlines()
    line = first[0] if first else problem.tag
    if line.endswith("Traceback (most recent call last):"):
        text = [re.sub(r"^E\s+", "", t).strip() for t in (problem.text or "").splitlines()]
        for i, candidate in enumerate(text):
            if re.match(r"[\w.]*(Error|Exception)\b.*:", candidate) and not candidate.startswith(
                "AssertionError"
            ):
                rest = candidate if not candidate.endswith(":") else f"{candidate} {text[i + 1]}"
                line = f"{line.split(':')[0]}: child {rest}"
                break
    return line[:200]


def default_start_method(target: Target, py: Path) -> str:
    probe = [str(py), "-c", "import multiprocessing as m; print(m.get_start_method())"]
    done = subprocess.run(
        target.command(probe), capture_output=True, text=True, check=False, env=clean_env()
    )
    return done.stdout.strip() or "unknown"


def run_suite(target: Target, pytest_args: list[str]) -> Outcome:
    t0 = time.monotonic()
    py = ensure_venv(target)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    junit = OUT_DIR / f"{target.minor}.xml"
    junit.unlink(missing_ok=True)
    progress = OUT_DIR / f"{target.minor}.progress"
    progress.unlink(missing_ok=True)
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    cmd += ["-p", "tools.progress_plugin", *pytest_args]
    where = "" if target.root is None else f" (in {target.root.path})"
    print(f"[other-pythons] {target.minor}{where}: {' '.join(cmd[1:])}", flush=True)
    log = OUT_DIR / f"{target.minor}.log"
    code = run_logged(target.command(cmd), log, progress)
    outcome = Outcome(target.minor, code, time.monotonic() - t0)
    read_junit(junit, outcome)
    if outcome.note.startswith("no JUnit XML"):
        # pytest-timeout's thread method ends the whole run on a hang (by design: the
        # stacks are dumped and nothing later can be trusted); name the test it hung in.
        found = hung_test(log, progress)
        outcome.note = f"pytest ended early, no results file: {found} (log: {log})"
    outcome.note = f"default start method {default_start_method(target, py)}" + (
        f"; {outcome.note}" if outcome.note else ""
    )
    return outcome


def run_logged(cmd: list[str], log: Path, progress: Path) -> int:
    """Run *cmd*, its output both shown and kept in *log*, the test it is running named in
    *progress* (tools/progress_plugin.py); its exit status (-1: timeout)."""
    deadline = time.monotonic() + SUITE_TIMEOUT
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env={**clean_env(), progress_plugin.VARIABLE: str(progress)},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.stdout.close()
        code = proc.wait()
    return -1 if time.monotonic() > deadline else code


def hung_test(log: Path, progress: Path) -> str:
    """What a pytest-timeout dump says: the test that hung (from *progress*: the dump does
    not name it, and a hang in a fixture's teardown has no test frame on any stack), then
    each thread's innermost frame, so that the tail of a CI log shows where each was."""
    text = log.read_text(encoding="utf-8", errors="replace")
    start = text.find("+ Timeout +")
    if start < 0:
        return "cause not found"
    try:
        test = progress.read_text(encoding="utf-8").strip() or "an unnamed test"
    except OSError:
        test = "an unnamed test"
    stacks = re.split(r"\n~+ Stack of (.+?) \(\d+\) ~+\n", text[start:])
    frames = []
    for name, stack in zip(stacks[1::2], stacks[2::2], strict=True):
        calls = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', stack)
        if calls:
            path, line, func = calls[-1]
            frames.append(f"{name}: {func} ({Path(path).name}:{line})")
    return f"a timeout in {test}; threads at: " + "; ".join(frames)


def report(outcome: Outcome) -> None:
    c = outcome.counts
    verdict = "ok" if outcome.code == 0 else f"FAILED (exit {outcome.code})"
    print(
        f"[other-pythons] {outcome.minor}: {verdict} in {outcome.seconds:.0f} s: "
        f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
        f"{c['skipped']} skipped; {outcome.note}"
    )
    methods = ", ".join(
        f"{m} {outcome.by_method[m]['passed']} passed/{outcome.by_method[m]['failed']} failed"
        f"/{outcome.by_method[m]['skipped']} skipped"
        for m in START_METHODS
        if m in outcome.by_method
    )
    if methods:
        print(f"[other-pythons] {outcome.minor}: parametrized by start method: {methods}")
    for test_id, first in outcome.failures:
        print(f"[other-pythons] {outcome.minor}: FAILED {test_id}: {first}")


@contextlib.contextmanager
def sid_session(needed: bool) -> Iterator[sid_root.Root | str | None]:
    """The Debian unstable root while the block runs; a string says why there is none."""
    if not needed:
        yield None
        return
    reason = sid_root.ensure_built()
    if reason:
        yield f"the Debian unstable root cannot be built here: {reason}"
        return
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(sid_root.session(ROOT))
        except sid_root.RootUnavailable as exc:
            yield f"the Debian unstable root cannot be used here: {exc}"
            return
        yield root


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="*", default=None, help="minor versions to run")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = args.versions or [v for v in WANTED if v != here]
    in_root = [v for v in wanted if v in sid_root.PYTHONS]
    pythons = pyenv_pythons()
    failed: list[str] = []
    outcomes: list[Outcome] = []
    with sid_session(bool(in_root)) as root:
        if isinstance(root, str):
            print(f"[other-pythons] {', '.join(in_root)}: skipped: {root}")
        for minor in wanted:
            if minor in sid_root.PYTHONS:
                if not isinstance(root, sid_root.Root):
                    continue
                target = Target(minor, f"python{minor}", root)
            elif minor in pythons:
                target = Target(minor, str(pythons[minor]))
            else:
                print(f"[other-pythons] {minor}: not installed (pyenv), skipped")
                continue
            try:
                outcome = run_suite(target, args.pytest_args)
            except subprocess.CalledProcessError as exc:
                outcome = Outcome(minor, exc.returncode, 0.0, note=f"venv set-up failed: {exc}")
            report(outcome)
            outcomes.append(outcome)
            if outcome.code != 0:
                failed.append(minor)
    totals: Counter[str] = sum((o.counts for o in outcomes), Counter())
    print(
        f"[other-pythons] {len(outcomes)} Pythons ({', '.join(o.minor for o in outcomes)}): "
        f"{totals['passed']} passed, {totals['failed'] + totals['errors']} failed, "
        f"{totals['skipped']} skipped"
    )
    if failed:
        print(f"[other-pythons] failed on: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
