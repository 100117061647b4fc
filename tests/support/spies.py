"""Spies set with monkeypatch: they watch shared machinery and change nothing it does."""

from __future__ import annotations

from typing import Any

import pytest

from simplemirror.store import tree as store


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
