"""``reload_replicas``: what each replica of a target does with a publication, over real loopback servers that
speak the engine's and vLLM's admin protocol (the two real engines behind a gateway are in
tests/registry/test_publish_replicas.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.config import Settings, load_settings
from appliance.serving import reload_replicas
from appliance.serving._reload import holding_problem
from tests.serving.test_clients import _free_port

FP_A, FP_B = "a" * 64, "b" * 64
TOKEN = "reload-token-7d2e"


@dataclass
class Server:
    """A replica: ``after_reload`` is what it holds once asked to reload (None: the reload changes nothing)."""

    holdings: dict[str, str | None]
    after_reload: dict[str, str | None] | None = None
    hang: bool = False
    auth: list[str | None] = field(default_factory=list)  # Authorization header of each reload
    calls: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hang

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(request.path)
        if self.hang:
            await asyncio.wait_for(self.released.wait(), 10)
        if request.path == "/v1/models":
            data = [{"id": "base", "parent": None}]
            data += [{"id": a, "parent": "base", "fingerprint": fp} for a, fp in self.holdings.items()]
            return web.json_response({"object": "list", "data": data})
        if request.path == "/admin/reload":
            self.auth.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"error": "a valid admin bearer token is required"}, status=401)
            if self.after_reload is not None:
                self.holdings = dict(self.after_reload)
            return web.json_response({"adapters": sorted(self.holdings)})
        body = await request.json()
        if request.path == "/v1/load_lora_adapter":
            self.holdings[body["lora_name"]] = None
            return web.Response(text="ok")
        if request.path == "/v1/unload_lora_adapter":
            self.holdings.pop(body["lora_name"], None)
            return web.Response(text="ok")
        return web.json_response({"error": "not found"}, status=404)


@asynccontextmanager
async def servers(*replicas: Server) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        urls = []
        for server in replicas:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", server.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = _free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            stack.push_async_callback(runner.cleanup)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


def _settings(data_dir: Path, replicas: list[dict[str, Any]], **serving: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        serving={
            "admin_token": TOKEN,
            "connect_timeout_s": 0.5,
            "connect_retries": 0,
            "reload_timeout_s": 1.0,
            "replicas": replicas,
            **serving,
        },
    )


def test_holding_problem_names_missing_other_builds_and_leftovers() -> None:
    """Loaded means exactly the published ids, each with its fingerprint; a replica reporting none matches on id."""
    published: dict[str, str | None] = {"triage-v1": FP_A, "coding-v1": FP_A}
    assert holding_problem({"triage-v1": FP_A, "coding-v1": FP_A}, published) is None
    assert holding_problem({"triage-v1": None, "coding-v1": None}, published) is None
    problem = holding_problem({"triage-v1": FP_B, "notes-v1": FP_A}, published)
    assert problem == "does not hold coding-v1; holds another build of triage-v1; still serves notes-v1"


async def test_embedded_replicas_reload_with_the_token_and_are_checked_by_what_they_hold(data_dir: Path) -> None:
    """A replica is loaded only when its /v1/models shows the publication; another build or a leftover fails it."""
    good = Server({}, after_reload={"triage-v1": FP_A})
    other_build = Server({}, after_reload={"triage-v1": FP_B})
    leftover = Server({"old-v1": FP_A})  # its reload changed nothing
    async with servers(good, other_build, leftover) as urls:
        settings = _settings(data_dir, [{"url": u, "name": n} for u, n in zip(urls, ["g", "o", "l"], strict=True)])
        results = await reload_replicas(settings, "embedded", {"triage-v1": FP_A})
    assert [(r.replica, r.outcome) for r in results] == [("g", "loaded"), ("o", "failed"), ("l", "failed")]
    assert results[1].reason == "after the reload it holds another build of triage-v1"
    assert results[2].reason == "after the reload it does not hold triage-v1; still serves old-v1"
    assert good.auth == other_build.auth == [f"Bearer {TOKEN}"]


async def test_a_down_or_hanging_replica_fails_alone_within_the_deadline(data_dir: Path) -> None:
    """Refused connection, a hang past reload_timeout_s and a refused token are failures with a reason that carries
    no secret; the healthy replica loads meanwhile (all reached at once)."""
    good = Server({}, after_reload={"triage-v1": FP_A})
    hanging = Server({}, hang=True)
    async with servers(good, hanging) as urls:
        replicas = [
            {"url": urls[0], "name": "good"},
            {"url": urls[1], "name": "hanging"},
            {"url": f"http://127.0.0.1:{_free_port()}", "name": "down"},
        ]
        settings = _settings(data_dir, replicas)
        started = time.monotonic()
        results = {r.replica: r for r in await reload_replicas(settings, "embedded", {"triage-v1": FP_A})}
        took = time.monotonic() - started
        wrong_token = _settings(data_dir, replicas[:1], admin_token="not-the-token")
        [refused] = await reload_replicas(wrong_token, "embedded", {"triage-v1": FP_A})
        hanging.released.set()
    assert took < 2.5, took  # one deadline (1 s), not one per replica
    assert results["good"].outcome == "loaded"
    assert results["hanging"].outcome == "failed" and "TIMEOUT" in (results["hanging"].reason or "")
    assert results["down"].outcome == "failed" and "BACKEND_UNAVAILABLE" in (results["down"].reason or "")
    assert refused.outcome == "failed" and "admin bearer token" in (refused.reason or "")
    reasons = json.dumps([r.as_dict() for r in [*results.values(), refused]])
    assert TOKEN not in reasons and "not-the-token" not in reasons


async def test_vllm_loads_at_run_time_when_allowed_and_tgi_restarts(data_dir: Path, tmp_path: Path) -> None:
    """vLLM with runtime LoRA updates unloads what is gone and loads what is new from its signed list, after its
    files are checked (an edited one: failed, nothing loaded); without runtime updates (and TGI) the launch
    wrapper restarts it on the list change: ``restarting``, never asked over HTTP."""
    from appliance.registry._publish import PublishEntry, Publisher
    from tests.serving.conftest import pin_publication_keys, sign_list

    adapter = data_dir / "adapters" / "triage-v1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_bytes(b'{"r": 4}')
    fingerprint, config = hashlib.sha256(b"weights").hexdigest(), hashlib.sha256(b'{"r": 4}').hexdigest()
    vllm_list = data_dir / "serving" / "vllm" / "lora_modules.json"
    vllm_list.parent.mkdir(parents=True)
    entry = PublishEntry("triage-v1", "triage", 1, str(adapter), fingerprint, "/models/base", config)
    vllm_list.write_bytes(Publisher.render("vllm", [entry]))
    sign_list(vllm_list, "vllm", Publisher.signed_digests([entry]))
    pinned = str(pin_publication_keys(tmp_path / "publication-keys.json"))
    vllm = Server({"old-v1": None})
    tgi = Server({})
    async with servers(vllm, tgi) as urls:
        runtime = _settings(
            data_dir,
            [{"url": urls[0], "kind": "vllm"}],
            allow_runtime_lora_updates=True,
            vllm_base_model_name="base",
            publication_public_keys=pinned,
        )
        [loaded] = await reload_replicas(runtime, "vllm", {"triage-v1": fingerprint})
        at_start = _settings(data_dir, [{"url": urls[0], "kind": "vllm"}, {"url": urls[1], "kind": "tgi"}])
        [restart_vllm] = await reload_replicas(at_start, "vllm", {"triage-v1": fingerprint})
        [restart_tgi] = await reload_replicas(at_start, "tgi", {"triage-v1": fingerprint})
        assert loaded.outcome == "loaded" and set(vllm.holdings) == {"triage-v1"}
        assert "/v1/unload_lora_adapter" in vllm.calls and "/v1/load_lora_adapter" in vllm.calls
        assert restart_vllm.outcome == restart_tgi.outcome == "restarting"
        assert tgi.calls == []

        vllm.holdings, vllm.calls = {}, []
        (adapter / "adapter_model.safetensors").write_bytes(b"other weights")  # edited on the serving host
        [refused] = await reload_replicas(runtime, "vllm", {"triage-v1": fingerprint})
    assert refused.outcome == "failed" and "does not match the published digest" in (refused.reason or "")
    assert vllm.holdings == {} and "/v1/load_lora_adapter" not in vllm.calls


async def test_a_pushed_vllm_replica_never_takes_runtime_loads(data_dir: Path) -> None:
    """A vLLM replica whose list a push delivers to its host (sync_receipt) is not asked to load at run time, even
    with runtime updates on: the files it would load were never checked on its host; it fails, never called."""
    vllm = Server({})
    async with servers(vllm) as urls:
        pushed = {"url": urls[0], "kind": "vllm", "name": "gpu2", "sync_receipt": str(data_dir / "gpu2.json")}
        settings = _settings(data_dir, [pushed], allow_runtime_lora_updates=True, vllm_base_model_name="base")
        [result] = await reload_replicas(settings, "vllm", {"triage-v1": FP_A})
    assert result.outcome == "failed" and "serve-launch" in (result.reason or "")
    assert vllm.calls == []
