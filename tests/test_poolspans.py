"""The pool's own spans are built from typed items, with the attributes the docs name."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

from tracedpool._telemetry import names as N
from tracedpool._telemetry.poolspans import POOL_END, StallMark, pool_spec, stall_spec


def test_a_stall_mark_becomes_a_stall_span_linked_to_the_stuck_tasks() -> None:
    """A StallMark's fields land on the tracedpool.stall span, a child of the pool span."""
    stuck = [SimpleNamespace(trace_id=7, span_id=8, flags=1)]
    mark = StallMark((1_000, "a worker is stopped", "/tmp/r.json"), "stopped", stuck)
    spec = stall_spec(mark, span_id=5, parent_id=3, pool_id="abcd")
    assert spec.name == N.SPAN_STALL
    assert (spec.span_id, spec.parent_id, spec.start_ns) == (5, 3, 1_000)
    assert spec.end_ns >= spec.start_ns
    assert spec.attributes == {
        N.ATTR_STALL_DIAGNOSIS: "a worker is stopped",
        N.ATTR_STALL_KIND: "stopped",
        N.ATTR_POOL_ID: "abcd",
        N.ATTR_STALL_REPORT: "/tmp/r.json",
    }
    assert spec.status == (True, "stopped")
    assert list(spec.links) == [(7, 8, 1)]


def test_a_stall_with_no_report_has_no_report_attribute() -> None:
    """No report path (the report could not be written): the attribute is left out."""
    spec = stall_spec(StallMark((1, "d", None), "k", []), 5, 3, "p")
    assert N.ATTR_STALL_REPORT not in spec.attributes
    assert list(spec.links) == []


def test_the_pool_span_carries_the_pool_facts_it_has() -> None:
    """Name, start method and max workers are set when known, and only then."""
    full = pool_spec(9, 100, "abcd", 42, "etl", "fork", 4)
    assert full.name == N.SPAN_POOL and full.span_id == 9 and full.parent_id == 0
    assert full.attributes == {
        N.ATTR_POOL_ID: "abcd",
        N.ATTR_PROCESS_PID: 42,
        N.ATTR_POOL_NAME: "etl",
        N.ATTR_POOL_START_METHOD: "fork",
        N.ATTR_POOL_MAX_WORKERS: 4,
    }
    bare = pool_spec(9, 100, "abcd", 42, None, "", None)
    assert bare.attributes == {N.ATTR_POOL_ID: "abcd", N.ATTR_PROCESS_PID: 42}


def test_the_pool_end_marker_is_one_object() -> None:
    """The emitter tells it apart by identity."""
    from tracedpool._telemetry import poolspans

    assert poolspans.POOL_END is POOL_END and repr(POOL_END) == "POOL_END"


def test_the_views_do_not_keep_a_dropped_pool_state_alive() -> None:
    """PoolViews holds its state weakly: the state (and its views) go with the pool."""
    import tracedpool

    pool = tracedpool.TracedProcessPoolExecutor(1)
    views = weakref.ref(pool._tp_state.views)
    state = weakref.ref(pool._tp_state)
    pool.shutdown()
    del pool
    gc.collect()
    assert state() is None and views() is None
