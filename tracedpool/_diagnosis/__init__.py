"""The diagnosis room: why a pool broke, and what a stalled pool is stuck on.

- ``forensics``: dead workers, exit codes, signals, OOM kills and lost tasks, read once
  when the stdlib is about to declare the pool broken.
- ``stall``: the stall watcher, stack snapshots (py-spy, with a fallback), process
  status, and the stall report's one shape.
- ``heartbeat``: the liveness file a pool keeps fresh, readable without ptrace.
- ``cgroup``: the CPU quota, memory limit and usage and OOM-kill count of this
  process's own cgroup chain, for forensics' OOM verdict and the doctor's limits.
"""
