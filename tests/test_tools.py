"""The test tools' own decisions (tools/): what the Debian root binds and copies, how
pytest's and the stdlib runner's results are read. They decide what ``make test``
reports, so a wrong count there would hide a failure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import other_pythons  # noqa: E402  (tools/ is not a package)
import sid_root  # noqa: E402
import stdlib_suite  # noqa: E402


def test_pip_configuration_is_copied_and_its_directories_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files that pip's configuration names are copied in; the directories it points to
    are bound, an index's ``simple/`` by its parent (its pages link to ``../../files``)."""
    wheels = tmp_path / "wheels"
    (tmp_path / "index" / "simple").mkdir(parents=True)
    wheels.mkdir()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("", encoding="utf-8")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nconstraint = {constraints}\n", encoding="utf-8")
    monkeypatch.setattr(sid_root, "PIP_CONFIG_FILES", ())
    monkeypatch.setattr(sid_root, "PIP_CONFIG_DIRS", ())
    for name in sid_root.PIP_PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{tmp_path}/index/simple")
    copies, dirs = sid_root.pip_paths()
    assert set(copies) == {config, constraints}
    assert dirs == sorted([wheels, tmp_path / "index"])


def test_a_mount_point_is_found_even_within_one_filesystem() -> None:
    """The mount table, not st_dev, decides: a bind mount shares its source's device."""
    assert sid_root.is_mountpoint(Path("/proc"))
    assert not sid_root.is_mountpoint(Path("/proc/self"))


def test_junit_counts_failures_skips_and_start_methods(tmp_path: Path) -> None:
    """Each failure keeps its first line; parametrized ids count per start method."""
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_x[fork]">'
        '<failure message="AssertionError: boom&#10;detail">tb</failure></testcase>'
        '<testcase classname="tests.test_a" name="test_y[forkserver]">'
        '<skipped message="no"/></testcase>'
        '<testcase classname="tests.test_a" name="test_z[spawn-2]"/>'
        '<testcase classname="tests.test_b" name="test_plain"/>'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    outcome = other_pythons.Outcome("3.14", 1, 0.0)
    other_pythons.read_junit(xml, outcome)
    assert outcome.counts == {"passed": 2, "failed": 1, "skipped": 1}
    assert outcome.failures == [("tests.test_a::test_x[fork]", "AssertionError: boom")]
    assert outcome.by_method["fork"]["failed"] == 1
    assert outcome.by_method["forkserver"]["skipped"] == 1
    assert outcome.by_method["spawn"]["passed"] == 1


def test_a_hang_between_tests_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    """A module fixture that hangs after progress gets a record of its own, named for its
    module, and the tests after it are still to run (not all charged as crashes)."""
    log = tmp_path / "run.log"
    log.write_text("Timeout (0:01:00)!\nThread 0x1 (most recent call first):\n", encoding="utf-8")
    ids = ["test.pkg.mod.C.test_1", "test.pkg.mod.C.test_2", "test.pkg.other.D.test_3"]
    events = [
        {"event": "plan", "ids": ids},
        {"event": "start", "id": ids[0]},
        {"event": "end", "id": ids[0], "outcome": "pass", "seconds": 0.1},
        {"event": "start", "id": ids[1]},
        {"event": "end", "id": ids[1], "outcome": "pass", "seconds": 0.1},
    ]
    run = stdlib_suite.RunResult()
    remaining = stdlib_suite.absorb(run, json.loads(json.dumps(events)), 1, log, 0)
    assert remaining == [ids[2]]
    assert run.records["fixture (test.pkg.mod)"].outcome == "timeout"
    # A re-run on the plain stdlib covers the fixture's whole module.
    assert stdlib_suite.context_ids(["fixture (test.pkg.mod)"], ids) == ids[:2]
    assert stdlib_suite.tally(run) == (3, 1, 0)


def test_a_hang_in_a_fixture_teardown_is_named_with_every_thread(tmp_path: Path) -> None:
    """A real pytest run that hangs in a fixture's teardown, ended by pytest-timeout's
    thread method: the report names the test (no test frame is on any stack then) and
    where each of the other threads was."""
    (tmp_path / "test_stuck.py").write_text(
        "import threading, pytest\n"
        "@pytest.fixture\n"
        "def stuck():\n"
        "    yield\n"
        "    threading.Event().wait()\n"
        "def test_teardown_hangs(stuck):\n"
        "    pass\n",
        encoding="utf-8",
    )
    log, progress = tmp_path / "run.log", tmp_path / "progress"
    # Its own root: the node id must not depend on what lies above the temporary directory.
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    pytest += [f"--rootdir={tmp_path}", "-c", os.devnull]
    pytest += ["-p", "tools.progress_plugin", "-o", "timeout=2", "-o", "timeout_method=thread"]
    code = other_pythons.run_logged([*pytest, str(tmp_path)], log, progress)
    assert code == 1
    found = other_pythons.hung_test(log, progress)
    assert found.startswith("a timeout in test_stuck.py::test_teardown_hangs; threads at: ")
    assert "MainThread: wait (threading.py:" in found
