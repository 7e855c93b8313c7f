"""The pooled HTTP client every backend uses (aiohttp), with our error types and the retry rule.

aiohttp rather than httpx on this hot path: measured on loopback against the same stub (bench/gateway.py's),
httpx/httpcore spent 0.6-1.7 ms of CPU per request and aiohttp about 0.1 ms, which bounded the gateway's
throughput. A request is retried only when it failed before it was sent (connection refused, connect or pool
timeout), never after, so a generation is never run twice. No redirects, no proxies from the environment.

The session is made lazily on the running event loop (and again if a later call runs on another loop), so a
backend can be built before the loop starts (the gateway's app factory does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from appliance.errors import BackendError
from appliance.serving._errors import is_unsent_failure, translate_transport_errors, transport_error

__all__ = ["BackendHTTP", "Reply", "StreamReply"]

log = structlog.get_logger(__name__)

# One SSE line (a TGI event with details) may be long; aiohttp's default line limit is 64 KiB.
_READ_BUFSIZE = 1 << 20


@dataclass(frozen=True)
class Reply:
    """A complete answer: status, headers (case-insensitive) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The JSON body; a malformed one is a BackendError."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
            raise BackendError("the backend answered malformed JSON") from exc


class StreamReply:
    """An answer whose body is read line by line (server-sent events)."""

    def __init__(self, response: aiohttp.ClientResponse, what: str) -> None:
        self._response = response
        self._what = what
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with translate_transport_errors(self._what):
            return await self._response.read()

    async def lines(self) -> AsyncIterator[str]:
        """The body's lines without their line ends; transport failures become BackendErrors."""
        content = self._response.content
        while True:
            with translate_transport_errors(self._what):
                raw = await content.readline()
            if not raw:
                return
            yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


class BackendHTTP:
    """A keep-alive connection pool to one backend base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        retries: int,
        retry_backoff_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # connect covers waiting for a pooled connection and opening one; sock_read is the gap between reads.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s, sock_read=timeout_s
        )
        self._max_connections = max_connections
        self._retries = retries
        self._backoff = retry_backoff_s
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                trust_env=False,
                read_bufsize=_READ_BUFSIZE,
            )
            self._loop = loop
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> Reply:
        """Send one request and read the whole answer."""
        async with self._open(method, path, body) as response:
            with translate_transport_errors(path):
                data = await response.read()
            return Reply(response.status, response.headers, data)

    @asynccontextmanager
    async def stream(self, method: str, path: str, body: Any = None) -> AsyncIterator[StreamReply]:
        """Send one request; the answer's body is read by the caller (released on exit)."""
        async with self._open(method, path, body) as response:
            yield StreamReply(response, path)

    @asynccontextmanager
    async def _open(self, method: str, path: str, body: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = self.base_url + path
        attempt = 0
        while True:
            session = self._current()
            try:
                response = await session.request(method, url, data=data, headers=headers, allow_redirects=False)
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt < self._retries and is_unsent_failure(exc):
                    attempt += 1
                    log.warning("backend.retry", path=path, attempt=attempt, error=type(exc).__name__)
                    await asyncio.sleep(self._backoff * attempt)
                    continue
                raise transport_error(exc, path) from exc
        try:
            yield response
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
