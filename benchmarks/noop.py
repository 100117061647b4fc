"""No-op runs at PyPI scale, without syncing a world of that size first.

    python -m benchmarks.noop --projects 650000

A full 650,000-project world and mirror take hours and ~6 million inodes to build.
A no-op run only reads the root and state.db, so this writes both directly: a root
index (PEP 691 JSON) of N projects, and a state.db in which every one of them is
held, complete, at the serial the root lists (rows as a sync writes them). The root
pages in web/ are rendered once from that state. Then it measures ``mirror sync``:

- ``304``: the server honours If-None-Match;
- ``same bytes``: the server sends no ETag, so the root comes whole, byte for byte
  the same as last time;
- ``new bytes``: the root comes whole, reordered, so it must be parsed and compared
  with all N projects held (nothing has changed).

Each prints wall, CPU and peak RSS, and the run's exit status (0 expected). The
root and the mirror are built in a child process and the root is streamed from a
file, so that this process stays small (``measure.run_measured`` also starts each
run from a small launcher, see there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks import clients
from benchmarks.measure import run_measured


class RootServer:
    """Serves one root index file at /simple/, with or without an ETag."""

    def __init__(self) -> None:
        self.body = Path()
        self.etag: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if server.etag and self.headers.get("If-None-Match") == server.etag:
                    self.send_response(304)
                    self.send_header("ETag", server.etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                self.send_header("Content-Length", str(server.body.stat().st_size))
                if server.etag:
                    self.send_header("ETag", server.etag)
                self.end_headers()
                with server.body.open("rb") as body:
                    shutil.copyfileobj(body, self.wfile)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def root_body(projects: int, *, reverse: bool = False) -> bytes:
    order = range(projects - 1, -1, -1) if reverse else range(projects)
    doc = {
        "meta": {"api-version": "1.1", "_last-serial": projects},
        "projects": [{"name": f"proj-{i:06d}", "_last-serial": i + 1} for i in order],
    }
    return json.dumps(doc).encode()


def build(work: Path, projects: int, upstream: str) -> None:
    """Write the root files and the mirror (run in a child process: it takes memory)."""
    body = root_body(projects)
    (work / "root.json").write_bytes(body)
    (work / "root-reordered.json").write_bytes(root_body(projects, reverse=True))
    build_mirror(work / "mirror", projects, upstream, body)


def build_mirror(directory: Path, projects: int, upstream: str, body: bytes) -> None:
    """A state.db holding every project complete, and the root pages rendered from it."""
    from simplemirror.store.backend import Local
    from simplemirror.store.state import State
    from simplemirror.sync.publish import Publisher

    directory.mkdir(parents=True, exist_ok=True)
    state = State(directory / "state.db")
    generation = state.begin_run(upstream)
    with state.transaction():
        state.db.conn.executemany(
            "INSERT INTO projects (name, display_name, serial, upstream_serial, status,"
            " appeared_gen, updated_gen, published_gen) VALUES (?, ?, ?, ?, 'ok', ?, ?, ?)",
            (
                (f"proj-{i:06d}", f"proj-{i:06d}", i + 1, i + 1, generation, generation,
                 generation)
                for i in range(projects)
            ),
        )
        state.set_meta("root_serial", str(projects))
        state.set_meta("root_serials", "yes")
        state.set_meta("root_scope", json.dumps([upstream, []]))
        state.set_meta("root_etag", '"root"')
        state.set_meta("root_sha256", hashlib.sha256(body).hexdigest())
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        publisher = Publisher(Local(directory / "web"), directory / "tmp", state, generation)
        publisher.root(state.root_entries(), projects)
    state.finish_run(generation, "ok")
    state.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=650_000)
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="noop-", dir=args.workdir))
    try:
        server = RootServer()
        builder = multiprocessing.get_context("spawn").Process(
            target=build, args=(work, args.projects, server.url)
        )
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            print("building the root and the mirror failed")
            return 1
        command = [clients.find_mirror(args.mirror), "sync", "--upstream", server.url,
                   "--directory", str(work / "mirror"), "--no-progress"]
        cases = [
            ("304", '"root"', work / "root.json"),
            ("same bytes", None, work / "root.json"),
            ("new bytes", None, work / "root-reordered.json"),
        ]
        size = (work / "root.json").stat().st_size
        print(f"{args.projects} projects, root {size / 1e6:.1f} MB")
        for name, etag, body in cases:
            server.etag, server.body = etag, body
            usage = run_measured(command, log=work / f"{name.replace(' ', '-')}.log")
            print(f"  {name:10}  wall {usage.wall:6.2f} s  cpu {usage.cpu:6.2f} s  "
                  f"rss {usage.max_rss_mb:5.0f} MB  exit {usage.returncode}")
            if usage.returncode != 0:
                print((work / f"{name.replace(' ', '-')}.log").read_text()[-2000:])
                return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
