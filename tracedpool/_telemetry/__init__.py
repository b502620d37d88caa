"""The telemetry room: names, span building, the OpenTelemetry boundary, export, metrics.

- ``names``: every span name, attribute key, event name and environment variable.
- ``otel``: choosing a span sink per provider, and the worker-side collector.
- ``sdk``: the OpenTelemetry boundary: every private name of the SDK and the API, each
  probed once with its fallback; no other module reads one (tests/test_boundaries.py).
- ``emit``: the emitter thread, the only place that calls span processors, and the
  task spans.
- ``poolspans``: the pool's own spans (``tracedpool.pool``, ``tracedpool.stall``) and
  the typed items that queue them.
- ``configure``: ``tracedpool.configure()``, the pipeline tracedpool can own.
- ``jsonl`` and ``otlpjson``: the embedded default exporter and its OTLP/JSON encoding.
- ``otlpproto``: OTLP protobuf written from span specs, for ``configure()``'s OTLP/HTTP.
- ``plaintask``: the common task (a result, nothing unusual) written straight from its
  record in both of those encodings, without specs.
- ``metrics``: histograms, counters and gauges through the metrics API.
"""
