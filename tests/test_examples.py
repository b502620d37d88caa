"""The examples in examples/ run as a user runs them: real subprocesses, no OTEL_*
variables (so the embedded default writes the trace file), and their traces hold what
their docstrings promise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tracedpool._telemetry import names as N
from tracedpool._telemetry.otlpjson import read_spans

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(tmp_path: Path, script: str, *args: str, timeout: float = 60) -> str:
    """Run one example with its trace file (and any stall reports) under ``tmp_path``;
    it must exit 0. Returns its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONPATH=str(ROOT),
        XDG_STATE_HOME=str(tmp_path / "state"),
        **{N.ENV_TRACE_FILE: str(tmp_path / "traces.jsonl")},
    )
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if "--list" not in args:  # the embedded default, as nothing is configured
        assert "tracing: tracedpool_jsonl -> " in proc.stdout
    return proc.stdout


def spans(tmp_path: Path) -> list[dict[str, Any]]:
    found = list(read_spans(tmp_path / "traces.jsonl"))
    assert found
    # No values by default: types, sizes and names only.
    for s in found:
        assert N.ATTR_ARGS_REPR not in s["attributes"]
        assert N.ATTR_RESULT_REPR not in s["attributes"]
    return found


def events(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for s in found for e in s["events"]]


def test_service_requests_fan_out_into_pool_tasks(tmp_path: Path) -> None:
    """Each request is CLIENT -> SERVER -> 4 task spans, one trace per request."""
    out = run_example(tmp_path, "service.py", "--self-test", "3")
    assert out.count("  200 below=") == 3
    found = spans(tmp_path)
    by_id = {s["span_id"]: s for s in found}
    servers = [s for s in found if s["name"] == "GET /primes" and s["kind"] == 2]
    assert len(servers) == 3
    for server in servers:
        client = by_id[server["parent_span_id"]]
        assert client["kind"] == 3 and client["trace_id"] == server["trace_id"]
        assert server["attributes"]["http.response.status_code"] == 200
        tasks = [
            s
            for s in found
            if s["name"] == N.SPAN_TASK and s["parent_span_id"] == server["span_id"]
        ]
        assert len(tasks) == 4
        assert {t["attributes"][N.ATTR_CODE_FUNCTION] for t in tasks} == {"__main__.count_primes"}
        assert {t["attributes"][N.ATTR_POOL_NAME] for t in tasks} == {"primes"}


def test_batch_finishes_with_the_failing_items_located(tmp_path: Path) -> None:
    """The map chunks are traced as the mapped function with their size; the two bad
    items fail alone (one in the worker, one located at send-back) under the job span."""
    out = run_example(tmp_path, "batch.py")
    assert "parsed 60 records in 8 map chunks" in out
    assert "scored 60/60" in out
    assert "58 scored, 2 failed" in out
    assert "item 13: ValueError: a reading could not be parsed (NaN)" in out
    assert "item 29: TypeError: cannot pickle 'generator' object" in out
    found = spans(tmp_path)
    (job,) = [s for s in found if s["name"] == "batch-job"]
    assert job["status_code"] == 2 and job["attributes"]["batch.failed"] == 2
    assert {s["trace_id"] for s in found if s["name"] == N.SPAN_TASK} == {job["trace_id"]}
    chunks = [
        s["attributes"]
        for s in found
        if s["name"] == N.SPAN_TASK and N.ATTR_MAP_CHUNKSIZE in s["attributes"]
    ]
    assert sorted(a[N.ATTR_MAP_CHUNKSIZE] for a in chunks) == [4] + [8] * 7
    assert {a[N.ATTR_CODE_FUNCTION] for a in chunks} == {"__main__.parse_record"}
    located = [e["attributes"] for e in events(found) if N.ATTR_FAULT_STAGE in e["attributes"]]
    assert {(a[N.ATTR_FAULT_STAGE], a[N.ATTR_FAULT_TARGET]) for a in located} == {
        ("sendback", "result")
    }
    failed = [s for s in found if s["name"] == N.SPAN_TASK and s["status_code"] == 2]
    assert sorted(s["attributes"][N.ATTR_ERROR_TYPE] for s in failed) == ["TypeError", "ValueError"]


def test_what_went_wrong_shows_every_fault_and_stall(tmp_path: Path) -> None:
    """Every case goes as described, one trace each; the trace file holds a fault event
    for every pickling stage, every broken-pool reason and a stall span of every kind,
    and the timeline page is written."""
    listed = run_example(tmp_path, "what_went_wrong.py", "--list")
    names = [line.split()[0] for line in listed.splitlines()]
    assert len(names) >= 25 and "inherited-lock" in names and "log-says-why" in names
    out = run_example(
        tmp_path, "what_went_wrong.py", "--report-dir", str(tmp_path / "reports"), timeout=100
    )
    assert "UNEXPECTED" not in out
    # the worker's log says why it waits, in the stall report the case reads
    assert "the worker's last log: 'waiting for the ledger lock on" in out
    lines = [line for line in out.splitlines() if line.split(" ", 1)[0] in names]
    assert [line.split()[0] for line in lines] == names
    assert "Timeline of this run" in out and (tmp_path / "what-went-wrong.html").exists()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318" in out

    found = spans(tmp_path)
    roots = {s["name"] for s in found if s["name"].startswith("case ")}
    assert roots == {f"case {n}" for n in names}
    stages = {e["attributes"].get(N.ATTR_FAULT_STAGE) for e in events(found)}
    assert {"feeder-serialize", "worker-unpickle", "sendback", "result-unpickle"} <= stages
    reasons = {
        e["attributes"][N.ATTR_BROKEN_REASON]
        for e in events(found)
        if e["name"] == N.EVENT_POOL_BROKEN
    }
    assert {
        "worker-died",
        "initializer-failed",
        "worker-unpickle-failed",
        "result-unpickle-failed",
        "stalled",
    } <= reasons
    kinds = {s["attributes"][N.ATTR_STALL_KIND] for s in found if s["name"] == N.SPAN_STALL}
    assert kinds == {
        "worker-stopped",
        "worker-blocked",
        "manager-blocked-callback",
        "manager-blocked-read",
        "feeder-blocked",
        "no-workers",
        "feeder-dead",
    }
    assert len(list((tmp_path / "reports").glob("stall-*.json"))) >= len(kinds)


def test_what_went_wrong_runs_only_the_cases_asked_for(tmp_path: Path) -> None:
    """--only picks cases; an unknown name is refused with the way to list them."""
    out = run_example(tmp_path, "what_went_wrong.py", "--only", "sigkill", "--only", "lock-kwargs")
    assert "2 case(s)" in out
    assert "sigkill " in out and "killed by SIGKILL" in out
    assert "lock-kwargs " in out and "kwargs[key]" in out
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "what_went_wrong.py"), "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "unknown case(s) nope; see --list" in proc.stderr


def test_service_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """Served for real, then SIGTERM (as a container runtime stops it): exit 0, and the
    request's spans are flushed to the file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(ROOT), **{N.ENV_TRACE_FILE: str(tmp_path / "traces.jsonl")})
    # -u: the lines are read as they are printed, and a pipe would hold them in the
    # child's buffer (the test hung where PYTHONUNBUFFERED was not set in the caller's env).
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "service.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].removeprefix("serving on ").strip()
        assert url.startswith("http://127.0.0.1:"), lines
        with urllib.request.urlopen(f"{url}?below=1000&parts=2", timeout=60) as r:
            assert json.loads(r.read()) == {"below": 1000, "parts": 2, "primes": 168}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err[-3000:]
    assert "stopping" in out
    found = spans(tmp_path)
    assert [s["kind"] for s in found if s["name"] == "GET /primes"] == [2]
    assert len([s for s in found if s["name"] == N.SPAN_TASK]) == 2
