"""``tracedpool`` command line: a thin argparse layer over library functions.

    tracedpool report PATH [--json]   render a stall report for a human, or as JSON
    tracedpool timeline TRACEFILE [-o timeline.html]
                                      a self-contained HTML timeline of a trace file
                                      (OTLP/JSON lines)

Exit codes: 0 success, 2 usage or error (bad path, not a tracedpool report, not an
OTLP/JSON-lines trace file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._stall import SCHEMA, render_text


class ReportError(Exception):
    """A path that is not a readable tracedpool stall report."""


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a stall report (its .json, or the .txt beside it), checking its schema."""
    p = Path(path)
    if p.suffix == ".txt" and p.with_suffix(".json").exists():
        p = p.with_suffix(".json")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        report = json.loads(text)
    except ValueError:
        raise ReportError(f"{p} is not JSON: not a tracedpool stall report") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ReportError(f"{p} is not a tracedpool stall report (expected schema {SCHEMA})")
    return report


def _report(args: argparse.Namespace) -> int:
    try:
        report = load_report(args.path)
    except ReportError as e:
        print(f"tracedpool report: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report), end="")
    return 0


def _timeline(args: argparse.Namespace) -> int:
    from ._timeline import TimelineError, write_timeline

    try:
        result = write_timeline(args.tracefile, args.output)
    except TimelineError as e:
        print(f"tracedpool timeline: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.output}: {result.tasks} tasks on {result.lanes} lanes, "
        f"{result.faults} faults, {result.stalls} stalls"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracedpool", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="render a stall report")
    report.add_argument("path", help="a stall report (.json, or the .txt beside it)")
    report.add_argument("--json", action="store_true", help="print it as JSON")
    report.set_defaults(run=_report)
    timeline = sub.add_parser("timeline", help="build an HTML timeline from a trace file")
    timeline.add_argument(
        "tracefile", help="spans as OTLP/JSON lines (the default exporter's file)"
    )
    timeline.add_argument(
        "-o", "--output", default="timeline.html", help="the page to write (timeline.html)"
    )
    timeline.set_defaults(run=_timeline)
    args = parser.parse_args(argv)  # exits with code 2 on bad usage
    return int(args.run(args))
