"""The Backend clients (embedded, TGI, vLLM) against the embedded engine, and their error mapping.

Real TGI and vLLM need a GPU and their own server binaries, which cannot run here; both speak the protocol the
embedded engine implements (TGI's routes, and the OpenAI-compatible routes vLLM serves), so the clients are
tested against the engine. Answers the engine does not give on demand (424, 503, slow or malformed answers) come
from a small real HTTP server on loopback (``answering``) that replies as a failing TGI or vLLM would.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from appliance.config import Settings
from appliance.contracts import GenerationParams
from appliance.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BackendValidation,
    ConfigError,
)
from appliance.protocols import Backend
from appliance.serving import EmbeddedBackend, TGIBackend, VLLMBackend, open_backend
from appliance.serving._published import read_tgi_list
from appliance.serving._tgi import PublishedList
from tests.serving.conftest import ADAPTER_IDS

pytestmark = pytest.mark.timeout(300)

GREEDY = GenerationParams(max_new_tokens=6)


async def test_embedded_backend_generate_stream_health_adapters(engine_url: str) -> None:
    """EmbeddedBackend generates, streams the same tokens, reports health and the engine's adapters."""
    backend = EmbeddedBackend(engine_url)
    try:
        assert isinstance(backend, Backend)
        assert await backend.health()
        assert await backend.adapters() == set(ADAPTER_IDS)
        whole = await backend.generate("triage-v1", "the patient was", GenerationParams(max_new_tokens=6, details=True))
        events = [e async for e in backend.stream("triage-v1", "the patient was", GREEDY)]
        assert whole.generated_tokens == 6 and whole.prompt_tokens > 0 and whole.finish_reason == "length"
        assert whole.details is not None and len(whole.details["tokens"]) == 6
        assert [e.token_id for e in events] == [t["id"] for t in whole.details["tokens"]]
        final = events[-1].final
        assert final is not None and final.text == whole.text and final.prompt_tokens == whole.prompt_tokens
        assert all(e.final is None for e in events[:-1])
        with pytest.raises(BackendValidation, match="not loaded"):
            await backend.generate("unknown-v1", "the patient was", GREEDY)
        with pytest.raises(BackendValidation, match="temperature"):
            await backend.generate(None, "x", GenerationParams(temperature=0.0))
        with pytest.raises(BackendValidation, match="top_k"):
            _ = [e async for e in backend.stream(None, "x", GenerationParams(top_k=-3))]
    finally:
        await backend.aclose()


async def test_tgi_backend_routes_only_published_adapters(engine_url: str, tmp_path: Path) -> None:
    """TGIBackend refuses an adapter not published to that TGI before sending, and sets adapter_id itself."""
    env = tmp_path / "lora_adapters.env"
    env.write_text("LORA_ADAPTERS=triage-v1=/srv/adapters/triage-v1\n", encoding="utf-8")
    backend = TGIBackend(engine_url, published=PublishedList(env, read_tgi_list))
    embedded = EmbeddedBackend(engine_url)
    try:
        assert await backend.adapters() == {"triage-v1"}
        with pytest.raises(BackendValidation, match="not published"):
            await backend.generate("notes-v1", "the patient was", GREEDY)
        served = await backend.generate("triage-v1", "the patient was", GREEDY)
        assert served.text == (await embedded.generate("triage-v1", "the patient was", GREEDY)).text
        # adapter_id smuggled in through extra parameters is overwritten by the adapter argument (base here)
        smuggled = GenerationParams(max_new_tokens=6, extra={"adapter_id": "notes-v1"})
        assert (await backend.generate(None, "the patient was", smuggled)).text == (
            await embedded.generate(None, "the patient was", GREEDY)
        ).text
        env.write_text("LORA_ADAPTERS=triage-v1=/a,notes-v1=/b\n", encoding="utf-8")
        assert await backend.adapters() == {"triage-v1", "notes-v1"}  # re-read when the registry republishes
    finally:
        await backend.aclose()
        await embedded.aclose()


async def test_vllm_backend_selects_adapter_by_model(engine_url: str, tmp_path: Path) -> None:
    """VLLMBackend sends the adapter as ``model``, streams, and lists published adapters the server has."""
    modules = tmp_path / "lora_modules.json"
    modules.write_text(
        json.dumps([{"name": a, "path": f"/srv/{a}", "base_model_name": "tiny"} for a in ("triage-v1", "notes-v1")]),
        encoding="utf-8",
    )
    backend = VLLMBackend(engine_url, published_file=modules)
    embedded = EmbeddedBackend(engine_url)
    try:
        assert await backend.adapters() == {"triage-v1", "notes-v1"}
        for adapter in (None, "notes-v1"):
            got = await backend.generate(adapter, "the patient was", GREEDY)
            expected = await embedded.generate(adapter, "the patient was", GREEDY)
            assert got.text == expected.text and got.generated_tokens == 6 and got.finish_reason == "length"
        events = [e async for e in backend.stream("notes-v1", "the patient was", GREEDY)]
        assert events[-1].final is not None
        assert events[-1].final.text == "".join(e.text for e in events)
        assert events[-1].final.generated_tokens == 6
        with pytest.raises(BackendValidation, match="not published"):
            await backend.generate("coding-v1", "the patient was", GREEDY)
        with pytest.raises(ConfigError, match="runtime adapter updates are off"):
            await backend.load_adapter("triage-v1", Path("/srv/triage-v1"))
    finally:
        await backend.aclose()
        await embedded.aclose()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def answering(handler: Handler, port: int | None = None) -> AsyncIterator[str]:
    """A real HTTP server on loopback whose every route answers with handler; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    return handler


def _raw(body: bytes, content_type: str = "text/event-stream") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (422, {"error": "`top_k` must be strictly positive", "error_type": "validation"}, BackendValidation, "top_k"),
        (413, {"error": "Request Entity Too Large", "error_type": "http"}, BackendValidation, "Too Large"),
        (424, {"error": "Request failed during generation", "error_type": "generation"}, BackendError, "generation"),
        (429, {"error": "Model is overloaded", "error_type": "overloaded"}, BackendOverloaded, "overloaded"),
        (503, {"error": "unhealthy", "error_type": "unhealthy"}, BackendUnavailable, "unhealthy"),
        (504, {}, BackendTimeout, "HTTP 504"),
        (500, {"object": "error", "message": "vLLM internal"}, BackendError, "vLLM internal"),
    ],
)
async def test_http_errors_map_to_backend_errors(status: int, body: dict[str, str], error: type, message: str) -> None:
    """Each answer a real TGI/vLLM gives on failure becomes the matching BackendError subclass."""
    async with answering(_json(status, body, {"retry-after": "3"})) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(error, match=message) as info:
            await backend.generate(None, "x", GREEDY)
        await backend.aclose()
    assert type(info.value) is error
    if error is BackendOverloaded:
        assert info.value.retry_after == 3.0


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"error": "Request failed during generation: OOM", "error_type": "generation"}, BackendError),
        ({"error": "Model is overloaded", "error_type": "overloaded"}, BackendOverloaded),
        ({"error": "`top_k` must be strictly positive", "error_type": "validation"}, BackendValidation),
        ({"error": "the engine is not running", "error_type": "unhealthy"}, BackendUnavailable),
    ],
)
async def test_stream_error_event_maps_to_backend_error(event: dict[str, str], error: type) -> None:
    """An error event inside a TGI stream (after a 200) becomes the same typed error as the HTTP status would."""
    sse = b"data:" + json.dumps(event).encode() + b"\n\n"
    async with answering(_raw(sse)) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(BackendError, match=event["error"][:8]) as info:
            _ = [e async for e in backend.stream(None, "x", GREEDY)]
        await backend.aclose()
    assert type(info.value) is error


async def test_retries_only_failures_before_sending() -> None:
    """A refused connection is retried (the request never left); a read timeout is not (it may be running)."""
    served: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response({"generated_text": "ok", "details": {"generated_tokens": 1}})

    # Nothing listens on the port at first: the first attempts are refused, the server comes up during the back-off.
    port = _free_port()
    backend = TGIBackend(f"http://127.0.0.1:{port}", published=None, retries=20, retry_backoff_s=0.02)
    attempt = asyncio.ensure_future(backend.generate(None, "x", GREEDY))
    await asyncio.sleep(0.1)
    assert not attempt.done()  # still retrying a refused connection
    async with answering(ok, port=port):
        assert (await asyncio.wait_for(attempt, 30)).text == "ok"
    await backend.aclose()
    assert served == ["/generate"]  # sent exactly once

    async def slow(request: web.Request) -> web.Response:
        served.append(request.path)
        await asyncio.sleep(2)
        return web.json_response({"generated_text": "late"})

    served.clear()
    async with answering(slow) as url:
        backend = TGIBackend(url, published=None, timeout_s=0.3, retries=3, retry_backoff_s=0.0)
        with pytest.raises(BackendTimeout):
            await backend.generate(None, "x", GREEDY)
        await backend.aclose()
    assert served == ["/generate"]  # a read timeout is never retried

    backend = TGIBackend("http://127.0.0.1:9", published=None, retries=1, retry_backoff_s=0.0, connect_timeout_s=0.5)
    with pytest.raises(BackendUnavailable):
        await backend.generate(None, "x", GREEDY)
    assert not await backend.health()
    await backend.aclose()


def test_open_backend_follows_settings(settings: Settings) -> None:
    """open_backend routes over one replica, ``serving.url``, with the client the settings name."""

    def only_client(s: Settings) -> object:
        backend = open_backend(s)
        assert [r.name for r in backend.replicas] == ["127.0.0.1:8081"]
        return backend.replicas[0].client

    assert isinstance(only_client(settings), EmbeddedBackend)
    tgi = settings.model_copy(update={"serving": settings.serving.model_copy(update={"backend": "tgi"})})
    assert type(only_client(tgi)) is TGIBackend
    vllm = settings.model_copy(update={"serving": settings.serving.model_copy(update={"backend": "vllm"})})
    assert type(only_client(vllm)) is VLLMBackend


async def test_malformed_answers_are_backend_errors() -> None:
    """A body or SSE event that is not JSON becomes a BackendError, never a foreign exception."""
    async with answering(_raw(b"<html>proxy error</html>", "text/html")) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(BackendError, match="malformed JSON"):
            await backend.generate(None, "x", GREEDY)
        await backend.aclose()
    async with answering(_raw(b"data:{not json\n\n")) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(BackendError, match="malformed event"):
            _ = [e async for e in backend.stream(None, "x", GREEDY)]
        await backend.aclose()
    deep = b"[" * 100_000 + b"]" * 100_000  # nested deeper than Python's stack: a BackendError, not RecursionError
    async with answering(_raw(deep)) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(BackendError, match="malformed JSON"):
            await backend.generate(None, "x", GREEDY)
        await backend.aclose()
    async with answering(_raw(b"data:" + deep + b"\n\n")) as url:
        backend = TGIBackend(url, published=None)
        with pytest.raises(BackendError, match="malformed event"):
            _ = [e async for e in backend.stream(None, "x", GREEDY)]
        await backend.aclose()


async def test_local_backend_matches_the_http_engine(engine: object, engine_url: str) -> None:
    """The in-process LocalBackend answers as the engine does over HTTP (same tokens, same refusals)."""
    from appliance.serving.engine import LocalBackend

    local = LocalBackend(engine)  # type: ignore[arg-type]
    remote = EmbeddedBackend(engine_url)
    try:
        assert isinstance(local, Backend)
        assert await local.health() and await local.adapters() == set(ADAPTER_IDS)
        params = GenerationParams(max_new_tokens=6, details=True)
        mine = await local.generate("notes-v1", "the patient was", params)
        theirs = await remote.generate("notes-v1", "the patient was", params)
        assert (mine.text, mine.generated_tokens, mine.prompt_tokens) == (
            theirs.text,
            theirs.generated_tokens,
            theirs.prompt_tokens,
        )
        events = [e async for e in local.stream("notes-v1", "the patient was", GREEDY)]
        assert events[-1].final is not None and events[-1].final.text == mine.text
        with pytest.raises(BackendValidation, match="not loaded"):
            await local.generate("unknown-v1", "x", GREEDY)
    finally:
        await remote.aclose()


def test_published_list_sees_a_replacement_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    """File timestamps are coarse (a kernel tick): an atomic replacement within one must still be re-read."""
    import os

    env = tmp_path / "lora_adapters.env"
    env.write_text("LORA_ADAPTERS=triage-v1=/srv/a\n", encoding="utf-8")
    published = PublishedList(env, read_tgi_list)
    assert published.ids() == {"triage-v1"}
    stat = env.stat()
    tmp = tmp_path / "lora_adapters.env.tmp"
    tmp.write_text("LORA_ADAPTERS=triage-v2=/srv/b\n", encoding="utf-8")  # same size: v1 un-published, v2 in
    os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # written within the same tick
    tmp.replace(env)
    assert published.ids() == {"triage-v2"}


async def test_an_empty_adapter_id_is_refused_by_every_backend(engine: object, engine_url: str, tmp_path: Path) -> None:
    """TGI and vLLM run ``adapter_id``/``model`` "" on the base model; the Backend interface refuses it instead."""
    from appliance.serving.engine import LocalBackend

    env = tmp_path / "lora_adapters.env"
    env.write_text("LORA_ADAPTERS=triage-v1=/srv/adapters/triage-v1\n", encoding="utf-8")
    modules = tmp_path / "lora_modules.json"
    modules.write_text(json.dumps([{"name": "triage-v1", "path": "/srv/triage-v1"}]), encoding="utf-8")
    backends: list[Backend] = [
        EmbeddedBackend(engine_url),
        TGIBackend(engine_url, published=PublishedList(env, read_tgi_list)),
        TGIBackend(engine_url, published=None),
        VLLMBackend(engine_url, published_file=modules),
        VLLMBackend(engine_url, published_file=None),
        LocalBackend(engine),  # type: ignore[arg-type]
    ]
    try:
        for backend in backends:
            with pytest.raises(BackendValidation, match="empty adapter id"):
                await backend.generate("", "the patient was", GREEDY)
            with pytest.raises(BackendValidation, match="empty adapter id"):
                _ = [e async for e in backend.stream("", "the patient was", GREEDY)]
            assert (await backend.generate(None, "the patient was", GREEDY)).generated_tokens == 6  # None: base
    finally:
        for backend in backends:
            await backend.aclose()
