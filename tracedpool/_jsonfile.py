"""Reading JSON the commands are handed, which may be any file at all.

``tracedpool report`` reads one JSON document (a stall report); ``tracedpool timeline``
reads JSON lines (a trace file, through ``tracedpool._telemetry.otlpjson.read_spans``). Both read
through here, so every way a file can be wrong (unreadable, not UTF-8 text, not JSON,
nested too deeply for the parser) becomes a ``ValueError`` saying so in one line, which
the commands print before exiting with 2. None of it may end in a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A file that cannot be read as the JSON expected; the message names the file.
    ``unreadable``: it could not be read at all (missing, a directory, no permission)."""

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


def loads(text: str | bytes) -> Any:
    """``json.loads``, with input nested too deeply for the parser (a ``RecursionError``
    in the C parser or the pure-Python one, depending on the version) as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_document(path: str | os.PathLike[str]) -> Any:
    """The one JSON document in the file at ``path``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise JsonFileError(f"cannot read {p}: {e.strerror or e}", unreadable=True) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonFileError(f"{p} is not UTF-8 text") from None
    try:
        return loads(text)
    except ValueError as e:
        raise JsonFileError(f"{p} is not JSON ({_first_line(e)})") from None


#: What ``lines`` gives for a line that does not parse.
BAD_LINE: Any = object()


def lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file, or
    (line number, ``BAD_LINE``) for one that is not JSON or is nested too deeply: a
    write cut short by a crash or a full disk. Bytes that are not UTF-8 are replaced,
    so such a line is simply not JSON."""
    p = Path(path)
    try:
        f = p.open(encoding="utf-8", errors="replace")
    except OSError as e:
        raise JsonFileError(f"cannot read {p}: {e.strerror or e}", unreadable=True) from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, loads(line)
            except ValueError:
                yield lineno, BAD_LINE


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
