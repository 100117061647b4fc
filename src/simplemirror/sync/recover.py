"""After a run that died (kill -9, a power cut): make the tree agree with state.db again.

A run writes a project's pages, and its files, before the transaction recording them
commits (every COMMIT_EVERY seconds, to keep a first sync of 650,000 projects fast).
A run that dies in between leaves bytes on disk that state.db does not know of: pages
of a project it never recorded as published, which no later run would delete (upstream
deleting the project finds no pages to remove), and files no row holds.

Rather than a journal written (and committed) ahead of every page and file, which costs
a commit per project on the hot path, the next run looks at what changed on disk since
the dead run started (modification times; runs.started) and reconciles it:

1. a project directory under web/simple/ changed since then: its pages are written
   again from state.db, or deleted when state.db records none published;
2. the root pages, if changed since then: written again from state.db;
3. a file under web/packages/ changed since then that no row holds: deleted (the run
   downloads it again if upstream still offers it).

Only runs that died pay for it: one walk of web/simple/ and web/packages/ (an lstat per
entry), and a look-up in state.db for what changed. A run that dies while recovering
leaves recovered_through where it was, and the next one starts over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from simplemirror.store import layout
from simplemirror.store.backend import Storage
from simplemirror.store.state import State
from simplemirror.sync import reap
from simplemirror.sync.publish import Publisher

log = logging.getLogger("simplemirror")

# runs.started is in whole seconds: what the dead run wrote in its first second counts.
_MARGIN = 1.0


@dataclass
class Recovered:
    pages_removed: list[str]
    """Projects whose pages were deleted: state.db records none published."""
    pages_rewritten: int
    files_removed: int


def since_epoch(started: str) -> float:
    """runs.started (ISO 8601, UTC) as seconds since the epoch, with the margin taken."""
    return datetime.fromisoformat(started).timestamp() - _MARGIN


def recover(storage: Storage, state: State, publisher: Publisher, since: float) -> Recovered:
    """Reconcile what changed in ``storage`` since ``since`` with state.db (see above)."""
    removed: list[str] = []
    for name in list(storage.changed_dirs(layout.SIMPLE, since)):
        rel = layout.project_dir(name)
        if storage.remove_link(rel):
            log.warning("removed the symlink %s/%s: the tree holds none", storage.where, rel)
        elif not publisher.project_from_state(name):
            reap.remove_project_pages(storage, name)
            removed.append(name)
    # Always: the dead run may have recorded projects whose pages are in place but
    # that no root lists yet, and the next run skips the root when nothing moved.
    # The same bytes are not written again.
    serial = state.get_meta("root_serial")
    publisher.root(state.root_entries(), int(serial) if serial else None)
    files = 0
    for rel in storage.changed_files(layout.PACKAGES, since):
        if not _held(state, rel):
            storage.remove(rel, stop=layout.PACKAGES)
            files += 1
    return Recovered(removed, publisher.pages_written, files)


def _held(state: State, path: str) -> bool:
    """A row holds ``path``, or the distribution it is a sibling of (.metadata, ...)."""
    holds = state.reader().holds_path
    return holds(path) or any(
        path.endswith(suffix) and holds(path[: -len(suffix)])
        for suffix in reap.SIBLING_SUFFIXES
    )
