"""Start-up hooks for the stdlib-suite virtualenvs (copied there by tools/stdlib_suite.py).

A ``.pth`` file in the venv's site-packages calls these functions in every interpreter that
the venv starts: the test runner itself and the fresh interpreters that CPython's tests start
(``script_helper.assert_python_ok`` runs them with ``-I``, which ignores PYTHON* variables
but still processes ``.pth`` files; spawn and forkserver workers are fresh interpreters too).

``install_sdk`` (the traced-sdk mode only) makes an always-on SDK provider the global one.
The hooks must stay cheap and silent: some tests assert that a child's stderr is empty.
This file is never imported by the project; it is written for Python 3.11 and later.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec, PathFinder


def substitute() -> None:
    """Make tracedpool's executor the one that ``concurrent.futures`` hands out.

    ``concurrent.futures`` exposes ProcessPoolExecutor through a module ``__getattr__``
    (3.7 and later, unchanged up to 3.15) that imports ``.process`` on first access and
    then caches the class in the module's globals. Setting the global ourselves therefore
    wins over the lazy hook for both ``futures.ProcessPoolExecutor`` and
    ``from concurrent.futures import ProcessPoolExecutor``.
    """
    # tracedpool subclasses the original class at import time, so it must be imported while
    # the attributes still name the original; replacing them first would recurse.
    import concurrent.futures
    import concurrent.futures.process

    import tracedpool

    traced = tracedpool.TracedProcessPoolExecutor
    concurrent.futures.ProcessPoolExecutor = traced  # type: ignore[misc]
    concurrent.futures.process.ProcessPoolExecutor = traced  # type: ignore[misc]
    # test_shutdown formats `from concurrent.futures import {executor_type.__name__}` into the
    # code of a child interpreter, so the class must also be importable under its own name.
    setattr(concurrent.futures, traced.__name__, traced)


def dump_stacks_on_sigusr1() -> None:
    """Write every thread's stack to stderr on SIGUSR1.

    tools/stdlib_suite.py sends it to the processes of a run that hung or crashed before
    killing them, so a hang inside a pool worker leaves its stacks in the log. Silent until
    then; faulthandler's fatal-error handling stays off.
    """
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)


class _ExternalTestsFinder:
    """Finds ``test.<name>`` in a directory outside this interpreter's own ``test`` package.

    Used where the interpreter ships ``test`` without ``test_concurrent_futures`` and the
    tests come from elsewhere (Debian's libpython3.X-testsuite). Placed last on
    ``sys.meta_path``, so the interpreter's own tests would win if it had them. Keeping the
    ``test.`` prefix matters: the tests pickle functions by module name and name
    ``test.test_concurrent_futures`` in the code of the child interpreters they start.
    """

    def __init__(self, test_dir: str, names: frozenset[str]) -> None:
        self._test_dir = test_dir
        self._names = names

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> ModuleSpec | None:
        # Submodules of a package found here are found through its __path__ as usual.
        if fullname not in self._names:
            return None
        return PathFinder.find_spec(fullname, [self._test_dir])


def add_test_dir(test_dir: str, *modules: str) -> None:
    """Let ``import test.<module>`` find each of *modules* in *test_dir*."""
    names = frozenset(f"test.{module}" for module in modules)
    sys.meta_path.append(_ExternalTestsFinder(test_dir, names))


class _NullExporter:
    """Accepts every batch and drops it: spans are built and exported, nowhere."""

    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def install_sdk() -> None:
    """Make an always-on SDK provider the global one, as a traced service would have.

    A ``TracerProvider`` (the default sampler records every span) with a
    ``BatchSpanProcessor`` over a null exporter: tracedpool builds every span and the
    processor's thread exports them, so the tests run the whole tracing path.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Debian's 3.14 and 3.15 process a venv's .pth files twice (their site.py adds the
    # venv's site-packages in venv() and again in main()); a second provider would only
    # be refused, with a warning on stderr that some tests count as a failure.
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NullExporter()))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
