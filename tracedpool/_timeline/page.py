"""``tracedpool timeline``: a self-contained HTML page from an OTLP/JSON-lines trace file.

The input is what the embedded default exporter writes: one ``ExportTraceServiceRequest``
JSON object per line (``resourceSpans[].scopeSpans[].spans[]``, hex ids, times as decimal
strings, integer enums, attributes as ``{key, value: {stringValue|intValue|...}}``), read
with its rotated predecessors by ``_otlpjson``'s decoder.

The page needs no network: CSS and SVG are inline, tooltips are SVG ``<title>`` elements,
and every string that came from the trace (function names, diagnoses, thread names) is
HTML-escaped. It shows

* one lane per worker process (what ran there: ``run`` then ``sendback`` of each task)
  and, per pool, lanes for the parent's feeder thread (``serialize``) and manager thread
  (its wakes, and stalls);
* one row per task, its bar split into its stages, with faults and stalls marked, and a
  mark where its ``worker-run`` span has ``tracedpool.log`` events (the worker's log
  records: listed on hover, and in a "Worker logs" list that opens on click);
* where the time went, stage by stage, with the same stage definitions as the
  ``tracedpool.task.stage.duration`` metric.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._jsonfile import JsonFileError
from .._telemetry import names as N
from .._telemetry.otlpjson import ReadStats
from .._telemetry.otlpjson import read_spans as _read_span_dicts

#: At most this many task rows are drawn (the breakdown still counts every task).
MAX_TASK_ROWS = 2000
#: At most this many bars are drawn across all lanes.
MAX_LANE_BARS = 50000

STAGE_COLOURS = {
    "queue": "#c9d3df",
    "serialize": "#f2b134",
    "run": "#3b82c4",
    "sendback": "#7bbf6a",
    "deliver": "#a57fc9",
}
FAULT_COLOUR = "#d7263d"
STALL_COLOUR = "#ff8c00"
LOG_COLOUR = "#2a9d8f"
#: A task's records shown in its mark's tooltip; all of them are in the list.
MAX_TIP_RECORDS = 10
#: Records listed under "Worker logs" (a task has at most 128: the span's event limit).
MAX_LOG_ITEMS = 2000


class TimelineError(Exception):
    """The trace file cannot be read or is not OTLP/JSON lines."""


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    attrs: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    error: bool
    status_message: str


@dataclass
class Task:
    task_id: str
    pool_id: str
    function: str
    outcome: str
    start: int
    end: int
    stages: dict[str, Span] = field(default_factory=dict)
    fault: str | None = None  # "stage: target (type)" or a broken-pool reason
    stall: str | None = None  # the stall's diagnosis
    error_type: str | None = None
    logs: list[tuple[int, str]] = field(default_factory=list)  # (t, "LEVEL logger: message")

    def segments(self) -> list[tuple[str, int, int]]:
        """(stage, start, end) in task order: queue, serialize, queue (waiting for a
        worker), run, sendback, deliver; the breakdown's definitions."""
        ser = self.stages.get(N.SPAN_FEEDER_SERIALIZE)
        run = self.stages.get(N.SPAN_WORKER_RUN)
        send = self.stages.get(N.SPAN_SENDBACK)
        out: list[tuple[str, int, int]] = []
        cursor = self.start
        if ser is not None:
            out.append(("queue", cursor, ser.start))
            out.append(("serialize", ser.start, ser.end))
            cursor = ser.end
        if run is not None:
            out.append(("queue", cursor, run.start))
            out.append(("run", run.start, run.end))
            cursor = run.end
        if send is not None:
            out.append(("sendback", max(cursor, send.start), send.end))
            cursor = send.end
        if run is not None or send is not None:
            out.append(("deliver", cursor, self.end))
        else:
            out.append(("queue", cursor, self.end))
        return [(s, a, b) for s, a, b in out if b > a]


@dataclass
class Bar:
    stage: str
    start: int
    end: int
    label: str
    fault: bool = False


@dataclass
class Lane:
    key: str
    title: str
    bars: list[Bar] = field(default_factory=list)
    marks: list[tuple[int, str, str]] = field(default_factory=list)  # (t, colour, label)


@dataclass
class Timeline:
    """The page's model: built by ``build_timeline``, drawn by ``render_html``."""

    source: str
    t0: int
    t1: int
    tasks: list[Task]
    lanes: list[Lane]
    breakdown: dict[str, int]  # stage -> total ns over all tasks
    spans_read: int
    services: list[str]
    stalls: list[tuple[int, str, str]]  # (t, kind, diagnosis)
    skipped_lines: int = 0  # lines that were not JSON (writes cut short)

    @property
    def faults(self) -> int:
        return sum(1 for t in self.tasks if t.fault is not None)


# -- reading -----------------------------------------------------------------------------------
def _load_spans(path: str | Path) -> tuple[list[Span], list[str], int]:
    """Every span in an OTLP/JSON-lines file and its rotated predecessors, the service
    names they name, and how many lines were skipped as unreadable.

    Reading is ``_otlpjson.read_spans``'s, strict: a line that is not JSON or is nested
    too deeply is skipped and counted; JSON that is not an export request, or a file
    with no readable line at all, is a ``TimelineError``.
    """
    stats = ReadStats()
    try:
        decoded = list(_read_span_dicts(path, strict=True, stats=stats))
    except JsonFileError as e:
        raise TimelineError(str(e)) from None
    services = {
        str(d["resource"]["service.name"]) for d in decoded if "service.name" in d["resource"]
    }
    return [_span(d) for d in decoded], sorted(services), stats.skipped


def _span(d: dict[str, Any]) -> Span:
    return Span(
        name=str(d["name"]),
        trace_id=str(d["trace_id"]),
        span_id=str(d["span_id"]),
        parent_id=str(d["parent_span_id"] or ""),
        start=d["start_ns"],
        end=d["end_ns"],
        attrs=d["attributes"],
        events=[(e["name"], e["time_ns"], e["attributes"]) for e in d["events"]],
        error=d["status_code"] == 2,
        status_message=str(d["status_message"]),
    )


# -- building ----------------------------------------------------------------------------------
def build_timeline(
    path: str | Path, *, since_ns: int | None = None, last_seconds: float | None = None
) -> Timeline:
    """Read a trace file and arrange its tracedpool spans into tasks, lanes and totals.

    The embedded default's file collects every run, so two filters keep one run
    readable: ``since_ns`` (a Unix time in nanoseconds) and ``last_seconds`` (the span
    starts within that many seconds of the file's newest span end). A task is kept
    when its task span starts within the window. A window too long to count in
    nanoseconds (``math.inf``, ``1e300``) holds every span, as ``None`` does; a NaN or
    negative ``last_seconds`` is a ``TimelineError``.
    """
    window = _window_ns(last_seconds)
    spans, services, skipped = _load_spans(path)
    cutoff = since_ns
    if window is not None and spans:
        newest = max(s.end for s in spans) - window
        cutoff = newest if cutoff is None else max(cutoff, newest)
    if cutoff is not None:
        spans = [s for s in spans if s.start >= cutoff]
    tasks: dict[str, Task] = {}
    stage_spans: list[Span] = []
    for s in spans:
        tid = s.attrs.get(N.ATTR_TASK_ID)
        if s.name == N.SPAN_TASK and tid is not None:
            tid = str(tid)
            task = Task(
                task_id=tid,
                pool_id=str(s.attrs.get(N.ATTR_POOL_ID) or tid.partition(":")[0]),
                function=str(s.attrs.get(N.ATTR_CODE_FUNCTION, "?")),
                outcome=str(s.attrs.get(N.ATTR_TASK_OUTCOME, "")),
                start=s.start,
                end=s.end,
                error_type=s.attrs.get(N.ATTR_ERROR_TYPE),
            )
            for name, _t, a in s.events:
                if name == N.EVENT_STALL:
                    task.stall = str(a.get(N.ATTR_STALL_DIAGNOSIS, "stalled"))
                elif name == N.EVENT_POOL_BROKEN:
                    task.fault = f"pool broken: {a.get(N.ATTR_BROKEN_REASON, '?')}"
                elif name == N.EVENT_EXCEPTION and N.ATTR_FAULT_STAGE in a:
                    task.fault = _fault_text(a)
            if task.fault is None and task.outcome in ("exception", "broken"):
                task.fault = f"raised {task.error_type or 'an exception'}"
            tasks[tid] = task
        elif tid is not None:
            stage_spans.append(s)
    for s in stage_spans:
        owner = tasks.get(str(s.attrs.get(N.ATTR_TASK_ID)))
        if owner is None:
            continue
        owner.stages[s.name] = s
        for name, t, a in s.events:
            if name == N.EVENT_EXCEPTION and N.ATTR_FAULT_STAGE in a:
                owner.fault = _fault_text(a)
            elif name == N.EVENT_LOG:
                owner.logs.append((t, _log_text(a)))
    ordered = sorted(tasks.values(), key=lambda t: (t.start, t.task_id))

    lanes: dict[str, Lane] = {}

    def lane(key: str, title: str) -> Lane:
        found = lanes.get(key)
        if found is None:
            found = lanes[key] = Lane(key, title)
        return found

    breakdown = dict.fromkeys(STAGE_COLOURS, 0)
    for task in ordered:
        for stage, t_a, t_b in task.segments():
            breakdown[stage] += t_b - t_a
        short = f"{task.task_id} {task.function}"
        ser = task.stages.get(N.SPAN_FEEDER_SERIALIZE)
        if ser is not None:
            lane(f"{task.pool_id}/feeder", f"pool {task.pool_id} feeder thread").bars.append(
                Bar("serialize", ser.start, ser.end, short, ser.error)
            )
        for span_name, stage in ((N.SPAN_WORKER_RUN, "run"), (N.SPAN_SENDBACK, "sendback")):
            ws = task.stages.get(span_name)
            if ws is None:
                continue
            pid = ws.attrs.get(N.ATTR_PROCESS_PID)
            w = lane(f"worker/{pid}", f"worker pid {pid}")
            w.bars.append(Bar(stage, ws.start, max(ws.end, ws.start), short, ws.error))
            if task.stall is not None and stage == "run":
                w.marks.append((ws.start, STALL_COLOUR, f"stall: {task.stall}"))
    stalls: list[tuple[int, str, str]] = []
    for s in spans:
        pool = s.attrs.get(N.ATTR_POOL_ID)
        if s.name == N.SPAN_MANAGER_WAKE and pool is not None:
            reason = s.attrs.get(N.ATTR_WAKE_REASON, "")
            count = s.attrs.get(N.ATTR_WAKE_COUNT, 1)
            label = f"wake: {reason}" if count == 1 else f"{count} wakes: {reason}"
            lane(f"{pool}/manager", f"pool {pool} manager thread").bars.append(
                Bar("wake", s.start, s.end, label)
            )
        elif s.name == N.SPAN_STALL:
            kind = str(s.attrs.get(N.ATTR_STALL_KIND, "stall"))
            diagnosis = str(s.attrs.get(N.ATTR_STALL_DIAGNOSIS, ""))
            stalls.append((s.start, kind, diagnosis))
            lane(f"{pool}/manager", f"pool {pool} manager thread").marks.append(
                (s.start, STALL_COLOUR, f"stall ({kind}): {diagnosis}")
            )

    def order(lane: Lane) -> tuple[int, str]:
        rank = 0 if lane.key.endswith("/manager") else 1 if lane.key.endswith("/feeder") else 2
        return rank, lane.key

    times = [t.start for t in ordered] + [t.end for t in ordered]
    times += [b.start for ln in lanes.values() for b in ln.bars]
    times += [b.end for ln in lanes.values() for b in ln.bars]
    t0 = min(times) if times else 0
    t1 = max(times) if times else 0
    return Timeline(
        source=str(path),
        t0=t0,
        t1=max(t1, t0 + 1),
        tasks=ordered,
        lanes=sorted(lanes.values(), key=order),
        breakdown=breakdown,
        spans_read=len(spans),
        services=services,
        stalls=stalls,
        skipped_lines=skipped,
    )


def _window_ns(last_seconds: float | None) -> int | None:
    """``last_seconds`` in nanoseconds; None for no limit (None, or too long to count)."""
    if last_seconds is None:
        return None
    try:
        ns = float(last_seconds) * 1e9
    except OverflowError:  # an int too large for a float: longer than any trace
        return None
    if math.isnan(ns) or ns < 0:
        raise TimelineError(
            f"last_seconds (--last) must be a number of seconds >= 0, not {last_seconds!r}"
        )
    return None if math.isinf(ns) else int(ns)


def _log_text(a: dict[str, Any]) -> str:
    level = a.get(N.ATTR_LOG_SEVERITY_TEXT, "?")
    return f"{level} {a.get(N.ATTR_LOG_LOGGER, '?')}: {a.get(N.ATTR_LOG_MESSAGE, '')}"


def _fault_text(a: dict[str, Any]) -> str:
    text = f"{a.get(N.ATTR_FAULT_STAGE)}: {a.get(N.ATTR_FAULT_TARGET, '?')}"
    typename = a.get(N.ATTR_FAULT_TYPE) or a.get(N.ATTR_EXCEPTION_TYPE)
    return f"{text} ({typename})" if typename else text


# -- drawing -----------------------------------------------------------------------------------
_CSS = """
body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px} h2{font-size:15px;margin:20px 0 6px}
.meta{color:#555} table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left}
th{border-bottom:1px solid #ccc} td.n{text-align:right;font-variant-numeric:tabular-nums}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-2px}
svg{display:block;border:1px solid #ddd;background:#fff}
svg text{font-size:11px;fill:#333} .fault{color:#d7263d;font-weight:600}
.scroll{overflow-x:auto;max-width:100%}
"""

_LABEL_W = 260
_PLOT_W = 1100
_ROW_H = 18


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ms(ns: int) -> str:
    ms = ns / 1e6
    if ms >= 1000:
        return f"{ms / 1000:.3f} s"
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def _axis(tl: Timeline, y: int) -> list[str]:
    span = tl.t1 - tl.t0
    out = [f'<line x1="{_LABEL_W}" y1="{y}" x2="{_LABEL_W + _PLOT_W}" y2="{y}" stroke="#999"/>']
    for i in range(11):
        x = _LABEL_W + _PLOT_W * i / 10
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>')
        anchor = "end" if i == 10 else "middle"
        label = _ms(int(span * i / 10))
        out.append(f'<text x="{x:.1f}" y="{y + 15}" text-anchor="{anchor}">{label}</text>')
    return out


def _x(tl: Timeline, t: int) -> float:
    return _LABEL_W + _PLOT_W * (t - tl.t0) / (tl.t1 - tl.t0)


def _rect(tl: Timeline, y: int, a: int, b: int, colour: str, tip: str, fault: bool) -> str:
    x0, x1 = _x(tl, a), _x(tl, b)
    # a hairline of white keeps back-to-back tasks on a worker lane apart
    stroke = (
        f' stroke="{FAULT_COLOUR}" stroke-width="2"'
        if fault
        else ' stroke="#fff" stroke-width="0.4"'
    )
    return (
        f'<rect x="{x0:.2f}" y="{y + 2}" width="{max(x1 - x0, 0.8):.2f}" height="{_ROW_H - 4}" '
        f'fill="{colour}"{stroke}><title>{_esc(tip)}</title></rect>'
    )


def _mark(tl: Timeline, y: int, t: int, colour: str, tip: str) -> str:
    x = _x(tl, t)
    return (
        f'<path d="M{x:.2f} {y + 1}l5 8l-5 8l-5-8z" fill="{colour}" stroke="#222" '
        f'stroke-width="0.5"><title>{_esc(tip)}</title></path>'
    )


def _lanes_svg(tl: Timeline) -> str:
    rows: list[str] = []
    drawn = 0
    for i, lane in enumerate(tl.lanes):
        y = i * _ROW_H
        if i % 2:
            width = _LABEL_W + _PLOT_W
            rows.append(f'<rect x="0" y="{y}" width="{width}" height="{_ROW_H}" fill="#f6f7f9"/>')
        rows.append(f'<text x="4" y="{y + 13}">{_esc(lane.title)}</text>')
        for bar in lane.bars:
            if drawn >= MAX_LANE_BARS:
                break
            drawn += 1
            colour = STAGE_COLOURS.get(bar.stage, "#8899aa")
            tip = f"{bar.label} - {bar.stage} {_ms(bar.end - bar.start)}"
            rows.append(_rect(tl, y, bar.start, bar.end, colour, tip, bar.fault))
        for t, colour, label in lane.marks:
            rows.append(_mark(tl, y, t, colour, label))
    height = len(tl.lanes) * _ROW_H
    rows += _axis(tl, height + 2)
    return _svg(rows, height + 24, "lanes")


def _tasks_svg(tl: Timeline) -> str:
    rows: list[str] = []
    for i, task in enumerate(tl.tasks[:MAX_TASK_ROWS]):
        y = i * _ROW_H
        label = f"{task.task_id} {task.function.rpartition('.')[2]}"
        cls = ' class="fault"' if task.fault else ""
        title = f"<title>{_esc(task.function)}</title>"
        rows.append(f'<text x="4" y="{y + 13}"{cls}>{_esc(label[:40])}{title}</text>')
        for stage, a, b in task.segments():
            tip = f"{task.task_id} {task.function}: {stage} {_ms(b - a)}"
            if task.fault:
                tip += f" [fault: {task.fault}]"
            fault = task.fault is not None and stage != "queue"
            rows.append(_rect(tl, y, a, b, STAGE_COLOURS[stage], tip, fault))
        if task.fault:
            rows.append(_mark(tl, y, task.end, FAULT_COLOUR, f"{task.task_id}: {task.fault}"))
        if task.stall:
            rows.append(_mark(tl, y, task.start, STALL_COLOUR, f"stall: {task.stall}"))
        if task.logs:
            rows.append(_mark(tl, y, task.logs[0][0], LOG_COLOUR, _logs_tip(task)))
    height = min(len(tl.tasks), MAX_TASK_ROWS) * _ROW_H
    rows += _axis(tl, height + 2)
    return _svg(rows, height + 24, "tasks")


def _logs_tip(task: Task) -> str:
    lines = [f"{task.task_id}: {len(task.logs)} log record(s)"]
    lines += [f"+{_ms(t - task.start)} {text}" for t, text in task.logs[:MAX_TIP_RECORDS]]
    if len(task.logs) > MAX_TIP_RECORDS:
        lines.append(f"... {len(task.logs) - MAX_TIP_RECORDS} more under Worker logs")
    return "\n".join(lines)


def _logs_html(tl: Timeline) -> str:
    """Every task's records, in a list that opens on click (no script: ``<details>``)."""
    items: list[str] = []
    tasks = [t for t in tl.tasks if t.logs]
    for task in tasks:
        for t, text in task.logs:
            if len(items) < MAX_LOG_ITEMS:
                items.append(
                    f"<li><b>{_esc(task.task_id)}</b> +{_ms(t - task.start)} {_esc(text)}</li>"
                )
    if not items:
        return "<p>No worker log records on the tasks' spans.</p>"
    count = sum(len(t.logs) for t in tasks)
    more = f" (the first {MAX_LOG_ITEMS} listed)" if count > MAX_LOG_ITEMS else ""
    return (
        f'<details id="logs"><summary>{count} record(s) from {len(tasks)} task(s){more}'
        f"</summary><ul>{''.join(items)}</ul></details>"
    )


def _svg(rows: list[str], height: int, name: str) -> str:
    width = _LABEL_W + _PLOT_W + 10
    return (
        f'<div class="scroll"><svg id="{name}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        + "".join(rows)
        + "</svg></div>"
    )


def _breakdown_html(tl: Timeline) -> str:
    total = sum(tl.breakdown.values()) or 1
    rows = []
    for stage, ns in tl.breakdown.items():
        share = ns / total
        rows.append(
            f'<tr><td><span style="display:inline-block;width:12px;height:12px;'
            f'background:{STAGE_COLOURS[stage]}"></span> {stage}</td>'
            f'<td class="n">{_ms(ns)}</td><td class="n">{share:.1%}</td>'
            f'<td><svg width="300" height="12"><rect width="{300 * share:.1f}" height="12" '
            f'fill="{STAGE_COLOURS[stage]}"/></svg></td></tr>'
        )
    return (
        '<table id="breakdown"><tr><th>stage</th><th>total</th><th>share</th><th></th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _faults_html(tl: Timeline) -> str:
    items = [
        f"<li><b>{_esc(t.task_id)}</b> {_esc(t.function)}: {_esc(t.fault)}</li>"
        for t in tl.tasks
        if t.fault
    ]
    items += [
        f"<li><b>stall ({_esc(kind)})</b>: {_esc(diagnosis)}</li>"
        for _t, kind, diagnosis in tl.stalls
    ]
    if not items:
        return "<p>No faults or stalls.</p>"
    return '<ul id="faults">' + "".join(items[:500]) + "</ul>"


def render_html(tl: Timeline) -> str:
    """The page: self-contained, every trace-supplied string escaped."""
    key = "".join(f'<span style="background:{c}"></span>{s}' for s, c in STAGE_COLOURS.items())
    key += f'<span style="background:{FAULT_COLOUR}"></span>fault'
    key += f'<span style="background:{STALL_COLOUR}"></span>stall'
    key += f'<span style="background:{LOG_COLOUR}"></span>worker log'
    outcomes: dict[str, int] = {}
    for t in tl.tasks:
        outcomes[t.outcome or "?"] = outcomes.get(t.outcome or "?", 0) + 1
    summary = ", ".join(f"{n} {_esc(o)}" for o, n in sorted(outcomes.items()))
    truncated = (
        f" (the first {MAX_TASK_ROWS} of {len(tl.tasks)} are drawn)"
        if len(tl.tasks) > MAX_TASK_ROWS
        else ""
    )
    services = ", ".join(_esc(s) for s in tl.services) or "unknown service"
    skipped = f"; {tl.skipped_lines} unreadable line(s) skipped" if tl.skipped_lines else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>tracedpool timeline - {_esc(Path(tl.source).name)}</title>
<style>{_CSS}</style></head><body>
<h1>tracedpool timeline</h1>
<p class="meta">{_esc(tl.source)} - {services} - {tl.spans_read} spans,
{len(tl.tasks)} tasks ({summary}), {len(tl.lanes)} lanes, {_ms(tl.t1 - tl.t0)} shown;
{tl.faults} faults, {len(tl.stalls)} stalls{skipped}</p>
<p class="key">{key}</p>
<h2>Where the time went</h2>
<p class="meta">Summed over every task, stage by stage (queue: waiting for the feeder and
then for a free worker; deliver: unpickling the result and completing the future).</p>
{_breakdown_html(tl)}
<h2>Faults and stalls</h2>
{_faults_html(tl)}
<h2>Worker logs</h2>
{_logs_html(tl)}
<h2>Processes and threads</h2>
<p class="meta">One lane per worker process, and per pool the parent's manager thread
(its wakes) and feeder thread (pickling calls). Hover for details.</p>
{_lanes_svg(tl)}
<h2>Tasks{truncated}</h2>
{_tasks_svg(tl)}
</body></html>
"""


@dataclass
class TimelineResult:
    """What ``write_timeline`` produced."""

    output: Path
    tasks: int
    lanes: int
    faults: int
    stalls: int
    skipped_lines: int = 0


def write_timeline(
    trace_file: str | Path,
    output: str | Path,
    *,
    since_ns: int | None = None,
    last_seconds: float | None = None,
) -> TimelineResult:
    """Build the page for ``trace_file`` (filtered as ``build_timeline`` does) and write
    it to ``output``, privately and atomically (see ``_write_private``)."""
    tl = build_timeline(trace_file, since_ns=since_ns, last_seconds=last_seconds)
    out = Path(output)
    # A lone surrogate (a filename decoded with surrogateescape, then JSON-encoded)
    # survives json.loads and html.escape but has no UTF-8 form: it becomes "?".
    page = render_html(tl).encode("utf-8", errors="replace")
    try:
        _write_private(out, page)
    except OSError as e:
        raise TimelineError(f"cannot write {out}: {e.strerror or e}") from None
    return TimelineResult(
        out, len(tl.tasks), len(tl.lanes), tl.faults, len(tl.stalls), tl.skipped_lines
    )


def _write_private(out: Path, data: bytes) -> None:
    """Write ``data`` to ``out`` as the trace file it came from is written: mode 0600
    (the page names functions, faults and stall diagnoses), never through a symlink.

    The bytes go to a new file beside ``out`` (``O_EXCL | O_NOFOLLOW``, so nothing
    planted at that name is opened), then ``os.replace`` puts it at ``out``: a symlink
    at ``out`` is replaced itself, not written through, and a failure at any step
    leaves the previous page as it was and no temporary file behind.
    """
    tmp = out.parent / f".{out.name or 'timeline'}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            with contextlib.suppress(OSError):  # durability only; some filesystems refuse
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
