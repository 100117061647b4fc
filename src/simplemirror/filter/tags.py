"""Platform tags and target environments: which wheels an environment can install.

The operator names platforms as wheel tags name them (``manylinux_2_28_x86_64``,
``macosx_11_0_arm64``, ``win_amd64``...). Each stands for what an installer on such a
machine accepts: a glibc 2.28 system also runs manylinux_2_17 (manylinux2014) wheels,
macOS 11 on arm64 also takes universal2 wheels built for older releases. The lists are
those ``packaging.tags`` gives on such a machine, worked out here without being on one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from packaging import tags
from packaging.specifiers import InvalidSpecifier, SpecifierSet

_LINUX_ARCHES = (
    "x86_64", "i686", "aarch64", "armv7l", "armv6l", "ppc64", "ppc64le", "s390x", "riscv64",
    "loongarch64",
)
_MAC_ARCHES = ("x86_64", "arm64", "universal2", "universal", "intel", "i386", "ppc", "ppc64",
               "fat", "fat3", "fat32", "fat64")
_ARCH = "|".join(_LINUX_ARCHES)
_MANYLINUX = re.compile(rf"manylinux_(\d+)_(\d+)_({_ARCH})")
_LEGACY_MANYLINUX = re.compile(r"manylinux(1|2010|2014)_(\w+)")
_MUSLLINUX = re.compile(rf"musllinux_(\d+)_(\d+)_({_ARCH})")
_MACOS = re.compile(rf"macosx_(\d+)_(\d+)_({'|'.join(_MAC_ARCHES)})")
_LINUX = re.compile(rf"linux_({_ARCH})")
_WINDOWS = frozenset({"win32", "win_amd64", "win_arm64", "win_ia64"})
_IOS = re.compile(r"ios_\d+_\d+_(arm64_iphoneos|arm64_iphonesimulator|x86_64_iphonesimulator)")
_ANDROID = re.compile(r"android_\d+_(arm64_v8a|armeabi_v7a|x86_64|x86)")
# The glibc each legacy name stands for (PEP 600), and the architectures it had.
_LEGACY = {
    "1": ((2, 5), ("x86_64", "i686")),
    "2010": ((2, 12), ("x86_64", "i686")),
    "2014": ((2, 17), ("x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x")),
}
IMPLEMENTATIONS = {"cp": ("cpython", "CPython"), "pp": ("pypy", "PyPy")}

EXAMPLE_PLATFORMS = "manylinux_2_28_x86_64, musllinux_1_2_aarch64, macosx_11_0_arm64, win_amd64"


class UnknownPlatform(ValueError):
    """A platform that is not a wheel platform tag this mirror knows."""


def _glibc_floor(arch: str) -> int:
    # manylinux began at glibc 2.5 on Intel, 2.17 elsewhere (manylinux2014).
    return 5 if arch in ("x86_64", "i686") else 17


def _manylinux(major: int, minor: int, arch: str) -> Iterator[str]:
    """What an installer on a glibc ``major.minor`` system accepts, newest first."""
    if major != 2:
        yield f"manylinux_{major}_{minor}_{arch}"
        return
    for y in range(minor, _glibc_floor(arch) - 1, -1):
        yield f"manylinux_2_{y}_{arch}"
        for legacy, (glibc, arches) in _LEGACY.items():
            if glibc == (2, y) and arch in arches:
                yield f"manylinux{legacy}_{arch}"
    yield f"linux_{arch}"


def expand_platform(platform: str) -> tuple[str, ...]:
    """Every platform tag an installer on ``platform`` accepts; raises UnknownPlatform."""
    if match := _MANYLINUX.fullmatch(platform):
        return tuple(_manylinux(int(match[1]), int(match[2]), match[3]))
    if match := _LEGACY_MANYLINUX.fullmatch(platform):
        (major, minor), arches = _LEGACY[match[1]]
        if match[2] in arches:
            return tuple(_manylinux(major, minor, match[2]))
    elif match := _MUSLLINUX.fullmatch(platform):
        major, minor, arch = int(match[1]), int(match[2]), match[3]
        found = [f"musllinux_{major}_{y}_{arch}" for y in range(minor, -1, -1)]
        return (*found, f"linux_{arch}")
    elif match := _MACOS.fullmatch(platform):
        return tuple(tags.mac_platforms((int(match[1]), int(match[2])), match[3]))
    elif platform in _WINDOWS or _LINUX.fullmatch(platform) or _IOS.fullmatch(platform) or (
        _ANDROID.fullmatch(platform)
    ):
        return (platform,)
    raise UnknownPlatform(
        f"{platform!r} is not a platform tag this mirror knows; give one as wheel names "
        f"spell it, like {EXAMPLE_PLATFORMS}"
    )


def _marker_platform(platform: str) -> dict[str, str]:
    """The environment markers (PEP 508) a machine of ``platform`` has."""
    if platform.startswith(("manylinux", "musllinux", "linux")):
        machine = next(a for a in _LINUX_ARCHES if platform.endswith(a))
        return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                "platform_machine": machine}
    if platform.startswith("macosx"):
        machine = "arm64" if platform.endswith("arm64") else "x86_64"
        return {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix",
                "platform_machine": machine}
    if platform.startswith("win"):
        machine = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}.get(
            platform, "ia64"
        )
        return {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                "platform_machine": machine}
    if platform.startswith("ios"):
        return {"sys_platform": "ios", "platform_system": "iOS", "os_name": "posix",
                "platform_machine": "arm64"}
    return {"sys_platform": "android", "platform_system": "Android", "os_name": "posix",
            "platform_machine": "aarch64"}


# Without platforms an environment stands for every one: its markers are tried on these.
_ANY_PLATFORM = ("manylinux_2_17_x86_64", "macosx_11_0_arm64", "win_amd64")


@dataclass(frozen=True)
class Environment:
    """A target: a Python version, an implementation, and platforms (none: any)."""

    python: tuple[int, int]
    implementation: str = "cp"
    platforms: tuple[str, ...] = ()
    _platforms: frozenset[str] = field(init=False, repr=False, compare=False)
    _pairs: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodot = f"{self.python[0]}{self.python[1]}"
        expanded = {p for given in self.platforms for p in expand_platform(given)}
        object.__setattr__(self, "_platforms", frozenset({*expanded, "any"}))
        # The (interpreter, abi) pairs an installer accepts, whatever the platform.
        if self.implementation == "cp":
            specific = tags.cpython_tags(self.python, abis=[f"cp{nodot}"], platforms=["*"])
        else:
            specific = tags.generic_tags(self.interpreter, abis=["none"], platforms=["*"])
        compatible = tags.compatible_tags(self.python, self.interpreter, ["*"])
        pairs = frozenset((t.interpreter, t.abi) for t in (*specific, *compatible))
        object.__setattr__(self, "_pairs", pairs)

    @property
    def version(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"

    @property
    def interpreter(self) -> str:
        return f"{self.implementation}{self.python[0]}{self.python[1]}"

    def accepts(self, wheel_tags: frozenset[tags.Tag]) -> bool:
        """Whether an installer in this environment may pick a wheel with these tags."""
        for tag in wheel_tags:
            if self.platforms and tag.platform not in self._platforms:
                continue
            # PyPy's ABI names its own release (pypy310_pp73): any of them will do.
            if (tag.interpreter, tag.abi) in self._pairs or (
                self.implementation != "cp" and tag.interpreter == self.interpreter
            ):
                return True
        return False

    def admits(self, requires_python: str | None) -> bool:
        """Whether a file's Requires-Python lets this Python install it; an unreadable one
        does (installers ignore it too)."""
        if not requires_python:
            return True
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            return True
        # Any release of the minor version will do: try its first and a late one.
        return any(spec.contains(f"{self.version}.{patch}", prereleases=True)
                   for patch in (0, 99))

    def markers(self) -> list[dict[str, str]]:
        """PEP 508 marker environments this target stands for (one a platform)."""
        name, python_name = IMPLEMENTATIONS.get(self.implementation, ("cpython", "CPython"))
        found = []
        for platform in self.platforms or _ANY_PLATFORM:
            for patch in (0, 99):
                found.append({
                    **_marker_platform(platform),
                    "python_version": self.version,
                    "python_full_version": f"{self.version}.{patch}",
                    "implementation_name": name,
                    "implementation_version": f"{self.version}.{patch}",
                    "platform_python_implementation": python_name,
                    "platform_release": "",
                    "platform_version": "",
                })
        return found
