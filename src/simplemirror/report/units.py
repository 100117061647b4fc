"""Quantities as a person reads them, the same in every place they are shown."""

from __future__ import annotations

import re

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


_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_INTERVAL = 365 * 86400
"""The longest --every: a year. Past it, a number is more likely a slip than a schedule."""
_INTERVAL = re.compile(r"(\d+)([smhd])")


def parse_interval(text: str) -> float:
    """Seconds in ``text``: a whole number with a unit, s, m, h or d (``30s``, ``10m``,
    ``1h``, ``1d``)."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not an interval: give a whole number and a unit, "
            "like 30s, 10m, 1h or 1d"
        )
    digits = match.group(1).lstrip("0")
    if not digits:
        raise ValueError(f"{text!r}: the interval must be longer than zero")
    # The digits are counted first: int() refuses thousands of them, and sleep() a
    # count of days fourteen digits long.
    if len(digits) > 9 or int(digits) * _INTERVAL_UNITS[match.group(2)] > MAX_INTERVAL:
        raise ValueError(f"{text!r}: the interval must be at most 365d (a year)")
    return float(int(digits) * _INTERVAL_UNITS[match.group(2)])
