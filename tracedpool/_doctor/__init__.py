"""The doctor room: ``tracedpool doctor``'s health checks, as plain functions.

- ``checks``: the machine, configuration and collector checks, and the smoke test.
- ``inspect``: ``doctor --pid``, a running process's pool seen from outside.
"""
