"""A pytest plugin for tools/other_pythons.py: names, in the file that
``TRACEDPOOL_TEST_PROGRESS`` gives, the test about to run.

pytest-timeout's thread method ends the whole run on a hang, before any results file is
written, and its dump leaves out the one thread that is named after the test. When the
hang is in a fixture's teardown, no test function is on any stack either. This file is
then the only record of which test hung.

Loaded with ``-p tools.progress_plugin`` from the checkout's root (``python -m pytest``
puts the working directory on ``sys.path``)."""

from __future__ import annotations

import os

VARIABLE = "TRACEDPOOL_TEST_PROGRESS"


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    path = os.environ.get(VARIABLE)
    if path:
        with open(path, "w", encoding="utf-8") as out:
            out.write(nodeid + "\n")
