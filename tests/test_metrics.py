"""The Prometheus textfile: a strictly valid exposition, with the numbers an operator alerts on."""

from __future__ import annotations

from pathlib import Path

import pytest

from simplemirror import __version__
from simplemirror.cli.config import ConfigError, build
from simplemirror.cli.main import main
from simplemirror.report import metrics
from tests.support.prom import ExpositionError, parse
from tests.support.upstream import Upstream, World

# -- the parser the other tests rely on refuses what it must -----------------------------

@pytest.mark.parametrize("text", [
    "a 1",  # no newline at the end
    "a 1\n",  # a sample without HELP/TYPE
    "# HELP a x\n# TYPE a gauge\na{b=\"1\"} 1\na{b=\"1\"} 2\n",  # the same series twice
    "# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b gauge\na 1\nb 1\na 2\n",  # split family
    "# HELP a x\n# TYPE a gauge\na{b=\"un\"closed\"} 1\n",  # a bad escape
    "# HELP a x\n# TYPE a gauge\na one\n",  # not a number
    "# HELP a x\n# TYPE a gauge\n\na 1\n",  # a blank line
    "# HELP a x\n# TYPE a gauge\na 1\n# TYPE a gauge\n",  # TYPE after samples
    "# HELP a x\n# TYPE a metric\na 1\n",  # no such type
])
def test_the_test_parser_refuses_malformed_files(text: str) -> None:
    with pytest.raises(ExpositionError):
        parse(text)


def test_the_test_parser_reads_a_valid_file() -> None:
    fams = parse('# HELP a x\\ny\n# TYPE a gauge\na{b="q\\"\\\\\\n",c="d"} 1.5e3\na 2\n')
    assert fams["a"].help == "x\ny"
    assert fams["a"].value(b='q"\\\n') == 1500.0


# -- render ----------------------------------------------------------------------------

def _run(**overrides: object) -> metrics.LastRun:
    values: dict[str, object] = dict(
        finished=1_700_000_000.25, duration=12.5, outcome="partial", exit_code=1,
        generation=7, files_fetched=3, bytes_fetched=4096,
        failures={"deferred": 1, "failed": 2, "rejected": 0},
    )
    values.update(overrides)
    return metrics.LastRun(**values)  # type: ignore[arg-type]


def test_render_is_a_valid_exposition_with_every_metric() -> None:
    held = metrics.Held(
        last_success=1_699_999_000.0, upstream_serial=120, serial=100,
        projects={"ok": 5, "deferred": 1, "failed": 2, "pending": 0, "removed": 3},
        files=40, bytes=123456,
    )
    fams = parse(metrics.render("/srv/mirror", _run(), held))
    for fam in fams.values():
        assert fam.type == "gauge" and fam.help
        for labels in fam.samples:
            assert ("directory", "/srv/mirror") in labels
    v = {name: fam for name, fam in fams.items()}
    assert v["simplemirror_build_info"].value(version=__version__) == 1
    assert v["simplemirror_last_run_timestamp_seconds"].value() == 1_700_000_000.25
    assert v["simplemirror_last_run_duration_seconds"].value() == 12.5
    assert v["simplemirror_last_run_exit_code"].value() == 1
    outcomes = v["simplemirror_last_run_outcome"]
    assert {dict(k)["outcome"]: x for k, x in outcomes.samples.items()} == {
        "ok": 0, "partial": 1, "unchanged": 0, "interrupted": 0, "error": 0,
    }
    assert v["simplemirror_last_run_generation"].value() == 7
    assert v["simplemirror_last_run_bytes_fetched"].value() == 4096
    assert v["simplemirror_run_failures"].value(kind="failed") == 2
    assert v["simplemirror_run_failures"].value(kind="deferred") == 1
    assert v["simplemirror_last_success_timestamp_seconds"].value() == 1_699_999_000.0
    assert v["simplemirror_serial_lag"].value() == 20
    assert v["simplemirror_projects"].value(status="removed") == 3
    assert v["simplemirror_files"].value() == 40
    assert v["simplemirror_bytes"].value() == 123456


def test_unknowns_are_absent_and_never_success_is_zero() -> None:
    fams = parse(metrics.render("/m", _run(generation=None, outcome="error"), metrics.Held()))
    for absent in ("serial_lag", "upstream_serial", "serial", "projects", "files", "bytes",
                   "last_run_generation"):
        assert f"simplemirror_{absent}" not in fams
    assert fams["simplemirror_last_success_timestamp_seconds"].value() == 0
    assert fams["simplemirror_last_run_outcome"].value(outcome="error") == 1


def test_label_values_are_escaped() -> None:
    odd = '/srv/we"ird\\dir\nx'
    fams = parse(metrics.render(odd, _run(), metrics.Held()))
    assert fams["simplemirror_last_run_exit_code"].value(directory=odd) == 1


def test_a_non_finite_value_is_refused_not_written() -> None:
    with pytest.raises(ValueError, match="not finite"):
        metrics.render("/m", _run(duration=float("nan")), metrics.Held())


# -- configuration ---------------------------------------------------------------------

def test_metrics_file_must_be_a_prom_file() -> None:
    base = {"upstream": "http://127.0.0.1:1/simple/", "directory": "/m"}
    cfg = build({}, {**base, "metrics_file": "~/collector/simplemirror.prom"})
    assert cfg.metrics_file is not None and cfg.metrics_file.is_absolute()
    assert cfg.metrics_file.name == "simplemirror.prom"
    for bad in ("/var/lib/textfile/simplemirror.txt", "/var/lib/textfile/"):
        with pytest.raises(ConfigError, match=r"\.prom"):
            build({}, {**base, "metrics_file": bad})
    assert build({}, base).metrics_file is None


# -- end to end: the file after each run -----------------------------------------------

def test_metrics_after_runs_keep_the_last_success_through_a_failure(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    world.add_project("beta", ["1.0", "2.0"])
    prom = tmp_path / "collector" / "simplemirror.prom"
    prom.parent.mkdir()
    with Upstream(world) as up:
        argv = ["sync", "--upstream", up.url, "--directory", str(tmp_path / "m"),
                "--metrics-file", str(prom), "--no-progress"]
        assert main(argv) == 0
        first = parse(prom.read_text())
        success = first["simplemirror_last_success_timestamp_seconds"].value()
        assert success > 0
        assert first["simplemirror_last_run_outcome"].value(outcome="ok") == 1
        assert first["simplemirror_projects"].value(status="ok") == 2
        assert first["simplemirror_files"].value() == 6  # a wheel and an sdist per release
        held = sum(p.stat().st_size for p in (tmp_path / "m/web/packages").rglob("*")
                   if p.is_file() and not p.name.endswith(".metadata"))
        assert first["simplemirror_bytes"].value() == held
        assert first["simplemirror_serial_lag"].value() == 0

        world.add_release("alpha", "2.0")
        up.fail["/simple/"] = 100  # the root answers 503 from now on
        argv += ["--config", str(_no_retries(tmp_path))]
        assert main(argv) == 1
    after = parse(prom.read_text())
    assert after["simplemirror_last_run_outcome"].value(outcome="error") == 1
    assert after["simplemirror_last_run_exit_code"].value() == 1
    assert after["simplemirror_last_success_timestamp_seconds"].value() == success
    assert after["simplemirror_files"].value() == 6  # still held
    assert not [p for p in prom.parent.iterdir() if p != prom]  # no temporary file left


def _no_retries(tmp_path: Path) -> Path:
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[mirror]\nretries = 0\nretry-wait = 0.0\nretry-max-wait = 0.0\n")
    return cfg


def test_an_unwritable_metrics_file_is_logged_and_does_not_change_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        code = main(["sync", "--upstream", up.url, "--directory", str(tmp_path / "m"),
                     "--metrics-file", str(tmp_path / "missing-dir" / "m.prom"),
                     "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "cannot write the metrics file" in err and "directory exists" in err
