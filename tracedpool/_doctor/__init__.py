"""The doctor room: ``tracedpool doctor``'s health checks, as plain functions returning
result objects (``_cli.main`` prints them). It may read the diagnosis room (cgroups,
stall snapshots, heartbeats), the worker side's orphan scan, telemetry's names and
configuration, and, for the smoke test, the pool and ``tracedpool.testing``'s
``recording_provider``; only the CLI imports it.

- ``result``: ``Check``, ``Result``, ``Options``, ``DoctorError``; ``guarded`` runs one
  check so that its crash is that check's fail.
- ``run``: ``run_checks``, the groups below in order.
- ``interpreter``: the ``python`` group (version, start method).
- ``machine``: the ``limits`` group (semaphores, /dev/shm, open files, CPUs, memory).
- ``ptrace``: who may ptrace whom (Yama, CAP_SYS_PTRACE, users, containers) and the fix.
- ``snapshots``: the ``snapshots`` group (py-spy, the ptrace rules, a real attach).
- ``otel_env``: what the ``OTEL_*`` variables configure (endpoint, headers, service name).
- ``otlp_proto``: the hand-written protobuf for the endpoint check's one test span.
- ``endpoint``: ``telemetry.endpoint``, the OTLP endpoint probed for real.
- ``telemetry``: the ``telemetry`` group (SDK, exporters, sampler, service name).
- ``smoke``: the ``smoke`` group (a real traced pool, end to end).
- ``probe``: ``doctor --probe``, pools judged by their heartbeat files.
- ``orphans``: ``probe.orphans``, workers whose owner is gone.
- ``inspect``: ``doctor --pid``, a running process's pool seen from outside.
"""
