"""Serve a mirror's output tree (``simple/`` + ``packages/``) like a static web server would.

Directory URLs are content-negotiated between ``index.v1_json`` and ``index.html``, the
PEP 691 layout a mirror writes for plain static hosting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from ._http import HTML, HTML_V1, JSON_V1, BaseHandler, RequestRecord, ServerThread, negotiate

__all__ = ["RequestRecord", "StaticServer", "serve_tree"]

_SUFFIX_TYPES = {
    ".html": HTML,
    ".v1_json": JSON_V1,
    ".json": "application/json",
}


class StaticServer:
    """Context manager serving ``web_dir`` on 127.0.0.1; ``url`` ends with ``/``."""

    def __init__(self, web_dir: Path, requests: list[RequestRecord] | None = None) -> None:
        self.web_dir = Path(web_dir)
        self.requests: list[RequestRecord] = requests if requests is not None else []
        self.requests_lock = threading.Lock()
        self._thread = ServerThread(_StaticHandler, self)

    def __enter__(self) -> StaticServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._thread.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._thread.port}/"

    @property
    def errors(self) -> list[str]:
        return self._thread.errors

    def reset_requests(self) -> None:
        with self.requests_lock:
            self.requests.clear()


@contextmanager
def serve_tree(web_dir: Path, *, requests: list[RequestRecord] | None = None) -> Iterator[str]:
    """Yield the base URL of a server for ``web_dir``; pass ``requests`` to record traffic."""
    with StaticServer(web_dir, requests) as server:
        yield server.url


class _StaticHandler(BaseHandler):
    @property
    def owner(self) -> StaticServer:
        owner: StaticServer = self.server.owner
        return owner

    def _resolve(self, url_path: str) -> Path | None:
        root = self.owner.web_dir.resolve()
        rel = unquote(url_path).lstrip("/")
        if "\x00" in rel:
            return None
        # resolve() also follows symlinks, so a link pointing outside the tree is refused too.
        target = (root / rel).resolve()
        if target != root and not target.is_relative_to(root):
            return None
        return target

    def dispatch(self) -> None:
        owner = self.owner
        self.record(owner.requests, owner.requests_lock)
        url_path = urlsplit(self.path).path
        target = self._resolve(url_path)
        if target is None or not target.exists():
            self.send_body(404, b"not found\n")
            return
        if target.is_dir():
            if not url_path.endswith("/"):
                query = urlsplit(self.path).query
                self.send_redirect(url_path + "/" + (f"?{query}" if query else ""))
                return
            self._directory(target)
            return
        content_type = _SUFFIX_TYPES.get(target.suffix, "application/octet-stream")
        self.send_body(200, target.read_bytes(), content_type)

    def _directory(self, target: Path) -> None:
        json_file = target / "index.v1_json"
        html_file = target / "index.html"
        # Negotiate only among representations that exist, like Apache MultiViews would.
        offered = [
            m
            for m, f in ((JSON_V1, json_file), (HTML_V1, html_file), (HTML, html_file))
            if f.is_file()
        ]
        if not offered:
            self.send_body(404, b"no index\n")
            return
        default = HTML if html_file.is_file() else JSON_V1
        media = negotiate(self.headers.get("Accept"), offered, default)
        source = json_file if media == JSON_V1 else html_file
        self.send_body(200, source.read_bytes(), media, {"Vary": "Accept"})
