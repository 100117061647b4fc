"""A delaying TCP proxy on 127.0.0.1: a wide-area network's round trips, not its bandwidth.

    python -m benchmarks.wanproxy --upstream-port 8080 --rtt-ms 50 [--port N] [--log FILE]
    python -m benchmarks.wanproxy check [--projects 2000] [--workdir DIR]

Every byte is held half the round trip in each direction, and a new connection's first
byte one round trip more: the TCP handshake a real connection pays before its request
can go out. The delay adds latency without capping throughput: each direction reads as
fast as its sender writes (asyncio's large reads), queues each chunk with the time it is
due, and writes it when that time comes. A direction stops reading its sender only when
``QUEUE_LIMIT`` bytes wait in it, or in its receiver's write buffer (far above what
50 ms holds at loopback speed), as a TCP window would.

Pages link files by absolute path (``/packages/...``), so a client pointed at the
proxy's host and port reaches every file through it. The log has a line per connection
opened and closed, for ``Proxy.stats`` to count a phase's connections and how many were
open at once. ``check`` measures the proxy alone: ``curl`` through it at rtt 0 against
straight to nginx, on the file world (~1 GB), and one large file at 50 ms, whose time
should be the direct one plus two round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

QUEUE_LIMIT = 64 << 20
"""Bytes one direction of a connection may hold before it stops reading its sender."""

_ids = itertools.count(1)


class _Direction:
    """One way through a connection: chunks from ``source`` reach ``dest`` ``delay`` late."""

    def __init__(self, delay: float, not_before: float = 0.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.delay = delay
        self.not_before = not_before
        """No chunk leaves before this loop time plus the delay (a new connection's handshake)."""
        self.source: asyncio.Transport | None = None
        self.dest: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self._timer: asyncio.TimerHandle | None = None
        self._full = self._dest_full = False
        self.on_done: Any = None

    def push(self, data: bytes | None) -> None:
        """Queue ``data`` (None: the sender closed) for its time."""
        now = self.loop.time()
        if not self.delay and data and not self.queue and self.dest is not None and (
            now >= self.not_before
        ):
            self.dest.write(data)  # no delay to add: a timer would only cost a loop turn
            return
        due = max(now, self.not_before) + self.delay
        self.queue.append((due, data))
        if data:
            self.queued += len(data)
            if self.queued > QUEUE_LIMIT and not self._full:
                self._full = True
                self._reading()
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        if self.queue and self.dest is not None:
            self._timer = self.loop.call_at(self.queue[0][0], self._flush)
        else:
            self._timer = None

    def connected(self, dest: asyncio.Transport) -> None:
        self.dest = dest
        if self._timer is None:
            self._schedule()

    def _flush(self) -> None:
        dest = self.dest
        assert dest is not None
        now = self.loop.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, data = queue.popleft()
            if data is None:
                self.queue.clear()
                self._timer = None
                if self.on_done is not None:
                    self.on_done()
                return
            self.queued -= len(data)
            dest.write(data)
        if self._full and self.queued < QUEUE_LIMIT // 2:
            self._full = False
            self._reading()
        self._schedule()

    def dest_full(self, full: bool) -> None:
        self._dest_full = full
        self._reading()

    def _reading(self) -> None:
        source = self.source
        if source is None or source.is_closing():
            return
        if self._full or self._dest_full:
            source.pause_reading()
        elif not source.is_reading():
            source.resume_reading()


# One receive buffer for the whole proxy: asyncio fills it and hands it over at once
# (recv_into, then buffer_updated), so what it holds is copied out before the next read.
# A plain Protocol gets a fresh bytes of 256 KiB from each recv: an mmap, an mremap and a
# munmap a read, 40% of the proxy's system calls.
_BUFFER = memoryview(bytearray(1 << 20))


class _End(asyncio.BufferedProtocol):
    """One socket of a proxied connection: what it receives goes out the other, late."""

    def __init__(self, outgoing: _Direction, incoming: _Direction) -> None:
        self.outgoing = outgoing  # read here, written at the other end
        self.incoming = incoming  # read at the other end, written here
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # asyncio's 64 KiB would stop the sender whenever a write waits, and each stop
        # would cost a gap of the delay once it resumes: TCP's window is far larger.
        transport.set_write_buffer_limits(high=QUEUE_LIMIT)
        self.outgoing.source = transport
        self.incoming.connected(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.outgoing.push(bytes(_BUFFER[:nbytes]))

    def eof_received(self) -> bool:
        self.outgoing.push(None)
        return True  # the other way may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        # After an EOF already queued, once more: that one closes the other end.
        if not self.outgoing.queue or self.outgoing.queue[-1][1] is not None:
            self.outgoing.push(None)

    def pause_writing(self) -> None:
        self.incoming.dest_full(True)

    def resume_writing(self) -> None:
        self.incoming.dest_full(False)


class Server:
    def __init__(self, upstream: tuple[str, int], rtt: float, log: IO[str] | None) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.log = log
        self.tasks: set[asyncio.Task[None]] = set()

    def accept(self) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        conn = next(_ids)
        # The client's first byte leaves one round trip after it connected: its handshake.
        up = _Direction(self.rtt / 2, loop.time() + self.rtt)
        down = _Direction(self.rtt / 2)
        client = _End(up, down)
        self._note(f"open {conn}")
        finished: set[int] = set()
        logged = False

        def done(direction: _Direction) -> None:
            """Its sender's last byte has arrived: pass the half-close on, or end both."""
            finished.add(id(direction))
            source, dest = direction.source, direction.dest
            lost = source is None or source.is_closing()
            if not lost and len(finished) < 2 and dest is not None and dest.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    dest.write_eof()
                return
            for transport in (up.source, down.source):
                if transport is not None:
                    transport.close()  # what is buffered is still sent
            nonlocal logged
            if not logged:
                logged = True
                self._note(f"close {conn}")

        up.on_done = lambda: done(up)
        down.on_done = lambda: done(down)

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: _End(down, up), *self.upstream)
            except OSError:
                if client.transport is not None:
                    client.transport.close()

        task = loop.create_task(connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return client

    def _note(self, what: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.time():.6f} {what}\n")


async def serve(
    upstream_port: int, rtt: float, port: int, log_path: Path | None
) -> None:
    log = log_path.open("a", buffering=1) if log_path else None
    server = Server(("127.0.0.1", upstream_port), rtt, log)
    listener = await asyncio.get_running_loop().create_server(
        server.accept, "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    bound = listener.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with listener:
        await stop.wait()


# -- the harness's side ------------------------------------------------------------


@dataclass(frozen=True)
class ProxyStats:
    """What went through the proxy in one phase."""

    connections: int
    peak_open: int
    """Most connections open at once."""

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "peak_open": self.peak_open}


class Proxy:
    """The proxy as a child process (its own interpreter: no GIL shared with the harness,
    and its CPU counted apart, as nginx's is)."""

    def __init__(self, upstream_port: int, rtt_ms: float, work: Path) -> None:
        self.upstream_port = upstream_port
        self.rtt_ms = rtt_ms
        self.log = work / "wanproxy.log"
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        work.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log.touch()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.wanproxy", "--upstream-port",
             str(self.upstream_port), "--rtt-ms", str(self.rtt_ms), "--log", str(self.log)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the proxy did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def stats(self, since: int) -> ProxyStats:
        """Connections opened from byte ``since`` of the log on, and their peak."""
        opened = open_now = peak = 0
        mine: set[str] = set()
        with self.log.open() as log:
            log.seek(since)
            for line in log:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "open":
                    mine.add(parts[2])
                    opened += 1
                    open_now += 1
                    peak = max(peak, open_now)
                elif len(parts) >= 3 and parts[1] == "close" and parts[2] in mine:
                    open_now -= 1
        return ProxyStats(opened, peak)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0


def check(projects: int, workdir: Path | None, parallel: int) -> None:
    """curl straight to nginx, then through the proxy at rtt 0: the proxy must not be what
    limits a benchmark. Then a 200 MB file at rtt 50: latency added, not a throughput cap."""
    from benchmarks import artifacts, fetch, world
    from benchmarks.upstream import Nginx

    work = Path(tempfile.mkdtemp(prefix="wanproxy-", dir=workdir))
    try:
        the_world = world.generate(work / "world", artifacts.FILES_KIND, projects, json_api=False)
        paths = (the_world.root / "files.txt").read_text().split()
        big = the_world.htdocs / "packages" / "big.bin"
        big.write_bytes(os.urandom(200 << 20))
        with Nginx(the_world, work / "nginx") as nginx:
            rows = []
            for label, rtt in (("direct", None), ("proxy rtt 0", 0.0), ("direct", None),
                               ("proxy rtt 0", 0.0)):
                with contextlib.ExitStack() as stack:
                    url, proxy = nginx.url, None
                    if rtt is not None:
                        proxy = stack.enter_context(Proxy(nginx.port, rtt, work))
                        url = proxy.url
                    got = fetch.curl_all(url, paths, parallel=parallel, work=work)
                    cpu = proxy.cpu_seconds() if proxy else 0.0
                rows.append(
                    f"{label:<12} {got.requests:>6} files {got.bytes / 1e6:8.1f} MB "
                    f"{got.seconds:7.2f} s {got.mb_per_s:7.1f} MB/s  proxy CPU {cpu:5.2f} s"
                    + (f"  ERRORS {got.errors}" if got.errors else "")
                )
                print(rows[-1], flush=True)
            for label, rtt in (("direct", None), ("proxy rtt 50", 50.0)):
                with contextlib.ExitStack() as stack:
                    url = nginx.url
                    if rtt is not None:
                        url = stack.enter_context(Proxy(nginx.port, rtt, work)).url
                    got = fetch.curl_all(url, ["/packages/big.bin"], parallel=1, work=work)
                print(f"{label:<12} one 200 MB file in {got.seconds:.3f} s "
                      f"({got.mb_per_s:.0f} MB/s)", flush=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="wanproxy check")
        parser.add_argument("--projects", type=int, default=2000)
        parser.add_argument("--parallel", type=int, default=10)
        parser.add_argument("--workdir", type=Path)
        checked = parser.parse_args(args[1:])
        check(checked.projects, checked.workdir, checked.parallel)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0, help="default: a free one, printed")
    parser.add_argument("--log", type=Path, help="a line per connection opened and closed")
    parsed = parser.parse_args(args)
    asyncio.run(serve(parsed.upstream_port, parsed.rtt_ms / 1000, parsed.port, parsed.log))


if __name__ == "__main__":
    main()
