"""Planning: what a run must fetch, download and forget. Pure functions over data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from simplemirror.filter.select import Selection
from simplemirror.simple.model import (
    NO_REPLANNING,
    DistFile,
    HeldFile,
    HeldProject,
    ProjectPage,
    Replanning,
    RootChanges,
    RootIndex,
    Status,
)


@dataclass(frozen=True, slots=True)
class ProjectTodo:
    name: str
    """Normalized name."""
    display_name: str
    serial: int | None
    """The serial the upstream root promises; a page older than this is stale."""
    etag: str | None = None
    """Without serials: the ETag of the complete copy held, for a conditional request."""
    page_hash: str | None = None
    """Without serials: the sha256 of that copy's upstream page; the same body is no change."""


@dataclass(frozen=True)
class SyncPlan:
    fetch: tuple[ProjectTodo, ...]
    removed: tuple[str, ...]
    """Held projects upstream no longer lists."""
    unchanged: int
    pruned: tuple[str, ...] = ()
    """Held projects upstream lists and the filters leave out: removed like the others."""


def usable_serials(root: RootIndex) -> bool:
    """Whether the root's per-project serials say which projects changed.

    Missing ones do not, nor a constant one (some servers send a fake serial).
    """
    serials = {p.serial for p in root.projects}
    return None not in serials and (len(root.projects) < 2 or len(serials) > 1)


def _todo(
    name: str, display: str, serial: int | None, held: HeldProject | None, replan: bool = False
) -> ProjectTodo:
    # A first sync at PyPI's size holds ~650,000 of these while it runs: one string
    # where the display name is the normalized one saves ~40 MB there.
    if display == name:
        display = name
    if serial is None and held is not None and held.status is Status.OK and not replan:
        # Only a complete copy may be confirmed by "not modified"; one to be planned
        # again must be read whole, however upstream's page stands.
        return ProjectTodo(name, display, None, held.page_etag, held.page_hash)
    return ProjectTodo(name, display, serial)


def needs_fetch(
    serial: int | None, held: HeldProject | None, replanning: Replanning = NO_REPLANNING
) -> bool:
    """Whether a listed project must be looked at; State.root_changes asks the same in SQL."""
    if held is None or held.status is not Status.OK or replanning.due(held):
        return True
    # Without serials there is no cheap way to know, so look again. A serial
    # that went *down* means upstream was restored or replaced: look again too.
    return serial is None or held.serial is None or serial != held.serial


def plan_sync(
    root: RootIndex,
    held: Mapping[str, HeldProject],
    only: Collection[str] | None = None,
    *,
    wanted: Callable[[str], bool] | None = None,
    replanning: Replanning = NO_REPLANNING,
) -> SyncPlan:
    """Compare the upstream root with what the mirror holds, in memory.

    The reference that State.root_changes (the same comparison in SQL, which the run and
    --dry-run both plan with, through Sync._decide) must agree with: tests/test_state.py
    checks that they do. Kept pure and small for that; no run calls it.

    ``only`` (normalized names) limits the run to those projects; projects
    outside it are neither fetched nor counted as removed. ``wanted`` (the project
    filters) says which listed projects the mirror holds: the others are pruned.
    """
    listed = {project.normalized for project in root.projects}
    scope = [p for p in root.projects if only is None or p.normalized in only]
    chosen = [p for p in scope if wanted is None or wanted(p.normalized)]
    left_out = {p.normalized for p in scope} - {p.normalized for p in chosen}
    return plan_changes(
        RootChanges(
            changed=[
                (project, copy)
                for project in chosen
                if needs_fetch(project.serial, copy := held.get(project.normalized), replanning)
            ],
            unlisted=[
                name for name, h in held.items()
                if h.status is not Status.REMOVED and name not in listed
            ],
            listed=len(chosen),
            pruned=[
                name for name, h in held.items()
                if h.status is not Status.REMOVED and name in left_out
            ],
        ),
        only,
        root.held_back,
        replanning,
    )


def plan_changes(
    changes: RootChanges,
    only: Collection[str] | None = None,
    held_back: Iterable[str] = (),
    replanning: Replanning = NO_REPLANNING,
) -> SyncPlan:
    """The plan from a root's changes (from plan_sync, or from State.root_changes in SQL,
    which spares a large mirror holding every project in memory).

    ``held_back``: projects the root lists with an entry refused (RootIndex.held_back);
    not in the changes, and not removed either.
    """
    fetch = tuple(
        _todo(project.normalized, project.name, project.serial, copy,
              copy is not None and replanning.due(copy))
        for project, copy in changes.changed
        if only is None or project.normalized in only
    )
    kept = set(held_back)
    removed = tuple(sorted(
        n for n in changes.unlisted if (only is None or n in only) and n not in kept
    ))
    pruned = tuple(sorted(n for n in changes.pruned if only is None or n in only))
    return SyncPlan(fetch, removed, changes.listed - len(fetch), pruned)


def _behind(held: HeldProject) -> bool:
    """The root listed a newer serial than the last complete copy (a run died midway)."""
    if held.upstream_serial is None:
        return False
    return held.serial is None or held.serial < held.upstream_serial


def plan_retry(
    held: Mapping[str, tuple[str, HeldProject]],
    only: Collection[str] | None = None,
    *,
    serials: bool = True,
    replanning: Replanning = NO_REPLANNING,
) -> SyncPlan:
    """The plan when the root index is unchanged (HTTP 304): finish what is unfinished,
    and publish what the cooldown held back until now.

    ``held`` maps normalized name to (display name, state). Without ``serials`` an
    unchanged root says nothing about the pages, so every project is looked at again.
    """
    in_scope = {
        name: (display, h)
        for name, (display, h) in held.items()
        if h.status is not Status.REMOVED and (only is None or name in only)
    }
    fetch = [
        _todo(name, display, h.upstream_serial if serials else None, h, replanning.due(h))
        for name, (display, h) in sorted(in_scope.items())
        if not serials or h.status is not Status.OK or _behind(h) or replanning.due(h)
    ]
    return SyncPlan(tuple(fetch), (), len(in_scope) - len(fetch))


def refuse_foreign_hosts(
    files: Iterable[DistFile], refusal: Callable[[str], str | None]
) -> tuple[list[DistFile], list[tuple[str, str]]]:
    """Split files into those ``refusal`` allows and (filename, reason) for the rest.

    ``refusal`` is the file-host policy (filehosts.FileHostGuard.refusal).
    """
    allowed: list[DistFile] = []
    refused: list[tuple[str, str]] = []
    for dist in files:
        why = refusal(dist.url)
        if why is None:
            allowed.append(dist)
        else:
            refused.append((dist.filename, why))
    return allowed, refused


@dataclass(frozen=True)
class FileTodo:
    dist: DistFile
    held: HeldFile | None
    """The copy already held, when only the metadata file is missing."""
    fetch_file: bool
    fetch_metadata: bool
    fetch_signature: bool = False
    fetch_provenance: bool = False
    reuse: tuple[str, ...] = ()
    """Files of its name (and size) an operator already has (--reuse-from): tried
    before downloading it (sync/reuse.py)."""
    reuse_metadata: tuple[str, ...] = ()
    """The same for its ``.metadata``."""


@dataclass(frozen=True)
class FilePlan:
    keep: tuple[tuple[DistFile, HeldFile], ...]
    """Files held already: (upstream's current description, what is held)."""
    fetch: tuple[FileTodo, ...]
    gone: tuple[HeldFile, ...]
    """Held files the page no longer lists."""


def _metadata_missing(dist: DistFile, held: HeldFile) -> bool:
    if dist.core_metadata is False:
        return False
    if held.metadata_hashes is None:
        return True
    if isinstance(dist.core_metadata, Mapping):
        common = set(dist.core_metadata) & set(held.metadata_hashes)
        return any(dist.core_metadata[a] != held.metadata_hashes[a] for a in common)
    return False


def plan_files(
    files: Iterable[DistFile], held: Iterable[HeldFile], *, provenance: bool = False
) -> FilePlan:
    """Which of a page's files (and siblings) to download, which are held, which went away.

    ``provenance``: mirror PEP 740 provenance (only useful with a public URL to advertise).
    """
    held_by_name = {h.filename: h for h in held}
    keep: list[tuple[DistFile, HeldFile]] = []
    fetch: list[FileTodo] = []
    listed: set[str] = set()
    for dist in files:
        listed.add(dist.filename)
        copy = held_by_name.get(dist.filename)
        signature = bool(dist.gpg_sig)
        wants_provenance = provenance and dist.provenance is not None
        if copy is None or not copy.matches(dist):
            fetch.append(FileTodo(
                dist, None, True, dist.core_metadata is not False, signature, wants_provenance
            ))
            continue
        todo = FileTodo(
            dist,
            copy,
            False,
            _metadata_missing(dist, copy),
            signature and not copy.signature,
            wants_provenance and not copy.provenance,
        )
        if todo.fetch_metadata or todo.fetch_signature or todo.fetch_provenance:
            fetch.append(todo)
        else:
            keep.append((dist, copy))
    gone = tuple(h for name, h in held_by_name.items() if name not in listed)
    return FilePlan(tuple(keep), tuple(fetch), gone)


Choose = Callable[[ProjectPage, Mapping[str, HeldFile]], Selection]
"""What the filters keep of a page, given the files held (filter.select.select)."""


def plan_page(
    page: ProjectPage,
    held: Iterable[HeldFile],
    refusal: Callable[[str], str | None],
    *,
    provenance: bool,
    choose: Choose | None = None,
) -> tuple[FilePlan, list[tuple[str, str]], Selection]:
    """A fetched project page's file plan, the entries refused as (filename, reason), and
    what the filters made of the page (its ``page``: what the mirror's pages show).

    What a sync does with each page, and what --dry-run counts: one function, so the
    forecast cannot drift from the run.
    """
    # PEP 792: a quarantined project offers no files, whatever its page lists.
    if page.status == "quarantined":
        page = dataclasses.replace(page, files=())
    held = list(held)
    chosen = Selection(page) if choose is None else choose(page, {h.filename: h for h in held})
    listed, foreign = refuse_foreign_hosts(chosen.page.files, refusal)
    plan = plan_files(listed, held, provenance=provenance)
    return plan, [*page.rejected, *foreign, *chosen.refused], chosen


# Below these counts a removal is never "mass", whatever the share: deleting one
# project from a mirror of two is ordinary upstream life, not a glitch.
MASS_DELETE_FLOOR_PROJECTS = 1
MASS_DELETE_FLOOR_FILES = 10


def is_mass_removal(removing: int, held: int, share: float, floor: int) -> bool:
    """True when removing ``removing`` of ``held`` goes past ``share`` and past ``floor``."""
    return removing > floor and removing > share * held
