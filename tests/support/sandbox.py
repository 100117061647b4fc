"""Run a command under the seccomp rules a systemd unit would give it, without systemd.

systemd (252) implements SystemCallFilter=, RestrictAddressFamilies= and
MemoryDenyWriteExecute= as seccomp filters, which any process may install on itself
after NoNewPrivileges. This module builds the same rules with libseccomp, so a test can
check that the mirror still works inside them: a Python that needed a denied system call,
a socket family we do not allow, or memory both writable and executable would fail here
as it would under the unit.

Run as ``python -m tests.support.sandbox SPEC.json -- COMMAND...``: SPEC holds the
allowed system call names, the allowed address families and the errno for the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterable

PR_SET_NO_NEW_PRIVS = 38
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: each @group and its members (names or @groups)."""
    out = subprocess.run(
        [analyze, "syscall-filter"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: Iterable[str], groups: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            if name not in groups:
                raise ValueError(f"unknown system call group {name}")
            result |= expand(groups[name], groups)
        else:
            result.add(name)
    return result


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The system calls SystemCallFilter= lines allow, read the way systemd reads them.

    The first line sets the kind of list: an allow-list (to which systemd adds @default)
    or, with a leading ``~``, a deny-list; later lines add to or take from it.
    """
    allow: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names = expand(line.lstrip("~").split(), groups)
        if not allow and not deny:
            allow = expand(["@default"], groups)
        if deny:
            allow -= names
        else:
            allow |= names
    return allow


class _Arg(ctypes.Structure):
    # The layout of libseccomp's struct scmp_arg_cmp.
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _install(spec: dict[str, object]) -> None:
    path = ctypes.util.find_library("seccomp")
    if path is None:
        raise SystemExit("libseccomp is not installed")
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Arg)
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    deny = 0x00050000 | int(str(spec["errno"]))  # SCMP_ACT_ERRNO(errno)
    ctx = lib.seccomp_init(deny)

    def rule(name: str, *args: tuple[int, int, int, int]) -> None:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # a call this architecture does not have (e.g. the *_time64 ones)
        array = (_Arg * max(len(args), 1))(*(_Arg(*a) for a in args))
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, len(args), array) != 0:
            raise SystemExit(f"seccomp: cannot add a rule for {name}")

    calls = set(spec["syscalls"])  # type: ignore[call-overload]
    # RestrictAddressFamilies=: socket() only for the listed families.
    if "socket" in calls:
        calls.discard("socket")
        for family in spec["families"]:  # type: ignore[attr-defined]
            rule("socket", (0, SCMP_CMP_EQ, getattr(socket, family), 0))
    # MemoryDenyWriteExecute=: no mapping both writable and executable, and nothing
    # made executable afterwards.
    if spec.get("deny_write_execute"):
        wx = PROT_WRITE | PROT_EXEC
        for name in ("mmap", "mmap2"):
            if name in calls:
                calls.discard(name)
                for prot in (0, PROT_WRITE, PROT_EXEC):
                    rule(name, (2, SCMP_CMP_MASKED_EQ, wx, prot))
        for name in ("mprotect", "pkey_mprotect"):
            if name in calls:
                calls.discard(name)
                rule(name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
        if "shmat" in calls:
            calls.discard("shmat")
            rule("shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0))
    for name in sorted(calls):
        rule(name)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("seccomp_load failed")


def errno_number(name: str) -> int:
    if not re.fullmatch(r"E[A-Z0-9]+", name) or not hasattr(errno, name):
        raise ValueError(f"not an errno name: {name}")
    return int(getattr(errno, name))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m tests.support.sandbox SPEC.json -- COMMAND...")
    with open(argv[0]) as fh:
        spec = json.load(fh)
    os.umask(int(spec.get("umask", "0022"), 8))
    _install(spec)
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
