"""Metrics through the OpenTelemetry metrics API: stage histograms, fault counters, gauges.

Where each number comes from, so that no metric adds work to the pool's own threads:

* Stage durations, task durations and payload/result sizes are recorded on the emitter
  thread, from the stage timestamps a traced task's ``TaskRecord`` already carries (one
  call per finished record, see ``tracedpool._pool.observer.PoolState.emit``). Only
  traced (sampled) tasks have a record, so these histograms describe the traced tasks:
  all of them under the default sampler, a sample under a ratio sampler, none with no
  tracer provider.
* Faults, broken pools and stalls are counted where they are found (feeder, manager or
  stall-watcher thread). They are rare, and one counter ``add`` is cheap.
* Pending and running tasks and live workers are observed by callbacks that run on the
  metric reader's collection thread, reading each live pool's state.
* Dropped span records are the emitters' own counts, and dropped worker log records the
  log reader's (``tracedpool._pool.logs.LogListener.dropped``), observed like the gauges.

With no ``MeterProvider`` (the API's proxy, or the no-op provider) nothing is created
and a pool pays one ``is None`` check per finished traced task.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics as _api

from .._errors import pickling_fault
from .._version import __version__
from .._worker.wire import M_RECV, M_RUN0, M_RUN1, M_SEND0
from . import names as N
from . import sdk as _sdk

log = logging.getLogger("tracedpool")

SCOPE_NAME = "tracedpool"

#: Bucket boundaries for durations in seconds: 100 us to 5 min.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Bucket boundaries for pickled sizes in bytes: 64 B to 64 MiB, by fours.
SIZE_BUCKETS = tuple(float(64 * 4**i) for i in range(11))


# Read from the API's private global (tracedpool._telemetry.sdk, the boundary).
global_meter_provider = _sdk.global_meter_provider


def _late_metrics(st: Any) -> PoolMetrics | None:
    """For a pool that follows the global provider and had none when it was built:
    the instruments once one is set. Called per finished traced task, so the unset case
    is one attribute read (in the guard ``sdk.when_meter_provider_set`` puts first)."""
    found = metrics_for(None)
    if found is not None:
        found.register(st)
        st.metrics = found
    return found


late_metrics = _sdk.when_meter_provider_set(_late_metrics)


_by_provider: dict[int, tuple[Any, PoolMetrics]] = {}
_lock = threading.Lock()


def metrics_for(provider: Any) -> PoolMetrics | None:
    """The instruments for a provider (created once per provider), or None for the
    global provider while it is unset."""
    if provider is None:
        provider = global_meter_provider()
        if provider is None:
            return None
    elif isinstance(provider, _api.NoOpMeterProvider):
        return None  # the documented way to switch one pool's metrics off
    found = _by_provider.get(id(provider))
    if found is not None and found[0] is provider:
        return found[1]
    with _lock:
        found = _by_provider.get(id(provider))
        if found is not None and found[0] is provider:
            return found[1]
        try:
            made = PoolMetrics(provider)
        except Exception:
            log.warning(
                "tracedpool: creating metric instruments failed; pools report no metrics",
                exc_info=True,
            )
            return None
        # Providers are few and long-lived; holding them here is what keeps the id valid.
        _by_provider[id(provider)] = (provider, made)
        return made


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: Any) -> Any:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # API before 1.23: no advisory boundaries
        return meter.create_histogram(name, unit=unit, description=description)


class PoolMetrics:
    """One provider's instruments, shared by every pool reporting to it."""

    def __init__(self, provider: Any) -> None:
        meter = provider.get_meter(SCOPE_NAME, __version__)
        self.task_duration = _histogram(
            meter, N.METRIC_TASK_DURATION, "s", "Traced task duration", DURATION_BUCKETS
        )
        self.stage_duration = _histogram(
            meter, N.METRIC_STAGE_DURATION, "s", "Traced task stage duration", DURATION_BUCKETS
        )
        self.payload_size = _histogram(
            meter, N.METRIC_PAYLOAD_SIZE, "By", "Pickled call size", SIZE_BUCKETS
        )
        self.result_size = _histogram(
            meter, N.METRIC_RESULT_SIZE, "By", "Pickled result size", SIZE_BUCKETS
        )
        self.faults = meter.create_counter(
            N.METRIC_PICKLING_FAULTS, unit="{fault}", description="Pickling faults"
        )
        self.breaks = meter.create_counter(
            N.METRIC_POOL_BREAKS, unit="{break}", description="Pools broken"
        )
        self.stalls = meter.create_counter(
            N.METRIC_STALLS, unit="{stall}", description="Stalls detected"
        )
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()
        # Drops are counted by the emitter itself (``Emitter.dropped``) and observed:
        # nothing is added to the path that drops. A pool's count outlives the pool here,
        # so the cumulative sum never goes down.
        self._retired_dropped: dict[str | None, int] = {}
        self._retired_logs_dropped: dict[str | None, int] = {}
        # Re-entrant: a pool can be finalized (and _retire run) on the very thread that
        # holds this lock in _observe_dropped, when its temporary list of pools held the
        # last reference or a garbage collection runs there. A plain lock deadlocked the
        # metric reader there, and then every thread that finalized a pool after it.
        self._retired_lock = threading.RLock()
        meter.create_observable_counter(
            N.METRIC_SPANS_DROPPED,
            callbacks=[self._observe_dropped],
            unit="{record}",
            description="Span records dropped",
        )
        meter.create_observable_counter(
            N.METRIC_LOGS_DROPPED,
            callbacks=[self._observe_logs_dropped],
            unit="{record}",
            description="Worker log records dropped",
        )
        meter.create_observable_up_down_counter(
            N.METRIC_TASKS_PENDING,
            callbacks=[self._observe_pending],
            unit="{task}",
            description="Tasks not yet started on a worker",
        )
        meter.create_observable_up_down_counter(
            N.METRIC_TASKS_RUNNING,
            callbacks=[self._observe_running],
            unit="{task}",
            description="Tasks running on a worker",
        )
        meter.create_observable_up_down_counter(
            N.METRIC_WORKERS_LIVE,
            callbacks=[self._observe_workers],
            unit="{process}",
            description="Live worker processes",
        )
        self._Observation = _api.Observation
        self._attrs: dict[tuple[str, str | None], tuple[dict[str, Any], ...]] = {}
        self._warned = False

    def register(self, st: Any) -> None:
        """A pool reporting here: observed by the gauges until it is collected."""
        self.pools.add(st)
        weakref.finalize(st, self._retire, st.name, st.emitter, st.logs)

    def _retire(self, name: str | None, emitter: Any, logs: Any) -> None:
        for retired, dropped in (
            (self._retired_dropped, emitter.dropped),
            (self._retired_logs_dropped, logs.dropped if logs is not None else 0),
        ):
            if not dropped:
                continue  # nothing to carry over: no entry per collected pool name
            with self._retired_lock:
                retired[name] = retired.get(name, 0) + dropped

    # -- emitter thread --------------------------------------------------------------------
    def record_task(self, rec: Any, st: Any) -> None:
        """One finished traced task: its durations and sizes."""
        fname = rec.fname
        key = (fname, st.name)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._stage_attrs(fname, st.name)
        base, queue, serialize, run, sendback, deliver = attrs
        t_done = rec.t_done
        if not t_done:
            return
        outcome = rec.outcome
        exc = rec.exc
        if outcome == "result":
            task_attrs = base
        else:
            task_attrs = {**base, N.ATTR_TASK_OUTCOME: outcome}
            if exc is not None:
                task_attrs[N.ATTR_ERROR_TYPE] = type(exc).__qualname__
        self.task_duration.record((t_done - rec.t_submit0) / 1e9, task_attrs)
        record = self.stage_duration.record
        t_ser0, t_written, meta = rec.t_ser0, rec.t_written, rec.meta
        if t_ser0 and t_written:
            record(max(0, t_written - t_ser0) / 1e9, serialize)
        if rec.payload_bytes >= 0:
            self.payload_size.record(rec.payload_bytes, base)
        if meta is None:
            return
        start = meta[M_RECV] or meta[M_RUN0]
        if t_ser0 and t_written and start:
            # waiting for the feeder, then (pickled, in the pipe) for a free worker
            waited = max(0, t_ser0 - rec.t_submit0) + max(0, start - t_written)
            record(waited / 1e9, queue)
        if start and meta[M_RUN1]:
            record(max(0, meta[M_RUN1] - start) / 1e9, run)
        t_read = rec.t_read
        if meta[M_SEND0] and t_read:
            record(max(0, t_read - meta[M_SEND0]) / 1e9, sendback)
            record(max(0, t_done - t_read) / 1e9, deliver)
        if rec.result_bytes >= 0:
            self.result_size.record(rec.result_bytes, base)
        fault = rec.fault
        if fault is None and exc is not None:
            located = pickling_fault(exc)
            fault = located[:3] if located is not None else None
        if fault is not None and fault[0] == "sendback":
            self.fault("sendback", st)

    def _stage_attrs(self, fname: str, pool_name: str | None) -> tuple[dict[str, Any], ...]:
        base: dict[str, Any] = {N.ATTR_CODE_FUNCTION: fname}
        if pool_name:
            base[N.ATTR_POOL_NAME] = pool_name
        made = (base, *({**base, N.ATTR_TASK_STAGE: s} for s in N.METRIC_STAGES))
        if len(self._attrs) < 1024:
            self._attrs[(fname, pool_name)] = made
        return made

    # -- wherever the event is found ---------------------------------------------------------
    def fault(self, stage: str, st: Any) -> None:
        self._add(self.faults, {**_pool_attrs(st), N.ATTR_FAULT_STAGE: stage})

    def pool_broken(self, reason: str, st: Any) -> None:
        self._add(self.breaks, {**_pool_attrs(st), N.ATTR_BROKEN_REASON: reason})

    def stall(self, kind: str, st: Any) -> None:
        self._add(self.stalls, {**_pool_attrs(st), N.ATTR_STALL_KIND: kind})

    def _add(self, counter: Any, attrs: dict[str, Any]) -> None:
        try:
            counter.add(1, attrs)
        except Exception:
            self._failed()

    def _failed(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "tracedpool: recording a metric failed; the pool is unaffected and further "
                "metric errors are not logged",
                exc_info=True,
            )

    # -- the reader's collection thread ------------------------------------------------------
    def _observe(self, which: int) -> Iterable[Any]:
        sums: dict[str | None, int] = {}
        for st in list(self.pools):
            try:
                counts = st.live_counts()
            except Exception:
                self._failed()
                continue
            if counts is not None:
                sums[st.name] = sums.get(st.name, 0) + counts[which]
        return [
            self._Observation(n, {N.ATTR_POOL_NAME: name} if name else {})
            for name, n in sums.items()
        ]

    def _observe_dropped(self, options: Any) -> Iterable[Any]:
        with self._retired_lock:
            sums = dict(self._retired_dropped)
            for st in list(self.pools):
                sums[st.name] = sums.get(st.name, 0) + st.emitter.dropped
        return [
            self._Observation(n, {N.ATTR_POOL_NAME: name} if name else {})
            for name, n in sums.items()
        ]

    def _observe_logs_dropped(self, options: Any) -> Iterable[Any]:
        with self._retired_lock:
            sums = dict(self._retired_logs_dropped)
            for st in list(self.pools):
                logs = st.logs
                if logs is not None:
                    sums[st.name] = sums.get(st.name, 0) + logs.dropped
        return [
            self._Observation(n, {N.ATTR_POOL_NAME: name} if name else {})
            for name, n in sums.items()
        ]

    def _observe_pending(self, options: Any) -> Iterable[Any]:
        return self._observe(0)

    def _observe_running(self, options: Any) -> Iterable[Any]:
        return self._observe(1)

    def _observe_workers(self, options: Any) -> Iterable[Any]:
        return self._observe(2)


def _pool_attrs(st: Any) -> dict[str, Any]:
    return {N.ATTR_POOL_NAME: st.name} if st.name else {}
