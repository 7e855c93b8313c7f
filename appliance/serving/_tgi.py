"""Async client for Text Generation Inference (and anything that speaks its protocol, like the embedded engine).

One pooled ``httpx.AsyncClient`` per backend; connect/read timeouts from settings; a request is retried only when
it failed before it was sent (connection refused, connect or pool timeout), never after, so a generation is never
run twice. ``adapter_id`` is always set by this client from its ``adapter`` argument, and only for adapters the
registry published to this backend: TGI silently serves the base model for an unknown adapter (TGI #2505), so we
refuse before sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import structlog

from appliance.errors import BackendValidation
from appliance.protocols import Generation, GenerationParams, TokenEvent
from appliance.serving._errors import (
    error_for_payload,
    error_for_response,
    is_unsent_failure,
    translate_transport_errors,
    transport_error,
)
from appliance.serving._published import AdapterSpec
from appliance.serving._wire import generation_from_tgi, json_of, sse_data, tgi_parameters, token_event_from_tgi

log = structlog.get_logger(__name__)


class PublishedList:
    """A published adapter list on disk, re-read whenever the file changes (the registry replaces it atomically)."""

    def __init__(self, path: Path, reader: Callable[[Path], list[AdapterSpec]]) -> None:
        self.path = path
        self._reader = reader
        self._stamp: tuple[int, int] | None = None
        self._ids: frozenset[str] = frozenset()

    def ids(self) -> frozenset[str]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            self._stamp, self._ids = None, frozenset()
            return self._ids
        if stamp != self._stamp:
            self._ids = frozenset(spec.id for spec in self._reader(self.path))
            self._stamp = stamp
        return self._ids


def make_http_client(
    base_url: str,
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The pooled client every backend uses (no redirects, no proxies from the environment)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers=headers or {},
        follow_redirects=False,
        trust_env=False,
        transport=transport,
    )


class TGIBackend:
    """Backend over TGI's HTTP API (``/generate``, ``/generate_stream``, ``/health``)."""

    name = "tgi"

    def __init__(
        self,
        base_url: str,
        *,
        published: PublishedList | None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 2.0,
        max_connections: int = 64,
        retries: int = 2,
        retry_backoff_s: float = 0.1,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._published = published
        self._retries = retries
        self._backoff = retry_backoff_s
        self._client = make_http_client(
            base_url,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
            transport=transport,
        )

    # --- the Backend protocol -------------------------------------------------------------------------------
    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        await self._check_routable(adapter)
        body = {"inputs": prompt, "parameters": tgi_parameters(params, adapter)}
        response = await self._post("/generate", body)
        if response.status_code != 200:
            raise error_for_response(response.status_code, response.content, response.headers)
        payload = json_of(response)
        if isinstance(payload, list):  # POST / answers a one-element list; /generate an object
            payload = payload[0]
        return generation_from_tgi(payload, response.headers, params.details)

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        await self._check_routable(adapter)
        body = {"inputs": prompt, "parameters": tgi_parameters(params, adapter), "stream": True}
        request = self._client.build_request("POST", "/generate_stream", json=body)
        response = await self._send(request, stream=True)
        try:
            if response.status_code != 200:
                raise error_for_response(response.status_code, await response.aread(), response.headers)
            prompt_tokens = int(response.headers.get("x-prompt-tokens") or 0)
            with translate_transport_errors("generate_stream"):
                async for payload in sse_data(response):
                    if payload.get("error") is not None:
                        raise error_for_payload(payload)
                    yield token_event_from_tgi(payload, prompt_tokens, params.details)
        finally:
            await response.aclose()

    async def health(self) -> bool:
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def adapters(self) -> set[str]:
        if self._published is None:
            return await self._served_adapters()
        return set(self._published.ids())

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- helpers ---------------------------------------------------------------------------------------------
    async def _served_adapters(self) -> set[str]:
        """The adapters the server itself lists under ``/v1/models`` (the embedded engine lists each one)."""
        response = await self._get("/v1/models")
        if response.status_code != 200:
            raise error_for_response(response.status_code, response.content, response.headers)
        data = json_of(response).get("data", [])
        return {str(m["id"]) for m in data if m.get("parent") is not None}

    async def _check_routable(self, adapter: str | None) -> None:
        if adapter is None or self._published is None:
            return
        if adapter not in self._published.ids():
            raise BackendValidation(f"adapter {adapter!r} is not published to this backend")

    async def _get(self, path: str) -> httpx.Response:
        return await self._send(self._client.build_request("GET", path))

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self._send(self._client.build_request("POST", path, json=body))

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < self._retries and is_unsent_failure(exc):
                    attempt += 1
                    log.warning("backend.retry", path=request.url.path, attempt=attempt, error=type(exc).__name__)
                    await asyncio.sleep(self._backoff * attempt)
                    continue
                raise transport_error(exc, request.url.path) from exc
