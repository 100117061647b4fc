"""The `mirror` command.

Exit status: 0 the mirror is fully up to date; 1 the run finished but some
projects were deferred or failed, or it could not run at all; 2 usage or
configuration error; 128 + the signal's number when stopped by SIGINT (130)
or SIGTERM (143). `mirror sync --every`: 0 when a signal ends it between runs, 128 + the
signal when one stops a run. `mirror sync --dry-run`: the status the run would end with,
as far as the pages it reads tell (1 when it would refuse a mass removal).
`mirror verify`: 0 the mirror is sound, 1 it is not (or there
is no state.db, or a sync holds the lock). `mirror status`: 0 when the last run that
finished left the mirror up to date (ok or unchanged; a sync still running is not a
failure: the run before it decides); 3 when it did not (partial, error, interrupted, a
repair that left problems, a run that died without recording its end, or none finished
yet); 1 when there is no state.db to read. `mirror log`: 0, or 1 when there is no
state.db or no such generation. `mirror serve`: runs until stopped, then 0
(SIGTERM or SIGINT is how it is meant to stop, so systemd sees a clean exit); 1 when it
cannot start (no web/simple in the directory, the address cannot be bound); 2 usage or
configuration error. `mirror keygen` and `mirror export`: 0, or 1 when they cannot (a key
file exists, a wrong passphrase, nothing to export). `mirror import`: 0 when the bundle is
applied, or was already; 1 when it is refused or incomplete (nothing changed).
Output cut short by its reader (`| head`) changes no exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simplemirror import __version__
from simplemirror.check import status
from simplemirror.cli import config, daemon
from simplemirror.filter.rules import Filters
from simplemirror.filter.select import Tally
from simplemirror.report import history, logs, observe
from simplemirror.report.progress import Reporter
from simplemirror.report.units import human_bytes
from simplemirror.serve import server as serve
from simplemirror.sync.run import RunSummary, Sync, SyncError

if TYPE_CHECKING:
    from rich.console import Console

    from simplemirror.bundle.apply import Stop

log = logging.getLogger("simplemirror")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 128 + signal.SIGINT
# `mirror status`: state.db was read, and says the mirror is not known to be up to date.
EXIT_NOT_UP_TO_DATE = 3


def _common(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that talk to the upstream and show progress."""
    _where(parser)
    parser.add_argument("--upstream", help="root URL of the simple index to mirror")
    _logging(parser, bars=True)


def _where(parser: argparse.ArgumentParser) -> None:
    """Where the mirror is: every command needs it."""
    parser.add_argument("-c", "--config", type=Path, help="TOML config file ([mirror] table)")
    parser.add_argument("--directory", help="mirror directory (holds state.db and web/)")


def _logging(parser: argparse.ArgumentParser, *, bars: bool) -> None:
    """How much is logged and how; ``bars``: the command shows progress on a terminal."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    on_terminal, never = (" (progress bars on a terminal)", ", never bars") if bars else ("", "")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default="text",
        help=f"text: plain lines{on_terminal}; json: one JSON object per line on stderr{never} "
        "(default: text)",
    )


def _file_host_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file-host", action="append", default=[], metavar="HOST",
        help="a host besides the upstream's that may serve files (repeatable); once any is "
        "given, no other may. Default: any host not on a loopback, link-local or private "
        "address (unless the upstream is on one). Overrides 'file-hosts' in the config",
    )


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
    sync.add_argument(
        "--workers", type=int, metavar="N",
        help=f"requests at once, pages and files together, a connection each (default "
        f"{config.Config.workers}); overrides 'workers' in the config",
    )
    sync.add_argument(
        "--download-processes", type=int, metavar="N",
        help="download in N child processes sharing the workers (default: one per CPU core, "
        "at most 4, once a run has many files; 0: none)",
    )
    sync.add_argument(
        "--project", action="append", default=[], metavar="NAME",
        help="mirror only this project (repeatable); overrides 'projects' in the config",
    )
    _file_host_option(sync)
    sync.add_argument(
        "--reuse-from", action="append", default=[], metavar="DIR",
        help="take a file found by name below DIR (another mirror's packages/, a folder of "
        "wheels) when its size and hashes match, instead of downloading it; repeatable. "
        "Overrides 'reuse-from' in the config",
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="print the plan; download and write nothing"
    )
    sync.add_argument("--no-progress", action="store_true", help="plain log lines, no bars")
    sync.add_argument(
        "--every", type=_interval, metavar="INTERVAL",
        help="keep running: sync, pause INTERVAL (30s, 10m, 1h, 1d; plus up to 10%% at "
        "random), sync again; a failed run does not end the loop, SIGTERM or SIGINT does; "
        "overrides 'every' in the config",
    )
    sync.add_argument(
        "--metrics-file", metavar="PATH",
        help="write Prometheus metrics here after each run (a .prom file in node_exporter's "
        "textfile collector directory); overrides 'metrics-file' in the config",
    )
    sync.add_argument(
        "--allow-mass-delete", action="store_true",
        help="remove more than max-removal of the mirror in this run (after a real upstream "
        "clean-up; never needed for ordinary deletions)",
    )
    verify_cmd = commands.add_parser(
        "verify", help="check every file and page of the mirror against state.db",
        description="Hash every file state.db holds again, check every link of every page, "
        "and list files nothing references (orphans). Exit 0 when the mirror is sound.",
    )
    _common(verify_cmd)
    verify_cmd.add_argument("--workers", type=int, help="parallel hashing and downloads")
    verify_cmd.add_argument(
        "--repair", action="store_true",
        help="fetch missing or corrupt files again from upstream (needs the upstream "
        "configured) and write broken pages again from state.db",
    )
    _file_host_option(verify_cmd)
    verify_cmd.add_argument(
        "--delete-orphans", action="store_true",
        help="delete files under web/packages that neither state.db nor any page references",
    )
    verify_cmd.add_argument(
        "--deep", action="store_true",
        help="with storage in a bucket: read and hash every object (without it, each "
        "object's size and the sha256 the store verified on upload are checked)",
    )
    verify_cmd.add_argument("--no-progress", action="store_true",
                            help="plain log lines, no bars")
    status_cmd = commands.add_parser(
        "status", help="show what the mirror holds and how its last runs went",
        description="Show the mirror's state from state.db alone (no network; safe while "
        "a sync runs).",
    )
    # The upstream shown is the config file's, else the last run's: state.db tells the rest.
    _where(status_cmd)
    _logging(status_cmd, bars=False)
    status_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    log_cmd = commands.add_parser(
        "log", help="list the runs, newest first, or what one run changed",
        description="List the runs from state.db, newest first, or with --generation what "
        "one run changed: projects added, changed and removed, files added and removed "
        "(no network; safe while a sync runs).",
    )
    _where(log_cmd)
    _logging(log_cmd, bars=False)
    log_cmd.add_argument("--limit", type=_positive, default=20, metavar="N",
                         help="list the N newest runs (default 20)")
    log_cmd.add_argument("--generation", type=int, metavar="N",
                         help="show what the run of generation N changed")
    log_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    serve_cmd = commands.add_parser(
        "serve", help="serve the mirror over HTTP (small sites; nginx for busy ones)",
        description="Serve <directory>/web over HTTP, with PEP 691 content negotiation. "
        "One line per request is logged (-q: none). Stops on SIGTERM or SIGINT.",
    )
    _where(serve_cmd)
    _logging(serve_cmd, bars=False)
    serve_cmd.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)")
    serve_cmd.add_argument("--port", type=int, default=8080,
                           help="port to listen on (default 8080; 0 picks a free one)")
    serve_cmd.add_argument(
        "--storage", metavar="s3://BUCKET/PREFIX",
        help="serve this bucket instead of <directory>/web (the config's [storage] table "
        "gives its endpoint-url and region; AWS_ENDPOINT_URL does too)",
    )
    serve_cmd.add_argument(
        "--max-connections", type=_positive, default=serve.MAX_CONNECTIONS, metavar="N",
        help=f"connections served at once, a thread each (default {serve.MAX_CONNECTIONS}); "
        "more wait until one ends",
    )
    _bundle_commands(commands)
    return parser


def _bundle_commands(commands: Any) -> None:
    keygen = commands.add_parser(
        "keygen", help="make the key pair that signs air-gap bundles (minisign's formats)",
        description="Write an Ed25519 key pair in minisign's formats: the secret key signs "
        "bundles (`mirror export`), the public key checks them on the far side (`mirror "
        "import`, or `minisign -V`). An existing key is never overwritten.",
    )
    keygen.add_argument("--secret-key", type=Path, required=True, metavar="PATH")
    keygen.add_argument("--public-key", type=Path, required=True, metavar="PATH")
    protect = keygen.add_mutually_exclusive_group()
    protect.add_argument("--no-passphrase", action="store_true",
                         help="write the secret key unencrypted (mode 0600)")
    protect.add_argument("--passphrase-file", type=Path, metavar="FILE",
                         help="the passphrase is this file's first line (default: asked on "
                         "the terminal)")
    _logging(keygen, bars=False)
    export = commands.add_parser(
        "export", help="write a signed bundle of the mirror for an air-gapped far side",
        description="Write one new bundle directory under --to and print its path: "
        "everything since the last bundle this mirror exported (--full: everything; "
        "--since-receipt: what that far side lacks). Safe while a sync runs.",
    )
    _where(export)
    export.add_argument("--to", type=Path, required=True, metavar="DIR",
                        help="where the bundle directory is made")
    export.add_argument("--secret-key", type=Path, required=True, metavar="PATH")
    export.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="the secret key's passphrase (default: asked on the terminal)")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true",
                       help="everything the mirror publishes: seeds an empty far side")
    which.add_argument("--since-receipt", type=Path, metavar="FILE",
                       help="what the far side that wrote this receipt lacks")
    export.add_argument(
        "--volume-size", type=_volume_size, default=None, metavar="SIZE",
        help="largest volume (default 4G minus one byte, what FAT32 holds); 700M, 25GB...",
    )
    _logging(export, bars=False)
    imp = commands.add_parser(
        "import", help="verify a bundle and apply it to the far-side mirror",
        description="Check a bundle (signature, chain, every hash) and apply it to the "
        "mirror in --directory (the first, full bundle makes it; with -c naming storage = "
        "\"s3://...\", published to that bucket), then write receipts/<sequence>.json to "
        "carry back. Any refusal leaves the mirror as it was.",
    )
    imp.add_argument("--from", dest="source", type=Path, required=True, metavar="BUNDLE",
                     help="the bundle directory")
    _where(imp)
    imp.add_argument("--public-key", type=Path, required=True, metavar="PATH",
                     help="the public key bundles must be signed with")
    imp.add_argument("--allow-mass-delete", action="store_true",
                     help="apply a bundle that removes more than max-removal of the mirror")
    _logging(imp, bars=False)


def _volume_size(text: str) -> int:
    from simplemirror.bundle.manifest import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    try:
        return config.parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:  # SQLite's integers, where --limit goes
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {2**63 - 1}, not {text!r}"
        )
    return value


def _interactive(args: argparse.Namespace) -> bool:
    """Progress bars and colour: only for a person at a terminal, never under systemd."""
    return sys.stderr.isatty() and not args.quiet and args.log_format == "text"


def _console(args: argparse.Namespace) -> Console | None:
    """Where bars and log lines go for a person at a terminal; None (and rich is not
    loaded, see report/terminal.py) for anyone else."""
    if not _interactive(args) or args.no_progress:
        return None
    from simplemirror.report import terminal

    return terminal.console()


def _setup_logging(args: argparse.Namespace, console: Console | None) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler: logging.Handler
    if args.log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logs.JsonFormatter())
    elif console is not None:
        from simplemirror.report import terminal

        handler = terminal.log_handler(console)
    else:
        # Under systemd or a pipe: one plain line per event, no colour.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _drop_stdout() -> None:
    """stdout's reader has gone (`mirror status | head`): whatever else is printed, and
    Python's own flush at exit, go to /dev/null instead of raising BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a file (a test's capture): nothing to redirect
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _flush_stdout() -> None:
    """Flush now, while a reader gone away can be dealt with (at exit, Python complains)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


@contextmanager
def _printing() -> Iterator[None]:
    """Print to stdout inside this; a reader that stops early ends the output quietly and
    leaves the command to finish (a sync still writes its report) with its own status."""
    try:
        yield
    except BrokenPipeError:
        _drop_stdout()
    _flush_stdout()


def _print_plan(summary: RunSummary, filters: Filters | None = None) -> None:
    """What `sync --dry-run` found: the plan, and what the run would download and decide."""
    plan, forecast = summary.plan, summary.forecast
    if plan is None or forecast is None:
        print("stopped before the upstream root was read: nothing was planned")
        return
    if filters is not None and filters.active:
        print(f"filters: {status.describe_filters(filters.in_force())}")
    if forecast.not_modified:
        print("upstream root unchanged since the last run (HTTP 304, or the same bytes)")
    if not forecast.serials:
        print("upstream gives no usable serials: every project is asked again, with a "
              "conditional request where a complete copy is held")
    print(f"would fetch {len(plan.fetch)} project(s); {plan.unchanged} unchanged")
    for todo in plan.fetch:
        serial = "" if todo.serial is None else f" (serial {todo.serial})"
        print(f"  fetch {todo.name}{serial}")
    for name in plan.removed:
        print(f"  removed upstream: {name}")
    for name in plan.pruned:
        print(f"  left out by the filters (would be removed): {name}")
    if forecast.refusal is not None:
        print("would stop before changing anything: it removes more than max-removal")
        return
    if forecast.pages_unchanged:
        print(f"pages: {forecast.pages_read - forecast.pages_unchanged} changed, "
              f"{forecast.pages_unchanged} unchanged (HTTP 304, or the same bytes)")
    if filters is not None and filters.narrows_files:
        for line in _filtered_lines(forecast.filtered, "of the pages read, the filters"):
            print(line)
    sizes = _sizes(forecast.files, forecast.bytes, forecast.unknown_size)
    print(f"would download {forecast.files} file(s){sizes}")
    if forecast.files_dropped:
        print(f"would remove {forecast.files_dropped} file(s) their pages no longer list, "
              "or the filters leave out")
    if forecast.file_refusal is not None:
        print(f"  {forecast.file_refusal}")
    for name, why in summary.deferred:
        print(f"  would defer {name}: {why} (upstream page is stale)")
    for name, why in summary.failed:
        print(f"  would fail {name}: {why}")
    for entry, why in summary.rejected:
        print(f"  would refuse {entry}: {why} (upstream data this mirror will not copy)")
    for name, why in summary.unmet:
        print(f"  requirements not met: {name}: {why}")
    if summary.stopped_by is not None:
        print("  stopped before every page was read: the counts above are partial")


def _filtered_lines(tally: Tally, lead: str) -> list[str]:
    """What the filters kept, left out (by key) and held back, with counts and bytes."""
    lines = [f"{lead} keep {tally.kept[0]} file(s), {human_bytes(tally.kept[1])}; leave out "
             f"{tally.files_left_out}, {human_bytes(tally.bytes_left_out)}"]
    for key, (files, size) in sorted(tally.left_out.items()):
        lines.append(f"  left out by {key}: {files} file(s), {human_bytes(size)}")
    if tally.held_back[0]:
        lines.append(f"  held back by min-age: {tally.held_back[0]} file(s), "
                     f"{human_bytes(tally.held_back[1])} (published once old enough)")
    return lines


def _sizes(files: int, total: int, unknown: int) -> str:
    """How much ``files`` weigh: ``total`` bytes, over those that declare a size."""
    if not unknown:
        return f", {human_bytes(total)}"
    if unknown == files:
        return ", none with a declared size (HTML pages give none)"
    return f": {files - unknown} of {human_bytes(total)}, {unknown} of unknown size"


def _print_summary(summary: RunSummary, filters: Filters | None = None) -> None:
    print(
        f"sync {summary.outcome}: {summary.changed} project(s) changed, "
        f"{len(summary.deferred)} deferred, {len(summary.failed)} failed, "
        f"{len(summary.removed)} removed upstream; {summary.files_fetched} file(s), "
        f"{human_bytes(summary.bytes_fetched)} fetched in {summary.duration:.1f} s "
        f"(generation {summary.generation})"
    )
    if filters is not None and filters.active:
        print(f"  filters: {status.describe_filters(filters.in_force())}")
        if summary.pruned:
            print(f"  removed {len(summary.pruned)} project(s) the filters leave out: "
                  + ", ".join(summary.pruned))
        if filters.narrows_files:
            for line in _filtered_lines(summary.filtered, "  of the pages read, the filters"):
                print(line)
    if summary.reuse.hashed:
        tally = summary.reuse
        print(f"  reused {tally.taken} file(s), {human_bytes(tally.bytes)}, from reuse-from; "
              f"{tally.hashed} checked, {tally.rejected} unlike upstream's (left alone)")
    for name, why in summary.deferred:
        print(f"  deferred {name}: {why} (upstream page is stale; the next run retries)")
    for name, why in summary.failed:
        print(f"  failed {name}: {why} ({_failed_hint(name in summary.blocked)})")
    for entry, why in summary.rejected:
        print(f"  refused {entry}: {why} (upstream data this mirror will not copy)")
    for name, why in summary.unmet:
        print(f"  requirements not met: {name}: {why}")
    if summary.stopped_by is not None:
        print("  stopped before the end: the next run resumes where this one stopped")


def _failed_hint(refused: bool) -> str:
    if not refused:
        return "the next run retries"
    # A refusal is a decision, not a mishap: the same page gets the same answer.
    return (
        "running again changes nothing for a refused file: it waits for upstream to "
        "correct its page, or for you to allow its host with file-hosts or --file-host"
    )


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


def _sync_and_record(cfg: config.Config, sync: Sync, reporter: Reporter) -> int:
    """One run, then its report and metrics (also when SyncError ends it, then re-raised)."""
    since = observe.last_generation(cfg.state_path)
    started = time.monotonic()
    try:
        with reporter:
            summary = sync.run()
    except SyncError as exc:
        observe.record_error(cfg, str(exc), since=since, duration=time.monotonic() - started)
        raise
    with _printing():
        _print_summary(summary, cfg.filters)
    path = observe.record_run(cfg, summary)
    log.info(
        "sync %s (exit %d); report %s", summary.outcome, summary.exit_code, path or "not written",
        extra={"generation": summary.generation, "outcome": summary.outcome,
               "exit_code": summary.exit_code, "report": str(path) if path else None},
    )
    return summary.exit_code


def _sync_forever(
    cfg: config.Config, interval: float, make_reporter: Callable[[], Reporter]
) -> int:
    gate = daemon.SignalGate()
    gate.install()

    def once() -> int:
        reporter = make_reporter()
        sync = Sync(cfg, reporter)
        try:
            if not gate.start_run(sync):
                return EXIT_OK  # a signal came before the run began; the pause ends the loop
            return _sync_and_record(cfg, sync, reporter)
        except SyncError as exc:
            # Another sync holding the lock, or an upstream down: the next run may fare better.
            log.error("%s; trying again after the pause", exc)
            return EXIT_INCOMPLETE
        finally:
            gate.end_run()

    return daemon.run_every(interval, once, gate)


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = config.load(
        args.config,
        upstream=args.upstream,
        directory=args.directory,
        workers=args.workers,
        download_processes=args.download_processes,
        projects=args.project,
        file_hosts=args.file_host,
        reuse_from=args.reuse_from,
        allow_mass_delete=args.allow_mass_delete or None,
        metrics_file=args.metrics_file,
        every=args.every,
    )
    if args.every is not None and args.dry_run:
        raise config.ConfigError("--every repeats real runs; it cannot go with --dry-run")
    if args.every is not None and args.allow_mass_delete:
        # Every run of the loop would then be free to empty the mirror.
        raise config.ConfigError(
            "--allow-mass-delete is for one run after a real clean-up upstream: run "
            "`mirror sync --allow-mass-delete` once by itself, then start --every again"
        )
    console = _console(args)
    _setup_logging(args, console)

    def make_reporter() -> Reporter:
        if console is None:
            return Reporter()
        from simplemirror.report import terminal

        return terminal.RichReporter(console)

    # With `every` from the config file alone, --dry-run and --allow-mass-delete on the
    # command line ask for one run: that is what they are for (one look at the plan; one
    # run allowed to remove much), and looping either would be wrong.
    every = None if args.dry_run or args.allow_mass_delete else cfg.every
    if every is not None:
        return _sync_forever(cfg, every, make_reporter)
    reporter = make_reporter()
    sync = Sync(cfg, reporter)
    _stop_on_signals(sync)
    if args.dry_run:
        with reporter:
            summary = sync.run(dry_run=True)
        with _printing():
            _print_plan(summary, cfg.filters)
        if summary.forecast is not None and summary.forecast.refusal is not None:
            # What the run would stop with, where it would say it.
            print(f"mirror: {summary.forecast.refusal}", file=sys.stderr)
        return summary.exit_code
    return _sync_and_record(cfg, sync, reporter)


def _no_directory() -> config.ConfigError:
    return config.ConfigError(
        "no mirror directory is set: give --directory DIR or 'directory = \"DIR\"' "
        "in the config file (-c PATH)"
    )


def _mirror_directory(args: argparse.Namespace, values: dict[str, Any]) -> Path:
    """The mirror directory from --directory, else the config file's."""
    where = args.directory or values.get("directory")
    if not where:
        raise _no_directory()
    return Path(where).expanduser().absolute()


def _offline_config(args: argparse.Namespace, *, network: bool, **overrides: Any) -> config.Config:
    """The configuration for verify and status.

    Only what goes to the network needs the upstream configured (``network``). Otherwise,
    when neither the config file nor --upstream names one, the upstream of the last run
    recorded in state.db stands in, so that a mirror can be checked given nothing but its
    directory.
    """
    values = config.read_file(args.config) if args.config is not None else {}
    given: dict[str, Any] = {"upstream": args.upstream, "directory": args.directory, **overrides}
    directory = _mirror_directory(args, values)
    if args.upstream or values.get("upstream"):
        return config.build(values, given)
    state_path = directory / "state.db"
    last = status.last_upstream(state_path)
    if not network:
        if last is None:
            status.connect_readonly(state_path).close()  # NoState: say there is no mirror
        given["upstream"] = last
    else:
        raise config.ConfigError(
            "--repair downloads files again, so it needs the upstream configured: give "
            "--upstream URL or -c PATH (the config sync uses, for its timeouts and file-hosts)"
            + (f"; the last run used {last}" if last else "")
        )
    return config.build(values, given)


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = _offline_config(
        args, network=args.repair, workers=args.workers, file_hosts=args.file_host
    )
    from simplemirror.check import verify  # here: it loads rich, which a sync may do without

    console = _console(args)
    _setup_logging(args, console)
    progress = verify.RichVerifyProgress(console) if console else verify.VerifyProgress()
    try:
        with progress:
            result = verify.verify(
                cfg, repair=args.repair, delete_orphans=args.delete_orphans, progress=progress,
                deep=args.deep,
            )
    except verify.VerifyError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("mirror: verify interrupted; nothing is left half written, run it again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    with _printing():
        print("\n".join(verify.report_lines(result)))
    return EXIT_OK if result.sound else EXIT_INCOMPLETE


def cmd_status(args: argparse.Namespace) -> int:
    _setup_logging(args, None)
    values = config.read_file(args.config) if args.config is not None else {}
    upstream = values.get("upstream")
    if upstream:
        cfg = config.load(args.config, directory=args.directory)
        directory, upstream = cfg.directory, cfg.upstream
    else:
        directory = _mirror_directory(args, values)
    filters = values.get("filters", config.Filters()).in_force() if args.config else None
    info = status.collect(directory, upstream, filters)
    with _printing():
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(status.format_text(info), end="")
    return EXIT_OK if info["up_to_date"] else EXIT_NOT_UP_TO_DATE


def cmd_log(args: argparse.Namespace) -> int:
    _setup_logging(args, None)
    values = config.read_file(args.config) if args.config is not None else {}
    directory = _mirror_directory(args, values)
    if args.generation is None:
        info, render = history.runs(directory, args.limit), history.format_runs
    else:
        try:
            info, render = history.changes(directory, args.generation), history.format_changes
        except history.NoGeneration as exc:
            print(f"mirror: {exc}", file=sys.stderr)
            return EXIT_INCOMPLETE
    with _printing():
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(render(info), end="")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    values = config.read_file(args.config) if args.config is not None else {}
    settings = config.storage_settings(
        args.storage or values.get("storage"), values.get("storage_table", {})
    )
    # A bucket needs no mirror directory: nothing local is read.
    directory = _mirror_directory(args, values) if settings is None else Path(".")
    if not 0 <= args.port <= 65535:
        raise config.ConfigError(f"--port must be between 0 and 65535, not {args.port}")
    _setup_logging(args, None)  # plain access-log lines, also on a terminal
    try:
        remote = None
        if settings is not None:
            from simplemirror.store import s3

            remote = s3.S3Storage(settings)
        server = serve.make_server(directory / "web", args.host, args.port, args.max_connections,
                                   remote)
        serve.serve_until_stopped(server)
    except serve.ServeError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        log.warning("stopped at once by a second signal")
    return EXIT_OK


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> Callable[[], bytes]:
    """The passphrase of a secret key: --passphrase-file's first line, else asked on the
    terminal (twice for a new key); asked only when needed."""
    from simplemirror.bundle.keys import KeyFileError

    def read() -> bytes:
        if args.passphrase_file is not None:
            try:
                data = args.passphrase_file.read_bytes()
            except OSError as exc:
                raise KeyFileError(f"cannot read {args.passphrase_file}: "
                                   f"{exc.strerror or exc}") from None
            first: bytes = data.split(b"\n", 1)[0].removesuffix(b"\r")
            if not first:
                raise KeyFileError(f"{args.passphrase_file} holds no passphrase on its first "
                                   "line")
            return first
        if not sys.stdin.isatty():
            raise KeyFileError(
                "the secret key needs a passphrase, and there is no terminal to ask on: give "
                "--passphrase-file FILE" + (" (or --no-passphrase)" if confirm else "")
            )
        import getpass

        first = getpass.getpass("Passphrase: ").encode()
        if confirm and getpass.getpass("Passphrase (again): ").encode() != first:
            raise KeyFileError("the two passphrases differ; nothing was written")
        if not first:
            raise KeyFileError("an empty passphrase protects nothing" + (
                ": use --no-passphrase for a key without one" if confirm else ""))
        return first

    return read


def cmd_keygen(args: argparse.Namespace) -> int:
    from simplemirror.bundle import keys

    _setup_logging(args, None)
    try:
        passphrase = None if args.no_passphrase else _passphrase(args, confirm=True)()
        key = keys.SecretKey.generate()
        keys.write_pair(key, args.secret_key, args.public_key, passphrase)
    except keys.KeyFileError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    with _printing():
        print(f"key {key.public_key().id_text}: secret key {args.secret_key}"
              f"{' (no passphrase)' if passphrase is None else ''}, public key "
              f"{args.public_key}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from simplemirror.bundle import export, keys, manifest

    _setup_logging(args, None)
    args.upstream = None
    cfg = _offline_config(args, network=False)
    try:
        receipt = None
        if args.since_receipt is not None:
            try:
                data = args.since_receipt.read_bytes()
            except OSError as exc:
                raise export.ExportError(
                    f"cannot read {args.since_receipt}: {exc.strerror or exc}") from None
            try:
                receipt = manifest.Receipt.from_bytes(data, str(args.since_receipt))
            except manifest.ManifestError as exc:
                raise export.ExportError(str(exc)) from None
        key = keys.SecretKey.read(args.secret_key, _passphrase(args))
        done = export.export(export.ExportRequest(
            directory=cfg.directory, to=args.to.absolute(), key=key, full=args.full,
            receipt=receipt, volume_size=args.volume_size or manifest.DEFAULT_VOLUME_SIZE,
            public_url=cfg.public_url, storage=cfg.storage,
        ))
    except (export.ExportError, keys.KeyFileError) as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    info = done.info
    log.info(
        "bundle %d of chain %s: %d project(s), %d file(s), %s in %d volume(s)%s",
        info.sequence, info.chain[:8], info.counts.get("projects", 0),
        info.counts.get("files", 0), human_bytes(info.counts.get("bytes", 0)),
        len(info.volumes), " (an interrupted export, continued)" if done.continued else "",
    )
    with _printing():
        print(done.path)
    return EXIT_OK


def _stop_import_on_signals(stop: Stop, bucket: bool) -> None:
    """SIGTERM or SIGINT: stop at the next record and put back what was published; the
    same signal again: stop now (the next import finishes the job, as after a kill).
    Into a bucket, now is the process's end there and then: an exception would wait for
    the uploads under way, and so would the interpreter's exit for their threads; a kill
    is what the bucket's publish order already tolerates."""

    def handler(signum: int, _frame: object) -> None:
        if stop.signum is not None and bucket:
            os.write(2, f"mirror: import stopped at once by {signal.Signals(signum).name}; "
                        "the bucket keeps what went up: run the same import again to "
                        "finish it\n".encode())
            os._exit(128 + signum)
        if stop.signum is not None:
            raise KeyboardInterrupt
        log.warning("%s received: stopping the import, putting back what it published "
                    "(again to stop at once)", signal.Signals(signum).name)
        stop.request(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_import(args: argparse.Namespace) -> int:
    from simplemirror.bundle import apply, keys

    _setup_logging(args, None)
    values = config.read_file(args.config) if args.config is not None else {}
    # With storage = "s3://...", the bundle is published to the bucket; state.db, tmp/
    # (the staging) and the receipts stay in the directory.
    storage = config.storage_settings(values.get("storage"), values.get("storage_table", {}))
    directory = _mirror_directory(args, values)
    max_removal = values.get("max_removal", config.Config.max_removal)
    if not 0.0 <= max_removal <= 1.0:
        raise config.ConfigError("max-removal must be a share between 0.0 and 1.0, like 0.10")
    stop = apply.Stop()
    _stop_import_on_signals(stop, storage is not None)
    try:
        public_key = keys.PublicKey.read(args.public_key)
        done = apply.import_bundle(apply.ImportRequest(
            args.source.absolute(), directory, public_key,
            allow_mass_delete=args.allow_mass_delete, max_removal=max_removal, stop=stop,
            storage=storage,
        ))
    except apply.Interrupted as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except apply.ImportRefused as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        if exc.receipt is not None:
            log.info("receipt to carry back: %s", exc.receipt)
        return EXIT_INCOMPLETE
    except (keys.KeyFileError, SyncError) as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    info = done.info
    if stop.signum is not None:
        log.warning("the signal came once the import had committed: it was finished instead")
    target = directory if storage is None else f"{storage.url} (state.db in {directory})"
    with _printing():
        if done.replayed:
            print(f"bundle {info.sequence} was applied to {target} already: nothing to do")
        else:
            counts = done.counts
            print(f"bundle {info.sequence} applied to {target} (generation "
                  f"{done.generation}): {counts['pages'] // 2} project(s) written, "
                  f"{counts['removed']} removed, {counts['files']} file(s), "
                  f"{human_bytes(counts['bytes'])} published")
        if done.receipt is not None:
            print(f"receipt: {done.receipt}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "import":
            return cmd_import(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "log":
            return cmd_log(args)
        return cmd_sync(args)
    except status.NoState as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except config.ConfigError as exc:
        print(f"mirror: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SyncError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("mirror: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output a command printed without _printing, cut off by its reader: quietly.
        _drop_stdout()
        return EXIT_INCOMPLETE
    finally:
        _flush_stdout()
