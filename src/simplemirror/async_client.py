"""What a download process runs: project pages and files on one event loop.

The rules are upstream.Client's and download's, shared with them rather than
written again: the same retries and backoff (tenacity's AsyncRetrying with the
Client's policy), the same reading of an answer (``interpret``,
``page_response``), the same verification before a file is renamed into
place (``download.Sink``). Only the waiting differs: every task of the
process shares one thread, so none of them hands the GIL to another at each
system call.

The process's own stop is the parent's word (workers.ProcessPool cancels the
tasks); ``stop`` is there for the checks the shared code makes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from tenacity import AsyncRetrying

from simplemirror import download
from simplemirror.async_transport import AsyncTransport
from simplemirror.config import Config
from simplemirror.download import Downloaded, Sink, VerificationError
from simplemirror.plan import FileTodo, ProjectTodo
from simplemirror.transport import Fetched, TransportError
from simplemirror.upstream import (
    Client,
    Interrupted,
    PageResponse,
    _Answer,
    _upstream_error,
    check_response,
    document_headers,
    interpret,
    is_stale,
    page_response,
    retry_test,
)

T = TypeVar("T")
CHUNK = download.CHUNK


class AsyncClient:
    """A download process's access to upstream; its coroutines run on one event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = Client(config)
        """For the rules: page URLs, retry policies."""
        self.transport = AsyncTransport(
            user_agent=config.user_agent,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        self.stop = threading.Event()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stopping")

    async def fetch(self, url: str, headers: dict[str, str] | None = None) -> Fetched:
        try:
            return await self.transport.get(url, headers)
        except TransportError as exc:
            raise _upstream_error(exc) from exc

    async def retrying(
        self, what: Callable[[], Awaitable[T]], *, also: type[BaseException] | None = None
    ) -> T:
        """Await ``what()`` with the configured retries (see Client.retrying)."""
        should_retry = retry_test(also)

        async def attempt() -> T:
            self.check_stop()
            return await what()

        return await _first_then_retrying(
            attempt,
            lambda: AsyncRetrying(**self.client.retry_policy(should_retry), sleep=asyncio.sleep),
            should_retry,
        )

    async def _get(self, url: str, etag: str | None) -> _Answer | Fetched:
        headers = document_headers(etag)

        async def attempt() -> _Answer | Fetched:
            return interpret(await self.fetch(url, headers), url, json.loads)

        return await self.retrying(attempt)

    async def fetch_page(self, todo: ProjectTodo, etag: str | None = None) -> PageResponse | None:
        """As Client.fetch_page."""
        url = self.client.page_url(todo.name)

        async def attempt() -> PageResponse | None:
            self.check_stop()
            return page_response(await self._get(url, etag), todo, url)

        return await _first_then_retrying(
            attempt,
            lambda: AsyncRetrying(**self.client.stale_policy(), sleep=asyncio.sleep),
            is_stale,
        )

    async def fetch_to(
        self,
        url: str,
        *,
        expected_hashes: Mapping[str, str],
        expected_size: int | None,
        path_for_sha256: Callable[[str], str],
        new_dir: bool = False,
    ) -> Downloaded:
        """As download.fetch_to, with its retries."""
        config = self.config

        async def attempt() -> Downloaded:
            sink = Sink(url, expected_hashes, expected_size, config.max_file_size, config.tmp)
            try:
                async with self.transport.stream(
                    url, check=self.client.check_file_url
                ) as response:
                    check_response(response)
                    read = response.body.read1
                    while chunk := await read(CHUNK):
                        sink.write(chunk)
            except TransportError as exc:  # refused, reset or timed out, before or mid-body
                sink.discard()
                raise _upstream_error(exc) from exc
            except BaseException:
                sink.discard()
                raise
            return sink.finish(config.web, path_for_sha256, new_dir)

        return await self.retrying(attempt, also=VerificationError)

    async def download_todo(self, name: str, todo: FileTodo) -> download.TodoResult:
        """As sync.download_todo: the same steps (download.todo_steps), awaited."""
        steps = download.todo_steps(name, todo)
        try:
            wanted = next(steps)
            while True:
                try:
                    got = await self.fetch_to(
                        wanted.url, expected_hashes=wanted.expected_hashes,
                        expected_size=wanted.expected_size,
                        path_for_sha256=wanted.path_for_sha256, new_dir=wanted.new_dir,
                    )
                except Exception as exc:
                    wanted = steps.throw(exc)
                else:
                    wanted = steps.send(got)
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self.transport.close()


async def _first_then_retrying(
    attempt: Callable[[], Awaitable[T]],
    retrying: Callable[[], AsyncRetrying],
    should_retry: Callable[[BaseException], bool],
) -> T:
    """As upstream._first_then_retrying, awaited."""
    try:
        return await attempt()
    except BaseException as exc:
        if not should_retry(exc):
            raise
        first_failure: BaseException | None = exc

    async def replay_then_attempt() -> T:
        nonlocal first_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        return await attempt()

    return await retrying()(replay_then_attempt)  # type: ignore[no-any-return]

