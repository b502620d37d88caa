"""Zero-code instrumentation: make the stdlib ``ProcessPoolExecutor`` a traced pool.

``instrument()`` replaces the stdlib class's ``__init__`` with a small dispatcher: when
the object being built is exactly a stdlib ``ProcessPoolExecutor``, it turns it into an
instance of a private ``TracedProcessPoolExecutor`` subclass (``__class__`` assignment,
before any state exists) and initializes it as one; anything else (our own pools, the
user's subclasses) goes to the original ``__init__`` unchanged. ``uninstrument()`` puts
the original function back, so the class is exactly what it was.

Patching the class rather than substituting a name reaches every way code can name the
class: ``concurrent.futures.ProcessPoolExecutor`` (resolved lazily by that package's
module ``__getattr__``), ``concurrent.futures.process.ProcessPoolExecutor``, a
``from concurrent.futures import ProcessPoolExecutor`` done before or after
``instrument()``, references held in closures and default arguments, and
``isinstance``/``issubclass`` checks, which all keep seeing the stdlib class (see
docs/rationale.md). What it cannot reach: pools created before ``instrument()``, and
user subclasses of ``ProcessPoolExecutor`` (they are built by their own class, which
tracedpool will not re-parent); code that checks ``type(pool) is ProcessPoolExecutor``
sees the traced subclass.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from concurrent.futures import process as _cfp
from typing import Any

from .._telemetry import names as N

log = logging.getLogger("tracedpool")

#: The executor's keyword-only options that ``instrument()`` accepts and passes on.
OPTIONS = (
    "tracer_provider",
    "meter_provider",
    "name",
    "record_values",
    "record_exception_messages",
    "rescue_unpicklable_results",
    "stall_timeout",
    "stall_report_dir",
    "on_stall",
    "stall_action",
)

_lock = threading.Lock()
_installed: _Installed | None = None


class _Installed:
    """What instrument() changed, so that uninstrument() can put it back exactly."""

    def __init__(self, original_init: Any, options: dict[str, Any]) -> None:
        self.original_init = original_init
        self.patched_init: Any = None
        self.options = options
        self.live = True  # False once uninstrumented: a patch left in place passes through


def options_from_env() -> dict[str, Any]:
    """Options for zero-code use that the executor does not already read from the
    environment itself (it reads the stall timeout, record-values and exception-message
    switches at each pool's construction)."""
    options: dict[str, Any] = {}
    action = os.environ.get(N.ENV_STALL_ACTION, "").strip()
    if action:
        options["stall_action"] = action
    report_dir = os.environ.get(N.ENV_STALL_REPORT_DIR, "").strip()
    if report_dir:
        options["stall_report_dir"] = report_dir
    rescue = os.environ.get(N.ENV_RESCUE_UNPICKLABLE_RESULTS, "").strip()
    if rescue:
        from .executor import _env_flag

        options["rescue_unpicklable_results"] = _env_flag(N.ENV_RESCUE_UNPICKLABLE_RESULTS, False)
    return options


def _validate(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"instrument() got unknown option(s) {', '.join(unknown)}; it accepts the "
            f"executor's keyword-only options: {', '.join(OPTIONS)}"
        )
    # Bad configuration fails here, once, rather than at every pool the app creates.
    from .._diagnosis.stall import _DEFAULT, StallConfig
    from .executor import _env_flag

    StallConfig.from_options(
        options.get("stall_timeout", _DEFAULT),
        options.get("stall_report_dir"),
        options.get("on_stall"),
        options.get("stall_action", "report"),
    )
    if "record_values" not in options:
        _env_flag(N.ENV_RECORD_VALUES, False)
    if "record_exception_messages" not in options:
        _env_flag(N.ENV_RECORD_EXCEPTION_MESSAGES, True)


def instrument(**options: Any) -> bool:
    """Make every stdlib ``ProcessPoolExecutor`` created from now on a traced pool.

    Takes ``TracedProcessPoolExecutor``'s keyword-only options (``stall_timeout``,
    ``record_values``, ``tracer_provider``...), applied to every pool it instruments;
    a pool's own constructor arguments are passed through untouched. Options not given
    come from the ``TRACEDPOOL_*`` environment variables, as for a traced pool.

    Returns True when it instrumented, False when already instrumented (the first
    call's options stay in force; call ``uninstrument()`` first to change them).
    Raises ``TypeError``/``ValueError`` for bad options, before changing anything.
    """
    global _installed
    merged = {**options_from_env(), **options}
    _validate(merged)
    with _lock:
        if _installed is not None:
            return False
        from .executor import TracedProcessPoolExecutor

        stdlib = _cfp.ProcessPoolExecutor
        original = stdlib.__dict__["__init__"]
        frozen = dict(merged)
        installed = _Installed(original, frozen)

        class InstrumentedProcessPoolExecutor(TracedProcessPoolExecutor):
            """A stdlib ``ProcessPoolExecutor`` that ``tracedpool.instrument()`` traced."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                for key, value in frozen.items():
                    kwargs.setdefault(key, value)
                super().__init__(*args, **kwargs)

        InstrumentedProcessPoolExecutor.__module__ = __name__

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            # Only the stdlib class itself: our own pools reach here through super(),
            # and a user's subclass keeps the behaviour its author wrote.
            if type(self) is stdlib and installed.live:
                self.__class__ = InstrumentedProcessPoolExecutor
                InstrumentedProcessPoolExecutor.__init__(self, *args, **kwargs)  # type: ignore[arg-type]
                return
            original(self, *args, **kwargs)

        installed.patched_init = __init__
        stdlib.__init__ = __init__  # type: ignore[method-assign]
        _installed = installed
        return True


def uninstrument() -> bool:
    """Restore the stdlib ``ProcessPoolExecutor`` exactly; pools already traced stay
    traced until they shut down. Returns False when it was not instrumented."""
    global _installed
    with _lock:
        installed = _installed
        if installed is None:
            return False
        stdlib = _cfp.ProcessPoolExecutor
        if stdlib.__dict__.get("__init__") is not installed.patched_init:
            # Someone patched over us: taking ours out would take theirs out too. Leave
            # the chain in place; ours passes through to the original once we forget it.
            log.warning(
                "tracedpool: ProcessPoolExecutor.__init__ was replaced after "
                "tracedpool.instrument(); leaving it as it is"
            )
        else:
            stdlib.__init__ = installed.original_init  # type: ignore[method-assign]
        installed.live = False
        _installed = None
        return True


def is_instrumented() -> bool:
    """True between ``instrument()`` and ``uninstrument()``."""
    return _installed is not None
