"""Unit tests for simplemirror.sync.plan: deciding what a run fetches, keeps and forgets."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest

from simplemirror.simple.model import DistFile, HeldFile, RootIndex, RootProject
from simplemirror.sync.plan import (
    FileTodo,
    HeldProject,
    ProjectTodo,
    Status,
    plan_files,
    plan_retry,
    plan_sync,
)

NOT_OK = [Status.PENDING, Status.DEFERRED, Status.FAILED, Status.REMOVED]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def root(*projects: tuple[str, int | None], serial: int | None = 100) -> RootIndex:
    """A root index; names are given as upstream spells them and normalized here by hand."""
    return RootIndex(
        tuple(RootProject(name, name.lower().replace("_", "-"), s) for name, s in projects),
        serial,
    )


def ok(serial: int | None) -> HeldProject:
    """A project mirrored completely at ``serial``, which the root also listed last time."""
    return HeldProject(serial, serial, Status.OK)


def fetched(plan_fetch: tuple[ProjectTodo, ...]) -> list[str]:
    return [t.name for t in plan_fetch]


# -- plan_sync -----------------------------------------------------------------------------


def test_new_project_is_fetched_with_display_name_and_root_serial() -> None:
    plan = plan_sync(root(("Foo_Bar", 7)), {})
    assert plan.fetch == (ProjectTodo("foo-bar", "Foo_Bar", 7),)
    assert plan.removed == ()
    assert plan.unchanged == 0


def test_grown_serial_is_fetched() -> None:
    plan = plan_sync(root(("foo", 8)), {"foo": ok(7)})
    assert plan.fetch == (ProjectTodo("foo", "foo", 8),)
    assert plan.unchanged == 0


def test_equal_serial_is_unchanged() -> None:
    plan = plan_sync(root(("foo", 7)), {"foo": ok(7)})
    assert plan.fetch == ()
    assert plan.removed == ()
    assert plan.unchanged == 1


def test_lower_serial_is_fetched_again() -> None:
    # Upstream restored from a backup or replaced: the copy may be wrong.
    plan = plan_sync(root(("foo", 5)), {"foo": ok(7)})
    assert plan.fetch == (ProjectTodo("foo", "foo", 5),)
    assert plan.unchanged == 0


def test_unknown_upstream_serial_is_always_fetched() -> None:
    plan = plan_sync(root(("foo", None)), {"foo": ok(7)})
    assert plan.fetch == (ProjectTodo("foo", "foo", None),)


def test_unknown_held_serial_is_always_fetched() -> None:
    plan = plan_sync(root(("foo", 7)), {"foo": HeldProject(None, 7, Status.OK)})
    assert fetched(plan.fetch) == ["foo"]


def test_both_serials_unknown_is_fetched() -> None:
    plan = plan_sync(root(("foo", None)), {"foo": HeldProject(None, None, Status.OK)})
    assert fetched(plan.fetch) == ["foo"]


@pytest.mark.parametrize("status", NOT_OK)
def test_non_ok_status_is_fetched_even_with_equal_serial(status: Status) -> None:
    plan = plan_sync(root(("foo", 7)), {"foo": HeldProject(7, 7, status)})
    assert plan.fetch == (ProjectTodo("foo", "foo", 7),)
    assert plan.unchanged == 0
    assert plan.removed == ()


def test_unlisted_held_project_is_removed() -> None:
    held = {"foo": ok(1), "gone": ok(2), "also-gone": HeldProject(3, 3, Status.FAILED)}
    plan = plan_sync(root(("foo", 1)), held)
    assert plan.removed == ("also-gone", "gone")
    assert plan.fetch == ()
    assert plan.unchanged == 1


def test_a_project_listed_with_a_refused_entry_is_neither_fetched_nor_removed() -> None:
    index = RootIndex(
        (RootProject("foo", "foo", 1),), 100, (("Held_Back", "serial too large"),),
        held_back=("held-back",),
    )
    plan = plan_sync(index, {"foo": ok(1), "held-back": ok(2), "gone": ok(3)})
    assert plan.removed == ("gone",) and plan.fetch == ()


def test_already_removed_project_is_not_removed_again() -> None:
    plan = plan_sync(root(("foo", 1)), {"foo": ok(1), "gone": HeldProject(2, 2, Status.REMOVED)})
    assert plan.removed == ()


def test_removed_project_listed_again_is_fetched() -> None:
    plan = plan_sync(root(("back", 9)), {"back": HeldProject(9, 9, Status.REMOVED)})
    assert fetched(plan.fetch) == ["back"]
    assert plan.removed == ()


def test_mixed_root() -> None:
    held = {
        "same": ok(10),
        "grown": ok(10),
        "failed": HeldProject(10, 10, Status.FAILED),
        "gone": ok(4),
    }
    plan = plan_sync(
        root(("same", 10), ("grown", 11), ("failed", 10), ("New", 1), ("nos", None)), held
    )
    assert plan.fetch == (
        ProjectTodo("grown", "grown", 11),
        ProjectTodo("failed", "failed", 10),
        ProjectTodo("new", "New", 1),
        ProjectTodo("nos", "nos", None),
    )
    assert plan.removed == ("gone",)
    assert plan.unchanged == 1


def test_only_limits_fetch() -> None:
    plan = plan_sync(root(("a", 1), ("b", 1), ("c", 1)), {}, only={"b"})
    assert fetched(plan.fetch) == ["b"]
    assert plan.unchanged == 0


def test_only_limits_unchanged_count() -> None:
    held = {"a": ok(1), "b": ok(1), "c": ok(1)}
    plan = plan_sync(root(("a", 1), ("b", 1), ("c", 1)), held, only={"a"})
    assert plan.fetch == ()
    assert plan.unchanged == 1


def test_only_limits_removal() -> None:
    held = {"x": ok(1), "y": ok(1)}
    plan = plan_sync(root(("keep", 1)), held, only={"x", "keep"})
    assert plan.removed == ("x",)
    assert fetched(plan.fetch) == ["keep"]


def test_only_naming_an_unlisted_unheld_project_does_nothing() -> None:
    plan = plan_sync(root(("a", 1)), {"a": ok(1)}, only={"nowhere"})
    assert plan.fetch == ()
    assert plan.removed == ()
    assert plan.unchanged == 0


def test_project_outside_only_is_not_removed_even_when_listed_elsewhere() -> None:
    # "a" is listed upstream but outside ``only``: it is neither fetched nor removed.
    plan = plan_sync(root(("a", 2), ("b", 1)), {"a": ok(1)}, only={"b"})
    assert fetched(plan.fetch) == ["b"]
    assert plan.removed == ()


def test_empty_only_fetches_nothing() -> None:
    plan = plan_sync(root(("a", 1)), {"b": ok(1)}, only=set())
    assert plan.fetch == ()
    assert plan.removed == ()


# -- plan_retry ----------------------------------------------------------------------------


def test_retry_ok_and_current_is_not_fetched() -> None:
    plan = plan_retry({"foo": ("Foo", HeldProject(3, 3, Status.OK))})
    assert plan.fetch == ()
    assert plan.removed == ()
    assert plan.unchanged == 1


@pytest.mark.parametrize("status", [Status.PENDING, Status.DEFERRED, Status.FAILED])
def test_retry_unfinished_status_is_fetched(status: Status) -> None:
    plan = plan_retry({"foo": ("Foo", HeldProject(3, 3, status))})
    assert plan.fetch == (ProjectTodo("foo", "Foo", 3),)
    assert plan.unchanged == 0


def test_retry_ok_but_behind_upstream_serial_is_fetched_with_upstream_serial() -> None:
    plan = plan_retry({"foo": ("Foo", HeldProject(3, 5, Status.OK))})
    assert plan.fetch == (ProjectTodo("foo", "Foo", 5),)


def test_retry_ok_with_unknown_serial_against_known_upstream_is_fetched() -> None:
    plan = plan_retry({"foo": ("foo", HeldProject(None, 5, Status.OK))})
    assert fetched(plan.fetch) == ["foo"]


def test_retry_ok_with_both_serials_unknown_is_not_fetched() -> None:
    plan = plan_retry({"foo": ("foo", HeldProject(None, None, Status.OK))})
    assert plan.fetch == ()


def test_retry_removed_is_excluded() -> None:
    plan = plan_retry({"gone": ("gone", HeldProject(1, 2, Status.REMOVED))})
    assert plan.fetch == ()
    assert plan.removed == ()


def test_retry_fetch_sorted_by_name() -> None:
    held = {
        "zeta": ("Zeta", HeldProject(1, 1, Status.FAILED)),
        "alpha": ("Alpha", HeldProject(1, 1, Status.PENDING)),
        "mid": ("Mid", HeldProject(1, 1, Status.OK)),
    }
    plan = plan_retry(held)
    assert plan.fetch == (ProjectTodo("alpha", "Alpha", 1), ProjectTodo("zeta", "Zeta", 1))
    assert plan.unchanged == 1


def test_retry_filter() -> None:
    held = {
        "a": ("a", HeldProject(1, 1, Status.FAILED)),
        "b": ("b", HeldProject(1, 2, Status.OK)),
        "c": ("c", HeldProject(1, 1, Status.PENDING)),
    }
    plan = plan_retry(held, only={"b", "c"})
    assert fetched(plan.fetch) == ["b", "c"]


def test_retry_unchanged_counts_only_projects_in_scope() -> None:
    # As in plan_sync, "unchanged" counts the projects this run looked at and left
    # alone: not those outside ``only``, nor those already removed upstream.
    held = {
        "a": ("a", HeldProject(1, 1, Status.OK)),
        "b": ("b", HeldProject(1, 1, Status.FAILED)),
        "c": ("c", HeldProject(1, 1, Status.OK)),
        "gone": ("gone", HeldProject(1, 1, Status.REMOVED)),
    }
    plan = plan_retry(held, only={"a", "b"})
    assert fetched(plan.fetch) == ["b"]
    assert plan.unchanged == 1
    assert plan_retry(held).unchanged == 2


# -- plan_files ----------------------------------------------------------------------------

SHA_A = sha256(b"a")
SHA_B = sha256(b"b")
META_A = sha256(b"metadata a")
META_B = sha256(b"metadata b")


def dist(
    filename: str = "foo-1.0.tar.gz",
    sha: str = SHA_A,
    core_metadata: bool | Mapping[str, str] = False,
) -> DistFile:
    return DistFile(
        filename=filename,
        url=f"https://files.example/{filename}",
        hashes={"sha256": sha},
        core_metadata=core_metadata,
    )


def held(
    filename: str = "foo-1.0.tar.gz",
    sha: str = SHA_A,
    metadata_hashes: Mapping[str, str] | None = None,
) -> HeldFile:
    return HeldFile(
        project="foo",
        filename=filename,
        path=f"packages/{sha[:2]}/{sha[2:4]}/{sha[4:]}/{filename}",
        size=1,
        hashes={"sha256": sha},
        url=f"https://files.example/{filename}",
        metadata_hashes=metadata_hashes,
    )


def test_new_file_without_metadata_is_fetched() -> None:
    d = dist()
    plan = plan_files([d], [])
    assert plan.fetch == (FileTodo(d, None, fetch_file=True, fetch_metadata=False),)
    assert plan.keep == ()
    assert plan.gone == ()


@pytest.mark.parametrize("core_metadata", [True, {"sha256": META_A}])
def test_new_file_with_metadata_fetches_both(core_metadata: bool | dict[str, str]) -> None:
    d = dist(core_metadata=core_metadata)
    plan = plan_files([d], [])
    assert plan.fetch == (FileTodo(d, None, fetch_file=True, fetch_metadata=True),)


def test_held_matching_file_is_kept() -> None:
    d, h = dist(), held()
    plan = plan_files([d], [h])
    assert plan.keep == ((d, h),)
    assert plan.fetch == ()
    assert plan.gone == ()


def test_held_file_with_different_hash_is_fetched_again() -> None:
    d, h = dist(sha=SHA_B, core_metadata={"sha256": META_A}), held(sha=SHA_A)
    plan = plan_files([d], [h])
    assert plan.fetch == (FileTodo(d, None, fetch_file=True, fetch_metadata=True),)
    assert plan.keep == ()
    # Same filename, so the old copy is replaced rather than "gone".
    assert plan.gone == ()


def test_metadata_missing_fetches_metadata_only_with_held_copy() -> None:
    d, h = dist(core_metadata={"sha256": META_A}), held(metadata_hashes=None)
    plan = plan_files([d], [h])
    assert plan.fetch == (FileTodo(d, h, fetch_file=False, fetch_metadata=True),)
    assert plan.keep == ()


def test_metadata_announced_without_hash_and_missing_is_fetched() -> None:
    d, h = dist(core_metadata=True), held(metadata_hashes=None)
    plan = plan_files([d], [h])
    assert plan.fetch == (FileTodo(d, h, fetch_file=False, fetch_metadata=True),)


def test_metadata_held_and_unchanged_is_kept() -> None:
    d, h = dist(core_metadata={"sha256": META_A}), held(metadata_hashes={"sha256": META_A})
    plan = plan_files([d], [h])
    assert plan.keep == ((d, h),)
    assert plan.fetch == ()


def test_metadata_held_and_announced_without_hash_is_kept() -> None:
    d, h = dist(core_metadata=True), held(metadata_hashes={"sha256": META_A})
    assert plan_files([d], [h]).keep == ((d, h),)


def test_metadata_hash_changed_refetches_metadata_only() -> None:
    d, h = dist(core_metadata={"sha256": META_B}), held(metadata_hashes={"sha256": META_A})
    plan = plan_files([d], [h])
    assert plan.fetch == (FileTodo(d, h, fetch_file=False, fetch_metadata=True),)
    assert plan.keep == ()


def test_metadata_hash_in_other_algorithm_only_is_not_a_change() -> None:
    d = dist(core_metadata={"md5": "0" * 32})
    h = held(metadata_hashes={"sha256": META_A})
    assert plan_files([d], [h]).keep == ((d, h),)


def test_metadata_no_longer_announced_keeps_file() -> None:
    d, h = dist(core_metadata=False), held(metadata_hashes={"sha256": META_A})
    plan = plan_files([d], [h])
    assert plan.keep == ((d, h),)
    assert plan.fetch == ()


def test_gone_files() -> None:
    kept = held("foo-1.0.tar.gz")
    gone1 = held("foo-0.9.tar.gz", sha=SHA_B)
    gone2 = held("foo-0.8.zip", sha=SHA_B)
    plan = plan_files([dist("foo-1.0.tar.gz")], [gone1, kept, gone2])
    assert [d.filename for d, _ in plan.keep] == ["foo-1.0.tar.gz"]
    assert sorted(h.filename for h in plan.gone) == ["foo-0.8.zip", "foo-0.9.tar.gz"]
    assert plan.fetch == ()


def test_all_files_gone_when_page_is_empty() -> None:
    h = held()
    plan = plan_files([], [h])
    assert plan.gone == (h,)
    assert plan.keep == () and plan.fetch == ()


def test_same_bytes_under_a_new_filename_is_fetched_and_old_name_gone() -> None:
    old = held("foo-1.0.tar.gz", sha=SHA_A)
    new = dist("foo-1.0.zip", sha=SHA_A)
    plan = plan_files([new], [old])
    assert plan.fetch == (FileTodo(new, None, fetch_file=True, fetch_metadata=False),)
    assert plan.gone == (old,)


def test_mixed_page_keeps_upstream_order_in_fetch() -> None:
    d1 = dist("foo-3.0.tar.gz", sha=SHA_B)
    d2 = dist("foo-2.0.tar.gz", sha=SHA_A)
    d3 = dist("foo-1.0.tar.gz", sha=SHA_B)
    h2 = held("foo-2.0.tar.gz", sha=SHA_A)
    h3 = held("foo-1.0.tar.gz", sha=SHA_A)
    plan = plan_files([d1, d2, d3], [h3, h2])
    assert [t.dist.filename for t in plan.fetch] == ["foo-3.0.tar.gz", "foo-1.0.tar.gz"]
    assert all(t.fetch_file and t.held is None for t in plan.fetch)
    assert plan.keep == ((d2, h2),)
    assert plan.gone == ()


