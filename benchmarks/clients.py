"""The two mirror clients under test: how each is configured and started, and what it wrote.

Both get the same upstream and a fresh directory, and the workers compare.py gives them
(10 each by default; simplemirror may be left at its own default); both log to a file
(their normal, non-interactive output), so neither pays for a terminal.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SIMPLEMIRROR = "simplemirror"
BANDERSNATCH = "bandersnatch"
TOOLS = (SIMPLEMIRROR, BANDERSNATCH)
# Where README.md's setup puts bandersnatch (it needs Python 3.12, this project 3.11).
DEFAULT_BANDERSNATCH = Path("/tmp/bs/bin/bandersnatch")


def find_mirror(given: str | None = None) -> str:
    """The `mirror` command (``given``, else the one of the venv running the benchmark),
    its package byte-compiled.

    Compiled as pip compiles an installed package: an editable install (pip install
    -e) leaves it to the first import, and where PYTHONDONTWRITEBYTECODE is set (it is
    on this project's machines) every process of every run compiled the sources again,
    ~30 ms of CPU each, three processes a sync. bandersnatch, installed from a wheel,
    has its bytecode from pip. A ``given`` command (another checkout's venv, to measure
    back to back) is compiled by the interpreter its script names, or the two would not
    be measured alike.
    """
    if given is not None:
        _compile_for(given)
        return given
    beside = Path(sys.executable).parent / "mirror"  # the venv running the benchmark
    found = str(beside) if beside.exists() else shutil.which("mirror")
    if not found:
        raise SystemExit("cannot find simplemirror's `mirror` command; pip install -e . first")
    spec = importlib.util.find_spec("simplemirror")
    for package in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(package, quiet=1)
    return found


def _compile_for(command: str) -> None:
    """Byte-compile the simplemirror that ``command``, a console script, runs (its #!
    line names the venv's interpreter); nothing when it is not such a script."""
    try:
        first = Path(shutil.which(command) or command).read_bytes().split(b"\n", 1)[0]
    except OSError:
        return
    if not first.startswith(b"#!"):
        return
    compile_package = (
        "import compileall, os, simplemirror\n"
        "for where in simplemirror.__path__: compileall.compile_dir(where, quiet=1)"
    )
    subprocess.run([*shlex.split(first[2:].decode()), "-c", compile_package],
                   capture_output=True, check=False)


def find_bandersnatch() -> str:
    found = shutil.which("bandersnatch") or (
        str(DEFAULT_BANDERSNATCH) if DEFAULT_BANDERSNATCH.exists() else None
    )
    if not found:
        raise SystemExit(
            "cannot find bandersnatch; see benchmarks/README.md (a Python 3.12 venv) "
            "or pass --bandersnatch PATH"
        )
    return found


@dataclass(frozen=True)
class Tree:
    """What a client's mirror holds on disk."""

    files: int
    metadata: int
    bytes: int


class MirrorClient:
    name: str

    def __init__(self, directory: Path, host_url: str, workers: int | None) -> None:
        self.directory = directory
        self.host_url = host_url
        self.workers = workers
        directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def web(self) -> Path:
        return self.directory / "web"

    def tree(self) -> Tree:
        """Count release files and .metadata files under web/packages."""
        files = metadata = size = 0
        for top, _dirs, names in os.walk(self.web / "packages"):
            for name in names:
                if name.endswith(".metadata"):
                    metadata += 1
                else:
                    files += 1
                    size += os.stat(os.path.join(top, name)).st_size
        return Tree(files, metadata, size)

    def pages_written_since(self, when: float) -> int:
        """Pages under web/simple (root included) whose mtime is at or after ``when``."""
        count = 0
        for top, _dirs, names in os.walk(self.web / "simple"):
            for name in names:
                if name.startswith("index.") and os.stat(os.path.join(top, name)).st_mtime >= when:
                    count += 1
        return count


class SimpleMirror(MirrorClient):
    name = SIMPLEMIRROR

    def __init__(
        self, directory: Path, host_url: str, workers: int | None, binary: str
    ) -> None:
        """``workers`` None: simplemirror's default."""
        super().__init__(directory, host_url, workers)
        self.binary = binary

    def command(self) -> list[str]:
        workers = [] if self.workers is None else ["--workers", str(self.workers)]
        return [
            self.binary, "sync",
            "--upstream", f"{self.host_url}/simple/",
            "--directory", str(self.directory),
            *workers,
            "--no-progress",
        ]


class Bandersnatch(MirrorClient):
    """bandersnatch 8: PEP 691 root at <master>/simple, then /pypi/<name>/json per project."""

    name = BANDERSNATCH

    def __init__(self, directory: Path, host_url: str, workers: int, binary: str) -> None:
        super().__init__(directory, host_url, workers)
        self.binary = binary
        self.config = directory.parent / f"{directory.name}.conf"
        # Keys as in bandersnatch's defaults.conf; timeouts stay at their defaults.
        self.config.write_text(
            "[mirror]\n"
            f"directory = {directory}\n"
            f"master = {host_url}\n"
            "allow-non-https = true\n"
            "storage-backend = filesystem\n"
            f"workers = {workers}\n"
            "json = false\n"
            "release-files = true\n"
            "core-metadata = true\n"
            "hash-index = false\n"
            "simple-format = ALL\n"
            "stop-on-error = false\n"
            "compare-method = hash\n"
            "digest_name = sha256\n"
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config), "mirror"]
