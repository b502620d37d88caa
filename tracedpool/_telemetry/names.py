"""Every span name, attribute key, event name and environment variable tracedpool uses.

Nothing else in the package spells these strings: it imports them from here. The docs
table (``docs/names.md``) is generated from this module by ``make docs`` and a test fails
when it is stale.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class _Entry:
    kind: str  # "span", "attribute", "event", "metric", "env"
    value: str
    doc: str
    unit: str = ""


REGISTRY: list[_Entry] = []


def _reg(kind: str, value: str, doc: str) -> str:
    REGISTRY.append(_Entry(kind, value, doc))
    return value


def _metric(value: str, instrument: str, unit: str, doc: str) -> str:
    REGISTRY.append(_Entry("metric", value, f"{instrument}. {doc}", unit))
    return value


# -- spans -------------------------------------------------------------------------------
SPAN_TASK: Final = _reg(
    "span",
    "tracedpool.task",
    "One task, from `submit()` to the future's completion. Child of the span active at "
    "`submit()` (a root when none is). The stage spans below are its children.",
)
SPAN_SUBMIT: Final = _reg(
    "span", "tracedpool.submit", "The `submit()` call in the caller's thread (kind PRODUCER)."
)
SPAN_ENQUEUE: Final = _reg(
    "span",
    "tracedpool.enqueue",
    "Waiting from submit until the manager thread moves the item into the call queue "
    "(the future becomes RUNNING then).",
)
SPAN_FEEDER_SERIALIZE: Final = _reg(
    "span",
    "tracedpool.feeder-serialize",
    "Pickling the call item in the queue feeder thread and writing it to the call pipe.",
)
SPAN_WORKER_RUN: Final = _reg(
    "span",
    "tracedpool.worker-run",
    "The function running in the worker process, from unpickling the call to its return "
    "(kind CONSUMER). Spans the task's own code creates in the worker are its children.",
)
SPAN_SENDBACK: Final = _reg(
    "span",
    "tracedpool.sendback",
    "Pickling the result or exception in the worker and putting it on the result queue, "
    "until the parent has read it.",
)
SPAN_MANAGER_WAKE: Final = _reg(
    "span",
    "tracedpool.manager-wake",
    "One wake-up of the pool's manager thread, or a run of back-to-back wake-ups built "
    "together (`tracedpool.wake.count`), in the pool's own trace, linked to the tasks it "
    "served.",
)
SPAN_STALL: Final = _reg(
    "span",
    "tracedpool.stall",
    "A short span when the stall detector declares a stall, in the pool's trace, linked to "
    "the stuck tasks, with the diagnosis and the report's path.",
)
SPAN_DOCTOR_TEST: Final = _reg(
    "span",
    "tracedpool.doctor.test-span",
    "The one span `tracedpool doctor` sends to the configured OTLP endpoint to check that "
    "it accepts spans (with the configured `service.name`).",
)
SPAN_POOL: Final = _reg(
    "span",
    "tracedpool.pool",
    "The pool's lifetime (emitted at shutdown); parent of its `manager-wake` spans.",
)

STAGE_SPANS: Final = (
    SPAN_SUBMIT,
    SPAN_ENQUEUE,
    SPAN_FEEDER_SERIALIZE,
    SPAN_WORKER_RUN,
    SPAN_SENDBACK,
    SPAN_MANAGER_WAKE,
)

# -- attributes: semantic conventions ------------------------------------------------------
ATTR_CODE_FUNCTION: Final = _reg(
    "attribute",
    "code.function.name",
    "Fully qualified name of the user's function (for `map()`, the mapped function).",
)
ATTR_PROCESS_PID: Final = _reg(
    "attribute", "process.pid", "Pid of the process where the stage ran."
)
ATTR_THREAD_NAME: Final = _reg(
    "attribute", "thread.name", "Name of the thread where the stage ran."
)
ATTR_ERROR_TYPE: Final = _reg(
    "attribute", "error.type", "Qualified type name of the exception a task ended with."
)
ATTR_EXCEPTION_TYPE: Final = _reg(
    "attribute",
    "exception.type",
    "On an `exception` event: the exception's qualified type name.",
)
ATTR_EXCEPTION_MESSAGE: Final = _reg(
    "attribute",
    "exception.message",
    "On an `exception` event: its message (omitted with `TRACEDPOOL_RECORD_EXCEPTION_MESSAGES=0`).",
)
ATTR_EXCEPTION_STACKTRACE: Final = _reg(
    "attribute",
    "exception.stacktrace",
    "On an `exception` event: its stack trace, the worker's own for a task that raised "
    "there (omitted with `TRACEDPOOL_RECORD_EXCEPTION_MESSAGES=0`).",
)

# -- attributes: tracedpool ------------------------------------------------------------------
ATTR_TASK_ID: Final = _reg(
    "attribute",
    "tracedpool.task.id",
    "Task id, unique across pools: `<pool id>:<sequence>`. On every task and stage span.",
)
ATTR_POOL_ID: Final = _reg("attribute", "tracedpool.pool.id", "The pool's unique id.")
ATTR_POOL_NAME: Final = _reg(
    "attribute", "tracedpool.pool.name", "The `name=` given to the executor, if any."
)
ATTR_POOL_MAX_WORKERS: Final = _reg(
    "attribute", "tracedpool.pool.max_workers", "The pool's `max_workers`."
)
ATTR_POOL_START_METHOD: Final = _reg(
    "attribute",
    "tracedpool.pool.start_method",
    "On the pool span: how its workers start, `fork`, `spawn` or `forkserver`.",
)
ATTR_TASK_OUTCOME: Final = _reg(
    "attribute",
    "tracedpool.task.outcome",
    "How the future ended: `result`, `exception`, `cancelled` or `broken`.",
)
ATTR_ARG_TYPES: Final = _reg(
    "attribute",
    "tracedpool.task.arg_types",
    "Type names of the positional arguments (never their values).",
)
ATTR_KWARG_NAMES: Final = _reg(
    "attribute", "tracedpool.task.kwarg_names", "Names of the keyword arguments."
)
ATTR_RESULT_TYPE: Final = _reg(
    "attribute", "tracedpool.task.result_type", "Type name of the result (never its value)."
)
ATTR_ARGS_REPR: Final = _reg(
    "attribute",
    "tracedpool.task.args_repr",
    "Bounded, redacted repr of the arguments. Only with `record_values=True`.",
)
ATTR_RESULT_REPR: Final = _reg(
    "attribute",
    "tracedpool.task.result_repr",
    "Bounded, redacted repr of the result. Only with `record_values=True`.",
)
ATTR_MAP_CHUNKSIZE: Final = _reg(
    "attribute",
    "tracedpool.map.chunksize",
    "For tasks submitted by `map()`: the number of items in this chunk.",
)
ATTR_PAYLOAD_BYTES: Final = _reg(
    "attribute",
    "tracedpool.payload.bytes",
    "Size in bytes of the pickled call item written to the call pipe.",
)
ATTR_RESULT_BYTES: Final = _reg(
    "attribute",
    "tracedpool.result.bytes",
    "Size in bytes of the pickled result message read from the result pipe.",
)
ATTR_TASK_STAGE: Final = _reg(
    "attribute",
    "tracedpool.task.stage",
    "On the stage-duration metric: `queue`, `serialize`, `run`, `sendback` or `deliver`.",
)
ATTR_WAKE_REASON: Final = _reg(
    "attribute",
    "tracedpool.wake.reason",
    "Why the manager woke: `result`, `submit`, `shutdown`, `collected`, `exit`, "
    "`feeder-error`, `wakeup`, `worker-died` or `result-read-error`.",
)
ATTR_WAKE_IDLE_NS: Final = _reg(
    "attribute",
    "tracedpool.wake.idle_ns",
    "How long the manager was blocked waiting before this wake (the first of a run), in "
    "nanoseconds.",
)
ATTR_WAKE_TASKS: Final = _reg(
    "attribute", "tracedpool.wake.tasks", "Number of tasks this wake (or run) served."
)
ATTR_WAKE_COUNT: Final = _reg(
    "attribute",
    "tracedpool.wake.count",
    "Wake-ups the span covers: 1, or a run of back-to-back wake-ups queued together for "
    "span building (the same reason, `result` or `submit`; each after a wait under 1 ms; "
    "at most 128 tasks served).",
)
ATTR_FAULT_STAGE: Final = _reg(
    "attribute",
    "tracedpool.fault.stage",
    "Where a pickling fault struck: `feeder-serialize`, `worker-unpickle`, `sendback` or "
    "`result-unpickle`.",
)
ATTR_FAULT_TARGET: Final = _reg(
    "attribute",
    "tracedpool.fault.target",
    "Which object failed: `fn`, `args[<i>]`, `kwargs[<name>]`, `result` or `exception`.",
)
ATTR_FAULT_TYPE: Final = _reg(
    "attribute",
    "tracedpool.fault.object_type",
    "Type name of the object that failed to (un)pickle, where known.",
)
ATTR_BROKEN_REASON: Final = _reg(
    "attribute",
    "tracedpool.broken.reason",
    "Why the pool broke: `worker-died`, `worker-unpickle-failed`, `result-unpickle-failed`, "
    "`initializer-failed`, `result-read-failed`, `enqueue-failed` (the manager thread could "
    "not put a task on the call queue, 3.12+; on 3.12, a program that ends before the "
    "thread that feeds the workers has started), `stalled` (the stall detector broke it, "
    '`stall_action="break"`), `forced-shutdown` (`terminate_workers()` or `kill_workers()`, '
    "3.14+), the stdlib's own reasons on 3.14.10+ (`executor-collected`: the executor was "
    "garbage collected with work pending; `replacement-failed`: a replacement worker could "
    "not be started; `stdlib-reason`: a sentence tracedpool does not know, kept first in the "
    "message) or `unknown`.",
)
ATTR_FORCED_OPERATION: Final = _reg(
    "attribute",
    "tracedpool.forced.operation",
    "`terminate` or `kill`: which of `terminate_workers()` / `kill_workers()` was called.",
)
ATTR_FORCED_PIDS: Final = _reg(
    "attribute",
    "tracedpool.forced.worker_pids",
    "The workers that `terminate_workers()` / `kill_workers()` signalled (alive at the call).",
)
ATTR_WORKER_PID: Final = _reg(
    "attribute",
    "tracedpool.worker.pid",
    "Pid of the worker a broken-pool or slow-task event is about.",
)
ATTR_WORKER_EXITCODE: Final = _reg(
    "attribute",
    "tracedpool.worker.exitcode",
    "The worker's exit code, multiprocessing's convention: negative for a signal.",
)
ATTR_WORKER_SIGNAL: Final = _reg(
    "attribute", "tracedpool.worker.signal", "Signal name that ended the worker, e.g. SIGKILL."
)
ATTR_WORKER_OOM: Final = _reg(
    "attribute",
    "tracedpool.worker.oom_suspected",
    "True when a SIGKILLed worker was likely killed by the OOM killer: the cgroup's "
    "oom_kill count rose, or its last sampled RSS was at 80% or more of the cgroup limit.",
)
ATTR_WORKER_LAST_RSS: Final = _reg(
    "attribute",
    "tracedpool.worker.last_rss_bytes",
    "The dead worker's resident memory when last sampled (every 64 manager wakes).",
)
ATTR_BROKEN_ROLE: Final = _reg(
    "attribute",
    "tracedpool.broken.task_role",
    "This task's part in the breakage: `culprit` (ran on the dead worker or caused the "
    "fault), `bystander` (running elsewhere) or `queued`.",
)
ATTR_BROKEN_LOST: Final = _reg(
    "attribute", "tracedpool.broken.lost_tasks", "Ids of every task the breakage failed."
)

ATTR_STALL_DIAGNOSIS: Final = _reg(
    "attribute", "tracedpool.stall.diagnosis", "One line saying what is stuck and where."
)
ATTR_STALL_KIND: Final = _reg(
    "attribute",
    "tracedpool.stall.kind",
    "worker-stopped, worker-blocked, manager-blocked-callback, manager-blocked-read, "
    "manager-dead, feeder-dead, feeder-blocked, no-workers or no-progress.",
)
ATTR_STALL_REPORT: Final = _reg(
    "attribute", "tracedpool.stall.report", "Path of the stall report (JSON; .txt beside it)."
)
ATTR_SLOW_TASK_SECONDS: Final = _reg(
    "attribute",
    "tracedpool.slow_task.seconds",
    "How long the task had been running in its worker when the stall detector saw it "
    "still burning CPU past `stall_timeout`.",
)

# -- events ---------------------------------------------------------------------------------
EVENT_EXCEPTION: Final = _reg(
    "event",
    "exception",
    "OpenTelemetry's exception event (`exception.type`, `exception.message`, "
    "`exception.stacktrace`), on the span of the stage where a fault struck.",
)
EVENT_POOL_BROKEN: Final = _reg(
    "event",
    "tracedpool.pool-broken",
    "On every task span a broken pool failed: reason, worker pid, exit code, signal.",
)
EVENT_WORKERS_SIGNALLED: Final = _reg(
    "event",
    "tracedpool.workers-signalled",
    "On the span of every task that `terminate_workers()` or `kill_workers()` (3.14+) left "
    "unfinished (cancelled or failed), at the moment of the call: the operation, the signal, "
    "the worker pids signalled and every task it may have lost.",
)
EVENT_STALL: Final = _reg(
    "event",
    "tracedpool.stall",
    "On a stuck task's span, when it finally ends: the stall's diagnosis and report path.",
)
EVENT_SLOW_TASK: Final = _reg(
    "event",
    "tracedpool.slow-task",
    "On the span of a task that ran longer than `stall_timeout` while its worker kept "
    "using CPU: slow, not stuck (no stall report). Once per task, at the moment it was "
    "noticed, with `tracedpool.slow_task.seconds` and `tracedpool.worker.pid`.",
)
EVENT_INTERNAL_ERROR: Final = _reg(
    "event",
    "tracedpool.internal-error",
    "On a task's span: tracedpool's own instrumentation failed for this task (at the "
    "moment it failed, with `tracedpool.internal_error.where`); the task itself was "
    "unaffected. The first failure of each pool is also logged, with its traceback.",
)
ATTR_INTERNAL_ERROR_WHERE: Final = _reg(
    "attribute",
    "tracedpool.internal_error.where",
    "Where tracedpool's instrumentation failed for a task: `submit`, `enqueue`, `result` "
    "or `metrics`.",
)

ATTR_LOG_SEVERITY_TEXT: Final = _reg(
    "attribute",
    "tracedpool.log.severity_text",
    "On a `tracedpool.log` event: the record's level name (`WARNING`), the OpenTelemetry "
    "log data model's SeverityText.",
)
ATTR_LOG_SEVERITY_NUMBER: Final = _reg(
    "attribute",
    "tracedpool.log.severity_number",
    "On a `tracedpool.log` event: the level as the log data model's SeverityNumber "
    "(DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21).",
)
ATTR_LOG_LOGGER: Final = _reg(
    "attribute", "tracedpool.log.logger", "On a `tracedpool.log` event: the logger's name."
)
ATTR_LOG_MESSAGE: Final = _reg(
    "attribute",
    "tracedpool.log.message",
    "On a `tracedpool.log` event: the message, formatted with its arguments in the worker.",
)
ATTR_LOG_RECORDS_DROPPED: Final = _reg(
    "attribute",
    "tracedpool.log.records_dropped",
    "On a `worker-run` span: records the task logged that never reached the parent "
    "(past the per-task or per-worker bounds, or the log pipe was full).",
)
ATTR_CODE_FILE_PATH: Final = _reg(
    "attribute",
    "code.file.path",
    "On a `tracedpool.log` event: the source file that logged the record.",
)
ATTR_CODE_LINE_NUMBER: Final = _reg(
    "attribute",
    "code.line.number",
    "On a `tracedpool.log` event: the line that logged the record.",
)
EVENT_LOG: Final = _reg(
    "event",
    "tracedpool.log",
    "On a task's `worker-run` span: one record the task's own thread logged at or above "
    "the pool's `log_level` (at most 128 per task), at the moment it was logged, with "
    "`tracedpool.log.*`, `code.function.name`, `code.file.path`, `code.line.number`, "
    "`thread.name` and, for exception info, `exception.type`, `exception.message` and "
    "`exception.stacktrace` (those two omitted with "
    "`TRACEDPOOL_RECORD_EXCEPTION_MESSAGES=0`).",
)
# -- attributes of the log records re-emitted in the parent -----------------------------
RECORD_TASK_ID: Final = _reg(
    "record",
    "tracedpool_task_id",
    "The task that logged the record (`<pool id>:<sequence>`), or None for a record "
    "logged by another thread of the worker, or by its initializer.",
)
RECORD_WORKER_PID: Final = _reg(
    "record", "tracedpool_worker_pid", "The pid of the worker that logged the record."
)
RECORD_TRACE_ID: Final = _reg(
    "record",
    "tracedpool_trace_id",
    "The trace id (32 hex digits) of the span the record was logged in, or None.",
)
RECORD_SPAN_ID: Final = _reg(
    "record",
    "tracedpool_span_id",
    "The span id (16 hex digits) of the span the record was logged in (the task's "
    "`worker-run` span, or a span its code started), or None.",
)
# -- metrics ----------------------------------------------------------------------------------
# OpenTelemetry conventions: dot-separated, UCUM units (`s`, `By`, `{task}`), no unit or
# `_total` in the name, attributes from the tables above. Stage durations partition a
# traced task's life, so they add up to its duration (but for sub-microsecond gaps).
#: The values of ``tracedpool.task.stage`` on the stage-duration metric, in task order.
METRIC_STAGES: Final = ("queue", "serialize", "run", "sendback", "deliver")
METRIC_TASK_DURATION: Final = _metric(
    "tracedpool.task.duration",
    "Histogram",
    "s",
    "A traced task from `submit()` to its future's completion. Attributes: "
    "`code.function.name`, `tracedpool.task.outcome`, `error.type` when it failed, "
    "`tracedpool.pool.name` when set.",
)
METRIC_STAGE_DURATION: Final = _metric(
    "tracedpool.task.stage.duration",
    "Histogram",
    "s",
    "Time a traced task spent in one stage (`tracedpool.task.stage`): `queue` (waiting "
    "for the feeder, then for a free worker), `serialize`, `run`, `sendback`, `deliver` "
    "(unpickling the result and completing the future). Attributes: "
    "`tracedpool.task.stage`, `code.function.name`, `tracedpool.pool.name` when set.",
)
METRIC_PAYLOAD_SIZE: Final = _metric(
    "tracedpool.task.payload.size",
    "Histogram",
    "By",
    "Pickled size of a traced task's call (function and arguments). Attributes: "
    "`code.function.name`, `tracedpool.pool.name` when set.",
)
METRIC_RESULT_SIZE: Final = _metric(
    "tracedpool.task.result.size",
    "Histogram",
    "By",
    "Pickled size of a traced task's result message. Attributes as for the payload size.",
)
METRIC_PICKLING_FAULTS: Final = _metric(
    "tracedpool.pickling.faults",
    "Counter",
    "{fault}",
    "Pickling faults, by `tracedpool.fault.stage`. Feeder, worker-unpickle and "
    "result-unpickle faults are counted for every task; sendback faults for traced tasks.",
)
METRIC_POOL_BREAKS: Final = _metric(
    "tracedpool.pool.breaks",
    "Counter",
    "{break}",
    "Pools broken, by `tracedpool.broken.reason`.",
)
METRIC_STALLS: Final = _metric(
    "tracedpool.stalls",
    "Counter",
    "{stall}",
    "Stalls the stall detector declared, by `tracedpool.stall.kind`.",
)
METRIC_SPANS_DROPPED: Final = _metric(
    "tracedpool.spans.dropped",
    "Observable counter",
    "{record}",
    "Finished tasks (each a task span and its stage spans) and manager wakes whose spans "
    "were never built because span building fell too far behind (the emitter's backlog "
    "limit), per `tracedpool.pool.name` when set.",
)
METRIC_LOGS_DROPPED: Final = _metric(
    "tracedpool.logs.dropped",
    "Observable counter",
    "{record}",
    "Worker log records that never reached the parent's `logging`: over a per-task or "
    "per-worker bound, or written while the log pipe was full, or found malformed (the "
    "`log_records_dropped` of `pool.stats()`), per `tracedpool.pool.name` when set.",
)
METRIC_TASKS_PENDING: Final = _metric(
    "tracedpool.tasks.pending",
    "Observable up-down counter",
    "{task}",
    "Tasks submitted and not yet started on a worker, summed over live pools (per "
    "`tracedpool.pool.name` when set).",
)
METRIC_TASKS_RUNNING: Final = _metric(
    "tracedpool.tasks.running",
    "Observable up-down counter",
    "{task}",
    "Tasks running on a worker, summed likewise.",
)
METRIC_WORKERS_LIVE: Final = _metric(
    "tracedpool.workers.live",
    "Observable up-down counter",
    "{process}",
    "Live worker processes, summed likewise.",
)

# -- environment variables -------------------------------------------------------------------
ENV_RECORD_VALUES: Final = _reg(
    "env",
    "TRACEDPOOL_RECORD_VALUES",
    "`1` to record bounded, redacted reprs of arguments and results (default off).",
)
ENV_STALL_TIMEOUT: Final = _reg(
    "env",
    "TRACEDPOOL_STALL_TIMEOUT",
    "Default `stall_timeout` in seconds (60 if unset); `none` disables the stall detector.",
)
ENV_PY_SPY: Final = _reg(
    "env",
    "TRACEDPOOL_PY_SPY",
    "Path of the `py-spy` executable for stall snapshots (default: found on `PATH` or "
    "beside the Python executable); `off` to use only the unprivileged fallback "
    "(the parent's own frames and a signal-triggered dump in each worker).",
)
ENV_RECORD_EXCEPTION_MESSAGES: Final = _reg(
    "env",
    "TRACEDPOOL_RECORD_EXCEPTION_MESSAGES",
    "`0` to omit exception messages and stack traces from spans (default on).",
)
ENV_STALL_ACTION: Final = _reg(
    "env",
    "TRACEDPOOL_STALL_ACTION",
    "`stall_action` for pools that `tracedpool.instrument()` or the OpenTelemetry "
    "instrumentor traces: `report` (default) or `break`.",
)
ENV_STALL_REPORT_DIR: Final = _reg(
    "env",
    "TRACEDPOOL_STALL_REPORT_DIR",
    "`stall_report_dir` for pools that `tracedpool.instrument()` or the instrumentor traces.",
)
ENV_EXIT_EXPORT_TIMEOUT: Final = _reg(
    "env",
    "TRACEDPOOL_EXIT_EXPORT_TIMEOUT",
    "Seconds that interpreter exit waits for a `configure()`d provider to export what is "
    "left (default 3): past it, the spans still queued are counted in one warning and the "
    "process exits, however the collector behaves.",
)
ENV_RESCUE_UNPICKLABLE_RESULTS: Final = _reg(
    "env",
    "TRACEDPOOL_RESCUE_UNPICKLABLE_RESULTS",
    "`1` for `rescue_unpicklable_results=True` in pools that `tracedpool.instrument()` or "
    "the instrumentor traces (default off).",
)

#: The name of tracedpool's ``opentelemetry_instrumentor`` entry point: what
#: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names to switch it off. Stable.
INSTRUMENTOR_NAME: Final = "tracedpool"

#: The embedded default exporter's name in ``OTEL_TRACES_EXPORTER`` and its
#: ``opentelemetry_traces_exporter`` entry point (pyproject.toml). Stable.
EXPORTER_NAME: Final = "tracedpool_jsonl"

ENV_TRACE_FILE: Final = _reg(
    "env",
    "TRACEDPOOL_TRACE_FILE",
    "Path of the embedded default exporter's OTLP/JSON-lines file (default "
    "`$XDG_STATE_HOME/tracedpool/traces/traces.jsonl`, else "
    "`~/.local/state/tracedpool/traces/traces.jsonl`).",
)
ENV_TRACE_FILE_MAX_BYTES: Final = _reg(
    "env",
    "TRACEDPOOL_TRACE_FILE_MAX_BYTES",
    "Size at which the embedded default's file is rotated (default 16777216, 16 MiB).",
)
ENV_TRACE_FILE_COUNT: Final = _reg(
    "env",
    "TRACEDPOOL_TRACE_FILE_COUNT",
    "How many files the embedded default keeps, the current one included (default 3).",
)
ENV_HEARTBEAT_DIR: Final = _reg(
    "env",
    "TRACEDPOOL_HEARTBEAT_DIR",
    "Where each pool's stall watcher keeps its heartbeat file for `tracedpool doctor "
    "--probe` (default: a private per-user directory, `$TMPDIR/tracedpool-<uid>/heartbeats`); "
    "`none` turns heartbeats off.",
)


ENV_LOG_LEVEL: Final = _reg(
    "env",
    "TRACEDPOOL_LOG_LEVEL",
    "Default `log_level` of every pool: the lowest level of the records that workers "
    "send to the parent's `logging` (`WARNING` if unset; a level name or number); "
    "`off` leaves workers' logging as the stdlib does.",
)


def render_markdown() -> str:
    """The docs table of every name above."""
    titles = {
        "span": "Spans",
        "attribute": "Attributes",
        "event": "Events",
        "metric": "Metrics",
        "env": "Environment variables",
        "record": "Log record attributes (worker records re-emitted in the parent)",
    }
    out = [
        "# Names",
        "",
        "Generated from `tracedpool/_telemetry/names.py` by `make docs`; do not edit by hand.",
        "",
    ]
    for kind, title in titles.items():
        if kind == "metric":
            out += [f"## {title}", "", "| name | unit | meaning |", "|---|---|---|"]
            out += [f"| `{e.value}` | `{e.unit}` | {e.doc} |" for e in REGISTRY if e.kind == kind]
        else:
            out += [f"## {title}", "", "| name | meaning |", "|---|---|"]
            out += [f"| `{e.value}` | {e.doc} |" for e in REGISTRY if e.kind == kind]
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render_markdown()
    if len(argv) == 2 and argv[0] == "--write":
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    if argv:
        print("usage: main([--write PATH])", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
