"""`tracedpool doctor`: checks against what this machine really has, `--pid` against real
stuck pools, the exporter check against a real OTLP/HTTP receiver, `--probe` against real
heartbeat files, and the command run end to end."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import resource
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from faults import sleep_then
from unprivileged import Unprivileged

from tracedpool import TracedProcessPoolExecutor
from tracedpool._diagnosis import heartbeat as _heartbeat
from tracedpool._diagnosis.cgroup import memory as cgroup_memory
from tracedpool._diagnosis.cgroup import memory_stat_value, working_set
from tracedpool._doctor.endpoint import endpoint_check
from tracedpool._doctor.inspect import inspect_pid
from tracedpool._doctor.otlp_proto import fields
from tracedpool._doctor.probe import probe
from tracedpool._doctor.result import GROUPS, Check, DoctorError, Options, guarded
from tracedpool._doctor.run import run_checks
from tracedpool._doctor.snapshots import _attach_check, _py_spy_check
from tracedpool._telemetry import names as N
from tracedpool.testing import OtlpReceiver, square

ROOT = Path(__file__).resolve().parent.parent
SERVICE = Path(__file__).resolve().parent / "doctor_service.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": ""}
OTEL_VARS = [k for k in os.environ if k.startswith("OTEL_")]


def _run(*args: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "tracedpool", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env or ENV,
        **kw,
    )


def _have_py_spy() -> bool:
    from tracedpool._diagnosis.stall import py_spy_path

    return py_spy_path() is not None


needs_py_spy = pytest.mark.skipif(not _have_py_spy(), reason="py-spy is not installed")


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in OTEL_VARS:
        monkeypatch.delenv(key, raising=False)


# -- a service whose pool is in a given state --------------------------------------------------
class Service:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVICE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(60):
                self.kill()
                pytest.fail("the service did not become ready in 60 s")
        line = self.proc.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            self.kill()
            pytest.fail(f"the service failed: {err}")
        self.pid = self.proc.pid
        self.workers = [int(x) for x in line[1:]]
        self.family = self._family()

    def _family(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self, parent_only: bool = False) -> None:
        targets = [self.proc.pid] + ([] if parent_only else self.family + self._family())
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def service(*args: str) -> Iterator[Service]:
    s = Service(*args)
    try:
        yield s
    finally:
        s.kill()


# -- the checks, on this machine ------------------------------------------------------------------
def test_limit_checks_report_what_the_machine_has() -> None:
    """Each limit check states the real numbers: open-file limit, CPUs, /dev/shm."""
    result = run_checks(Options(groups=("python", "limits")))
    by_id = {c.id: c for c in result.checks}
    assert set(by_id) == {
        "python.version",
        "python.start-method",
        "limits.semaphores",
        "limits.dev-shm",
        "limits.open-files",
        "limits.cpu",
        "limits.memory",
    }
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert by_id["limits.open-files"].data["soft"] == soft
    assert by_id["limits.open-files"].data["hard"] == hard
    assert by_id["limits.cpu"].data["cpu_count"] == os.cpu_count()
    assert by_id["limits.cpu"].data["affinity"] == len(os.sched_getaffinity(0))
    assert by_id["limits.semaphores"].status == "ok"
    if Path("/dev/shm").is_dir():
        st = os.statvfs("/dev/shm")
        assert by_id["limits.dev-shm"].data["total_bytes"] == st.f_blocks * st.f_frsize
    assert by_id["python.version"].status == "ok"
    for c in result.checks:
        assert c.status in ("ok", "warn", "fail", "skip") and c.finding
        assert c.status in {"ok", "skip"} or c.fix


def test_limit_checks_judge_the_workers_asked_for() -> None:
    """More workers than CPUs warns; more than the open-file limit or memory fails."""
    cpus = len(os.sched_getaffinity(0))
    over = run_checks(Options(groups=("limits",), max_workers=cpus + 8))
    cpu = next(c for c in over.checks if c.id == "limits.cpu")
    assert cpu.status == "warn" and f"max_workers={cpus + 8}" in cpu.finding and cpu.fix
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit here")
    huge = run_checks(Options(groups=("limits",), max_workers=soft))
    by_id = {c.id: c for c in huge.checks}
    assert by_id["limits.open-files"].status == "fail"
    assert "ulimit -n" in (by_id["limits.open-files"].fix or "")
    assert huge.exit_code == 1


def test_memory_working_set_leaves_out_reclaimable_file_cache() -> None:
    """Usage less inactive file cache, clamped at 0; the usage itself when the cache is
    unknown (memory.stat unreadable)."""
    assert working_set(1000 << 20, 800 << 20) == 200 << 20
    assert working_set(100, 800) == 0
    assert working_set(1000, None) == 1000
    stat = "cache 4096\ninactive_file 12288\ntotal_inactive_file 65536\n"
    assert memory_stat_value(stat, "inactive_file") == 12288
    assert memory_stat_value(stat, "total_inactive_file") == 65536
    assert memory_stat_value(stat, "active_file") is None
    assert memory_stat_value(None, "inactive_file") is None


def test_memory_check_reads_this_machines_cgroup_for_real() -> None:
    """memory.stat parses as the kernel writes it, and limits.memory reports the working
    set it judged by (usage less inactive file cache, never more than the usage)."""
    for path in (Path("/sys/fs/cgroup/memory.stat"), Path("/sys/fs/cgroup/memory/memory.stat")):
        if path.exists():
            text = path.read_text()  # once: the counters move between reads
            pairs = [line.split() for line in text.splitlines()]
            expected = next(int(v) for k, v in pairs if k == "inactive_file")
            assert memory_stat_value(text, "inactive_file") == expected
    limit, usage, inactive = cgroup_memory()
    assert limit is None or limit > 0
    assert usage is None or usage >= 0
    assert inactive is None or inactive >= 0
    (check,) = [c for c in run_checks(Options(groups=("limits",))).checks if "memory" in c.id]
    if check.data["cgroup_usage_bytes"] is not None:
        assert 0 <= check.data["cgroup_working_set_bytes"] <= check.data["cgroup_usage_bytes"]
    else:
        assert check.data["cgroup_working_set_bytes"] is None


def test_low_open_file_limit_fails_end_to_end() -> None:
    """A real RLIMIT_NOFILE of 64 fails a 64-worker pool: exit 1, the JSON says why."""

    def lower() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    out = _run("--only", "limits", "--max-workers", "64", "--json", preexec_fn=lower)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    files = next(c for c in doc["checks"] if c["id"] == "limits.open-files")
    assert files["status"] == "fail" and files["data"]["soft"] == 64
    assert doc["exit_code"] == 1 and doc["status"] == "fail"


@needs_py_spy
def test_snapshot_checks_attach_for_real() -> None:
    """py-spy is found and really attaches to a child process."""
    checks = {c.id: c for c in run_checks(Options(groups=("snapshots",))).checks}
    assert checks["snapshots.py-spy"].status == "ok"
    assert checks["snapshots.attach"].status == "ok", checks["snapshots.attach"]
    assert checks["snapshots.attach"].data["seconds"] < 30


def test_a_py_spy_lookup_that_fails_is_said_not_taken_for_missing() -> None:
    """When looking py-spy up raises (an unreadable PATH entry), the py-spy check says
    so and names the variable to set, instead of reporting py-spy as not installed."""
    check = _py_spy_check(None, 1.0, "PermissionError: [Errno 13] Permission denied")
    assert check.status == "warn" and "could not be looked up" in check.finding
    assert "PermissionError" in check.data["error"] and N.ENV_PY_SPY in (check.fix or "")


@needs_py_spy
def test_attach_warns_not_fails_when_the_test_child_is_slow() -> None:
    """A test child that does not say "ready" in time is a warning (the check never
    fails, as documented), with a fix."""
    from tracedpool._diagnosis.stall import py_spy_path

    check = _attach_check(py_spy_path(), 1e-6)  # no real Python starts in a microsecond
    assert check.status == "warn" and "ready" in check.finding and check.fix


def test_telemetry_check_says_what_configure_would_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The SDK check names configure()'s choice (the trace file by default, not the
    OTLP that opentelemetry-instrument defaults to), and fails a variable it refuses."""
    monkeypatch.setenv(N.ENV_TRACE_FILE, str(tmp_path / "t.jsonl"))
    (sdk,) = [c for c in run_checks(Options(groups=("telemetry",))).checks if "sdk" in c.id]
    assert sdk.status == "ok" and sdk.data["configure_rule"] == "embedded default"
    assert f"tracedpool_jsonl -> {tmp_path / 't.jsonl'}" in sdk.finding
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    out = _run("--only", "telemetry", env={**ENV, **os.environ})
    assert out.returncode == 1 and "OTEL_TRACES_SAMPLER_ARG" in out.stdout


def test_smoke_test_runs_a_real_traced_pool() -> None:
    """A task round-trips under spawn, an unpicklable argument is located, spans arrive."""
    checks = {c.id: c for c in run_checks(Options(groups=("smoke",), start_method="spawn")).checks}
    trip = checks["smoke.round-trip"]
    assert trip.status == "ok" and trip.data["start_method"] == "spawn"
    assert 0 < trip.data["median_seconds"] < 30
    assert checks["smoke.fault-located"].status == "ok"
    assert checks["smoke.fault-located"].data["target"] == "args[0]"
    assert (
        checks["smoke.spans"].status == "ok"
        and N.SPAN_WORKER_RUN in checks["smoke.spans"].data["names"]
    )


def test_smoke_test_really_runs_its_tasks_under_python_O() -> None:
    """`python -O` strips asserts: the 20 timed round trips must still be submitted (each
    task leaves its spans), not timed as empty statements."""
    proc = subprocess.run(
        [sys.executable, "-O", "-m", "tracedpool", "doctor", "--only", "smoke", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["smoke.spans"]["data"]["spans"] >= 20 * 5  # 20 tasks, 5+ spans each


# -- the exporter check, against a real OTLP/HTTP receiver ---------------------------------------
Receiver = OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _span_of(body: bytes) -> tuple[dict[int, list[Any]], str]:
    """(the span's fields, the resource's service.name) from a request body."""
    resource_spans = fields(fields(body)[1][0])
    resource_kv = fields(fields(resource_spans[1][0])[1][0])
    service = fields(resource_kv[2][0])[1][0].decode()
    assert resource_kv[1][0] == b"service.name"
    scope_spans = fields(resource_spans[2][0])
    return fields(scope_spans[2][0]), service


def test_endpoint_accepts_a_real_test_span(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The span is POSTed to /v1/traces as OTLP protobuf, with the service name and the
    configured headers, and the receiver's 200 is reported as ok."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "doctor-test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%21")
    check = endpoint_check(None, timeout=10)
    assert check.status == "ok", check
    assert check.data["http_status"] == 200 and "s3cret" not in json.dumps(check.data)
    ((path, headers, body),) = receiver.requests
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-api-key"] == "s3cret!"
    span, service = _span_of(body)
    assert service == "doctor-test"
    assert span[5][0] == N.SPAN_DOCTOR_TEST.encode()
    assert len(span[1][0]) == 16 and len(span[2][0]) == 8


def test_endpoint_gzip_and_signal_specific_url(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A _TRACES_ENDPOINT is used as given; gzip compression is honoured."""
    import gzip

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert endpoint_check(None, timeout=10).status == "ok"
    ((_, headers, body),) = receiver.requests
    assert headers["content-encoding"] == "gzip"
    assert _span_of(gzip.decompress(body))[1] == "unknown_service:python"


def test_endpoint_failures_are_reported_with_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected span, a wrong path and a closed port are each a fail with a fix."""
    # ExportTraceServiceResponse{partial_success{rejected_spans: 1, error_message: "nope"}}
    rejecting = Receiver(reply=b"\x0a\x08\x08\x01\x12\x04nope")
    try:
        check = endpoint_check(rejecting.url, timeout=10)
        assert check.status == "fail" and "nope" in check.finding
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rejecting.url + "/wrong")
        check = endpoint_check(None, timeout=10)
        assert check.status == "fail" and "HTTP 404" in check.finding
        assert "TRACES_ENDPOINT" in (check.fix or "")
    finally:
        rejecting.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = endpoint_check(f"http://127.0.0.1:{port}", timeout=5)
    assert check.status == "fail" and "not reachable" in check.finding and check.fix


SECRET = "Bearer%0As3cr3tT0ken"


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:9"}
            | {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "cannot be loaded",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:43l8"}, "_ENDPOINT", "valid"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:43l8",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "_ENDPOINT",
            "gRPC",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
            | {"OTEL_EXPORTER_OTLP_HEADERS": f"x-ok=fine,authorization={SECRET}"},
            "OTEL_EXPORTER_OTLP_HEADERS",
            "'authorization'",
        ),
    ],
    ids=["missing-ca", "bad-port", "grpc-bad-port", "header-line-break"],
)
def test_endpoint_misconfiguration_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, words: str
) -> None:
    """A missing CA file, a bad port or a header http.client refuses is a
    telemetry.endpoint fail naming the variable at fault, beside the other telemetry
    checks; a header value never appears in any output."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    by_id = {c.id: c for c in run_checks(Options(groups=("telemetry",))).checks}
    assert set(by_id) == {"telemetry.sdk", "telemetry.service-name", "telemetry.endpoint"}
    check = by_id["telemetry.endpoint"]
    assert check.status == "fail" and words in check.finding, check
    assert variable in check.finding + (check.fix or "")
    assert "s3cr3t" not in json.dumps([check.finding, check.fix, check.data], default=str)


def test_endpoint_header_value_is_never_printed_end_to_end() -> None:
    """The command's JSON and stderr name the bad header's key, never its value."""
    env = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization={SECRET}"
    out = _run("--only", "telemetry", "--json", env=env)
    assert out.returncode == 1, out.stderr
    (check,) = [c for c in json.loads(out.stdout)["checks"] if c["id"] == "telemetry.endpoint"]
    assert check["status"] == "fail" and "authorization" in check["finding"]
    assert "s3cr3t" not in out.stdout + out.stderr


def test_a_crashing_check_is_its_own_fail_with_header_values_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check that raises becomes a fail of that check id (not of its group), and a
    configured header value quoted by the exception is masked."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3tT0ken")

    def crash() -> Check:
        raise ValueError("Invalid header value b's3cr3tT0ken'")

    check = guarded("telemetry.endpoint", crash)
    assert check.id == "telemetry.endpoint" and check.status == "fail"
    assert "ValueError" in check.finding and "s3cr3t" not in check.finding
    assert "bug" in (check.fix or "")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_grpc_endpoint_without_a_scheme_is_host_and_port(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """`host:port` (no scheme, as the gRPC exporter takes it) probes that host and port:
    a real listening socket is reached, and a closed port is a fail naming it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"{host}:{port}")
        check = endpoint_check(None, timeout=5)
        assert check.status == "ok" and f"{host}:{port}" in check.finding, check
    check = endpoint_check(None, timeout=5)
    assert check.status == "fail" and f"{host}:{port}" in check.finding, check


def test_endpoint_end_to_end_exit_codes(receiver: Receiver) -> None:
    """The command exits 0 when the receiver accepts the span, 1 on a closed port."""
    env = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "e2e"}
    ok = _run("--only", "telemetry", "--json", env=env)
    assert ok.returncode == 0, ok.stdout
    doc = json.loads(ok.stdout)
    assert next(c for c in doc["checks"] if c["id"] == "telemetry.endpoint")["status"] == "ok"
    assert len(receiver.requests) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    down = _run("--only", "telemetry", env=env)
    assert down.returncode == 1
    assert "fail  telemetry.endpoint" in down.stdout and "fix: start the collector" in down.stdout


# -- --pid, against real stuck pools -----------------------------------------------------------
@needs_py_spy
def test_pid_stopped_worker_is_diagnosed_and_reported(tmp_path: Path) -> None:
    """A plain stdlib pool whose worker is SIGSTOPped: found, named, exit 1, and the
    --report renders with `tracedpool report`."""
    with service("stopped", "stdlib", "fork") as svc:
        result = inspect_pid(svc.pid, sample=0.5)
        assert result.report is not None
        report = result.report
        assert report["kind"] == "worker-stopped", report["diagnosis"]
        stopped = report["stuck_pids"]
        assert len(stopped) == 1 and stopped[0] in svc.workers
        assert f"worker pid {stopped[0]} is stopped" in report["diagnosis"]
        assert "doctor_service.stop_self" in report["diagnosis"]
        checks = {c.id: c for c in result.checks}
        assert checks["pid.workers"].status == "fail"
        assert checks["pid.manager"].status == "ok" and "waiting" in checks["pid.manager"].finding
        assert checks["pid.feeder"].status == "ok"
        assert result.exit_code == 1
        parent = report["processes"][0]
        assert {"main", "manager", "feeder"} <= {t["role"] for t in parent["threads"]}

        path = tmp_path / "stuck.json"
        out = _run("--pid", str(svc.pid), "--sample", "0.5", "--report", str(path), "--json")
        assert out.returncode == 1, out.stderr
        assert json.loads(out.stdout)["report"]["kind"] == "worker-stopped"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        rendered = subprocess.run(
            [sys.executable, "-m", "tracedpool", "report", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert rendered.returncode == 0 and f"worker pid {stopped[0]} is stopped" in rendered.stdout


@needs_py_spy
def test_pid_deadlocked_worker_names_its_frame() -> None:
    """A traced pool (spawn) whose worker deadlocked on a lock: the diagnosis points at
    the frame; the manager and feeder are found waiting normally."""
    with service("deadlock", "traced", "spawn") as svc:
        result = inspect_pid(svc.pid, sample=1.0)
        assert result.report is not None
        report = result.report
        assert report["kind"] == "worker-blocked", report["diagnosis"]
        assert "deadlock (" in report["diagnosis"] and "doctor_service.py" in report["diagnosis"]
        assert report["pool"]["start_method"] == "spawn"
        checks = {c.id: c for c in result.checks}
        assert checks["pid.diagnosis"].status == "warn" and checks["pid.diagnosis"].fix
        assert checks["pid.manager"].status == "ok"
        assert "waiting for a result" in checks["pid.manager"].finding  # a traced manager
        logs = checks["pid.logs"]  # the traced pool's log reader thread is seen
        assert logs.status == "ok" and logs.data["log_readers"], logs
        assert f"pool {logs.data['log_readers'][0]}" in logs.finding


@needs_py_spy
def test_pid_idle_pool_is_healthy_and_orphans_are_found() -> None:
    """An idle pool is healthy (exit 0); the workers of a SIGKILLed service (orphaned,
    blocked for ever on the call queue) are listed as orphans."""
    dead = Service("idle", "stdlib", "fork")
    try:
        dead.kill(parent_only=True)  # its workers stay behind, reparented
        with service("idle", "stdlib", "fork") as svc:
            result = inspect_pid(svc.pid, sample=0.3)
            assert result.report is not None and result.report["kind"] == "idle"
            checks = {c.id: c for c in result.checks}
            assert checks["pid.workers"].data["workers"] and checks["pid.workers"].status == "ok"
            orphans = {o["pid"] for o in checks["pid.orphans"].data["orphans"]}
            assert set(dead.workers) <= orphans, checks["pid.orphans"].finding
            assert checks["pid.orphans"].status == "warn"
            assert checks["pid.logs"].status == "skip"  # a stdlib pool captures nothing
            assert "no pool here captures worker logs" in checks["pid.logs"].finding
            assert result.exit_code == 0
    finally:
        dead.kill()


def test_pid_errors_exit_2_with_the_fix() -> None:
    """No such pid, not Python, bad values and a report path that cannot be written."""
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    with pytest.raises(DoctorError, match="no process with pid"):
        inspect_pid(gone.pid)
    out = _run("--pid", str(gone.pid))
    assert out.returncode == 2 and "no process with pid" in out.stderr
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        out = _run("--pid", str(sleeper.pid), "--json")
        assert out.returncode == 2 and "not a Python process" in out.stderr
        assert json.loads(out.stdout)["exit_code"] == 2
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    for bad in ("abc", "0", "-3"):
        assert _run("--pid", bad).returncode == 2
    assert _run("--frobnicate").returncode == 2
    assert _run("--report", "x.json").returncode == 2  # --report needs --pid
    assert _run("--max-age", "3").returncode == 2  # needs --probe
    assert _run("--only", "nonsense").returncode == 2


@needs_py_spy
def test_pid_report_path_that_cannot_be_written_exits_2() -> None:
    """--report into a directory that does not exist: exit 2, saying so."""
    with service("idle", "stdlib", "fork") as svc:
        out = _run("--pid", str(svc.pid), "--sample", "0.2", "--report", "/nonexistent/dir/r.json")
        assert out.returncode == 2 and "cannot write the report" in out.stderr


def _as_nobody(nobody: Unprivileged) -> tuple[list[str], dict[str, str]]:
    """(argv, env) running `python -m tracedpool doctor` as nobody, on a readable copy of
    this Python and this checkout's package (wherever the checkout lives)."""
    return [*nobody.argv, "-m", "tracedpool", "doctor"], {**nobody.env, "NO_COLOR": ""}


@needs_py_spy
def test_unprivileged_user_is_refused_before_any_attach(nobody: Unprivileged) -> None:
    """As nobody, --pid on a root-owned service is refused (exit 2) with the fix for this
    machine, and no py-spy is started; the same user's own child can still be attached."""
    command, env = _as_nobody(nobody)
    with service("idle", "stdlib", "fork") as svc:
        out = subprocess.run(
            [*command, "--pid", str(svc.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=nobody.home,
            env=env,
        )
        assert out.returncode == 2, out.stderr
        assert "permission denied" in out.stderr and "uid 0" in out.stderr
        assert "fix:" in out.stderr
    own = subprocess.run(
        [*command, "--only", "snapshots", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=nobody.home,
        env=env,
    )
    checks = {c["id"]: c for c in json.loads(own.stdout)["checks"]}
    assert checks["snapshots.ptrace"]["data"]["cap_sys_ptrace"] is False
    assert checks["snapshots.ptrace"]["data"]["euid"] == 65534
    scope = checks["snapshots.ptrace"]["data"]["yama_ptrace_scope"]
    if scope in (None, 0):  # same user suffices: the real attach must work
        assert checks["snapshots.attach"]["status"] == "ok", checks["snapshots.attach"]
    else:
        assert checks["snapshots.ptrace"]["status"] == "warn"
        assert checks["snapshots.ptrace"]["fix"]


# -- --probe: heartbeats ---------------------------------------------------------------------
def test_heartbeat_file_is_private_fresh_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A traced pool's watcher writes a 0600 heartbeat in a 0700 directory; the probe
    reads it as healthy, then as stalled; shutdown removes it."""
    beats = tmp_path / "beats"
    monkeypatch.setenv(N.ENV_HEARTBEAT_DIR, str(beats))
    pool = TracedProcessPoolExecutor(
        1, stall_timeout=0.5, stall_report_dir=tmp_path / "reports", name="hb"
    )
    try:
        assert pool.submit(square, 3).result(timeout=60) == 9
        deadline = time.monotonic() + 30
        while not list(beats.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (path,) = list(beats.glob("*.json"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(beats.stat().st_mode) == 0o700
        body = json.loads(path.read_text())
        assert body["pid"] == os.getpid() and body["pool_id"] == pool.pool_id
        assert {"pending", "seconds_since_progress", "stalled", "written_at"} <= set(body)
        if sys.platform.startswith("linux"):
            assert body["start_ticks"] == _heartbeat.start_ticks(os.getpid())
        healthy = probe(beats, require=True)
        assert healthy.exit_code == 0 and healthy.checks[0].status == "ok"

        future = pool.submit(sleep_then, 1, 5.0)
        deadline = time.monotonic() + 30
        result = probe(beats)
        while result.exit_code == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            result = probe(beats)
        assert result.exit_code == 1 and "is stalled" in result.checks[0].finding
        assert "tracedpool report" in (result.checks[0].fix or "")
        out = _run("--probe", "--heartbeat-dir", str(beats), "--pid", str(os.getpid()))
        assert out.returncode == 1 and "is stalled" in out.stdout
        assert future.result(timeout=60) == 1
    finally:
        pool.shutdown(wait=True)
    assert not list(beats.glob("*.json"))
    assert probe(beats).checks[0].status == "skip"
    assert probe(beats, require=True).exit_code == 1


def _heartbeat_statuses(result: Any) -> list[str]:
    """The probe's verdicts on heartbeat files. ``probe.orphans`` is left out: it scans
    every traced worker of this user on the machine, and a suite running beside this
    one (another checkout, as root) can have an orphan for the second it takes to exit."""
    return [c.status for c in result.checks if c.id == "probe.heartbeat"]


def test_probe_judges_stale_and_dead_heartbeats(tmp_path: Path) -> None:
    """An old heartbeat of a live process fails (frozen); one of an exited process is
    ignored; an unreadable directory is an error (exit 2)."""
    beats = tmp_path / "beats"
    beats.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    base = {"schema": _heartbeat.SCHEMA, "pending": 2, "seconds_since_progress": 1.0}
    old = {**base, "pid": os.getpid(), "pool_id": "old", "written_at": time.time() - 120}
    dead = {**base, "pid": gone.pid, "pool_id": "dead", "written_at": time.time()}
    (beats / "a.json").write_text(json.dumps(old))
    (beats / "b.json").write_text(json.dumps(dead))
    (beats / "junk.json").write_text("not json")
    result = probe(beats)
    assert _heartbeat_statuses(result) == ["fail"]
    assert "frozen" in result.checks[0].finding and "120" in result.checks[0].finding
    assert probe(beats, max_age=300).exit_code == 0
    out = _run("--probe", "--heartbeat-dir", str(beats), "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["checks"][0]["data"]["pool_id"] == "old"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = _run("--probe", "--heartbeat-dir", str(not_a_dir))
    assert out.returncode == 2 and "cannot read the heartbeat directory" in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start ticks: /proc")
def test_probe_ignores_a_heartbeat_whose_pid_was_reused(tmp_path: Path) -> None:
    """A stale heartbeat left by a killed process whose pid now belongs to another live
    process is not judged (it would fail the probe as "frozen" for ever)."""
    beats = tmp_path / "beats"
    beats.mkdir(mode=0o700)
    mine = _heartbeat.start_ticks(os.getpid())
    assert mine is not None
    base = {"schema": _heartbeat.SCHEMA, "pending": 0, "seconds_since_progress": 0.0}
    stale = {**base, "pid": os.getpid(), "written_at": time.time() - 600}
    (beats / "reused.json").write_text(json.dumps({**stale, "start_ticks": mine - 1}))
    result = probe(beats)
    assert _heartbeat_statuses(result) == ["skip"], result.checks
    assert "1 left by exited processes" in result.checks[0].finding
    (beats / "reused.json").write_text(json.dumps({**stale, "start_ticks": mine}))
    assert _heartbeat_statuses(probe(beats)) == ["fail"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's directory")
def test_heartbeat_refuses_a_parent_directory_another_user_owns(tmp_path: Path) -> None:
    """Another user who pre-created the (predictable) parent could swap the heartbeat
    directory for a symlink: such a parent is refused, an own or root one is not."""
    foreign = tmp_path / "tracedpool-0"
    foreign.mkdir(mode=0o777)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(PermissionError, match="another user"):
        _heartbeat._private_dir(foreign / "heartbeats")
    assert not (foreign / "heartbeats").exists()
    _heartbeat._private_dir(tmp_path / "own" / "heartbeats")
    assert (tmp_path / "own" / "heartbeats").is_dir()


def test_probe_as_another_user_cannot_read_a_private_dir(nobody: Unprivileged) -> None:
    """The heartbeat directory is private: another user's probe exits 2 and says so, while
    the same directory opened to others is read (so the 0700 mode is what refuses)."""
    command, env = _as_nobody(nobody)
    beats = Path(tempfile.mkdtemp(dir=nobody.home))  # its parent is world-readable
    try:
        for mode, code in ((0o700, 2), (0o755, 0)):
            os.chmod(beats, mode)
            out = subprocess.run(
                [*command, "--probe", "--heartbeat-dir", str(beats)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=nobody.home,
                env=env,
            )
            assert out.returncode == code, (oct(mode), out.stdout, out.stderr)
            assert ("Permission denied" in out.stderr) == (code == 2), out.stderr
    finally:
        shutil.rmtree(beats, ignore_errors=True)


# -- end to end ---------------------------------------------------------------------------------
def test_doctor_end_to_end_text_json_and_exit_codes() -> None:
    """Every group runs; the JSON follows the schema; the exit code matches the worst
    status; plain text has no colour when not on a TTY."""
    out = _run("--json")
    doc = json.loads(out.stdout)
    assert doc["schema"] == "tracedpool.doctor/1" and doc["mode"] == "checks"
    assert {c["group"] for c in doc["checks"]} == set(GROUPS)
    ids = [c["id"] for c in doc["checks"]]
    assert len(ids) == len(set(ids))
    for c in doc["checks"]:
        assert set(c) == {"id", "group", "status", "finding", "fix", "data", "seconds"}
    failed = any(c["status"] == "fail" for c in doc["checks"])
    assert out.returncode == doc["exit_code"] == (1 if failed else 0)
    assert sum(doc["counts"].values()) == len(ids)
    text = _run("--only", "python,limits")
    assert "python.version" in text.stdout and "\033[" not in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith(f"{text.stdout.count('  ok  ')} ok")


def test_colour_only_on_a_tty() -> None:
    """On a terminal the statuses are coloured; NO_COLOR turns that off."""
    for env, coloured in ((ENV, True), ({**ENV, "NO_COLOR": "1"}, False)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tracedpool", "doctor", "--only", "python"],
                stdout=slave,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
            os.close(slave)
            chunks = []
            with selectors.DefaultSelector() as sel:
                sel.register(master, selectors.EVENT_READ)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and sel.select(1):
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    chunks.append(data)
            proc.wait(timeout=30)
        finally:
            os.close(master)
        assert (b"\033[32m" in b"".join(chunks)) is coloured


def test_report_written_over_an_existing_file_is_made_private(tmp_path: Path) -> None:
    """--report PATH over an existing, world-readable file: both files end up 0600."""
    from tracedpool._doctor.inspect import save_report

    target = tmp_path / "stuck.json"
    target.write_text("old")
    target.chmod(0o644)
    report = {"schema": "tracedpool.stall-report/1", "diagnosis": "x", "processes": [], "tasks": []}
    written = save_report(report, target)
    assert written == target
    for path in (target, target.with_suffix(".txt")):
        assert path.stat().st_mode & 0o777 == 0o600


def test_flag_conflicts_exit_2_with_json_when_asked() -> None:
    """--json turns a flag-conflict error into the documented error object."""
    for args in (("--report", "/tmp/x"), ("--probe", "--max-workers", "2")):
        out = _run("--json", *args)
        assert out.returncode == 2
        doc = json.loads(out.stdout)
        assert doc["exit_code"] == 2 and doc["error"] and doc["fix"]
        assert doc["error"] in out.stderr


def test_non_finite_seconds_are_refused() -> None:
    """--timeout inf (or nan) is a usage error, exit 2, not a crash."""
    import argparse

    from tracedpool._cli.main import _positive_float

    for text in ("inf", "-inf", "nan", "Infinity"):
        with pytest.raises(argparse.ArgumentTypeError):
            _positive_float(text)
    assert _positive_float("0.5") == 0.5
    out = _run("--timeout", "inf", "--only", "python")
    assert out.returncode == 2 and "finite" in out.stderr and not out.stdout


@pytest.mark.parametrize("log_level", ["INFO", None])
def test_logs_check_reads_the_level_from_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_level: str | None
) -> None:
    """A pool's heartbeat names its log level (or null when it captures nothing), and
    `doctor --pid`'s logs check says it, with or without the reader thread in sight."""
    import os
    import threading

    from tracedpool import TracedProcessPoolExecutor
    from tracedpool._doctor.inspect import logs_check
    from tracedpool.testing import square, wait_for

    monkeypatch.setenv(N.ENV_HEARTBEAT_DIR, str(tmp_path))
    with TracedProcessPoolExecutor(1, stall_timeout=30, log_level=log_level) as pool:
        assert pool.submit(square, 3).result(timeout=60) == 9
        assert wait_for(lambda: list(tmp_path.glob("*.json")))
        beat = json.loads(next(tmp_path.glob("*.json")).read_text())
        assert beat["log_level"] == log_level
        threads = [{"name": t.name} for t in threading.enumerate()]
        seen = logs_check(os.getpid(), threads, tmp_path)
        unseen = logs_check(os.getpid(), [], tmp_path)  # the heartbeat alone
    if log_level is None:
        assert seen.status == unseen.status == "skip"
        assert f"{pool.pool_id} do not capture worker logs" in seen.finding
    else:
        for check in (seen, unseen):
            assert check.status == "ok", check
            assert f"pool {pool.pool_id} from INFO" in check.finding
        assert seen.data["log_readers"] == [pool.pool_id] and unseen.data["log_readers"] == []
