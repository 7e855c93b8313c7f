"""Async client for Text Generation Inference (and anything that speaks its protocol, like the embedded engine).

One connection pool per backend (``_http.BackendHTTP``); connect/read timeouts from settings; a request is
retried only when it failed before it was sent (connection refused, connect or pool timeout), never after, so a
generation is never run twice. ``adapter_id`` is always set by this client from its ``adapter`` argument, and only
for adapters the registry published to this backend: TGI silently serves the base model for an unknown adapter
(TGI #2505), so we refuse before sending.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from appliance.contracts import GenerationParams
from appliance.errors import BackendError, BackendValidation
from appliance.protocols import Generation, TokenEvent
from appliance.serving._errors import error_for_payload, error_for_response
from appliance.serving._http import BackendHTTP, Reply
from appliance.serving._published import AdapterSpec
from appliance.serving._wire import generation_from_tgi, sse_data, token_event_from_tgi


class PublishedList:
    """A published adapter list on disk, re-read whenever the file changes (the registry replaces it atomically)."""

    def __init__(self, path: Path, reader: Callable[[Path], list[AdapterSpec]]) -> None:
        self.path = path
        self._reader = reader
        self._stamp: tuple[int, int, int, int] | None = None
        self._ids: frozenset[str] = frozenset()

    def ids(self) -> frozenset[str]:
        try:
            stat = self.path.stat()
            # the inode and ctime too: mtime is as coarse as a kernel tick, and an atomic replace is a new inode
            stamp = (stat.st_ino, stat.st_ctime_ns, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            self._stamp, self._ids = None, frozenset()
            return self._ids
        if stamp != self._stamp:
            self._ids = frozenset(spec.id for spec in self._reader(self.path))
            self._stamp = stamp
        return self._ids


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
    ) -> None:
        self._published = published
        self._http = BackendHTTP(
            base_url,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            headers=headers,
        )

    # --- the Backend protocol -------------------------------------------------------------------------------
    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        await self._check_routable(adapter)
        body = {"inputs": prompt, "parameters": params.tgi_parameters(adapter)}
        response = await self._post("/generate", body)
        payload = response.json()
        if isinstance(payload, list):  # POST / answers a one-element list; /generate an object
            payload = payload[0]
        return generation_from_tgi(payload, response.headers, params.details)

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        await self._check_routable(adapter)
        body = {"inputs": prompt, "parameters": params.tgi_parameters(adapter), "stream": True}
        async with self._http.stream("POST", "/generate_stream", body) as response:
            if response.status != 200:
                raise error_for_response(response.status, await response.read(), response.headers)
            prompt_tokens = int(response.headers.get("x-prompt-tokens") or 0)
            async for payload in sse_data(response.lines()):
                if payload.get("error") is not None:
                    raise error_for_payload(payload)
                yield token_event_from_tgi(payload, prompt_tokens, params.details)

    async def health(self) -> bool:
        try:
            response = await self._http.request("GET", "/health")
        except BackendError:
            return False
        return response.status == 200

    async def adapters(self) -> set[str]:
        if self._published is None:
            return await self._served_adapters()
        return set(self._published.ids())

    async def holdings(self) -> dict[str, str | None]:
        """Each adapter this server serves, with the weights fingerprint it reports (None: it reports none)."""
        if self._published is not None:
            return dict.fromkeys(await self.adapters())
        data = (await self._get("/v1/models")).json().get("data", [])
        return {
            str(m["id"]): (str(m["fingerprint"]).lower() if m.get("fingerprint") else None)
            for m in data
            if m.get("parent") is not None
        }

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- helpers ---------------------------------------------------------------------------------------------
    async def _served_adapters(self) -> set[str]:
        """The adapters the server itself lists under ``/v1/models`` (the embedded engine lists each one)."""
        data = (await self._get("/v1/models")).json().get("data", [])
        return {str(m["id"]) for m in data if m.get("parent") is not None}

    async def _check_routable(self, adapter: str | None) -> None:
        if adapter == "":  # TGI (adapter_id) and vLLM (model) would run it on the base model
            raise BackendValidation("an empty adapter id names no adapter (None is the base model)")
        if adapter is None or self._published is None:
            return
        if adapter not in self._published.ids():
            raise BackendValidation(f"adapter {adapter!r} is not published to this backend")

    async def _get(self, path: str) -> Reply:
        """GET path; a non-200 answer is the BackendError it stands for."""
        return _ok(await self._http.request("GET", path))

    async def _post(self, path: str, body: dict[str, Any]) -> Reply:
        """POST a JSON body; a non-200 answer is the BackendError it stands for."""
        return _ok(await self._http.request("POST", path, body))


def _ok(reply: Reply) -> Reply:
    if reply.status != 200:
        raise error_for_response(reply.status, reply.body, reply.headers)
    return reply
