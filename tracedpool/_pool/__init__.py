"""The pool room: the executor users construct, and the hooks inside the stdlib's pool.

- ``executor``: ``TracedProcessPoolExecutor`` and ``_PoolState``, which owns one pool's
  threads (emitter, stall watcher) and turns what the hooks report into records.
- ``cpython``: the only module that touches ``concurrent.futures.process`` internals;
  it probes them once per interpreter and reports to the pool through ``PoolObserver``.
- ``instrument``: zero-code instrumentation (the stdlib class becomes a traced pool).

May use every other room; no other room imports ``executor`` except the doctor's smoke
test and ``instrument``.
"""
