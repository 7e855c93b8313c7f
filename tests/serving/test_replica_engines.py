"""Two real embedded engine processes behind one real gateway (real keys, real audit trail): one is SIGKILLed
during a bounded load, then restarted; adapters each replica lacks (or holds in another build) never reach it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import load_settings
from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.engines import EngineProcess
from tests.gateway.conftest import gateway_app, new_idp
from tests.serving.conftest import ServerThread, free_port, pin_publication_keys, write_adapter_list

Adapters = dict[str, tuple[Path, str]]
LOAD = 300  # requests during which one engine is killed
WORKERS = 8  # concurrent clients, each its own principal (the extraction detector counts per principal)
KILL_AFTER = 100  # answered requests before the SIGKILL


def _engine(listing: Path, tiny_model: Path, data_dir: Path) -> EngineProcess:
    """An engine on its own data directory that loads ``listing``, signed by the pinned publication keys."""
    port = free_port()
    pinned = pin_publication_keys(data_dir.parent / f"registry-{port}.pub.json")  # lists are signed
    env = {"APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS": str(pinned)}
    return EngineProcess(tiny_model, data_dir, port, adapters=listing, env=env)


@pytest.fixture
def engines(tiny_model: Path, lora_adapters: Adapters, tmp_path: Path) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    """gpu-a holds triage and notes; gpu-b holds triage, coding, and under the id notes-v1 other weights."""
    a_list = write_adapter_list(tmp_path / "a.json", {k: lora_adapters[k] for k in ("triage-v1", "notes-v1")})
    b_list = write_adapter_list(
        tmp_path / "b.json",
        {
            "triage-v1": lora_adapters["triage-v1"],
            "notes-v1": lora_adapters["coding-v1"],  # same id, another build: its fingerprint is coding's
            "coding-v1": lora_adapters["coding-v1"],
        },
    )
    a, b = (_engine(listing, tiny_model, tmp_path / f"var-{n}") for n, listing in (("a", a_list), ("b", b_list)))
    try:
        a.start(), b.start()
        a.wait_healthy(), b.wait_healthy()
        yield a, b
    finally:
        a.stop(), b.stop()


@pytest.mark.slow
def test_two_engines_one_killed_under_load_then_restarted(
    engines: tuple[EngineProcess, EngineProcess], lora_adapters: Adapters, tmp_path: Path
) -> None:
    """>= 99.5% of a load answered 2xx across a SIGKILL, every request audited with its replica, /readyz ready and
    degraded; after a restart traffic returns; no replica gets an adapter it lacks or holds in another build."""
    from appliance.audit import open_audit_log
    from appliance.gateway import AdapterRef
    from appliance.keys import open_key_service
    from appliance.serving import open_backend
    from appliance.testing import StaticCatalog

    a, b = engines
    listed = {m["id"]: m.get("fingerprint") for m in httpx.get(b.url + "/v1/models", timeout=10).json()["data"]}
    assert listed["notes-v1"] == lora_adapters["coding-v1"][1]  # the engine reports what it loaded
    info = httpx.get(b.url + "/info", timeout=10).json()
    assert {e["id"]: e["fingerprint"] for e in info["adapters"]}["triage-v1"] == lora_adapters["triage-v1"][1]
    settings = load_settings(
        data_dir=tmp_path / "gw",
        policies_dir=REPO_ROOT / "policies",
        serving={
            "backend": "embedded",
            "replicas": [{"url": a.url, "name": "gpu-a"}, {"url": b.url, "name": "gpu-b"}],
            "replica_probe_initial_s": 0.2,
            "replica_probe_max_s": 1.0,
            "timeout_s": 30,
        },
    )
    idp = new_idp("replicas")
    keys = open_key_service(settings)
    audit = open_audit_log(settings, keys=keys)
    catalog = StaticCatalog(
        [
            AdapterRef("triage", 1, lora_adapters["triage-v1"][1], is_production=True),
            AdapterRef("coding", 1, lora_adapters["coding-v1"][1], is_production=True),
            AdapterRef("notes", 1, lora_adapters["notes-v1"][1], is_production=False),
        ]
    )
    app = gateway_app(settings, idp, backend=open_backend(settings), audit=audit, registry=catalog, keys=keys)
    tokens = [
        {"Authorization": f"Bearer {idp.token({'sub': f'svc-{i}', 'scope': 'research'})}"} for i in range(WORKERS)
    ]
    answers: list[tuple[str, int, str | None]] = []  # (adapter, status, X-Audit-Id)

    async def call(client: httpx.AsyncClient, worker: int, adapter: str, n: int) -> None:
        body = {"inputs": f"note {worker}-{n} for {adapter}", "parameters": {"max_new_tokens": 2}}
        try:
            r = await client.post(f"/v1/inference/adapter/{adapter}/1", json=body, headers=tokens[worker])
            answers.append((adapter, r.status_code, r.headers.get("x-audit-id")))
        except httpx.TransportError:
            answers.append((adapter, 0, None))

    async def load(url: str, adapter: str, total: int, workers: int, kill: EngineProcess | None = None) -> None:
        done = 0

        async def worker(w: int, client: httpx.AsyncClient) -> None:
            nonlocal done
            n = 0
            while done < total:
                done += 1
                n += 1
                await call(client, w, adapter, n)
                if kill is not None and kill.proc is not None and done >= KILL_AFTER and kill.proc.poll() is None:
                    kill.proc.kill()  # SIGKILL: requests in flight there are cut off mid-answer

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await asyncio.gather(*(worker(w, client) for w in range(workers)))

    with ServerThread(app) as gateway:
        # an adapter goes only where it is loaded with its published fingerprint
        asyncio.run(load(gateway.url, "coding", 12, 3))
        asyncio.run(load(gateway.url, "notes", 12, 3))
        assert [s for _, s, _ in answers] == [200] * 24

        started = time.monotonic()
        asyncio.run(load(gateway.url, "triage", LOAD, WORKERS, kill=a))
        load_s = time.monotonic() - started
        assert a.proc is not None and a.proc.poll() is not None  # killed during the load
        under_load = [s for adapter, s, _ in answers if adapter == "triage"]
        ok = sum(200 <= s < 300 for s in under_load)
        assert len(under_load) == LOAD and ok / LOAD >= 0.995, Counter(under_load)

        ready = httpx.get(gateway.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["ready"] is True and ready.json()["degraded"] == ["gpu-a"]
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        assert 'appliance_replica_healthy{replica="gpu-a"} 0.0' in metrics
        assert 'appliance_replica_healthy{replica="gpu-b"} 1.0' in metrics

        a.start()
        a.wait_healthy()
        deadline = time.monotonic() + 30
        while httpx.get(gateway.url + "/readyz", timeout=10).json().get("degraded") != []:
            assert time.monotonic() < deadline, "the restarted replica was not probed back in"
            time.sleep(0.2)
        asyncio.run(load(gateway.url, "triage", 40, 4))
        asyncio.run(load(gateway.url, "coding", 6, 2))
        asyncio.run(load(gateway.url, "notes", 6, 2))
    asyncio.run(audit.close())

    by_request: dict[str, list[dict[str, Any]]] = {}
    records = audit_records(settings.audit_dir)
    requests = {r["event_id"] for r in records if r["type"] == "gateway.request"}
    for r in records:
        if r["type"] == "gateway.response":
            by_request.setdefault(r["details"]["request_event"], []).append(r)
    audit_ids = [aid for _, _, aid in answers]
    assert None not in audit_ids and len(set(audit_ids)) == len(answers)
    for aid in audit_ids:  # one request record and exactly one outcome record per request, naming its replica
        assert aid in requests and len(by_request[aid]) == 1, aid
    replicas_of: dict[str, Counter[str]] = {}
    for adapter, status, aid in answers:
        outcome = by_request[str(aid)][0]
        if 200 <= status < 300:
            assert outcome["outcome"]["status"] == "success"
        replicas_of.setdefault(adapter, Counter())[outcome["details"]["replica"]] += 1
    assert set(replicas_of["coding"]) == {"gpu-b"}  # gpu-a lacks it
    assert set(replicas_of["notes"]) == {"gpu-a"}  # gpu-b holds another build under that id
    after_restart = Counter(
        by_request[str(aid)][0]["details"]["replica"] for _, _, aid in answers[-52:-12]
    )  # the 40 triage requests after the restart
    assert after_restart["gpu-a"] > 0 and after_restart["gpu-b"] > 0
    print(
        f"\n{LOAD} requests through a SIGKILL in {load_s:.1f} s: {ok} answered 2xx; triage by {replicas_of['triage']}"
    )
