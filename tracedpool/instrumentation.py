"""tracedpool's OpenTelemetry instrumentor, for ``opentelemetry-instrument``.

Registered under the ``opentelemetry_instrumentor`` entry point as ``tracedpool``, so::

    opentelemetry-instrument python app.py

traces every stdlib ``ProcessPoolExecutor`` the unmodified app creates, and
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tracedpool`` switches it off. Options come from
the ``TRACEDPOOL_*`` environment variables (docs/names.md) or, when the instrumentor is
called by hand, from ``instrument()``'s keyword arguments.

This module needs ``opentelemetry-instrumentation`` (the ``instrumentation`` extra);
nothing else in tracedpool imports it.

Under spawn and forkserver, ``opentelemetry-instrument``'s sitecustomize runs again in
every worker (and in the forkserver), configuring an SDK there and instrumenting again.
That is harmless: a worker's own provider is taken over by tracedpool's worker side,
which sends task code's spans to the parent instead of exporting them, so no span is
exported twice; and instrumenting in a worker only matters if task code creates pools.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

# import-not-found where the optional extra is absent; unused-ignore where it is present.
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[import-not-found,attr-defined,unused-ignore]
    BaseInstrumentor,
)

from ._pool import instrument as _instrument

log = logging.getLogger("tracedpool")

__all__ = ["TracedPoolInstrumentor"]


class TracedPoolInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces the stdlib ``ProcessPoolExecutor`` (``tracedpool.instrument()``).

    ``instrument(**kwargs)`` accepts ``TracedProcessPoolExecutor``'s keyword-only options
    (``tracer_provider``, ``meter_provider``, ``stall_timeout``...) and ignores other
    keywords, as instrumentors do. With no options (as ``opentelemetry-instrument``
    calls it), a bad ``TRACEDPOOL_*`` variable is logged and pools are left untraced:
    a telemetry setting never stops the application.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # the stdlib: always present

    def _instrument(self, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in _instrument.OPTIONS}
        if options:
            _instrument.instrument(**options)  # a caller's mistake: raise to the caller
            return
        try:
            _instrument.instrument()
        except (TypeError, ValueError) as e:
            # The message names the rule; a traceback would only point at our own code.
            log.error("tracedpool: not instrumenting ProcessPoolExecutor: %s", e)  # noqa: TRY400

    def _uninstrument(self, **kwargs: Any) -> None:
        _instrument.uninstrument()
