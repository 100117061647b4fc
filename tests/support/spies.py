"""Spies set with monkeypatch: they watch shared machinery and change nothing it does."""

from __future__ import annotations

from typing import Any

import pytest

from simplemirror import store
from simplemirror.transport import Inflater


def temp_file_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes written to each temporary file, in the order they were opened."""
    written: list[int] = []
    real_create, real_write_all = store.create, store.write_all

    def counting_create(*args: Any) -> tuple[int, str]:
        written.append(0)
        return real_create(*args)

    def counting_write_all(fd: int, data: bytes) -> None:
        written[-1] += len(data)
        real_write_all(fd, data)

    monkeypatch.setattr(store, "create", counting_create)
    monkeypatch.setattr(store, "write_all", counting_write_all)
    return written


def refuse_spinning_inflater(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read1 that asks its Inflater for nothing, again and again, fails instead of
    hanging (on an event loop such a loop never awaits, so no timeout could end it)."""
    real = Inflater.decode
    idle = 0

    def decode(self: Inflater, data: bytes, n: int) -> bytes:
        nonlocal idle
        out = real(self, data, n)
        idle = idle + 1 if not data and not out else 0
        if idle > 1000:
            raise AssertionError("read1 loops without reading or decoding anything")
        return out

    monkeypatch.setattr(Inflater, "decode", decode)
