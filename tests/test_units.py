"""Quantities as people read them."""

from __future__ import annotations

import pytest

from simplemirror.report.units import human_bytes


@pytest.mark.parametrize(("count", "shown"), [
    (0, "0 B"), (1, "1 B"), (512, "512 B"), (999, "999 B"), (999.6, "1.0 kB"),
    (1000, "1.0 kB"),
    (12_345, "12.3 kB"), (999_949, "999.9 kB"), (999_960, "1.0 MB"), (4_500_000, "4.5 MB"),
    (1_234_567_890, "1.2 GB"), (3 * 10**12, "3.0 TB"), (5 * 10**18, "5000.0 PB"),
])
def test_human_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown
