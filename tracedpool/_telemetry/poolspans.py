"""The pool's own spans: ``tracedpool.pool`` (the pool's life) and ``tracedpool.stall``.

Task spans are built in ``emit`` from a ``TaskRecord``; the pool's trace has two more
kinds, queued to the same emitter thread as typed items:

- ``StallMark``: the stall watcher found the pool stuck; a short span in the pool's
  trace, linked to the stuck tasks' spans.
- ``POOL_END``: the manager thread exited; the pool span, from construction to now.

The pool's state hands each item to ``stall_spec`` or ``pool_spec`` on the emitter
thread; like every span builder they only build specs, and the sink emits them.
"""

from __future__ import annotations

from time import time_ns
from typing import Any, NamedTuple

from . import names as N
from .otel import SpanSpec


class StallMark(NamedTuple):
    """A stall, queued for its span: when, what the watcher found, and the stuck tasks."""

    stamp: tuple[int, str, str | None]  # (t_ns, diagnosis, report path), as on each record
    kind: str
    stuck: list[Any]  # the stuck sampled tasks' TaskRecords, linked from the span


class PoolEnd:
    """The marker queued once the pool's manager thread exited."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "POOL_END"


POOL_END = PoolEnd()


def stall_spec(mark: StallMark, span_id: int, parent_id: int, pool_id: str) -> SpanSpec:
    """The ``tracedpool.stall`` span, a child of the pool span ``parent_id``."""
    t, diagnosis, path = mark.stamp
    attrs: dict[str, Any] = {
        N.ATTR_STALL_DIAGNOSIS: diagnosis,
        N.ATTR_STALL_KIND: mark.kind,
        N.ATTR_POOL_ID: pool_id,
    }
    if path:
        attrs[N.ATTR_STALL_REPORT] = path
    links = [(r.trace_id, r.span_id, r.flags) for r in mark.stuck]
    return SpanSpec(
        N.SPAN_STALL, span_id, parent_id, 0, t, time_ns(), attrs, (), (True, mark.kind), links
    )


def pool_spec(
    span_id: int,
    t_created: int,
    pool_id: str,
    parent_pid: int,
    name: str | None,
    start_method: str,
    max_workers: int | None,
) -> SpanSpec:
    """The ``tracedpool.pool`` span: the root of the pool's own trace."""
    attrs: dict[str, Any] = {N.ATTR_POOL_ID: pool_id, N.ATTR_PROCESS_PID: parent_pid}
    if name:
        attrs[N.ATTR_POOL_NAME] = name
    if start_method:
        attrs[N.ATTR_POOL_START_METHOD] = start_method
    if max_workers is not None:
        attrs[N.ATTR_POOL_MAX_WORKERS] = max_workers
    return SpanSpec(N.SPAN_POOL, span_id, 0, 0, t_created, time_ns(), attrs, (), None, ())
