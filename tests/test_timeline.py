"""``tracedpool timeline``: a self-contained page from a real pool run's trace file."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faults import ErrorAtPickle, identity, sleep_then, stop_self_later

from tracedpool._telemetry import names as N
from tracedpool._timeline.page import TimelineError, build_timeline, render_html, write_timeline
from tracedpool.testing import otlp_json_line, recording_provider

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracedpool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _trace_file(make_pool: Any, path: Path) -> tuple[Path, list[Any]]:
    """A real run: six tasks on two workers and one feeder pickling fault, written as
    OTLP/JSON lines (two export requests, as a batch processor would write them)."""
    provider, exporter = recording_provider()
    pool = make_pool(2, start="fork", tracer_provider=provider, name="timeline")
    futures = [pool.submit(sleep_then, i, 0.02) for i in range(6)]
    bad = pool.submit(identity, ErrorAtPickle())
    assert [f.result(timeout=60) for f in futures] == list(range(6))
    with pytest.raises(ValueError):
        bad.result(timeout=60)
    pool.shutdown(wait=True)
    spans = list(exporter.get_finished_spans())
    half = len(spans) // 2
    path.write_text(otlp_json_line(spans[:half]) + "\n" + otlp_json_line(spans[half:]) + "\n")
    return path, spans


def _no_external_assets(page: str) -> None:
    lowered = page.lower()
    for needle in ("http://", "https://", "<script", "<link", " src=", "url(", "@import"):
        assert needle not in lowered, needle


def test_cli_builds_a_self_contained_page_with_lanes_stages_and_faults(
    make_pool: Any, tmp_path: Path
) -> None:
    """The page has one lane per worker, manager and feeder lanes, every task with its
    stages, the fault named, and the stage breakdown; it loads nothing from anywhere."""
    trace, spans = _trace_file(make_pool, tmp_path / "traces.jsonl")
    out = tmp_path / "timeline.html"
    proc = _run("timeline", str(trace), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "7 tasks" in proc.stdout and "1 faults" in proc.stdout
    page = out.read_text(encoding="utf-8")
    _no_external_assets(page)
    tasks = {s.attributes[N.ATTR_TASK_ID] for s in spans if s.name == N.SPAN_TASK}
    assert len(tasks) == 7
    for tid in tasks:
        assert html.escape(tid) in page
    pids = {s.attributes[N.ATTR_PROCESS_PID] for s in spans if s.name == N.SPAN_WORKER_RUN}
    lanes = re.findall(r">worker pid (\d+)<", page)
    assert sorted(map(int, lanes)) == sorted(pids)
    pool_id = next(iter(tasks)).partition(":")[0]
    assert f"pool {pool_id} feeder thread" in page
    assert f"pool {pool_id} manager thread" in page
    for stage in N.METRIC_STAGES:
        assert f"{stage} " in page  # in the tooltips and the breakdown
    assert "feeder-serialize: args[0] (faults.ErrorAtPickle)" in page
    assert 'id="breakdown"' in page and 'id="lanes"' in page and 'id="tasks"' in page


def test_breakdown_matches_the_tasks_stage_by_stage(make_pool: Any, tmp_path: Path) -> None:
    """The breakdown sums the same stage segments the task rows draw; the run stage
    holds at least the tasks' sleeps."""
    trace, _ = _trace_file(make_pool, tmp_path / "traces.jsonl")
    tl = build_timeline(trace)
    totals = dict.fromkeys(N.METRIC_STAGES, 0)
    for task in tl.tasks:
        for stage, a, b in task.segments():
            assert b > a
            totals[stage] += b - a
    assert totals == tl.breakdown
    assert tl.breakdown["run"] >= 6 * 0.02e9
    assert sum(1 for t in tl.tasks if t.fault) == 1


def test_trace_strings_are_escaped(make_pool: Any, tmp_path: Path) -> None:
    """A hostile function name in the trace file appears only escaped in the page."""
    trace, _ = _trace_file(make_pool, tmp_path / "traces.jsonl")
    hostile = "<script>alert('x')</script>&\"<img onerror=1>"
    text = trace.read_text().replace("faults.sleep_then", json.dumps(hostile)[1:-1])
    trace.write_text(text)
    page = render_html(build_timeline(trace))
    assert hostile not in page
    assert "<script" not in page and "<img" not in page
    assert html.escape(hostile, quote=True) in page


@pytest.mark.breaks_pool
def test_stalls_are_marked(make_pool: Any, tmp_path: Path) -> None:
    """A stopped worker's stall appears in the faults list and as a mark on its lanes."""
    provider, exporter = recording_provider()
    pool = make_pool(
        1,
        start="fork",
        tracer_provider=provider,
        stall_timeout=1.0,
        stall_report_dir=tmp_path / "reports",
        stall_action="break",
    )
    with pytest.raises(Exception, match="stall"):
        pool.submit(stop_self_later, 0.1).result(timeout=60)
    pool.shutdown(wait=True)
    trace = tmp_path / "stall.jsonl"
    trace.write_text(otlp_json_line(exporter.get_finished_spans()) + "\n")
    result = write_timeline(trace, tmp_path / "stall.html")
    assert result.stalls == 1
    page = (tmp_path / "stall.html").read_text()
    assert "stall (worker-stopped)" in page
    assert "is stopped" in page


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    """A missing file, a file with no JSON line and JSON that is not a trace export each
    exit 2 with a message naming the file (and line)."""
    proc = _run("timeline", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and "missing.jsonl" in proc.stderr
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("PK\x03\x04 not json\n{]\n")
    proc = _run("timeline", str(corrupt), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert "line 1" in proc.stderr and "not an OTLP/JSON trace export" in proc.stderr
    other = tmp_path / "other.jsonl"
    other.write_text('{"name": "a span, but not an export request"}\n')
    with pytest.raises(TimelineError, match="line 1"):
        build_timeline(other)
    assert not (tmp_path / "x.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_page_renders_in_headless_chromium(make_pool: Any, tmp_path: Path) -> None:
    """Chromium renders the page offline: the lanes and task rows are in its DOM, and a
    screenshot is taken (kept beside the page for a person to look at)."""
    trace, _ = _trace_file(make_pool, tmp_path / "traces.jsonl")
    out = tmp_path / "timeline.html"
    write_timeline(trace, out)
    common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    dom = subprocess.run(
        ["chromium", *common, "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<rect") > 20
    assert "worker pid" in dom.stdout and "Where the time went" in dom.stdout
    shot = tmp_path / "timeline.png"
    subprocess.run(
        ["chromium", *common, f"--screenshot={shot}", "--window-size=1400,1200", out.as_uri()],
        capture_output=True,
        timeout=90,
    )
    assert shot.exists() and shot.stat().st_size > 5000


def _shifted(line: str, seconds: int, pool_id: str, new_pool_id: str) -> str:
    """The same export request, ``seconds`` earlier and under another pool id: an
    earlier run's spans, as the embedded default's file keeps them."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                k: str(int(v) - seconds * 10**9) if k.endswith("UnixNano") else walk(v)
                for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return json.dumps(walk(json.loads(line.replace(pool_id, new_pool_id))))


def test_rotated_files_cut_lines_and_earlier_runs(make_pool: Any, tmp_path: Path) -> None:
    """The page reads the rotated predecessors too, skips a line cut short by a crash
    (and says so), and --last keeps only the newest run of a file that holds several."""
    trace, spans = _trace_file(make_pool, tmp_path / "traces.jsonl")
    pool_id = str(next(s.attributes[N.ATTR_POOL_ID] for s in spans if s.name == N.SPAN_TASK))
    lines = trace.read_text().splitlines()
    day = 86400
    (tmp_path / "traces.jsonl.2").write_text(
        "".join(_shifted(ln, day, pool_id, "0ldp0o1a") + "\n" for ln in lines)
    )
    (tmp_path / "traces.jsonl.1").write_text(lines[0] + "\n")
    trace.write_text(lines[1] + "\n" + lines[0][: len(lines[0]) // 2])  # cut mid-write
    tl = build_timeline(trace)
    assert len(tl.tasks) == 14 and tl.skipped_lines == 1
    assert "1 unreadable line(s) skipped" in render_html(tl)
    proc = _run("timeline", str(trace), "-o", str(tmp_path / "last.html"), "--last", "3600")
    assert proc.returncode == 0, proc.stderr
    assert "7 tasks" in proc.stdout and "1 unreadable line(s) skipped" in proc.stdout
    page = (tmp_path / "last.html").read_text()
    assert pool_id in page and "0ldp0o1a" not in page
    since = build_timeline(trace, since_ns=min(s.start_time for s in spans))
    assert {t.pool_id for t in since.tasks} == {pool_id}


def test_default_trace_file_is_the_embedded_defaults(make_pool: Any, tmp_path: Path) -> None:
    """With no TRACEFILE the command reads the file the embedded default writes."""
    trace, _ = _trace_file(make_pool, tmp_path / "traces.jsonl")
    out = tmp_path / "t.html"
    proc = subprocess.run(
        [sys.executable, "-m", "tracedpool", "timeline", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, N.ENV_TRACE_FILE: str(trace)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "7 tasks" in proc.stdout and out.exists()


def test_demo_ends_by_pointing_at_its_timeline_page(tmp_path: Path) -> None:
    """`make demo`'s script writes a page of its own run (not the file's earlier runs)
    and prints where it is."""
    page = tmp_path / "timeline.html"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        N.ENV_TRACE_FILE: str(tmp_path / "traces.jsonl"),
        "DEMO_TIMELINE": str(page),
    }
    for name in list(env):
        if name.startswith("OTEL_"):
            del env[name]
    for _ in range(2):  # the second run's page must not show the first run's tasks
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Timeline of this run (6 tasks, 2 faults): {page.as_uri()}" in proc.stdout
    assert "feeder-serialize: args[0] (_thread.lock)" in page.read_text(encoding="utf-8")


def _synthetic_line(function: str, start_ns: int = 1_700_000_000_000_000_000) -> str:
    """One export request with one task and its worker-run span, written by hand (no pool:
    these tests are about reading and writing files, and must stay fast)."""

    def attrs(**values: str) -> list[dict[str, Any]]:
        return [{"key": k, "value": {"stringValue": v}} for k, v in values.items()]

    def span(name: str, sid: str, a: int, b: int, attributes: Any) -> dict[str, Any]:
        return {
            "traceId": "0" * 31 + "1",
            "spanId": sid,
            "name": name,
            "startTimeUnixNano": str(start_ns + a),
            "endTimeUnixNano": str(start_ns + b),
            "attributes": attributes,
        }

    task = {
        N.ATTR_TASK_ID: "p0:1",
        N.ATTR_POOL_ID: "p0",
        N.ATTR_CODE_FUNCTION: function,
        N.ATTR_TASK_OUTCOME: "result",
    }
    run = {N.ATTR_TASK_ID: "p0:1"}
    spans = [
        span(N.SPAN_TASK, "a" * 16, 0, 5_000_000, attrs(**task)),
        span(N.SPAN_WORKER_RUN, "b" * 16, 1_000_000, 4_000_000, attrs(**run)),
    ]
    spans[1]["attributes"].append({"key": N.ATTR_PROCESS_PID, "value": {"intValue": "4242"}})
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})


def test_a_lone_surrogate_is_written_and_the_page_is_private(tmp_path: Path) -> None:
    """A function name holding a lone surrogate (JSON's escape of a surrogateescape-decoded
    filename) has no UTF-8 form: the page is still written, with "?" in its place, and
    replaces the old one whole; the new page is 0600 like the trace it came from."""
    trace = tmp_path / "sur.jsonl"
    trace.write_text(_synthetic_line("job_\udcff") + "\n", encoding="ascii")
    out = tmp_path / "timeline.html"
    out.write_text("the previous page")
    os.chmod(out, 0o644)
    proc = _run("timeline", str(trace), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text(encoding="utf-8")
    assert "job_?" in page and "the previous page" not in page
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sur.jsonl", "timeline.html"]


def test_the_page_replaces_a_symlink_rather_than_writing_through_it(tmp_path: Path) -> None:
    """A symlink planted at the output path is replaced by the page; its target is left
    alone."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(_synthetic_line("job") + "\n")
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    out = tmp_path / "timeline.html"
    out.symlink_to(victim)
    write_timeline(trace, out)
    assert not out.is_symlink() and "job" in out.read_text(encoding="utf-8")
    assert victim.read_text() == "not yours"


def test_a_failed_write_leaves_what_was_there_and_no_temporary_file(tmp_path: Path) -> None:
    """When the page cannot be put at the output path (here a directory is there), the
    error names it, the directory is as it was, and no temporary file is left beside it."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(_synthetic_line("job") + "\n")
    out = tmp_path / "timeline.html"
    out.mkdir()
    (out / "kept").write_text("kept")
    with pytest.raises(TimelineError, match="cannot write"):
        write_timeline(trace, out)
    assert (out / "kept").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "timeline.html"]


def test_last_seconds_too_long_to_count_means_no_limit(tmp_path: Path) -> None:
    """An infinite or huge window holds every span (as no window does) instead of
    overflowing; a NaN or negative one is a TimelineError."""
    trace = tmp_path / "t.jsonl"
    day = 86400 * 10**9
    trace.write_text(
        _synthetic_line("old", 1_700_000_000_000_000_000 - day).replace("p0", "p1")
        + "\n"
        + _synthetic_line("new")
        + "\n"
    )
    assert len(build_timeline(trace, last_seconds=3600).tasks) == 1
    for huge in (float("inf"), 1e300, 10**400):
        assert len(build_timeline(trace, last_seconds=huge).tasks) == 2
    for bad in (float("nan"), -1.0):
        with pytest.raises(TimelineError, match="last_seconds"):
            build_timeline(trace, last_seconds=bad)


def test_a_line_nested_too_deeply_is_skipped_like_a_cut_line(tmp_path: Path) -> None:
    """Lines nested past the recursion limit (one the JSON parser gives up on, one with
    deeply nested array attributes that may parse and then not decode, depending on the
    Python version) are skipped and counted; the good line is still drawn. A file of
    nothing else is the usual clear error."""
    deep_json = '{"resourceSpans":' + "[" * 100000 + "]" * 100000 + "}"
    deep_attr = json.loads(_synthetic_line("deep"))
    deep_attr["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"].append(
        {"key": "deep", "value": {"kvlistValue": {"values": []}}}
    )
    # json.dumps itself would hit the limit: splice the nesting in as text
    text = json.dumps(deep_attr).replace('{"kvlistValue": {"values": []}}', "@", 1)
    depth = 1200
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "x"}' + "]}}" * depth
    trace = tmp_path / "t.jsonl"
    trace.write_text(deep_json + "\n" + text.replace("@", value) + "\n" + _synthetic_line("job"))
    tl = build_timeline(trace)
    assert tl.skipped_lines == 2
    assert [t.function for t in tl.tasks] == ["job"]
    only_deep = tmp_path / "deep.jsonl"
    only_deep.write_text(deep_json + "\n")
    proc = _run("timeline", str(only_deep), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2, proc.stderr
    assert "line 1" in proc.stderr and "nested too deeply" in proc.stderr


def test_a_tasks_log_records_are_marked_and_listed(make_pool: Any, tmp_path: Path) -> None:
    """A task whose worker-run span has tracedpool.log events gets a log mark listing
    them on hover, and they are in the Worker logs list (escaped); a task that logged
    nothing has no mark."""
    import logtasks

    provider, exporter = recording_provider()
    pool = make_pool(1, start="fork", tracer_provider=provider, log_level="INFO")
    assert pool.submit(logtasks.info_and_warning, 2).result(timeout=60) == 2
    assert pool.submit(logtasks.identity, 1).result(timeout=60) == "int"
    pool.shutdown(wait=True)
    trace = tmp_path / "logs.jsonl"
    trace.write_text(otlp_json_line(exporter.get_finished_spans()) + "\n")
    tl = build_timeline(trace)
    logged, quiet = sorted(tl.tasks, key=lambda t: t.task_id)
    assert [text for _t, text in logged.logs] == [
        "INFO logtasks: info from task 2",
        "WARNING logtasks: warning from task 2",
    ]
    assert quiet.logs == []
    page = render_html(tl)
    _no_external_assets(page)
    assert page.count(f"{logged.task_id}: 2 log record(s)") == 1  # one mark, its tooltip
    assert page.count("log record(s)") == 1  # the quiet task has no mark
    assert '<details id="logs"><summary>2 record(s) from 1 task(s)</summary>' in page
    assert "WARNING logtasks: warning from task 2</li>" in page
