"""The `mirror` command.

Exit status: 0 the mirror is fully up to date; 1 the run finished but some
projects were deferred or failed, or it could not run at all; 2 usage or
configuration error; 128 + the signal's number when stopped by SIGINT (130)
or SIGTERM (143).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from simplemirror import __version__, config
from simplemirror.report import Reporter, RichReporter
from simplemirror.sync import RunSummary, Sync, SyncError

log = logging.getLogger("simplemirror")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 128 + signal.SIGINT


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="TOML config file ([mirror] table)")
    parser.add_argument("--directory", help="mirror directory (holds state.db and web/)")
    parser.add_argument("--upstream", help="root URL of the simple index to mirror")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror", description="Keep a verified local copy of a Python package index."
    )
    parser.add_argument("--version", action="version", version=f"simplemirror {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sync = commands.add_parser(
        "sync", help="bring the mirror up to date with upstream",
        description="Bring the mirror up to date with the upstream index.",
    )
    _common(sync)
    sync.add_argument("--workers", type=int, help="parallel downloads")
    sync.add_argument(
        "--project", action="append", default=[], metavar="NAME",
        help="mirror only this project (repeatable); overrides 'projects' in the config",
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="print the plan; download and write nothing"
    )
    sync.add_argument("--no-progress", action="store_true", help="plain log lines, no bars")
    sync.add_argument(
        "--allow-mass-delete", action="store_true",
        help="remove more than max-removal of the mirror in this run (after a real upstream "
        "clean-up; never needed for ordinary deletions)",
    )
    return parser


def _setup_logging(args: argparse.Namespace, console: Console | None) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Under systemd or a pipe: one plain line per event, no colour.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _print_plan(summary: RunSummary) -> None:
    plan = summary.plan
    assert plan is not None
    print(f"would fetch {len(plan.fetch)} project(s); {plan.unchanged} unchanged")
    for todo in plan.fetch:
        serial = "" if todo.serial is None else f" (serial {todo.serial})"
        print(f"  fetch {todo.name}{serial}")
    for name in plan.removed:
        print(f"  removed upstream: {name}")


def _print_summary(summary: RunSummary) -> None:
    mb = summary.bytes_fetched / 1e6
    print(
        f"sync {summary.outcome}: {summary.changed} project(s) changed, "
        f"{len(summary.deferred)} deferred, {len(summary.failed)} failed, "
        f"{len(summary.removed)} removed upstream; {summary.files_fetched} file(s), "
        f"{mb:.1f} MB fetched in {summary.duration:.1f} s (generation {summary.generation})"
    )
    for name, why in summary.deferred:
        print(f"  deferred {name}: {why} (upstream page is stale; the next run retries)")
    for name, why in summary.failed:
        print(f"  failed {name}: {why} (the next run retries)")
    for entry, why in summary.rejected:
        print(f"  refused {entry}: {why} (upstream data this mirror will not copy)")
    if summary.stopped_by is not None:
        print("  stopped before the end: the next run resumes where this one stopped")


def _stop_on_signals(sync: Sync) -> None:
    """SIGTERM or SIGINT: finish in-flight work and commit; the same signal again: stop now."""

    def handler(signum: int, _frame: object) -> None:
        if sync.stopped_by is not None:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("%s received: stopping after in-flight work (again to stop at once)", name)
        sync.request_stop(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = config.load(
        args.config,
        upstream=args.upstream,
        directory=args.directory,
        workers=args.workers,
        projects=args.project,
        allow_mass_delete=args.allow_mass_delete or None,
    )
    interactive = sys.stderr.isatty() and not args.no_progress and not args.quiet
    console = Console(stderr=True) if interactive else None
    _setup_logging(args, console)
    reporter = RichReporter(console) if console is not None else Reporter()
    sync = Sync(cfg, reporter)
    _stop_on_signals(sync)
    with reporter:
        summary = sync.run(dry_run=args.dry_run)
    if args.dry_run:
        _print_plan(summary)
        return EXIT_OK
    _print_summary(summary)
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_sync(args)
    except config.ConfigError as exc:
        print(f"mirror: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SyncError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("mirror: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
