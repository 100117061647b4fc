"""One measured phase: run a client against the upstream and collect every figure.

Shared by compare.py and scale.py. A phase's requests and bytes are the access-log lines
nginx wrote while the client ran; its CPU and memory come from the client's rusage.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.clients import MirrorClient
from benchmarks.measure import Usage, run_measured
from benchmarks.upstream import Nginx, Stats
from benchmarks.wanproxy import Proxy


@dataclass
class Phase:
    tool: str
    phase: str
    usage: Usage
    served: Stats
    nginx_cpu: float
    files: int = 0
    metadata: int = 0
    pages_written: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb(self) -> float:
        return self.served.bytes / 1e6

    @property
    def mb_per_s(self) -> float:
        return self.mb / self.usage.wall if self.usage.wall else 0.0

    @property
    def cpu_per_gb(self) -> float:
        return self.usage.cpu / (self.served.bytes / 1e9) if self.served.bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "phase": self.phase,
            **self.usage.as_dict(),
            "served": self.served.as_dict(),
            "nginx_cpu": self.nginx_cpu,
            "mb_per_s": self.mb_per_s,
            "cpu_s_per_gb": self.cpu_per_gb,
            "files_on_disk": self.files,
            "metadata_on_disk": self.metadata,
            "pages_written": self.pages_written,
            **self.extra,
        }


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat.

    A phase's busy time minus its client's and nginx's is what something else used
    meanwhile: the machine is shared, and a figure taken under load says so.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def settle() -> None:
    """Flush dirty pages before a phase, so that no phase pays for the last one's writes."""
    os.sync()
    time.sleep(0.5)


def run_phase(
    client: MirrorClient,
    phase: str,
    nginx: Nginx,
    *,
    log_dir: Path,
    timeout: float,
    count_tree: bool = True,
    count_pages: bool = False,
    proxy: Proxy | None = None,
    concurrency: int | None = None,
) -> Phase:
    """With ``proxy`` (the client's upstream is a wanproxy in front of nginx), also the
    bound: requests x RTT / ``concurrency``, the least time the phase can take with
    that many connections, each request waiting a round trip."""
    settle()
    log = log_dir / f"{client.name}-{phase}.log"
    offset, cpu_before, started = nginx.log_offset(), nginx.cpu_seconds(), time.time()
    proxy_offset = proxy.log_offset() if proxy else 0
    proxy_cpu = proxy.cpu_seconds() if proxy else 0.0
    busy_before, steal_before = machine_cpu()
    usage = run_measured(client.command(), log=log, timeout=timeout)
    busy, steal = machine_cpu()
    result = Phase(
        client.name, phase, usage, nginx.stats(offset), nginx.cpu_seconds() - cpu_before
    )
    result.extra["log_span"] = (offset, nginx.log_offset())
    if proxy is not None:
        proxy_cpu = proxy.cpu_seconds() - proxy_cpu
        rtt = proxy.rtt_ms / 1000
        bound = result.served.requests * rtt / concurrency if concurrency else None
        result.extra.update({
            "rtt_ms": proxy.rtt_ms, "concurrency": concurrency, "bound": bound,
            "of_bound": bound / usage.wall if bound and usage.wall else None,
            "proxy": proxy.stats(proxy_offset).as_dict(), "proxy_cpu": proxy_cpu,
        })
    result.extra["other_cpu"] = max(
        0.0, busy - busy_before - usage.cpu - result.nginx_cpu - proxy_cpu
    )
    result.extra["steal"] = steal - steal_before
    # The client's own last word (simplemirror's summary line), kept for the record.
    lines = log.read_text(errors="replace").strip().splitlines()
    result.extra["last_log_line"] = lines[-1] if lines else ""
    if count_tree:
        tree = client.tree()
        result.files, result.metadata = tree.files, tree.metadata
    if count_pages:
        result.pages_written = client.pages_written_since(started)
    print(summary_line(result), flush=True)
    return result


def summary_line(p: Phase) -> str:
    line = (
        f"  {p.tool:<13} {p.phase:<12} wall {p.usage.wall:8.2f} s  cpu {p.usage.cpu:8.2f} s  "
        f"rss {p.usage.max_rss_mb:6.0f} MB  requests {p.served.requests:>8}  "
        f"{p.mb:9.1f} MB  exit {p.usage.returncode}  nginx cpu {p.nginx_cpu:.1f} s  "
        f"other cpu {p.extra.get('other_cpu', 0):.1f} s"
    )
    if p.extra.get("bound") is not None:
        line += (
            f"  bound {p.extra['bound']:.2f} s at {p.extra['concurrency']} connections "
            f"(of bound {p.extra['of_bound']:.2f}; {p.extra['proxy']['connections']} opened, "
            f"{p.extra['proxy']['peak_open']} at once)"
        )
    return line
