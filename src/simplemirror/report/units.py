"""Quantities as a person reads them, the same in every place they are shown."""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(count: float) -> str:
    """``count`` bytes as a person reads them: 512 B, 12.3 kB, 4.5 MB, 1.2 GB (SI units).

    Every byte count shown to a person goes through here, so that a small run reads
    "12.3 kB" rather than "0.0 MB" and every place shows the same units.
    """
    if round(count) < 1000:
        return f"{count:.0f} B"
    value = count / 1000
    for unit in _UNITS[1:-1]:
        # Decided on the rounded value: 999,960 bytes is "1.0 MB", not "1000.0 kB".
        if round(value, 1) < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_UNITS[-1]}"


def clock(seconds: float) -> str:
    """A duration as hours:minutes:seconds (0:03:10), as the progress bars show one."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
