"""Configuration: a TOML file (``[mirror]`` table) with command-line overrides.

Every key is documented in config.example.toml at the top of the repository.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.utils import InvalidName

from simplemirror import __version__
from simplemirror.filter import rules
from simplemirror.filter.rules import Filters as Filters
from simplemirror.report.units import MAX_INTERVAL as MAX_INTERVAL
from simplemirror.report.units import parse_interval as parse_interval
from simplemirror.simple.model import normalize_name
from simplemirror.store import backend

DEFAULT_USER_AGENT = f"simplemirror/{__version__}"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Config:
    upstream: str
    """Root of the simple index to mirror, ending in '/'."""
    directory: Path
    """Holds state.db, web/ (the served tree) and tmp/."""
    workers: int = 50
    """Requests at once, pages and files together: each holds a connection."""
    connections_per_host: int = 50
    """Of those, at most this many to any one host."""
    max_requests_per_second: float | None = None
    """Requests a second at most, over the whole run (every process); None: no limit."""
    download_processes: int | None = None
    """Child processes that download files, sharing the workers; 0 downloads in this one.
    None (the default): one per CPU core, at most 4, once a run has many files (see sync)."""
    projects: tuple[str, ...] = ()
    """Normalized names; empty means every project upstream lists."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    request_timeout: float = 600.0
    """A page or the root must be read whole within this many seconds."""
    min_rate: int = 1024
    """Bytes a second a file download must keep up over each min-rate-window; 0: none."""
    min_rate_window: float = 30.0
    retries: int = 3
    """Further attempts after a failed request or a file that fails verification."""
    retry_wait: float = 1.0
    """First backoff, in seconds; doubles with each attempt (with jitter)."""
    retry_max_wait: float = 30.0
    retry_max_time: float = 300.0
    """Give up retrying one request after this many seconds, however many tries are left."""
    stale_retries: int = 3
    """Further attempts when a project page is older than the root promised."""
    stale_wait: float = 2.0
    user_agent: str = DEFAULT_USER_AGENT
    file_hosts: tuple[str, ...] = ()
    """When set, the only hosts besides the upstream's own that may serve files
    (lowercase); empty: any host the guard in filehosts lets through."""
    reuse_from: tuple[Path, ...] = ()
    """Directories of files an operator already has (another mirror's packages/, a
    wheel cache): a file found there by name, whose size and hashes match, is taken
    instead of downloaded (sync/reuse.py)."""
    max_file_size: int = 16 * 1024**3
    """Largest download accepted when upstream does not declare a file's size."""
    max_page_size: int = 64 * 1024**2
    """Largest project page accepted, once decoded (a gzip bomb stops here)."""
    max_root_size: int = 1024**3
    """Largest root index accepted, once decoded."""
    max_removal: float = 0.10
    """Largest share of the projects, or of the files, held that one run may remove."""
    allow_mass_delete: bool = False
    """Set for one run (--allow-mass-delete) to remove more than max_removal."""
    public_url: str | None = None
    """Where web/ is served, e.g. "https://mirror.example/"; needed to advertise provenance."""
    keep_reports: int = 1000
    """Run reports kept in <directory>/reports (the newest); 0 keeps every one."""
    metrics_file: Path | None = None
    """Where to write Prometheus metrics after each run (node_exporter textfile collector)."""
    every: float | None = None
    """Seconds to pause between runs of `mirror sync`, which then keeps running (the
    ``every`` key, e.g. "10m", or --every); None: one run."""
    filters: Filters = field(default_factory=Filters)
    """The ``[filters]`` table: which projects and files a partial mirror holds."""
    storage: backend.Settings | None = None
    """``storage = "s3://BUCKET/PREFIX"`` with its ``[storage]`` table: where the tree is
    published; None: ``web/`` in the directory."""

    # Cached: download workers ask for these once or twice per file, and building
    # them again each time was a measurable share of a small file's CPU.
    @cached_property
    def state_path(self) -> Path:
        return self.directory / "state.db"

    @cached_property
    def web(self) -> Path:
        return self.directory / "web"

    @cached_property
    def tmp(self) -> Path:
        # Inside the mirror directory, so that a finished download is renamed
        # into web/ on the same filesystem (an atomic step).
        return self.directory / "tmp"


# TOML key -> (field name, type). Dashes in files, underscores in Python.
KEYS: dict[str, tuple[str, type]] = {
    "upstream": ("upstream", str),
    "directory": ("directory", str),
    "workers": ("workers", int),
    "connections-per-host": ("connections_per_host", int),
    "max-requests-per-second": ("max_requests_per_second", float),
    "download-processes": ("download_processes", int),
    "projects": ("projects", list),
    "connect-timeout": ("connect_timeout", float),
    "read-timeout": ("read_timeout", float),
    "request-timeout": ("request_timeout", float),
    "min-rate": ("min_rate", int),
    "min-rate-window": ("min_rate_window", float),
    "retries": ("retries", int),
    "retry-wait": ("retry_wait", float),
    "retry-max-wait": ("retry_max_wait", float),
    "retry-max-time": ("retry_max_time", float),
    "stale-retries": ("stale_retries", int),
    "stale-wait": ("stale_wait", float),
    "user-agent": ("user_agent", str),
    "file-hosts": ("file_hosts", list),
    "reuse-from": ("reuse_from", list),
    "max-file-size": ("max_file_size", int),
    "max-page-size": ("max_page_size", int),
    "max-root-size": ("max_root_size", int),
    "max-removal": ("max_removal", float),
    "public-url": ("public_url", str),
    "keep-reports": ("keep_reports", int),
    "metrics-file": ("metrics_file", str),
    "every": ("every", str),
    "storage": ("storage", str),
}

# The [storage] table: key -> (Settings field, type). Credentials are not among them: they
# come from the standard AWS sources, never from this file.
STORAGE_KEYS: dict[str, tuple[str, type]] = {
    "endpoint-url": ("endpoint_url", str),
    "region": ("region", str),
    "upload-workers": ("upload_workers", int),
    "multipart-threshold": ("multipart_threshold", int),
    "multipart-chunk": ("multipart_chunk", int),
}
STORAGE_TABLE = "storage"
_SECRETS = ("key", "secret", "token", "password", "credential")

# The tables a config file may have.
TABLES = ("mirror", rules.TABLE, STORAGE_TABLE)

_KINDS = {int: "an integer", float: "a number", str: "a string", list: "a list of strings"}

# How to write a key that has no default to show (see _example).
_EXAMPLES: dict[str, str] = {
    "upstream": '"https://index.example/simple/"',
    "directory": '"/srv/simplemirror"',
    "download-processes": "2",
    "max-requests-per-second": "20",
    "projects": '["sampleproject"]',
    "file-hosts": '["files.example.org"]',
    "reuse-from": '["/srv/bandersnatch/web/packages"]',
    "public-url": '"https://mirror.example.org/"',
    "metrics-file": '"/var/lib/node_exporter/textfile_collector/simplemirror.prom"',
    "every": '"10m"',
    "storage": '"s3://mirror-bucket/pypi"',
}

def _toml(value: Any) -> str:
    """``value`` as it would be written in the file (near enough, for a message)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _example(key: str) -> str | None:
    """``key = value`` for a message: its default, or a made-up value when it has none."""
    if key in _EXAMPLES:
        return f"{key} = {_EXAMPLES[key]}"
    default = {f.name: f.default for f in fields(Config)}.get(KEYS[key][0])
    if isinstance(default, int | float | str) and not isinstance(default, bool):
        return f"{key} = {_toml(default)}"
    return None


def _wrong_type(path: Path, key: str, kind: type, value: Any) -> ConfigError:
    example = _example(key)
    return ConfigError(
        f"{path}: {key} must be {_KINDS[kind]}, not {_toml(value)}"
        + (f"; e.g. {example}" if example else "")
    )


def _unknown_key(path: Path, key: str) -> ConfigError:
    near = difflib.get_close_matches(key, KEYS, n=1)
    if near:
        return ConfigError(f"{path}: unknown key {key!r} in [mirror]; did you mean {near[0]!r}?")
    known = ", ".join(sorted(KEYS))
    return ConfigError(f"{path}: unknown key {key!r} in [mirror]; known keys: {known}")


def read_file(path: Path) -> dict[str, Any]:
    """The ``[mirror]`` table of a TOML file, with keys checked and typed."""
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = doc.get("mirror")
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path} has no [mirror] table (see config.example.toml)")
    for name in doc:
        # A misspelt [filters] would otherwise mirror everything, quietly.
        near = difflib.get_close_matches(name, TABLES, n=1)
        if name not in TABLES and near:
            raise ConfigError(f"{path}: unknown table [{name}]; did you mean [{near[0]}]?")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise _unknown_key(path, key)
        name, kind = KEYS[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _wrong_type(path, key, kind, value)
        values[name] = value
    if "every" in values:  # seconds, as --every gives them
        try:
            values["every"] = parse_interval(values["every"])
        except ValueError as exc:
            raise ConfigError(f"{path}: every: {exc}") from None
    if rules.TABLE in doc:
        filters = doc[rules.TABLE]
        if not isinstance(filters, dict):
            raise ConfigError(f"{path}: [{rules.TABLE}] must be a table (see config.example.toml)")
        try:
            values["filters"] = rules.parse(filters, path.parent)
        except rules.FilterError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if STORAGE_TABLE in doc:
        values["storage_table"] = _storage_table(path, doc[STORAGE_TABLE])
    return values


def _storage_table(path: Path, table: object) -> dict[str, Any]:
    """The ``[storage]`` table, keys checked and typed; never a credential."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{STORAGE_TABLE}] must be a table (see config.example.toml)")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if any(word in key.lower() for word in _SECRETS):
            raise ConfigError(
                f"{path}: [storage] {key}: credentials are never read from the config file; "
                "give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
                "~/.aws/credentials (AWS_PROFILE), or an instance role"
            )
        if key not in STORAGE_KEYS:
            known = ", ".join(sorted(STORAGE_KEYS))
            raise ConfigError(f"{path}: unknown key {key!r} in [storage]; known keys: {known}")
        name, kind = STORAGE_KEYS[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: [storage] {key} must be {_KINDS[kind]}, not "
                              f"{_toml(value)}")
        values[name] = value
    return values


def storage_settings(url: object, table: Mapping[str, Any], retries: int = 3
                     ) -> backend.Settings | None:
    """``storage`` and its ``[storage]`` table as Settings (None: web/ on local disk)."""
    if url is None:
        if table:
            raise ConfigError(
                "[storage] is set but storage is not: add storage = \"s3://BUCKET/PREFIX\" "
                "to [mirror] (or remove [storage])"
            )
        return None
    if not isinstance(url, str):
        raise ConfigError(f"storage must be a string, like {_EXAMPLES['storage']}")
    try:
        backend.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"storage: {exc}, like {_EXAMPLES['storage']}") from None
    if importlib.util.find_spec("boto3") is None:
        raise ConfigError(
            "storage = \"s3://...\" needs boto3, which is not installed: "
            "pip install 'simplemirror[s3]'"
        )
    endpoint = table.get("endpoint_url")
    if endpoint is not None and (urlsplit(endpoint).scheme not in {"http", "https"}
                                 or not urlsplit(endpoint).netloc):
        raise ConfigError(
            f"[storage] endpoint-url must be an http(s) URL, like \"https://s3.example.org\", "
            f"not {endpoint!r}"
        )
    workers = table.get("upload_workers", backend.Settings.upload_workers)
    if not 1 <= workers <= 256:
        raise ConfigError(f"[storage] upload-workers must be between 1 and 256, not {workers}")
    threshold = table.get("multipart_threshold", backend.Settings.multipart_threshold)
    chunk = table.get("multipart_chunk", backend.Settings.multipart_chunk)
    # S3's own limits: parts of 5 MiB at least (but the last), 10,000 parts at most.
    if chunk < 5 * 1024**2 or threshold < chunk:
        raise ConfigError(
            "[storage] multipart-chunk must be 5 MiB (5242880) or more, and "
            "multipart-threshold no smaller than it"
        )
    if threshold > MAX_MULTIPART_THRESHOLD:
        # A file below the threshold is held whole while it is hashed and sent, in each
        # upload thread: memory must not follow the size of the largest file.
        raise ConfigError(
            f"[storage] multipart-threshold must be at most 64 MiB ({MAX_MULTIPART_THRESHOLD}),"
            f" not {threshold}: a file below it is held in memory while it goes up"
        )
    return backend.Settings(url=url.rstrip("/"), retries=retries, **table)


MAX_MULTIPART_THRESHOLD = 64 * 1024**2


def build(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> Config:
    """Merge file values with overrides (None means 'not given') and validate."""
    values = dict(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    storage_table = values.pop("storage_table", {})
    storage_url = values.pop("storage", None)
    upstream = values.get("upstream")
    if not upstream:
        raise ConfigError(
            "no upstream index is set. Give the root of the simple index to mirror "
            "(e.g. PyPI's simple index URL) with --upstream URL or 'upstream = \"URL\"' "
            "in the [mirror] table of the config file (-c PATH)."
        )
    parts = urlsplit(upstream)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"upstream {upstream!r} is not an http(s) URL")
    if not upstream.endswith("/"):
        upstream += "/"  # so that urljoin(upstream, "name/") stays below it
    directory = values.get("directory")
    if not directory:
        raise ConfigError(
            "no mirror directory is set: give --directory DIR or 'directory = \"DIR\"' "
            "in the config file; it will hold state.db and web/"
        )
    try:
        projects = tuple(sorted({normalize_name(str(p)) for p in values.get("projects", ())}))
    except InvalidName as exc:
        raise ConfigError(f"projects: {exc}") from None
    hosts = values.get("file_hosts", ())
    if not all(isinstance(h, str) and h and "/" not in h for h in hosts):
        raise ConfigError(
            "file-hosts (--file-host) must be host names, like [\"files.example.org\"]"
        )
    for host in hosts:
        if ":" in host and not _ipv6(host):
            # The policy compares host names alone: "files.example:8443" matches nothing.
            raise ConfigError(
                f"file-hosts (--file-host) names hosts without a port: {host!r} would never "
                f"match; give {host.rsplit(':', 1)[0]!r}"
            )
    mirror_directory = Path(directory).expanduser().absolute()
    config = Config(
        upstream=upstream,
        directory=mirror_directory,
        projects=projects,
        file_hosts=tuple(sorted({h.lower().strip("[]") for h in hosts})),
        reuse_from=_reuse_from(values.get("reuse_from", ()), mirror_directory),
        metrics_file=_metrics_file(values.get("metrics_file")),
        **{
            f.name: values[f.name]
            for f in fields(Config)
            if f.name in values
            and f.name not in {"upstream", "directory", "projects", "file_hosts", "reuse_from",
                               "metrics_file"}
        },
    )
    storage = storage_settings(storage_url, storage_table, config.retries)
    if storage is not None:
        config = dataclasses.replace(config, storage=storage)
    if not 0.0 <= config.max_removal <= 1.0:
        raise ConfigError("max-removal must be a share between 0.0 and 1.0, like 0.10")
    if config.public_url is not None and (
        urlsplit(config.public_url).scheme not in {"http", "https"}
        or not config.public_url.endswith("/")
    ):
        raise ConfigError("public-url must be the http(s) URL web/ is served at, ending in /")
    for name in ("max_file_size", "max_page_size", "max_root_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be a positive number of bytes")
    if config.min_rate < 0:
        raise ConfigError("min-rate must be 0 (no floor) or a positive number of bytes a second")
    if config.keep_reports < 0:
        raise ConfigError("keep-reports must be 0 (keep every report) or a positive count")
    if config.workers < 1 or config.workers > 256:
        raise ConfigError(f"workers must be between 1 and 256, not {config.workers}")
    if not 1 <= config.connections_per_host <= 256:
        raise ConfigError(
            f"connections-per-host must be between 1 and 256, not {config.connections_per_host}"
        )
    rate = config.max_requests_per_second
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ConfigError(
            f"max-requests-per-second must be a positive number, like 20, not {_toml(rate)}; "
            "leave it unset for no limit"
        )
    if config.download_processes is not None and not 0 <= config.download_processes <= 64:
        raise ConfigError(
            f"download-processes must be between 0 and 64, not {config.download_processes}"
        )
    for name in ("retries", "stale_retries"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name.replace('_', '-')} must not be negative")
    durations = (
        "connect_timeout", "read_timeout", "request_timeout", "min_rate_window", "retry_wait",
        "retry_max_wait", "retry_max_time", "stale_wait",
    )
    for name in durations:
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            key = name.replace("_", "-")
            raise ConfigError(f"{key} must be a finite, non-negative number of seconds")
    return config


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _reuse_from(values: Iterable[object], mirror: Path) -> tuple[Path, ...]:
    """reuse-from's directories, absolute; never the mirror's own (its files would be
    linked onto themselves)."""
    found = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise ConfigError(
                "reuse-from (--reuse-from) must be directories, like "
                '["/srv/bandersnatch/web/packages"]'
            )
        path = Path(value).expanduser().absolute()
        # Resolved for the comparison: a symlink or ".." must not lead back into the mirror.
        real, own = path.resolve(), mirror.resolve()
        if real == own or own in real.parents or real in own.parents:
            raise ConfigError(
                f"reuse-from: {value} is the mirror's own directory, or holds it; give "
                "another mirror's packages/ or a folder of wheels"
            )
        found.append(path)
    return tuple(dict.fromkeys(found))


def _metrics_file(value: str | Path | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser().absolute()
    if not str(value).strip() or str(value).endswith("/") or path.suffix != ".prom":
        # node_exporter's textfile collector reads only *.prom files.
        raise ConfigError(
            f"metrics-file must be a file name ending in .prom (node_exporter reads only "
            f"those), like /var/lib/node_exporter/textfile_collector/simplemirror.prom, "
            f"not {str(value)!r}"
        )
    return path


def load(path: Path | None, **overrides: Any) -> Config:
    return build(read_file(path) if path is not None else {}, overrides)
