"""Run tracedpool's test suite on every other installed CPython 3.10 to 3.13.

The stdlib's process-pool internals differ per version, so the suite runs on each
interpreter pyenv provides (``pyenv versions --bare``), each in its own virtualenv
``.venv-<X.Y>`` with the test extras. A version that is not installed is skipped with
one line saying so. Exit status: non-zero if any suite failed.

Usage: python tools/other_pythons.py [--versions 3.10 3.12 3.13] [-- pytest args]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WANTED = ("3.10", "3.11", "3.12", "3.13")
SUITE_TIMEOUT = 900  # seconds per interpreter; pytest-timeout bounds each test inside


def installed_pythons() -> dict[str, Path]:
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


def ensure_venv(minor: str, python: Path) -> Path:
    venv = ROOT / f".venv-{minor}"
    py = venv / "bin" / "python"
    stamp = venv / ".stamp"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return py
    subprocess.run([str(python), "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    stamp.touch()
    return py


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="*", default=None, help="minor versions to run")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = args.versions or [v for v in WANTED if v != here]
    pythons = installed_pythons()
    failed: list[str] = []
    for minor in wanted:
        python = pythons.get(minor)
        if python is None:
            print(f"[other-pythons] {minor}: not installed, skipped")
            continue
        t0 = time.monotonic()
        py = ensure_venv(minor, python)
        cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args]
        print(f"[other-pythons] {minor}: {' '.join(cmd[1:])}", flush=True)
        try:
            result = subprocess.run(cmd, cwd=ROOT, timeout=SUITE_TIMEOUT, check=False)
            code = result.returncode
        except subprocess.TimeoutExpired:
            code = -1
        took = time.monotonic() - t0
        print(f"[other-pythons] {minor}: {'ok' if code == 0 else 'FAILED'} in {took:.0f} s")
        if code != 0:
            failed.append(minor)
    if failed:
        print(f"[other-pythons] failed on: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
