"""The worker room: what runs in the worker processes, and what travels to and from them.

- ``wire``: the sampled task's wrapper (``_Task``), the worker's initializer, the
  worker-side collector of the task code's own spans, the status pipe, and the location
  of pickling faults.
- ``logs``: the worker's log capture: a handler on its root logger that streams each
  record to the parent on the pool's log pipe, bounded, never blocking the task.
- ``lifeline``: a worker's tie to its owner, so that no worker outlives the process
  that owns its pool.

Imports nothing from the pool room: the parent's half of each channel lives there.
"""
