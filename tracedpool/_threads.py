"""Starting tracedpool's own background threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("tracedpool")


def start_daemon(target: Callable[[], None], name: str, without: str) -> threading.Thread | None:
    """Start a daemon thread, or say once what is lost and return None: starting a thread
    can fail (e.g. "can't create new thread at interpreter shutdown"), and telemetry must
    never fail the caller's submit()."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError as e:
        log.warning("tracedpool: could not start %s (%s); %s", name, e, without)
        return None
    return thread
