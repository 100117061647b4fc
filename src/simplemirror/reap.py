"""Removing from the tree what upstream removed, after nothing links to it any more.

Both steps run at the end of every run and pick up whatever an earlier run
left undone, so a crash between "no page lists it" and "gone from disk"
leaves only leftovers for the next run, never a link to a missing file:

1. the pages of projects recorded as removed (the root no longer lists them);
2. the bytes of files that no page lists (their rows carry removed_gen, a tombstone).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from simplemirror import layout
from simplemirror.state import State

# Siblings that live and die with a distribution file.
SIBLING_SUFFIXES = (layout.METADATA_SUFFIX, layout.SIGNATURE_SUFFIX, layout.PROVENANCE_SUFFIX)


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents up to ``stop`` while they are empty."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or already gone): nothing above it is empty either
        directory = directory.parent


def unpublish_removed_projects(web: Path, state: State, generation: int) -> list[str]:
    """Delete the pages of removed projects; call after the root stopped listing them."""
    names = state.unpublish_pending()
    for name in names:
        pages = layout.project_pages(name)
        for page in pages:
            (web / page).unlink(missing_ok=True)
        _remove_empty_dirs(web / layout.project_dir(name), web)
        state.unpublish(name, pages, generation)
    return names


def reap_files(web: Path, state: State, generation: int) -> int:
    """Delete the bytes of files no page lists any more; returns how many went."""
    rows = state.reapable()
    for _, path in rows:
        target = web / path
        for suffix in ("", *SIBLING_SUFFIXES):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{target}{suffix}")
        _remove_empty_dirs(target.parent, web / layout.PACKAGES)
    state.mark_deleted((file_id for file_id, _ in rows), generation)
    return len(rows)
