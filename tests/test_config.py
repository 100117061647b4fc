"""Unit tests for simplemirror.cli.config: the TOML file, command-line overrides, validation."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from simplemirror.cli.config import DEFAULT_USER_AGENT, KEYS, Config, ConfigError, load

UPSTREAM = "https://index.example/simple/"
KNOWN_KEYS = [
    "upstream",
    "directory",
    "workers",
    "projects",
    "connect-timeout",
    "read-timeout",
    "retries",
    "retry-wait",
    "retry-max-wait",
    "stale-retries",
    "stale-wait",
    "user-agent",
]


def write(tmp_path: Path, body: str, name: str = "mirror.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def minimal(tmp_path: Path, extra: str = "") -> Path:
    """A config file with the two required keys and ``extra`` lines in [mirror]."""
    directory = (tmp_path / "m").as_posix()
    body = f'[mirror]\nupstream = "{UPSTREAM}"\ndirectory = "{directory}"\n{extra}\n'
    return write(tmp_path, body)


def error_of(path: Path | None, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **overrides)
    return str(info.value)


# -- loading -------------------------------------------------------------------------------


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        [mirror]
        upstream = "{UPSTREAM}"
        directory = "{(tmp_path / 'mirror').as_posix()}"
        workers = 4
        projects = ["Django", "foo_bar"]
        connect-timeout = 3.5
        read-timeout = 20.0
        retries = 5
        retry-wait = 0.5
        retry-max-wait = 10.0
        stale-retries = 2
        stale-wait = 1.5
        user-agent = "test-agent/1 (+mailto:a@example.org)"
        """,
    )
    cfg = load(path)
    assert cfg == Config(
        upstream=UPSTREAM,
        directory=tmp_path / "mirror",
        workers=4,
        projects=("django", "foo-bar"),
        connect_timeout=3.5,
        read_timeout=20.0,
        retries=5,
        retry_wait=0.5,
        retry_max_wait=10.0,
        stale_retries=2,
        stale_wait=1.5,
        user_agent="test-agent/1 (+mailto:a@example.org)",
    )


def test_defaults(tmp_path: Path) -> None:
    cfg = load(minimal(tmp_path))
    assert (cfg.workers, cfg.connections_per_host, cfg.max_requests_per_second) == (50, 50, None)
    assert cfg.projects == ()
    assert (cfg.connect_timeout, cfg.read_timeout) == (10.0, 60.0)
    assert (cfg.retries, cfg.retry_wait, cfg.retry_max_wait) == (3, 1.0, 30.0)
    assert (cfg.stale_retries, cfg.stale_wait) == (3, 2.0)
    assert cfg.user_agent == DEFAULT_USER_AGENT
    assert DEFAULT_USER_AGENT.startswith("simplemirror/")


def test_integer_for_float_key_is_converted(tmp_path: Path) -> None:
    cfg = load(minimal(tmp_path, "read-timeout = 5\nretry-wait = 0"))
    assert cfg.read_timeout == 5.0 and isinstance(cfg.read_timeout, float)
    assert cfg.retry_wait == 0.0 and isinstance(cfg.retry_wait, float)


def test_derived_paths(tmp_path: Path) -> None:
    cfg = load(minimal(tmp_path))
    assert cfg.directory == tmp_path / "m"
    assert cfg.state_path == tmp_path / "m" / "state.db"
    assert cfg.web == tmp_path / "m" / "web"
    assert cfg.tmp == tmp_path / "m" / "tmp"


def test_relative_directory_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(None, upstream=UPSTREAM, directory="rel/dir")
    assert cfg.directory.is_absolute()
    assert cfg.directory == tmp_path / "rel" / "dir"


def test_home_directory_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load(None, upstream=UPSTREAM, directory="~/mirror")
    assert cfg.directory == tmp_path / "mirror"


def test_no_file_only_overrides(tmp_path: Path) -> None:
    cfg = load(None, upstream=UPSTREAM, directory=str(tmp_path), workers=2, projects=["A"])
    assert (cfg.upstream, cfg.directory, cfg.workers, cfg.projects) == (
        UPSTREAM,
        tmp_path,
        2,
        ("a",),
    )


# -- overrides -----------------------------------------------------------------------------


def test_overrides_win(tmp_path: Path) -> None:
    path = minimal(tmp_path, 'workers = 4\nprojects = ["from-file"]')
    other = tmp_path / "other"
    cfg = load(
        path,
        upstream="http://other.example/simple/",
        directory=str(other),
        workers=16,
        projects=["From_CLI"],
    )
    assert cfg.upstream == "http://other.example/simple/"
    assert cfg.directory == other
    assert cfg.workers == 16
    assert cfg.projects == ("from-cli",)


def test_absent_overrides_keep_file_values(tmp_path: Path) -> None:
    # argparse gives None for options not given, and [] for an empty repeatable option.
    path = minimal(tmp_path, 'workers = 4\nprojects = ["foo"]')
    cfg = load(path, upstream=None, directory=None, workers=None, projects=[])
    assert cfg.upstream == UPSTREAM
    assert cfg.directory == tmp_path / "m"
    assert cfg.workers == 4
    assert cfg.projects == ("foo",)


# -- required keys -------------------------------------------------------------------------


def test_missing_upstream_says_how_to_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, f'[mirror]\ndirectory = "{tmp_path.as_posix()}"\n')
    message = error_of(path)
    assert "--upstream" in message
    assert "upstream = " in message
    assert "[mirror]" in message


def test_missing_upstream_without_file(tmp_path: Path) -> None:
    message = error_of(None, directory=str(tmp_path))
    assert "--upstream" in message and "upstream = " in message


def test_empty_upstream_is_missing(tmp_path: Path) -> None:
    message = error_of(None, upstream="", directory=str(tmp_path))
    assert "--upstream" in message


def test_missing_directory_says_how_to_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, f'[mirror]\nupstream = "{UPSTREAM}"\n')
    message = error_of(path)
    assert "--directory" in message
    assert "directory = " in message


# -- the file itself -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = error_of(path)
    assert str(path) in message and "does not exist" in message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[mirror\nupstream = \n")
    message = error_of(path)
    assert "not valid TOML" in message
    assert str(path) in message


@pytest.mark.parametrize("body", ["", "[other]\nupstream = 'x'\n", "mirror = 1\n"])
def test_no_mirror_table(tmp_path: Path, body: str) -> None:
    assert "[mirror]" in error_of(write(tmp_path, body))


def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    # Nothing near it to suggest: every known key is listed.
    message = error_of(minimal(tmp_path, "colour = 3"))
    assert "'colour'" in message
    for key in KNOWN_KEYS:
        assert key in message


@pytest.mark.parametrize(("key", "near"), [
    ("worker", "workers"), ("wrokers", "workers"), ("retry_wait", "retry-wait"),
    ("metrics_file", "metrics-file"), ("file-host", "file-hosts"), ("evrey", "every"),
])
def test_unknown_key_suggests_the_closest_known_one(tmp_path: Path, key: str, near: str) -> None:
    path = minimal(tmp_path, f"{key} = 3")
    assert error_of(path) == (
        f"{path}: unknown key {key!r} in [mirror]; did you mean {near!r}?"
    )


def test_underscore_spelling_is_unknown(tmp_path: Path) -> None:
    # Keys are dashed in the file; the Python spelling must not slip through.
    message = error_of(minimal(tmp_path, "read_timeout = 3.0"))
    assert "'read_timeout'" in message
    assert "read-timeout" in message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('workers = "8"', "workers"),
        ("workers = true", "workers"),
        ("workers = 1.5", "workers"),
        ("retries = 2.0", "retries"),
        ("stale-retries = false", "stale-retries"),
        ('read-timeout = "60"', "read-timeout"),
        ("connect-timeout = true", "connect-timeout"),
        ("retry-wait = [1]", "retry-wait"),
        ('projects = "foo"', "projects"),
        ("projects = {foo = 1}", "projects"),
        ("user-agent = 3", "user-agent"),
    ],
)
def test_bad_types(tmp_path: Path, line: str, key: str) -> None:
    message = error_of(minimal(tmp_path, line))
    assert key in message
    assert "must be" in message


@pytest.mark.parametrize(("line", "says"), [
    ('workers = "8"', 'workers must be an integer, not "8"; e.g. workers = 50'),
    ("retries = 2.0", "retries must be an integer, not 2.0; e.g. retries = 3"),
    ('read-timeout = "60"', 'read-timeout must be a number, not "60"; e.g. read-timeout = 60.0'),
    ("max-removal = true", "max-removal must be a number, not true; e.g. max-removal = 0.1"),
    ("user-agent = 3", 'user-agent must be a string, not 3; e.g. user-agent = "simplemirror/'),
    ('projects = "foo"',
     'projects must be a list of strings, not "foo"; e.g. projects = ["sampleproject"]'),
    ("download-processes = 1.5",
     "download-processes must be an integer, not 1.5; e.g. download-processes = 2"),
    ("every = 10", 'every must be a string, not 10; e.g. every = "10m"'),
])
def test_a_wrong_type_is_named_in_words_with_an_example(
    tmp_path: Path, line: str, says: str
) -> None:
    path = minimal(tmp_path, line)
    assert error_of(path).startswith(f"{path}: {says}")


def test_every_is_an_interval_with_a_unit(tmp_path: Path) -> None:
    assert load(minimal(tmp_path)).every is None  # unset: one run
    assert load(minimal(tmp_path, 'every = "10m"')).every == 600.0
    assert load(minimal(tmp_path, 'every = "1d"')).every == 86400.0
    assert load(minimal(tmp_path, 'every = "10m"'), every=30.0).every == 30.0  # --every wins
    path = minimal(tmp_path, 'every = "10 minutes"')
    message = error_of(path)
    assert message.startswith(f"{path}: every: '10 minutes' is not an interval")
    assert "30s, 10m, 1h or 1d" in message


@pytest.mark.parametrize(
    ("body_line", "key"),
    [("upstream = 5", "upstream"), ("directory = true", "directory")],
)
def test_bad_types_of_required_keys(tmp_path: Path, body_line: str, key: str) -> None:
    other = (
        f'directory = "{tmp_path.as_posix()}"' if key == "upstream" else f'upstream = "{UPSTREAM}"'
    )
    message = error_of(write(tmp_path, f"[mirror]\n{body_line}\n{other}\n"))
    assert key in message and "must be" in message


# -- upstream ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream",
    [
        "ftp://index.example/simple/",
        "file:///srv/simple/",
        "index.example/simple/",
        "http://",
        "javascript:alert(1)",
        "/simple/",
    ],
)
def test_non_http_upstream(tmp_path: Path, upstream: str) -> None:
    message = error_of(None, upstream=upstream, directory=str(tmp_path))
    assert repr(upstream) in message
    assert "http" in message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://index.example/simple", "https://index.example/simple/"),
        ("https://index.example/simple/", "https://index.example/simple/"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
    ],
)
def test_upstream_trailing_slash(tmp_path: Path, given: str, expected: str) -> None:
    assert load(None, upstream=given, directory=str(tmp_path)).upstream == expected


# -- projects ------------------------------------------------------------------------------


def test_projects_normalized_deduplicated_sorted(tmp_path: Path) -> None:
    path = minimal(tmp_path, 'projects = ["Zope.Interface", "Foo_Bar", "foo-bar", "FOO.BAR", "a"]')
    assert load(path).projects == ("a", "foo-bar", "zope-interface")


@pytest.mark.parametrize("name", ["-bad", "bad-", "foo bar", "", "a/b", "caf\u00e9"])
def test_invalid_project_name(tmp_path: Path, name: str) -> None:
    message = error_of(None, upstream=UPSTREAM, directory=str(tmp_path), projects=["ok", name])
    assert message.startswith("projects:")


def test_invalid_project_name_in_file(tmp_path: Path) -> None:
    message = error_of(minimal(tmp_path, 'projects = ["good", "not valid!"]'))
    assert "projects" in message


# -- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 8, 256])
def test_workers_in_bounds(tmp_path: Path, workers: int) -> None:
    assert load(minimal(tmp_path, f"workers = {workers}")).workers == workers


@pytest.mark.parametrize("workers", [0, -1, 257, 10_000])
def test_workers_out_of_bounds(tmp_path: Path, workers: int) -> None:
    message = error_of(minimal(tmp_path, f"workers = {workers}"))
    assert "workers" in message and str(workers) in message


def test_workers_out_of_bounds_from_override(tmp_path: Path) -> None:
    assert "workers" in error_of(minimal(tmp_path), workers=0)


@pytest.mark.parametrize("processes", [0, 2, 64])
def test_download_processes_in_bounds(tmp_path: Path, processes: int) -> None:
    cfg = load(minimal(tmp_path, f"download-processes = {processes}"))
    assert cfg.download_processes == processes
    assert load(minimal(tmp_path)).download_processes is None  # unset: automatic


@pytest.mark.parametrize("line", ["download-processes = -1", "download-processes = 65",
                                  'download-processes = "auto"'])
def test_download_processes_refused(tmp_path: Path, line: str) -> None:
    assert "download-processes" in error_of(minimal(tmp_path, line))


@pytest.mark.parametrize(
    "line",
    [
        "retries = -1",
        "stale-retries = -1",
        "connect-timeout = -1.0",
        "read-timeout = -0.5",
        "retry-wait = -1",
        "retry-max-wait = -1",
        "stale-wait = -2.0",
    ],
)
def test_negative_values_rejected(tmp_path: Path, line: str) -> None:
    key = line.split(" ")[0]
    message = error_of(minimal(tmp_path, line))
    assert key in message and "negative" in message


def test_zero_retries_allowed(tmp_path: Path) -> None:
    cfg = load(minimal(tmp_path, "retries = 0\nstale-retries = 0\nstale-wait = 0"))
    assert (cfg.retries, cfg.stale_retries, cfg.stale_wait) == (0, 0, 0.0)


DURATION_KEYS = ["connect-timeout", "read-timeout", "retry-wait", "retry-max-wait", "stale-wait"]


def test_nan_durations_rejected(tmp_path: Path) -> None:
    # TOML has nan. It passes a "< 0" check, then socket.settimeout() or
    # time.sleep() raises ValueError in the middle of a run.
    for key in DURATION_KEYS:
        message = error_of(minimal(tmp_path, f"{key} = nan"))
        assert key in message


def test_infinite_timeouts_rejected(tmp_path: Path) -> None:
    # socket.settimeout(inf) raises OverflowError: the run would die on its first request.
    for key in ["connect-timeout", "read-timeout"]:
        message = error_of(minimal(tmp_path, f"{key} = inf"))
        assert key in message


EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
NO_DEFAULT_SHOWN = {"upstream", "directory", "user-agent"}
"""Keys set in config.example.toml to something other than their default, as its header
says: the two required ones, and user-agent (an example with a contact in it)."""


def test_shipped_example_config_points_nowhere_real() -> None:
    from simplemirror.cli.main import build_parser

    cfg = load(EXAMPLE)
    # Not where `mirror serve` listens by default: an unedited config must not make the
    # mirror its own upstream. A reserved name (RFC 2606) resolves nowhere.
    serve = build_parser().parse_args(["serve"])
    assert f"{serve.host}:{serve.port}" not in cfg.upstream
    assert (urlsplit(cfg.upstream).hostname or "").endswith(".example")


def _shown(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(keys set, keys commented out) in the example, each with the value written."""
    line = re.compile(r"^(#\s*)?([a-z-]+) = (.+)$")
    shown: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for match in filter(None, map(line.match, text.splitlines())):
        shown[bool(match.group(1))][match.group(2)] = match.group(3)
    return shown


def _mirror_table(text: str) -> str:
    return text.split("\n[filters]")[0]


def test_shipped_example_config_shows_the_defaults_its_header_promises() -> None:
    text = _mirror_table(EXAMPLE.read_text())
    set_keys, commented = _shown(text)
    header = text.split("[mirror]")[0]
    assert all(key in header for key in NO_DEFAULT_SHOWN)  # and it says so
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for key, written in set_keys.items():
        if key in NO_DEFAULT_SHOWN:
            continue
        value = tomllib.loads(f"v = {written}")["v"]
        default = defaults[KEYS[key][0]]
        assert (tuple(value) if isinstance(value, list) else value) == default, (
            f"config.example.toml shows {key} = {written}, but its default is {default!r}"
        )
    for key in commented:
        # Commented out: unset by default, the value only an example.
        assert defaults[KEYS[key][0]] is None, f"{key} has a default: show it set"
    assert set(set_keys) | set(commented) == set(KEYS)


def test_shipped_example_config_loads_and_documents_every_key() -> None:
    example = EXAMPLE
    text = _mirror_table(example.read_text())
    load(example)
    for key in KEYS:
        # A key without a default is shown commented out, with an example value.
        documented = f"\n{key} = " in text or f"\n# {key} = " in text
        assert documented, f"config.example.toml does not document {key}"


def test_shipped_example_config_documents_every_filter_with_a_value_that_loads(
    tmp_path: Path,
) -> None:
    from simplemirror.filter import rules

    text = EXAMPLE.read_text()
    table = text.split("\n[filters]\n")[1].split("\n# [storage]\n")[0]
    _, commented = _shown(table)
    # Every key is unset by default (a full mirror), so each is shown commented out.
    assert set(commented) <= set(rules.KEYS) and "[filters]" not in table
    assert set(rules.KEYS) == set(commented) | {"environments"}
    assert "\n# environments = [" in table
    # Uncommented, the examples are a configuration that loads, every filter in force.
    setting = re.compile(r"# ([a-z-]+ = .*|\s+\{.*|\])$")
    enabled = "\n".join(m[1] for m in map(setting.match, table.splitlines()) if m)
    path = tmp_path / "mirror.toml"
    path.write_text(_mirror_table(text) + "\n[filters]\n" + enabled)
    (tmp_path / "requirements.txt").write_text("sampleproject==4.0\n")
    (tmp_path / "pylock.toml").write_text('lock-version = "1.0"\n')
    filters = load(path).filters
    assert set(filters.in_force()) == set(rules.KEYS)
    assert load(EXAMPLE).filters.in_force() == {}


def test_file_hosts_are_lowercased_host_names() -> None:
    from simplemirror.cli.config import build

    cfg = build({}, {"upstream": "https://Index.Example/simple/", "directory": "/x",
                     "file_hosts": ["Files.Example", "files.example", "B.example"]})
    assert cfg.file_hosts == ("b.example", "files.example")
    assert build({}, {"upstream": "https://i.example/simple/", "directory": "/x"}).file_hosts == ()
    with pytest.raises(ConfigError, match="file-hosts"):
        build({}, {"upstream": "https://i.example/simple/", "directory": "/x",
                   "file_hosts": ["https://files.example/"]})


def test_file_hosts_name_hosts_as_urls_spell_them_without_a_port() -> None:
    from simplemirror.cli.config import build
    from simplemirror.upstream.filehosts import FileHostGuard

    def hosts(*given: str) -> tuple[str, ...]:
        return build({}, {"upstream": "https://i.example/simple/", "directory": "/x",
                          "file_hosts": list(given)}).file_hosts

    # An IPv6 literal, bracketed or not, is the host urlsplit reads from a URL.
    assert hosts("[2001:db8::1]", "2001:DB8::2") == ("2001:db8::1", "2001:db8::2")
    guard = FileHostGuard("https://i.example/simple/", hosts("[2001:db8::1]"))
    assert guard.refusal("https://[2001:db8::1]/f-1.0.tar.gz") is None
    # A port would never match (the policy compares hosts): say so rather than refuse
    # every file from that host later.
    with pytest.raises(ConfigError, match=r"without a port: 'files.example:8443'.*'files.example'"):
        hosts("files.example:8443")


# -- storage ---------------------------------------------------------------------------------

_MIRROR = '[mirror]\nupstream = "http://127.0.0.1:1/simple/"\ndirectory = "/srv/m"\n'


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "mirror.toml"
    path.write_text(_MIRROR + text)
    return load(path)


def test_storage_is_a_bucket_and_prefix_with_its_table(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'storage = "s3://mirror-bucket/pypi/"\n[storage]\n'
                'endpoint-url = "http://127.0.0.1:9000"\nregion = "eu-west-1"\n'
                "upload-workers = 16\n")
    assert cfg.storage is not None
    assert (cfg.storage.bucket, cfg.storage.prefix) == ("mirror-bucket", "pypi/")
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000"
    assert (cfg.storage.region, cfg.storage.upload_workers) == ("eu-west-1", 16)
    assert cfg.storage.retries == cfg.retries
    assert _load(tmp_path, 'storage = "s3://mirror-bucket"\n').storage.prefix == ""  # type: ignore[union-attr]
    assert _load(tmp_path, "").storage is None


@pytest.mark.parametrize(("text", "said"), [
    ('storage = "/srv/web"\n', "storage: '/srv/web' is not s3://BUCKET/PREFIX"),
    ('storage = "s3://Bad_Bucket/x"\n', "is not a bucket name"),
    ('storage = "s3://mirror-bucket/a//b"\n', "empty, '.' or '..' part"),
    ('storage = 3\n', "storage must be a string"),
    ('[storage]\nregion = "x"\n', "[storage] is set but storage is not"),
    ('storage = "s3://mirror-bucket"\n[storage]\naws-secret-access-key = "s"\n',
     "credentials are never read from the config file"),
    ('storage = "s3://mirror-bucket"\n[storage]\naccess-key-id = "s"\n',
     "credentials are never read from the config file"),
    ('storage = "s3://mirror-bucket"\n[storage]\nendpoint = "x"\n',
     "unknown key 'endpoint' in [storage]"),
    ('storage = "s3://mirror-bucket"\n[storage]\nendpoint-url = "s3.example.org"\n',
     "endpoint-url must be an http(s) URL"),
    ('storage = "s3://mirror-bucket"\n[storage]\nupload-workers = 0\n',
     "upload-workers must be between 1 and 256"),
    ('storage = "s3://mirror-bucket"\n[storage]\nupload-workers = "8"\n',
     "upload-workers must be an integer"),
    ('storage = "s3://mirror-bucket"\n[storage]\nmultipart-chunk = 1024\n',
     "multipart-chunk must be 5 MiB"),
    # Held whole in memory below it: a config that meant "never multipart" is refused.
    ('storage = "s3://mirror-bucket"\n[storage]\nmultipart-threshold = 5368709120\n',
     "multipart-threshold must be at most 64 MiB"),
])
def test_a_wrong_storage_setting_names_its_key(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert said in str(caught.value)


def test_a_wrong_storage_setting_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simplemirror.cli.main import main

    path = tmp_path / "mirror.toml"
    path.write_text(_MIRROR + 'storage = "s3://mirror-bucket"\n[storage]\nsecret-key = "s"\n')
    assert main(["sync", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "[storage] secret-key: credentials are never read" in err
