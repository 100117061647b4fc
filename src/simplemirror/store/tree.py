"""The mirror's storage: the only code that writes under ``web/`` and ``tmp/``.

Everything else names published bytes by their path below ``web/`` (``layout``'s
paths) and asks here: stage a body in ``tmp/`` and install it (``create``,
``write_all``, ``install``, ``discard``), write a page whole (``write_page``,
``write_streams``), remove a file with its siblings or a project's pages
(``remove``), clear what a dead run left in ``tmp/`` (``clear_leftovers``), and
read back (``open_file``, ``walk_files``, ``list_dirs``, ``sha256_of``). This is
the seam where another backend (object storage) would plug in.

Atomicity. Every published path appears by one rename from ``tmp/``, so a reader
sees the old bytes or the new ones, never part of either. ``tmp/`` must be on the
same filesystem as ``web/`` (``check_same_filesystem``): it may be a symlink to a
directory there, never to another disk, where a rename is a copy.

Symlinks. Nothing is written, removed or read through a symlink below ``web/``:
each directory on the way is checked to be a real directory (``lstat``; the ones
above a file's own directory are remembered for the run), and a symlink found
there is an error (``UnsafePath``) rather than a way out of the tree. A symlink
at a published path itself is replaced by the rename, never followed. In ``tmp/``
only the mirror's own temporary files (its name prefixes) are ever deleted. This
guards against a tree set up wrongly or tampered with between runs; a user who
can swap directories while a run holds the lock already owns the tree.

fsync policy. Published files and pages are not fsynced one by one (an fsync per
file and page costs a disk flush each). ``flush`` (one ``syncfs`` of the tree's
filesystem) runs before each state.db commit that records them: the sync's batch
commits (every COMMIT_EVERY s), the root's transaction (publish.publish) and a
recovery's. So a row never survives a power cut that its bytes did not; what was
written but not yet recorded is found again after an unclean end (recover.py).
state.db itself is in WAL mode with synchronous=NORMAL: a power cut may lose its
last commits, never its consistency. Files outside the tree that other programs
read (the run report, the metrics textfile) are written with ``write_durable``:
fsync of the file, rename, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import io
import itertools
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DOWNLOAD_PREFIX = "dl-"
PAGE_PREFIX = "page-"
LISTING_PREFIX = "listing-"
"""A bucket's listing put in order (s3.S3Storage.walk_sorted), a SQLite file."""
REUSE_INDEX = "reuse-{pid}.db"
"""The run's index of files an operator already has (state.ReuseIndex), in tmp/."""
# What create names its files, and the reuse index: clear_leftovers deletes these and
# nothing else.
_OWN_NAME = re.compile(r"(?:dl|page|listing)-\d+-\d+|reuse-\d+\.db(?:-journal)?")
PUBLISHED_MODE = 0o644
"""The tree is served by another user (nginx, say)."""

_serial = itertools.count()
_pid = os.getpid()
# Directories below web/ found to be real directories, not symlinks (see _real_dirs).
_checked: set[str] = set()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class UnsafePath(OSError):
    """A symlink (or a file) stands where the tree needs a directory of its own."""


# -- staging and installing ---------------------------------------------------------------


def create(tmp: Path, prefix: str, mode: int = PUBLISHED_MODE) -> tuple[int, str]:
    """A new, empty file in ``tmp`` opened for writing: (descriptor, path).

    tempfile.mkstemp draws random names through several layers of Python; a
    counter is enough here, since tmp/ belongs to the run that holds the lock
    (O_EXCL still refuses a name that exists). The mode is set whatever the
    umask: the published tree is read by another user (the web server).
    """
    while True:
        name = f"{tmp}/{prefix}{_pid}-{next(_serial)}"
        try:
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode
            )
        except FileExistsError:
            continue
        break
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        discard(name)
        raise
    return fd, name


def adopt(tmp: Path, source: str) -> tuple[str, str] | None:
    """Stage ``source``, a file an operator already has, without copying its bytes:
    (name in ``tmp``, "link" or "reflink"), or None when neither can be made (copy it
    then: ``create``, ``write_all``).

    A hard link when ``source`` is on tmp's filesystem and readable by all: it is then
    published as it is, shared with the other tree (which must not rewrite it in
    place; a tool that replaces files by renaming, as mirrors do, never does). Else a
    copy-on-write clone (FICLONE), where the filesystem makes them (XFS, Btrfs): our
    own inode, with our mode. The caller verifies the staged bytes before installing.
    """
    try:
        info = os.lstat(source)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None  # a symlink is never taken: it would be published as one
    # Linked, it is published with its own mode: readable by all, and writable by none
    # but its owner, or the bytes verified could be rewritten under the published name.
    if (info.st_dev == os.stat(tmp).st_dev and info.st_mode & 0o444 == 0o444
            and not info.st_mode & 0o022):
        while True:
            name = f"{tmp}/{DOWNLOAD_PREFIX}{_pid}-{next(_serial)}"
            try:
                os.link(source, name, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:
                break  # linking not allowed here (protected_hardlinks, a quota...)
            if stat.S_ISREG(os.lstat(name).st_mode):
                return name, "link"
            discard(name)  # swapped for a symlink since it was looked at
            return None
    fd, name = create(tmp, DOWNLOAD_PREFIX)
    try:
        with open(source, "rb") as src:
            fcntl.ioctl(fd, _FICLONE, src.fileno())
    except OSError:
        os.close(fd)
        discard(name)
        return None
    os.close(fd)
    return name, "reflink"


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until all of ``data`` is written (a write may take only part)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def discard(name: str) -> None:
    """A staged file that will not be installed: gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def install(
    name: str, web: Path | str, rel: str, *, new_dir: bool = False, dir_checked: bool = False
) -> None:
    """Rename the finished temporary file ``name`` to ``rel`` below ``web``.

    Its directories are made as needed, and none of them may be a symlink.
    ``new_dir``: the file's directory is most likely not there yet (a
    content-addressed file's own), so make it first rather than after a failed
    rename. ``dir_checked``: the caller just made or checked it (make_dir). Plain
    ``os`` calls: at one or two per file, pathlib's objects cost more than the
    system calls. On failure the temporary file is removed.
    """
    web = str(web)
    parent = os.path.dirname(rel)
    try:
        if new_dir:
            make_dir(web, parent)
        elif parent and not dir_checked:
            try:
                _real_dirs(web, parent, make=False)
            except FileNotFoundError:
                if not os.path.exists(name):
                    raise  # nothing to install: no directories made for it
                _real_dirs(web, parent, make=True)
        os.replace(name, f"{web}/{rel}")
    except BaseException:
        discard(name)
        raise


def make_dir(web: Path | str, rel_dir: str) -> bool:
    """Make the directory ``rel_dir`` below ``web`` (and its parents); whether it is new.

    One that is there already must be a real directory, as must its parents.
    """
    web = str(web)
    head = os.path.dirname(rel_dir)
    if head:
        _real_dirs(web, head, make=True, remember=True)
    path = f"{web}/{rel_dir}"
    try:
        os.mkdir(path)
    except FileExistsError:
        _real_dirs(web, rel_dir, make=False)
        return False
    return True


def _real_dirs(web: str, rel_dir: str, *, make: bool, remember: bool = False) -> None:
    """Each directory from ``web`` down to ``rel_dir`` is a real one (made, with ``make``).

    Those above ``rel_dir`` (and ``rel_dir`` too, with ``remember``) are remembered for
    the rest of the process: a few hundred thousand at most (web/packages/<xx>/<yy>),
    where the leaves (one per file or project) would be millions.
    """
    path = web
    parts = rel_dir.split("/")
    last = len(parts) - 1
    for i, part in enumerate(parts):
        path = f"{path}/{part}"
        keep = remember or i < last
        if keep and path in _checked:
            continue
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not make:
                raise
            if i == 0:
                os.makedirs(web, exist_ok=True)  # web/ itself may be missing (or a symlink)
            try:
                os.mkdir(path)
            except FileExistsError:  # made meanwhile (another process of this run)
                mode = os.lstat(path).st_mode
            else:
                mode = stat.S_IFDIR
        if not stat.S_ISDIR(mode):
            what = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
            raise UnsafePath(
                f"{path} is {what}; simplemirror writes and deletes only inside its own "
                "tree: move it away (or replace it with a real directory), then run again"
            )
        if keep:
            _checked.add(path)


def forget_dirs() -> None:
    """Forget the directories checked so far (a test that swaps them, or a new tree)."""
    _checked.clear()


# -- pages ------------------------------------------------------------------------------


def write_file(web: Path | str, tmp: Path, rel: str, data: bytes, *, dir_checked: bool = False
               ) -> str:
    """Replace ``rel`` with ``data`` whole; the sha256 of ``data``.

    Not through write_streams: a first sync writes two small pages a project, and
    streaming machinery for one piece costs more than its system calls.
    """
    fd, name = create(tmp, PAGE_PREFIX)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        discard(name)
        raise
    install(name, web, rel, dir_checked=dir_checked)
    return hashlib.sha256(data).hexdigest()


def stage_streams(tmp: Path, streams: Sequence[Iterable[bytes]]) -> list[tuple[str, str]]:
    """Write each stream of chunks to a new file in ``tmp``, a chunk of each in turn.

    In turn, so that streams rendered from one shared pass over their data (the
    root pages) never run far apart. Their names and sha256s, in order; on any
    failure, none of the files is left.
    """
    files: list[tuple[int, str]] = []
    try:
        for _ in streams:
            files.append(create(tmp, PAGE_PREFIX))
        digests = [hashlib.sha256() for _ in streams]
        active = [(iter(chunks), fd, digest)
                  for chunks, (fd, _), digest in zip(streams, files, digests, strict=True)]
        while active:
            for entry in list(active):
                chunks, fd, digest = entry
                chunk = next(chunks, None)
                if chunk is None:
                    active.remove(entry)
                    continue
                digest.update(chunk)
                write_all(fd, chunk)
    except BaseException:
        for _, name in files:
            discard(name)
        raise
    finally:
        for fd, _ in files:
            os.close(fd)
    return [(name, digest.hexdigest()) for (_, name), digest in zip(files, digests, strict=True)]


def same_bytes(web: Path | str, rel: str, data: bytes) -> bool:
    """Whether ``rel`` holds exactly ``data`` (False when there is none, or a symlink)."""
    try:
        fd = os.open(f"{web}/{rel}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # ELOOP: a symlink, which the rename replaces
        return False
    try:
        held = b""
        # One byte more than data: a longer file differs.
        while len(held) <= len(data) and (more := os.read(fd, len(data) + 1 - len(held))):
            held += more
        return held == data
    finally:
        os.close(fd)


def sha256_of(web: Path | str, rel: str) -> str | None:
    """The sha256 of the file at ``rel`` (None when there is none, or a symlink)."""
    try:
        with open_file(web, rel) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, UnsafePath):
        return None


# -- reading back ------------------------------------------------------------------------


def open_file(web: Path | str, rel: str, buffering: int = -1) -> io.FileIO | io.BufferedReader:
    """The file ``rel`` below ``web``, for reading; never through a symlink."""
    web = str(web)
    parent = os.path.dirname(rel)
    if parent:
        _real_dirs(web, parent, make=False)
    try:
        fd = os.open(f"{web}/{rel}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(f"{web}/{rel}"):
            raise UnsafePath(f"{web}/{rel} is a symlink; the tree holds none") from exc
        raise
    raw = io.FileIO(fd, "rb")
    return raw if buffering == 0 else io.BufferedReader(raw)


def is_file(web: Path | str, rel: str) -> bool:
    """Whether ``rel`` is a regular file (not a symlink) below real directories."""
    try:
        with open_file(web, rel):
            return True
    except OSError:
        return False


def walk_files(web: Path | str, rel_dir: str) -> Iterator[str]:
    """Every non-directory below ``rel_dir``, as paths below ``web``; symlinks not followed."""
    web = str(web)

    def walk(rel: str) -> Iterator[str]:
        try:
            entries = os.scandir(f"{web}/{rel}")
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(f"{rel}/{entry.name}")
                else:
                    yield f"{rel}/{entry.name}"

    if os.path.islink(f"{web}/{rel_dir}"):
        return iter(())
    return walk(rel_dir)


def stat_file(web: Path | str, rel: str) -> os.stat_result | None:
    """``rel``'s own status (a symlink's, never its target's): None when there is none.
    A directory on the way that is a symlink is an error (UnsafePath)."""
    parent = os.path.dirname(rel)
    try:
        if parent:
            _real_dirs(str(web), parent, make=False)
        return os.lstat(f"{web}/{rel}")
    except (FileNotFoundError, NotADirectoryError):
        return None


def changed_since(web: Path | str, rel: str, since: float) -> bool:
    """Whether ``rel`` (a symlink: itself) was modified at or after ``since`` (epoch s)."""
    try:
        return os.lstat(f"{web}/{rel}").st_mtime >= since
    except FileNotFoundError:
        return False


def list_dirs(web: Path | str, rel_dir: str) -> list[str]:
    """The names of the entries of ``rel_dir`` that are directories or symlinks, sorted."""
    try:
        with os.scandir(f"{web}/{rel_dir}") as entries:
            return sorted(e.name for e in entries if e.is_dir() or e.is_symlink())
    except FileNotFoundError:
        return []


# -- removing ----------------------------------------------------------------------------


def remove(web: Path | str, rel: str, suffixes: Iterable[str] = ("",), *, stop: str = "") -> None:
    """Delete ``rel`` + each of ``suffixes``, then its directories up to ``stop`` while empty.

    A directory on the way that is a symlink is not followed (UnsafePath); one that is
    missing means there is nothing to delete.
    """
    web = str(web)
    parent = os.path.dirname(rel)
    if parent:
        try:
            _real_dirs(web, parent, make=False)
        except (FileNotFoundError, NotADirectoryError):
            return
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{web}/{rel}{suffix}")
    remove_empty_dirs(web, parent, stop)


def remove_link(web: Path | str, rel: str) -> bool:
    """Delete ``rel`` if it is a symlink (never what it points at); whether it was one."""
    web = str(web)
    parent = os.path.dirname(rel)
    try:
        if parent:
            _real_dirs(web, parent, make=False)
        if not stat.S_ISLNK(os.lstat(f"{web}/{rel}").st_mode):
            return False
        os.unlink(f"{web}/{rel}")
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def remove_empty_dirs(web: Path | str, rel_dir: str, stop: str = "") -> None:
    """Remove ``rel_dir`` and its parents, up to ``stop`` (kept), while they are empty."""
    while rel_dir and rel_dir != stop and (not stop or rel_dir.startswith(stop + "/")):
        path = f"{web}/{rel_dir}"
        try:
            os.rmdir(path)
        except OSError:
            return  # not empty (or already gone): nothing above it is empty either
        _checked.discard(path)
        rel_dir = os.path.dirname(rel_dir)


# -- tmp/ --------------------------------------------------------------------------------


def clear_leftovers(tmp: Path) -> list[str]:
    """Delete from ``tmp`` the temporary files a run that died left there; their names.

    Only the mirror's own (create's names): tmp/ may be shared with, or be a symlink
    to, a directory other programs use. A symlink is removed, never followed.
    """
    removed = []
    with os.scandir(tmp) as entries:
        for entry in entries:
            if _OWN_NAME.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def make_area(tmp: Path, name: str) -> Path:
    """The directory ``name`` in ``tmp`` (made if missing), for work that outlives a run
    (an import's staging); a symlink there is an error (UnsafePath)."""
    make_dir(tmp, name)
    return tmp / name


def remove_area(tmp: Path, name: str) -> None:
    """Delete the directory ``name`` in ``tmp`` and all it holds; symlinks in it are
    removed, never followed."""
    if stat_file(tmp, name) is None:
        return
    _real_dirs(str(tmp), name, make=False)
    shutil.rmtree(tmp / name)
    prefix = f"{tmp}/{name}"
    _checked.difference_update({p for p in _checked if p == prefix or p.startswith(prefix + "/")})


def check_same_filesystem(tmp: Path, web: Path) -> None:
    """Refuse a ``tmp`` on another filesystem than ``web``: a rename there is no rename."""
    if os.stat(tmp).st_dev != os.stat(web).st_dev:
        raise UnsafePath(
            f"{tmp} is on another filesystem than {web}; files are renamed from one into "
            "the other, which is atomic only on one filesystem: make tmp/ a directory (or "
            "a symlink to one) on the filesystem that holds web/"
        )


# -- durability ---------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def flush(web: Path | str) -> None:
    """Make what was written below ``web`` durable: one syncfs of its filesystem.

    Called before state.db records what was written (see the fsync policy above).
    """
    if _syncfs is None:  # not Linux: sync every filesystem
        os.sync()
        return
    fd = os.open(web, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {web}: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_durable(target: Path, data: bytes, mode: int = PUBLISHED_MODE) -> None:
    """Replace ``target`` (outside the tree) with ``data`` whole: temp file beside it,
    fsync, rename, fsync of the directory.

    The temp file is in the target's own directory so that the rename never crosses a
    filesystem (node_exporter's collector directory is usually not the mirror's).
    """
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, target)
    except BaseException:
        discard(name)
        raise
    sync_directory(target.parent)


def sync_directory(path: Path) -> None:
    """fsync ``path``, a directory: a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
