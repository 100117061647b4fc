"""Removing from the tree what upstream removed, after nothing links to it any more.

Both steps run at the end of every run and pick up whatever an earlier run
left undone, so a crash between "no page lists it" and "gone from disk"
leaves only leftovers for the next run, never a link to a missing file:

1. the pages of projects recorded as removed (the root no longer lists them);
2. the bytes of files that no page lists (their rows carry removed_gen, a tombstone).
"""

from __future__ import annotations

from simplemirror.store import layout
from simplemirror.store.backend import Storage
from simplemirror.store.state import State

# Siblings that live and die with a distribution file.
SIBLING_SUFFIXES = (layout.METADATA_SUFFIX, layout.SIGNATURE_SUFFIX, layout.PROVENANCE_SUFFIX)


def remove_project_pages(storage: Storage, name: str) -> tuple[str, str]:
    """Delete a project's pages and its directory (a symlink there: the link alone)."""
    pages = layout.project_pages(name)
    if storage.remove_link(layout.project_dir(name)):
        return pages
    for page in pages:
        storage.remove(page, stop=layout.SIMPLE)
    return pages


def unpublish_removed_projects(storage: Storage, state: State, generation: int) -> list[str]:
    """Delete the pages of removed projects; call after the root stopped listing them."""
    names = state.unpublish_pending()
    for name in names:
        state.unpublish(name, remove_project_pages(storage, name), generation)
    return names


def reap_files(storage: Storage, state: State, generation: int) -> int:
    """Delete the bytes of files no page lists any more; returns how many went."""
    rows = state.reapable()
    for _, path in rows:
        storage.remove(path, ("", *SIBLING_SUFFIXES), stop=layout.PACKAGES)
    state.mark_deleted((file_id for file_id, _ in rows), generation)
    return len(rows)
