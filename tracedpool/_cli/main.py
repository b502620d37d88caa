"""``tracedpool`` command line: a thin argparse layer over library functions.

    tracedpool report PATH [--json]   render a stall report for a human, or as JSON
    tracedpool doctor [...]           health checks (see docs/doctor.md)
    tracedpool doctor --pid PID       inspect a running process's pool
    tracedpool doctor --probe         judge running pools by their heartbeat files
    tracedpool timeline [TRACEFILE] [-o timeline.html] [--last SECONDS]
                                      a self-contained HTML timeline of a trace file
                                      (OTLP/JSON lines; default: the embedded default's)

Exit codes: 0 success (doctor: healthy, warnings and skips included), 1 a doctor check
failed, 2 usage or error (bad path, not a tracedpool report, not an OTLP/JSON-lines trace
file, no such pid, permission denied).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .._diagnosis.stall import SCHEMA, render_text
from .._jsonfile import JsonFileError, read_document


class ReportError(Exception):
    """A path that is not a readable tracedpool stall report."""


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a stall report (its .json, or the .txt beside it), checking its schema."""
    p = Path(path)
    if p.suffix == ".txt" and p.with_suffix(".json").exists():
        p = p.with_suffix(".json")
    try:
        report = read_document(p)
    except JsonFileError as e:
        raise ReportError(
            str(e) if e.unreadable else f"{e}: not a tracedpool stall report"
        ) from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ReportError(f"{p} is not a tracedpool stall report (expected schema {SCHEMA})")
    return report


def _report(args: argparse.Namespace) -> int:
    try:
        report = load_report(args.path)
    except ReportError as e:
        print(f"tracedpool report: {e}", file=sys.stderr)
        return 2
    try:
        text = json.dumps(report, indent=2) + "\n" if args.json else render_text(report)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as e:
        # The schema matched but the content is not a report's (edited or made up).
        print(
            f"tracedpool report: {args.path} is not a tracedpool stall report: its "
            f"content does not have a report's shape ({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return 2
    print(text, end="")
    return 0


# -- doctor ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    if not math.isfinite(value):  # inf would overflow the deadlines computed from it
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text}")
    return value


def _groups(text: str) -> list[str]:
    from .._doctor.result import GROUPS

    found = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in found if g not in GROUPS]
    if unknown or not found:
        raise argparse.ArgumentTypeError(
            f"unknown group(s) {', '.join(unknown) or text!r}; choose from {', '.join(GROUPS)}"
        )
    return found


_COLOURS = {"ok": "32", "warn": "33", "fail": "31;1", "skip": "2"}


def render_doctor(result: Any, colour: bool = False) -> str:
    """A doctor result for a human: one line per check, its fix indented below."""
    from .._version import __version__

    def paint(status: str) -> str:
        word = f"{status:<4}"
        return f"\033[{_COLOURS[status]}m{word}\033[0m" if colour else word

    title = {"checks": "checks", "pid": "--pid", "probe": "--probe"}[result.mode]
    lines = [
        f"tracedpool doctor {title} (tracedpool {__version__}, Python {sys.version.split()[0]})"
    ]
    width = max((len(c.id) for c in result.checks), default=0)
    for c in result.checks:
        lines.append(f"  {paint(c.status)}  {c.id:<{width}}  {c.finding}")
        if c.fix and c.status != "ok":
            lines.append(f"        {'':<{width}}  fix: {c.fix}")
    if result.report is not None:
        lines += ["", *_stacks(result.report)]
    counts = {s: sum(c.status == s for c in result.checks) for s in ("ok", "warn", "fail", "skip")}
    verdict = {"ok": "healthy", "warn": "healthy, with warnings", "fail": "FAILED"}[result.status]
    lines.append("")
    lines.append(
        f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail, {counts['skip']} skip"
        f": {verdict} ({result.seconds:.1f} s)"
    )
    return "\n".join(lines) + "\n"


def _stacks(report: dict[str, Any]) -> list[str]:
    """The threads that matter, innermost frames first, a few frames each."""
    out = ["stacks (innermost first; the full report: --report PATH):"]
    for p in report.get("processes", []):
        threads = p.get("threads")
        if threads is None:
            if p.get("role") in ("worker", "orphan"):
                out.append(
                    f"  pid {p['pid']} ({p['role']}, {p.get('status')}): "
                    f"no stack ({p.get('stack_method')})"
                )
            continue
        if p.get("role") not in ("parent", "worker", "orphan"):
            continue
        out.append(f"  pid {p['pid']} ({p['role']}, {p.get('status')})")
        for t in threads:
            role = t.get("role", "other")
            if p["role"] == "parent" and role not in ("main", "manager", "feeder"):
                continue
            if p["role"] != "parent" and t.get("name") != "MainThread":
                continue
            out.append(f"    thread {t.get('name')} [{role}]")
            for f in (t.get("frames") or [])[:6]:
                out.append(f"      {f.get('function')} ({f.get('file')}:{f.get('line')})")
    return out


def _doctor(args: argparse.Namespace) -> int:
    from .._doctor.probe import probe
    from .._doctor.result import DoctorError, Options
    from .._doctor.run import run_checks

    mode_flags = []
    if args.report is not None and args.pid is None:
        mode_flags.append("--report needs --pid")
    if (args.heartbeat_dir or args.max_age is not None or args.require_pool) and not args.probe:
        mode_flags.append("--heartbeat-dir, --max-age and --require-pool need --probe")
    if args.sample is not None and (args.pid is None or args.probe):
        mode_flags.append("--sample needs --pid")
    checks_only = (args.only, args.skip, args.max_workers, args.start_method, args.otlp_endpoint)
    if (args.pid is not None or args.probe) and any(x is not None for x in checks_only):
        mode_flags.append(
            "--only, --skip, --max-workers, --start-method and --otlp-endpoint are for the "
            "checks, not --pid or --probe"
        )
    if mode_flags:
        message = "; ".join(mode_flags)
        if args.json:
            fix = "drop the flags that do not belong to this mode (see `tracedpool doctor --help`)"
            print(json.dumps({"error": message, "fix": fix, "exit_code": 2}, indent=2))
        print(f"tracedpool doctor: {message}", file=sys.stderr)
        return 2
    try:
        if args.probe:
            result = probe(
                Path(args.heartbeat_dir) if args.heartbeat_dir else None,
                pid=args.pid,
                max_age=args.max_age,
                require=args.require_pool,
            )
        elif args.pid is not None:
            from .._doctor.inspect import inspect_pid, save_report

            result = inspect_pid(args.pid, args.sample or 1.0)
            if args.report is not None and result.report is not None:
                try:
                    written = save_report(result.report, Path(args.report))
                except OSError as e:
                    raise DoctorError(
                        f"cannot write the report to {args.report}: {e.strerror or e}"
                    ) from None
                result.report["report_path"] = str(written)
                print(f"tracedpool doctor: report written to {written}", file=sys.stderr)
        else:
            from .._doctor.result import GROUPS

            groups = tuple(g for g in (args.only or GROUPS) if g not in (args.skip or ()))
            result = run_checks(
                Options(
                    max_workers=args.max_workers,
                    start_method=args.start_method,
                    otlp_endpoint=args.otlp_endpoint,
                    groups=groups,
                    timeout=args.timeout,
                )
            )
    except DoctorError as e:
        if args.json:
            print(json.dumps({"error": str(e), "fix": e.fix, "exit_code": 2}, indent=2))
        print(f"tracedpool doctor: {e}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.no_color
        print(render_doctor(result, colour), end="")
    return result.exit_code


def _doctor_parser(sub: Any) -> None:
    import multiprocessing

    doctor = sub.add_parser(
        "doctor",
        help="health checks for this machine and configuration, a running pool, or a probe",
        description="Checks report ok, warn, fail or skip. Exit codes: 0 healthy (warnings "
        "and skips included), 1 a check failed, 2 usage or error. See docs/doctor.md.",
    )
    doctor.add_argument("--json", action="store_true", help="print the result as JSON")
    doctor.add_argument("--no-color", action="store_true", help="no colour, even on a TTY")
    doctor.add_argument("--pid", type=_positive_int, help="inspect this running process")
    doctor.add_argument(
        "--sample", type=_positive_float, help="--pid: seconds to watch CPU and I/O (1)"
    )
    doctor.add_argument("--report", metavar="PATH", help="--pid: write the report here")
    doctor.add_argument(
        "--probe", action="store_true", help="quick: judge pools by their heartbeat files"
    )
    doctor.add_argument("--heartbeat-dir", metavar="DIR", help="--probe: where to look")
    doctor.add_argument(
        "--max-age", type=_positive_float, help="--probe: oldest acceptable heartbeat (30 s)"
    )
    doctor.add_argument(
        "--require-pool", action="store_true", help="--probe: fail when no pool is found"
    )
    doctor.add_argument("--only", type=_groups, help="comma-separated check groups to run")
    doctor.add_argument("--skip", type=_groups, help="comma-separated check groups to skip")
    doctor.add_argument(
        "--max-workers", type=_positive_int, help="the max_workers your service uses"
    )
    doctor.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        help="the start method your service uses",
    )
    doctor.add_argument("--otlp-endpoint", metavar="URL", help="test this OTLP endpoint")
    doctor.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        help="seconds for each network request, attach and smoke task (10)",
    )
    doctor.set_defaults(run=_doctor)


def _timeline(args: argparse.Namespace) -> int:
    from .._timeline.page import TimelineError, write_timeline

    try:
        tracefile = args.tracefile
        if tracefile is None:
            from .._telemetry.otlpjson import file_settings

            tracefile = file_settings()[0]
        result = write_timeline(tracefile, args.output, last_seconds=args.last)
    except (TimelineError, ValueError) as e:
        print(f"tracedpool timeline: {e}", file=sys.stderr)
        return 2
    skipped = (
        f" ({result.skipped_lines} unreadable line(s) skipped)" if result.skipped_lines else ""
    )
    print(
        f"wrote {result.output}: {result.tasks} tasks on {result.lanes} lanes, "
        f"{result.faults} faults, {result.stalls} stalls{skipped}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracedpool", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="render a stall report")
    report.add_argument("path", help="a stall report (.json, or the .txt beside it)")
    report.add_argument("--json", action="store_true", help="print it as JSON")
    report.set_defaults(run=_report)
    _doctor_parser(sub)

    timeline = sub.add_parser("timeline", help="build an HTML timeline from a trace file")
    timeline.add_argument(
        "tracefile",
        nargs="?",
        help="spans as OTLP/JSON lines (default: the embedded default exporter's file, "
        "$TRACEDPOOL_TRACE_FILE or the per-user one)",
    )
    timeline.add_argument(
        "-o", "--output", default="timeline.html", help="the page to write (timeline.html)"
    )
    timeline.add_argument(
        "--last",
        type=_positive_float,
        metavar="SECONDS",
        help="only tasks that started within SECONDS of the file's newest span",
    )
    timeline.set_defaults(run=_timeline)
    args = parser.parse_args(argv)  # exits with code 2 on bad usage
    return int(args.run(args))
