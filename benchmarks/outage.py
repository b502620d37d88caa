"""Exporter outage: the soak's workload with the real OTLP/HTTP exporter and no collector.

Scenarios, each against its own endpoint on 127.0.0.1:

``refused``
    nothing listens on the port (connection refused at once);
``blackhole``
    a server accepts connections and never answers (every export waits for the
    exporter's timeout);
``recovery``
    connection refused for the first half of the rounds, then a real OTLP receiver
    comes up on the same port (it decodes every request with opentelemetry-proto and
    counts the spans).

In each scenario two traced pools run side by side in alternated rounds of ``--n``
trivial tasks: one whose provider exports to a counting null exporter (the baseline)
and one whose provider exports over OTLP/HTTP to the scenario's endpoint. Both providers
are always-on with a default ``BatchSpanProcessor``. What must hold (exit status 1 if
not):

* every task of both pools resolves with its result (telemetry never fails a task);
* the outage pool's RSS stays bounded (growth after the first quarter of the rounds
  below ``--max-rss-growth-mb``), i.e. memory is held by the bounded queues only;
* tracedpool logs each of its warnings at most once;
* ``pool.shutdown()`` returns within a few seconds whatever the exporter does;
* in ``recovery``: spans arrive after the receiver is up, including spans of tasks
  submitted after it came up.

Reported, not asserted (timing on a shared machine is noise-prone): the throughput
ratio outage/null (median of the per-pair ratios, with its IQR), the spans dropped by
the SDK's batch processor (queue full) and by tracedpool's emitter, how many log
records the SDK and the exporter wrote (and how many differ), and how long the
provider's own shutdown (which the SDK also runs at interpreter exit) takes.

    python benchmarks/outage.py                     # ~3 minutes
    python benchmarks/outage.py --quick             # the CI size (tests/test_soak.py)
    python benchmarks/outage.py --markdown docs/performance.md --json outage.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import faulthandler
import gc
import json
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import (
    REPO_ROOT,
    LogCounter,
    count_bsp_drops,
    counting_sdk,
    install_log_counter,
    machine,
    noop,
    queue_drops,
    rss_bytes,
    update_markdown,
)

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MD_START = "<!-- outage:start -->"
MD_END = "<!-- outage:end -->"
SCENARIOS = ("refused", "blackhole", "recovery")


# -- endpoints ----------------------------------------------------------------------------------
class Receiver:
    """An OTLP/HTTP receiver (tracedpool.testing.OtlpReceiver) that decodes each request
    and keeps only counts and task ids: this process's RSS is measured."""

    def __init__(self, listen: bool = True) -> None:
        from tracedpool.testing import OtlpReceiver

        self.spans = 0
        self.requests = 0
        self.work_ids: list[int] = []  # task spans' work ids, in arrival order
        self.lock = threading.Lock()
        self._server = OtlpReceiver(listen=listen, on_request=self._count)
        self.port = self._server.port

    def _count(self, path: str, headers: dict[str, str], body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

        from tracedpool._telemetry import names as N

        request = pb.ExportTraceServiceRequest()
        request.ParseFromString(body)
        ids = []
        n = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    n += 1
                    if span.name == N.SPAN_TASK:
                        for kv in span.attributes:
                            if kv.key == N.ATTR_TASK_ID:
                                ids.append(int(kv.value.string_value.rsplit(":", 1)[1]))
        with self.lock:
            self.spans += n
            self.requests += 1
            self.work_ids += ids

    def start(self) -> None:
        """Listen and serve (until then, connections to the bound port are refused)."""
        self._server.start()

    def stop(self) -> None:
        self._server.close()


class Blackhole:
    """Accepts connections and never reads or answers: every request times out."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        for c in self.conns:
            c.close()
        self.sock.close()


def refused_port() -> tuple[socket.socket, int]:
    """A port bound but not listening: connecting gets ECONNREFUSED, and no one else can
    take the port meanwhile. Keep the socket open for as long as the port must stay shut."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, int(s.getsockname()[1])


# -- one scenario -------------------------------------------------------------------------------
@dataclass
class Params:
    n: int = 5000
    pairs: int = 12
    workers: int = 2
    export_timeout: float = 10.0  # the exporter's own default (OTEL_EXPORTER_OTLP_TIMEOUT)
    max_rss_growth_mb: float = 50.0
    scenarios: tuple[str, ...] = SCENARIOS
    timeout: float = 900.0


@dataclass
class ScenarioResult:
    scenario: str
    ratios: list[float] = field(default_factory=list)  # outage/null throughput, per pair
    null_tps: list[float] = field(default_factory=list)
    outage_tps: list[float] = field(default_factory=list)
    wrong: int = 0
    rss_mb: list[float] = field(default_factory=list)  # after each pair
    rss_growth_mb: float = 0.0
    pool_shutdown_s: float = 0.0
    provider_shutdown_s: float = 0.0
    null_spans: int = 0
    outage_bsp_dropped: int = 0
    outage_emitter_dropped: int = 0
    null_emitter_dropped: int = 0
    received_spans: int = 0
    received_after_recovery: int = 0
    first_work_id_after_recovery: int = -1
    max_work_id_received: int = -1
    logs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    def iqr(self) -> tuple[float, float]:
        if len(self.ratios) < 4:
            return (min(self.ratios, default=0.0), max(self.ratios, default=0.0))
        q = statistics.quantiles(self.ratios, n=4)
        return q[0], q[2]


def timed_round(pool: Any, n: int, base: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    futures = [pool.submit(noop, base + i) for i in range(n)]
    _, not_done = concurrent.futures.wait(futures, timeout=120)
    elapsed = time.perf_counter() - t0
    wrong = len(not_done) + sum(
        1
        for i, f in enumerate(futures)
        if f.done() and (f.exception() is not None or f.result() != base + i)
    )
    return n / elapsed, wrong


@contextmanager
def endpoint(scenario: str) -> Iterator[tuple[str, Any]]:
    if scenario == "refused":
        s, port = refused_port()
        try:
            yield f"http://127.0.0.1:{port}/v1/traces", None
        finally:
            s.close()
    elif scenario == "blackhole":
        hole = Blackhole()
        try:
            yield f"http://127.0.0.1:{hole.port}/v1/traces", hole
        finally:
            hole.stop()
    else:
        receiver = Receiver(listen=False)  # bound, refusing until start()
        try:
            yield f"http://127.0.0.1:{receiver.port}/v1/traces", receiver
        finally:
            receiver.stop()


def run_scenario(scenario: str, params: Params, logs: LogCounter) -> ScenarioResult:
    import multiprocessing as mp

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    import tracedpool

    res = ScenarioResult(scenario)
    ctx = mp.get_context()
    with endpoint(scenario) as (url, server):
        null = counting_sdk()
        out = counting_sdk(OTLPSpanExporter(endpoint=url, timeout=params.export_timeout))
        count_bsp_drops(out.processor)
        logs.counts.clear()
        pools = {
            "null": tracedpool.TracedProcessPoolExecutor(
                params.workers, mp_context=ctx, tracer_provider=null.provider, name="null"
            ),
            "outage": tracedpool.TracedProcessPoolExecutor(
                params.workers, mp_context=ctx, tracer_provider=out.provider, name="outage"
            ),
        }
        try:
            # warm-up: start the workers, one unmeasured round each
            for pool in pools.values():
                timed_round(pool, max(1, params.n // 5), 0)
            base = params.n
            quarter = max(1, params.pairs // 4)
            for pair in range(params.pairs):
                if scenario == "recovery" and pair == params.pairs // 2:
                    assert isinstance(server, Receiver)
                    server.start()
                    res.first_work_id_after_recovery = _next_work_id(pools["outage"])
                order = ("null", "outage") if pair % 2 == 0 else ("outage", "null")
                tps = {}
                for side in order:
                    tps[side], wrong = timed_round(pools[side], params.n, base)
                    res.wrong += wrong
                    gc.collect()
                base += params.n
                res.null_tps.append(tps["null"])
                res.outage_tps.append(tps["outage"])
                res.ratios.append(tps["outage"] / tps["null"])
                res.rss_mb.append(rss_bytes() / 2**20)
            after_q = res.rss_mb[quarter - 1 :]
            res.rss_growth_mb = max(after_q) - after_q[0]
        finally:
            res.outage_emitter_dropped = pools["outage"]._tp_state.emitter.dropped
            res.null_emitter_dropped = pools["null"]._tp_state.emitter.dropped
            t0 = time.monotonic()
            pools["outage"].shutdown(wait=True, cancel_futures=True)
            res.pool_shutdown_s = time.monotonic() - t0
            pools["null"].shutdown(wait=True, cancel_futures=True)
        res.outage_bsp_dropped = queue_drops(out.processor) or 0
        if isinstance(server, Receiver):
            out.provider.force_flush(30_000)
        t0 = time.monotonic()
        out.provider.shutdown()
        res.provider_shutdown_s = time.monotonic() - t0
        null.provider.shutdown()
        res.null_spans = null.exporter.spans
        if isinstance(server, Receiver):
            with server.lock:
                res.received_spans = server.spans
                ids = list(server.work_ids)
            res.max_work_id_received = max(ids, default=-1)
            res.received_after_recovery = sum(
                1 for i in ids if i >= res.first_work_id_after_recovery
            )
    res.logs = logs.summary()
    check(res, params)
    return res


def _next_work_id(pool: Any) -> int:
    from tracedpool._pool import cpython as _cpython

    return int(_cpython.next_work_id(pool))


def check(res: ScenarioResult, params: Params) -> None:
    f = res.failures
    if res.wrong:
        f.append(f"{res.wrong} tasks failed, returned a wrong result or did not resolve")
    if res.rss_growth_mb >= params.max_rss_growth_mb:
        f.append(f"RSS grew {res.rss_growth_mb:.1f} MB after the first quarter")
    for entry in res.logs:
        if entry["logger"] == "tracedpool" and entry["count"] > 1:
            f.append(f"tracedpool logged {entry['count']} times: {entry['message']}")
    if res.pool_shutdown_s > 10:
        f.append(f"pool.shutdown() took {res.pool_shutdown_s:.1f} s")
    if res.scenario == "recovery":
        if res.received_spans == 0:
            f.append("no span arrived after the receiver came up")
        elif res.received_after_recovery == 0:
            f.append("no span of a task submitted after the recovery arrived")


# -- output -------------------------------------------------------------------------------------
def render(
    results: list[ScenarioResult], params: Params, info: dict[str, Any], argv: list[str]
) -> str:
    lines = [
        f"- {info['date']}; {info['cpus']} CPUs ({info['cpu']}); {info['python']}; "
        f"OpenTelemetry SDK {info['sdk']}; start method {info['start_method']}; "
        f"load average {info['load']:.2f}",
        f"- command: `python benchmarks/outage.py {' '.join(argv)}`".replace("  ", " "),
        f"- {params.pairs} alternated null/outage round pairs of {params.n:,} trivial tasks per "
        f"scenario, {params.workers} workers per pool, OTLP/HTTP exporter timeout "
        f"{params.export_timeout:g} s, `BatchSpanProcessor` defaults (queue 2048)",
        "",
        "| scenario | ratio outage/null (IQR) | tasks/s null -> outage | failed tasks | "
        "RSS growth | spans dropped: SDK queue / emitter | received | "
        "pool.shutdown() | provider.shutdown() | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r.iqr()
        received = (
            f"{r.received_spans:,} ({r.received_after_recovery:,} task spans of tasks "
            "submitted after recovery)"
            if r.scenario == "recovery"
            else "-"
        )
        lines.append(
            f"| {r.scenario} | {r.ratio:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{statistics.median(r.null_tps):,.0f} -> {statistics.median(r.outage_tps):,.0f} | "
            f"{r.wrong} | {r.rss_growth_mb:+.1f} MB | {r.outage_bsp_dropped:,} / "
            f"{r.outage_emitter_dropped:,} (null pool: {r.null_emitter_dropped:,}) | "
            f"{received} | {r.pool_shutdown_s:.2f} s | "
            f"{r.provider_shutdown_s:.2f} s | "
            f"{'PASS' if not r.failures else 'FAIL: ' + '; '.join(r.failures)} |"
        )
    lines += ["", "Log records (WARNING and above) per scenario, by logger and message:", ""]
    for r in results:
        for e in r.logs:
            lines.append(
                f"- {r.scenario}: {e['count']} x {e['level']} `{e['logger']}`: "
                f'"{e["message"][:150]}"'
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Params]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=Params.n, help="tasks per round")
    p.add_argument("--pairs", type=int, default=Params.pairs, help="round pairs per scenario")
    p.add_argument("--workers", type=int, default=Params.workers)
    p.add_argument("--export-timeout", type=float, default=Params.export_timeout)
    p.add_argument("--max-rss-growth-mb", type=float, default=Params.max_rss_growth_mb)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--quick", action="store_true", help="CI size: small rounds, 1 s timeout")
    p.add_argument("--timeout", type=float, default=Params.timeout, help="dump stacks and exit")
    p.add_argument("--json", type=Path, metavar="PATH")
    p.add_argument("--markdown", type=Path, metavar="PATH")
    a = p.parse_args(argv)
    params = Params(
        a.n,
        a.pairs,
        a.workers,
        a.export_timeout,
        a.max_rss_growth_mb,
        tuple(s for s in a.scenarios.split(",") if s),
        a.timeout,
    )
    if a.quick:
        params.n, params.pairs, params.export_timeout = 1000, 4, 0.5
    unknown = set(params.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    return a, params


def main(argv: Sequence[str] | None = None) -> int:
    args, params = parse_args(argv)
    faulthandler.dump_traceback_later(params.timeout, exit=True)
    logs = install_log_counter()
    results = [run_scenario(s, params, logs) for s in params.scenarios]
    info = machine()
    text = render(results, params, info, list(sys.argv[1:] if argv is None else argv))
    print(text)
    if args.json:
        doc = {
            "machine": info,
            "params": vars(params),
            "results": [dict(vars(r), ratio=r.ratio) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    if args.markdown:
        update_markdown(args.markdown, text, MD_START, MD_END)
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
