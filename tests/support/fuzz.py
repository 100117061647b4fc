"""Random strings for checking a fast path against the standard library's answer."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


def random_strings(
    seed: int, alphabet: str, *, starts: Sequence[str] = ("",), longest: int = 14,
    count: int = 20_000,
) -> Iterator[str]:
    """``count`` strings: one of ``starts``, then up to ``longest`` - 1 characters drawn
    from ``alphabet``; the same ones for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(starts) + "".join(
            rng.choice(alphabet) for _ in range(rng.randrange(longest))
        )
