"""The gateway over a ReplicaSet of a real HTTP server speaking vLLM's API: the principal's prefix-cache salt,
the replica in the outcome record, readiness over replicas."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from litestar.testing import TestClient

from appliance.config import Settings
from appliance.serving import open_backend
from appliance.testing import FakeKeyService, MemoryAuditLog, StaticCatalog
from tests.gateway.conftest import ADAPTERS, IdP, gateway_app
from tests.serving.conftest import free_port

BODY = {"inputs": "synthetic prompt for the test", "parameters": {"max_new_tokens": 2}}


class VLLMStub:
    """vLLM's /v1/models, /v1/completions and /health on a loopback port, in a thread; keeps each request body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(status=200)
        if request.path == "/v1/models":
            data = [{"id": "tiny", "parent": None}] + [{"id": a.served_id, "parent": "tiny"} for a in ADAPTERS]
            return web.json_response({"object": "list", "data": data})
        self.bodies.append(await request.json())
        return web.json_response(
            {
                "choices": [{"text": "ok", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> VLLMStub:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def vllm_gateway(settings: Settings, idp: IdP) -> Iterator[tuple[TestClient[Any], VLLMStub, MemoryAuditLog]]:
    """A gateway whose one replica is the vLLM stub, with the adapters published to vLLM."""
    with VLLMStub() as stub:
        s = settings.model_copy(
            update={
                "serving": settings.serving.model_copy(
                    update={
                        "backend": "vllm",
                        "vllm_base_model_name": "tiny",
                        "replicas": [
                            settings.serving.replica_list()[0].model_copy(
                                update={"url": f"http://127.0.0.1:{stub.port}", "kind": "vllm"}
                            )
                        ],
                    }
                )
            }
        )
        listing = s.serving_dir / "vllm" / "lora_modules.json"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(json.dumps([{"name": a.served_id, "path": f"/srv/{a.served_id}"} for a in ADAPTERS]))
        audit = MemoryAuditLog()
        app = gateway_app(
            s, idp, backend=open_backend(s), audit=audit, registry=StaticCatalog(ADAPTERS), keys=FakeKeyService()
        )
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client, stub, audit


def test_vllm_cache_salt_is_per_principal_and_derived_by_the_gateway(
    vllm_gateway: tuple[TestClient[Any], VLLMStub, MemoryAuditLog], idp: IdP
) -> None:
    """Each principal gets its own stable salt (an audit-key HMAC, not the subject), and the outcome names the
    replica that answered."""
    client, stub, audit = vllm_gateway
    for subject in ("svc-1", "svc-2", "svc-1"):
        headers = {"Authorization": f"Bearer {idp.token({'sub': subject})}"}
        r = client.post("/v1/inference/adapter/triage/production", json=BODY, headers=headers)
        assert r.status_code == 200, r.text
    salts = [b.get("cache_salt") for b in stub.bodies]
    assert salts[0] == salts[2] and salts[0] != salts[1]
    assert all(isinstance(s, str) and re.fullmatch(r"[0-9a-f]{64}", s) for s in salts)
    assert "svc-1" not in salts[0]
    outcome = audit.of_type("gateway.response")[-1]
    assert outcome["details"]["replica"] == f"127.0.0.1:{stub.port}"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["degraded"] == [] and ready.json()["uncovered"] == []
