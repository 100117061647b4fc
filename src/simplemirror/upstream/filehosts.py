"""Which hosts may serve a mirror's files: the policy, and the one place it resolves names.

Indexes often keep their files on a host of their own, so by default a file may come
from any host. The guard against a hostile page stays: only http(s), no user name or
password the upstream URL did not give, and no host resolving to a loopback,
link-local or private address unless the upstream itself is on one of that kind (a
page must not send the mirror into the network it runs in). An operator who sets
``file-hosts`` (or ``--file-host``) names the complete list of hosts besides the
upstream's own, and those are trusted wherever they are.

The same check applies to every redirect hop of every request (httpclient). It
resolves a name, then the HTTP client resolves it again to connect: a name whose
answer changes in between (DNS rebinding) is not caught until the
client connects to the addresses that were checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Collection, Sequence
from enum import StrEnum
from urllib.parse import urlsplit

Resolve = Callable[[str], Sequence[str] | None]
"""A host's addresses; None when it cannot be resolved."""


class AddressClass(StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    LOOPBACK = "loopback"


def address_class(address: str) -> AddressClass:
    """What kind of network ``address`` (an IPv4 or IPv6 literal) is on."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    # Connecting to the unspecified address (0.0.0.0, ::) reaches this host.
    if ip.is_loopback or ip.is_unspecified:
        return AddressClass.LOOPBACK
    if ip.is_link_local:
        return AddressClass.LINK_LOCAL
    # Not global: RFC 1918, unique-local, shared (CGNAT), documentation, reserved...
    return AddressClass.PUBLIC if ip.is_global else AddressClass.PRIVATE


def _addresses(host: str, resolve: Resolve) -> Sequence[str] | None:
    """An IP literal is its own address; a name is asked (so are the other spellings of
    an address that getaddrinfo reads, such as 2130706433 for 127.0.0.1)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return resolve(host)
    return (host,)


def _classes(addresses: Sequence[str] | None) -> dict[AddressClass, str]:
    """Each class among ``addresses``, with one address of it (for the message)."""
    found: dict[AddressClass, str] = {}
    for address in addresses or ():
        try:
            found.setdefault(address_class(address), address)
        except ValueError:
            continue  # not an IP literal: nothing a connection could use
    return found


def file_url_refusal(
    url: str, upstream: str, file_hosts: Collection[str], resolve: Resolve
) -> str | None:
    """Why ``url`` may not be downloaded, or None when it may.

    ``upstream`` is the upstream's root URL, ``file_hosts`` the operator's list
    (lowercase; empty: any host that passes the guard), ``resolve`` gives a
    host's addresses. A host that cannot be resolved is not refused here: no
    connection can reach it either.
    """
    try:
        parts, own = urlsplit(url), urlsplit(upstream)
        host, own_host = (parts.hostname or "").lower(), (own.hostname or "").lower()
    except ValueError:
        return "its URL cannot be parsed"
    if parts.scheme not in ("http", "https") or not host:
        return "its URL is not an http(s) URL with a host"
    credentials = (parts.username, parts.password)
    if credentials != (None, None) and (
        host != own_host or credentials != (own.username, own.password)
    ):
        # Relative links on a page of an upstream given with credentials carry them.
        return (
            f"its URL carries a user name or password for {host!r} that the upstream URL "
            "does not: credentials go only where the operator put them"
        )
    if host == own_host:
        return None
    allow = f"if it is the index's own file server, add it to file-hosts (--file-host {host})"
    if file_hosts:
        if host in file_hosts:
            return None
        return f"it is on {host!r}, which is neither the upstream's host nor in file-hosts; {allow}"
    found = _classes(_addresses(host, resolve))
    internal = {k: a for k, a in found.items() if k is not AddressClass.PUBLIC}
    if not internal:
        return None
    upstream_on = _classes(_addresses(own_host, resolve))
    for kind, address in internal.items():
        if kind not in upstream_on:
            return (
                f"{host!r} resolves to a {kind} address ({address}) and the upstream is not "
                f"on one, so a page may not send the mirror there; {allow}"
            )
    return None


def url_origin(url: str) -> str:
    """The start of ``url`` that holds its scheme, user, password, host and port, as
    urlsplit reads them (the whole URL when it has no "://").

    The files of one index come from a few origins: each is decided once (urlsplit
    cost as much as the rest of planning a project). urlsplit reads the network
    location from what precedes the first "/", "?" or "#" after "://", so that
    prefix parses as the whole URL does (tests/test_plan.py checks this on tricky URLs).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    return url[: len(scheme) + 3 + end]


def system_resolve(host: str) -> tuple[str, ...] | None:
    """``host``'s addresses, as a connection to it would find them (None: no answer)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


class FileHostGuard:
    """file_url_refusal for one run, each host resolved once and each origin decided once.

    Safe to share between threads: two of them deciding the same origin at once
    only resolve it twice.
    """

    def __init__(
        self, upstream: str, file_hosts: Collection[str], resolve: Resolve = system_resolve
    ) -> None:
        self._upstream = upstream
        self._file_hosts = frozenset(file_hosts)
        self._resolve = resolve
        self._addresses: dict[str, Sequence[str] | None] = {}
        self._decided: dict[str, str | None] = {}

    def _resolved(self, host: str) -> Sequence[str] | None:
        try:
            return self._addresses[host]
        except KeyError:
            found = self._addresses[host] = self._resolve(host)
            return found

    def known(self, url: str) -> tuple[bool, str | None]:
        """(True, ``refusal(url)``) when that is decided already and needs no name looked
        up; (False, None) otherwise."""
        origin = url_origin(url)
        if origin in self._decided:
            return True, self._decided[origin]
        return False, None

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be downloaded, or None."""
        # Only the scheme, user, host and port matter: decided once for each of those.
        origin = url_origin(url)
        try:
            return self._decided[origin]
        except KeyError:
            why = file_url_refusal(origin, self._upstream, self._file_hosts, self._resolved)
            self._decided[origin] = why
            return why
