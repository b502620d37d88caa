"""The pool room: the executor users construct, and the hooks inside the stdlib's pool.

- ``executor``: ``TracedProcessPoolExecutor``; composes a pool's state, hooks, stall
  watcher and metrics. Its docstring has the data-flow diagram.
- ``observer``: ``PoolState``, one pool's facts and the hooks' observer
  (``cpython.PoolObserver``): what the hooks report becomes task and wake records.
- ``breakage``: why a broken pool broke (the inventory) and the exception each of its
  futures fails with; the pool-broken span attributes.
- ``views``: ``PoolViews``, what the stall watcher, the metric gauges and ``stats()`` read
  of a pool, and the watcher's commands to it.
- ``cpython``: the only module that touches ``concurrent.futures.process`` internals (and
  CPython's other private names); it probes them once per interpreter and reports to the
  pool through ``PoolObserver``.
- ``logs``: ``LogListener``, the reader thread that re-emits the workers' log records
  in the parent's ``logging``, inside the span each was logged in.
- ``instrument``: zero-code instrumentation (the stdlib class becomes a traced pool).

May use every other room; no other room imports ``executor``, ``observer``, ``breakage``
or ``views`` except the doctor's smoke test and ``instrument`` (the executor).
"""
