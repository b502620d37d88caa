"""tracedpool's fault injectors, the fault table and the small tasks its tests submit.

Not part of the installed package: only tracedpool's tests, benchmarks and examples use
them (they put this directory on ``sys.path``). Everything here is importable by module
name, so it works in workers under fork, spawn and forkserver: pytest puts ``tests/`` on
``sys.path`` (rootdir conftest, no ``__init__.py``), and spawn and forkserver workers
start with the parent's ``sys.path``. The injectors cause real faults: real pickling
errors, real ``SystemExit`` raised inside ``__reduce__``, real signals, real segfaults.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from tracedpool._telemetry import names as N

# -- objects that fail at a chosen moment --------------------------------------------------


class ErrorAtPickle:
    """Raises ``PicklingError``-like ``ValueError`` when pickled."""

    def __reduce__(self) -> Any:
        raise ValueError("ErrorAtPickle refuses to be pickled")


class ExitAtPickle:
    """Raises ``SystemExit`` when pickled: kills the stdlib's feeder thread."""

    def __reduce__(self) -> Any:
        raise SystemExit(0)


class CustomBaseError(BaseException):
    """A ``BaseException`` that is none of the stdlib's own."""


class RaiseAtPickle:
    """Raises the given ``BaseException`` subclass when pickled (``KeyboardInterrupt``,
    ``GeneratorExit``, ...): like ``ExitAtPickle``, it kills the stdlib's feeder thread."""

    def __init__(self, exc_type: type[BaseException]) -> None:
        self.exc_type = exc_type

    def __repr__(self) -> str:
        return f"RaiseAtPickle({self.exc_type.__name__})"

    def __reduce__(self) -> Any:
        raise self.exc_type(f"{self.exc_type.__name__} raised by __reduce__")


def deeply_nested(depth: int = 100_000) -> list[Any]:
    """A list nested ``depth`` levels: pickling it raises ``RecursionError``."""
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


def _raise_on_load(message: str) -> Any:
    raise ValueError(message)


def _exit_on_load() -> Any:
    raise SystemExit(3)


class ErrorAtUnpickle:
    """Pickles fine; raises ``ValueError`` when unpickled."""

    def __reduce__(self) -> Any:
        return (_raise_on_load, ("ErrorAtUnpickle cannot be rebuilt",))


class ExitAtUnpickle:
    """Pickles fine; raises ``SystemExit(3)`` when unpickled."""

    def __reduce__(self) -> Any:
        return (_exit_on_load, ())


class CallableErrorAtUnpickle:
    """A callable whose own unpickling fails in the worker (the ``fn`` target)."""

    def __call__(self, *args: Any) -> Any:
        return args

    def __reduce__(self) -> Any:
        return (_raise_on_load, ("the function cannot be rebuilt",))


class Unpicklable:
    """Holds a lock, so pickling raises ``TypeError``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


class NotRebuildableError(Exception):
    """Pickles in the worker, fails to unpickle in the parent (``__init__`` signature)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


# -- task functions ------------------------------------------------------------------------


def identity(*args: Any, **kwargs: Any) -> Any:
    return args[0] if len(args) == 1 and not kwargs else (args, kwargs)


def getpid(*_: Any) -> int:
    return os.getpid()


def sleep_then(value: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return value


def return_instance(cls: type) -> Any:
    return cls()


def return_unpicklable() -> Any:
    return threading.Lock()


def raise_error(message: str = "boom") -> Any:
    raise RuntimeError(message)


def raise_not_rebuildable() -> Any:
    raise NotRebuildableError(42, "disk full")


def raise_with_lock() -> Any:
    e = ValueError("original error")
    e.lock = threading.Lock()  # type: ignore[attr-defined]
    raise e


#: The signals on which an enabled faulthandler prints a "Fatal Python error" report.
_REPORTED_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS, signal.SIGILL}
)


def quiet_deliberate_crash() -> None:
    """Turns off faulthandler's fatal-error report in this process, which is about to
    crash on purpose. A forked worker inherits its parent's faulthandler, and pytest's
    writes to the terminal past output capture: each deliberate crash would print its
    stacks into the log of a passing test run. Crashes nobody asked for still report."""
    faulthandler.disable()


def kill_self(signum: int, delay: float = 0.0) -> Any:
    """Sends ``signum`` to its own worker, after ``delay`` seconds."""
    if delay:
        time.sleep(delay)
    if signum in _REPORTED_SIGNALS:
        quiet_deliberate_crash()
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault() -> Any:
    quiet_deliberate_crash()
    faulthandler._sigsegv()  # type: ignore[attr-defined]


def exit_with(code: int) -> Any:
    os._exit(code)


def bytes_of(n: int) -> bytes:
    """A result of ``n`` bytes."""
    return b"x" * n


def _crash(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "segfault":
        import ctypes

        quiet_deliberate_crash()
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    else:
        raise RuntimeError("CrashOnDel.__del__ raised")


class CrashOnDel:
    """Crashes its process when deleted there (``how``: "exit" is ``os._exit(3)``,
    "segfault" a real SIGSEGV, "raise" an exception, which Python only prints), but only
    in the one process where it is armed. Made in the parent it is armed by unpickling
    (it arms itself in the worker that receives it as an argument); made by
    ``crash_on_del_result`` it is armed in the worker and its copy sent back is not."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.home = -1  # armed in the process that unpickles it

    def __reduce__(self) -> Any:
        return (_rebuild_crash_on_del, (self.how, self.home == -1))

    def __del__(self) -> None:
        if self.home == os.getpid():
            _crash(self.how)


def _rebuild_crash_on_del(how: str, arm: bool) -> CrashOnDel:
    obj = CrashOnDel(how)
    obj.home = os.getpid() if arm else 0
    return obj


def crash_on_del_result(how: str) -> CrashOnDel:
    """Returns an object that crashes the worker when the worker drops it: after the
    result was sent (the stdlib deletes its reference to the result then)."""
    obj = CrashOnDel(how)
    obj.home = os.getpid()
    return obj


def ignore_first(_ignored: Any, value: Any) -> Any:
    return value


def failing_initializer() -> None:
    raise RuntimeError("bad config in initializer")


def traced_work(x: int) -> int:
    """Creates a span of its own with the OpenTelemetry API, inside the worker."""
    tracer = trace.get_tracer("faults")
    with tracer.start_as_current_span("user-inner") as span:
        span.set_attribute("user.x", x)
        with tracer.start_as_current_span("user-innermost"):
            pass
    return x * 2


# -- the fault table -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultCase:
    """One fault: what to submit, where it strikes, what the caller and the spans see."""

    name: str
    stage: str  # where it strikes
    fn: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    exception: type[BaseException] = Exception
    # attributes expected on the fault's exception event (or broken-pool event)
    attrs: dict[str, Any] = field(default_factory=dict)
    breaks_pool: bool = False
    reason: str | None = None  # tracedpool.broken.reason when the pool breaks


def fault_table() -> list[FaultCase]:
    """Every stage and target kind: fn, each args position, kwargs, result, exception."""
    import pickle
    from concurrent.futures.process import BrokenProcessPool

    feeder = "feeder-serialize"
    return [
        FaultCase(
            "lambda-fn",
            feeder,
            lambda: None,
            exception=(pickle.PicklingError, AttributeError),  # type: ignore[arg-type]
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "fn"},
        ),
        FaultCase(
            "lock-args0",
            feeder,
            identity,
            (Unpicklable(),),
            exception=TypeError,
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "args[0]"},
        ),
        FaultCase(
            "error-args1",
            feeder,
            identity,
            (1, ErrorAtPickle()),
            exception=ValueError,
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "args[1]"},
        ),
        FaultCase(
            "lock-kwargs",
            feeder,
            identity,
            (1,),
            {"key": Unpicklable()},
            exception=TypeError,
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "kwargs[key]"},
        ),
        FaultCase(
            "sysexit-args1",
            feeder,
            identity,
            (1, ExitAtPickle()),
            exception=pickle.PicklingError,
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "args[1]"},
        ),
        *[
            FaultCase(
                f"{exc_type.__name__.lower()}-args0",
                feeder,
                identity,
                (RaiseAtPickle(exc_type),),
                exception=pickle.PicklingError,
                attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "args[0]"},
            )
            for exc_type in (KeyboardInterrupt, GeneratorExit, CustomBaseError)
        ],
        FaultCase(
            "recursion-args1",
            feeder,
            identity,
            (1, deeply_nested()),
            exception=RecursionError,
            attrs={N.ATTR_FAULT_STAGE: feeder, N.ATTR_FAULT_TARGET: "args[1]"},
        ),
        FaultCase(
            "unpickle-args1",
            "worker-unpickle",
            identity,
            (1, ErrorAtUnpickle()),
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "worker-unpickle", N.ATTR_FAULT_TARGET: "args[1]"},
            breaks_pool=True,
            reason="worker-unpickle-failed",
        ),
        FaultCase(
            "unpickle-kwargs",
            "worker-unpickle",
            identity,
            (1,),
            {"bad": ErrorAtUnpickle()},
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "worker-unpickle", N.ATTR_FAULT_TARGET: "kwargs[bad]"},
            breaks_pool=True,
            reason="worker-unpickle-failed",
        ),
        FaultCase(
            "unpickle-fn",
            "worker-unpickle",
            CallableErrorAtUnpickle(),
            (1,),
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "worker-unpickle", N.ATTR_FAULT_TARGET: "fn"},
            breaks_pool=True,
            reason="worker-unpickle-failed",
        ),
        FaultCase(
            "exit-unpickle-args0",
            "worker-unpickle",
            identity,
            (ExitAtUnpickle(),),
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "worker-unpickle", N.ATTR_FAULT_TARGET: "args[0]"},
            breaks_pool=True,
            reason="worker-unpickle-failed",
        ),
        FaultCase(
            "sendback-result",
            "sendback",
            return_unpicklable,
            exception=TypeError,
            attrs={N.ATTR_FAULT_STAGE: "sendback", N.ATTR_FAULT_TARGET: "result"},
        ),
        FaultCase(
            "sendback-exception",
            "sendback",
            raise_with_lock,
            exception=TypeError,
            attrs={N.ATTR_FAULT_STAGE: "sendback", N.ATTR_FAULT_TARGET: "exception"},
        ),
        FaultCase(
            "result-unpickle",
            "result-unpickle",
            return_instance,
            (ErrorAtUnpickle,),
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "result-unpickle", N.ATTR_FAULT_TARGET: "result"},
            breaks_pool=True,
            reason="result-unpickle-failed",
        ),
        FaultCase(
            "exception-unpickle",
            "result-unpickle",
            raise_not_rebuildable,
            exception=BrokenProcessPool,
            attrs={N.ATTR_FAULT_STAGE: "result-unpickle", N.ATTR_FAULT_TARGET: "exception"},
            breaks_pool=True,
            reason="result-unpickle-failed",
        ),
        FaultCase(
            "sigkill",
            "worker-run",
            kill_self,
            (signal.SIGKILL,),
            exception=BrokenProcessPool,
            attrs={N.ATTR_WORKER_SIGNAL: "SIGKILL", N.ATTR_WORKER_EXITCODE: -9},
            breaks_pool=True,
            reason="worker-died",
        ),
        FaultCase(
            "segfault",
            "worker-run",
            segfault,
            exception=BrokenProcessPool,
            attrs={N.ATTR_WORKER_SIGNAL: "SIGSEGV", N.ATTR_WORKER_EXITCODE: -11},
            breaks_pool=True,
            reason="worker-died",
        ),
        FaultCase(
            "exit-code",
            "worker-run",
            exit_with,
            (3,),
            exception=BrokenProcessPool,
            attrs={N.ATTR_WORKER_EXITCODE: 3},
            breaks_pool=True,
            reason="worker-died",
        ),
    ]


def configure_sdk_in_worker() -> None:
    """An initializer that sets up the SDK in the worker, as many users do: a batch
    processor that, left alone, would lose every span at the worker's ``os._exit``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the worker
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sink)))
    trace.set_tracer_provider(provider)


def busy(seconds: float) -> int:
    """Burns CPU for ``seconds``: slow, never stuck."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def stop_self_later(delay: float) -> int:
    """Stops its own worker with SIGSTOP after ``delay`` (as a debugger or a frozen
    container would); another process must SIGCONT or SIGKILL it."""
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGSTOP)
    return os.getpid()


#: A lock a parent thread can hold while workers are forked: each worker then inherits
#: it locked, with no thread of its own to release it.
INHERITED_LOCK = threading.Lock()


def take_inherited_lock() -> int:
    """Acquires ``INHERITED_LOCK`` in the worker: blocks for ever if it was held at fork."""
    INHERITED_LOCK.acquire()
    INHERITED_LOCK.release()
    return os.getpid()


def _sleep_on_load(seconds: float) -> None:
    time.sleep(seconds)


class SlowToUnpickle:
    """Pickles fine; unpickling it sleeps ``seconds`` (a worker stuck before its task)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        return (_sleep_on_load, (self.seconds,))


def big_result(nbytes: int) -> bytes:
    """A result too large for the pipe's buffer: the worker blocks until it is read."""
    return b"x" * nbytes


def exit_leaving_child(pid_file: str, seconds: float) -> Any:
    """Exits the worker abruptly after forking a child that outlives it for ``seconds``.
    The child inherits the worker's end of the pipe the parent watches to learn that the
    worker died, so the stdlib never notices (the child's pid goes to ``pid_file``)."""
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    with open(pid_file, "w") as f:
        f.write(str(child))
    os._exit(1)


def make_undumpable() -> None:
    """An initializer: the worker refuses ptrace from anyone without CAP_SYS_PTRACE, as a
    process that changed credentials does (Linux ``PR_SET_DUMPABLE``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
