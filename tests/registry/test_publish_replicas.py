"""Publishing reaches the servers: ``appliance registry publish|unpublish`` makes every embedded engine replica load
the new signed list (its authenticated ``/admin/reload``) and reads back what each holds, with two real engine
processes behind a real gateway, no SIGHUP and no manual reload; a replica that is down is reported failed while
the other loads, and the command exits non-zero."""

from __future__ import annotations

import asyncio
import json
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
from tests.fixtures.cli import Cli
from tests.fixtures.engines import EngineProcess
from tests.gateway.conftest import gateway_app, new_idp
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory
from tests.serving.conftest import ServerThread, free_port

ADMIN_TOKEN = "admin-token-never-printed-4f1c9e"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")
    return Cli(capsys, monkeypatch)


def _settings(data_dir: Path, a: EngineProcess, b: EngineProcess, b_list: Path) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "policies_dir": str(REPO_ROOT / "policies"),
        "serving": {
            "backend": "embedded",
            "admin_token": ADMIN_TOKEN,
            "connect_timeout_s": 1.0,
            "connect_retries": 0,
            "reload_timeout_s": 30.0,
            "replica_probe_initial_s": 0.2,
            "replica_probe_max_s": 1.0,
            "replicas": [
                {"url": a.url, "name": "gpu-a"},
                {"url": b.url, "name": "gpu-b", "list_path": str(b_list)},
            ],
        },
    }


def _write_toml(path: Path, values: dict[str, Any]) -> Path:
    serving = dict(values["serving"])
    replicas = serving.pop("replicas")
    lines = [f"data_dir = {json.dumps(values['data_dir'])}", f"policies_dir = {json.dumps(values['policies_dir'])}"]
    lines += ["[serving]"] + [f"{k} = {json.dumps(v)}" for k, v in serving.items()]
    for replica in replicas:
        lines += ["[[serving.replicas]]"] + [f"{k} = {json.dumps(v)}" for k, v in replica.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def engines(data_dir: Path, tiny_model: Path, tmp_path: Path) -> Iterator[tuple[EngineProcess, EngineProcess, Path]]:
    """Two engines over the registry's data directory, checking signatures with the registry's key service and
    taking reloads only with the admin token; not started yet."""
    b_list = tmp_path / "gpu-b" / "adapters.json"  # gpu-b reads its own copy, written by the registry
    admin = {"APPLIANCE_SERVING__ADMIN_TOKEN": ADMIN_TOKEN}
    a = EngineProcess(tiny_model, data_dir, free_port(), env=admin)
    b = EngineProcess(tiny_model, data_dir, free_port(), adapters=b_list, env=admin)
    try:
        yield a, b, b_list
    finally:
        a.stop(), b.stop()


@pytest.mark.slow
def test_publish_and_unpublish_reach_every_replica(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    engines: tuple[EngineProcess, EngineProcess, Path],
    make_run: RunFactory,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    """publish: both engines load it and the gateway answers with it through both, no SIGHUP; unpublish: refused on
    both; publish with one engine down: that one failed (reason, no secret), the other loaded, exit 69, audited."""
    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service
    from appliance.registry import open_registry

    a, b, b_list = engines
    values = _settings(data_dir, a, b, b_list)
    monkeypatch.setenv("APPLIANCE_CONFIG", str(_write_toml(tmp_path / "appliance.toml", values)))
    settings = load_settings(**values)
    reg = open_registry(settings)
    try:
        reg.grant(OPERATOR.subject, "admin", OPERATOR)
        for approver in APPROVERS:
            reg.grant(approver.subject, "approver", OPERATOR)
        for name in ("coding", "triage"):
            reg.add(make_run(ledger_db=reg.ledger_path), name, OPERATOR)
            for approver in APPROVERS:
                reg.approve(name, 1, approver)
        fingerprint = reg.show("triage", 1).weights_fingerprint
    finally:
        reg.close()

    # before the servers start: the lists only (gpu-b's own copy included), then each engine loads them at start
    code, out, err = cli("registry", "publish", "coding", "1", "--actor", "olga", "--no-reload")
    assert code == 0, err
    assert json.loads(b_list.read_bytes()) == json.loads((settings.serving_dir / "embedded/adapters.json").read_bytes())
    a.start(), b.start()
    a.wait_healthy(), b.wait_healthy()
    assert set(a.holds()) == set(b.holds()) == {"coding-v1"}

    started = time.monotonic()
    code, out, err = cli("registry", "publish", "triage", "1", "--actor", "olga", "--json")
    publish_s = time.monotonic() - started
    assert code == 0, err
    report = json.loads(out)
    assert {r["replica"]: r["outcome"] for r in report["replicas"]} == {"gpu-a": "loaded", "gpu-b": "loaded"}
    assert a.holds()["triage-v1"] == b.holds()["triage-v1"] == fingerprint  # no SIGHUP, no manual reload

    gw_settings = load_settings(**{**values, "data_dir": str(tmp_path / "gw")})
    idp = new_idp("publish")
    keys = open_key_service(gw_settings)
    audit = open_audit_log(gw_settings, keys=keys)
    catalog = open_registry(settings, keys=open_key_service(settings), audit=RecordingAudit())
    app = gateway_app(gw_settings, idp, audit=audit, registry=catalog, keys=keys)
    tokens = [{"Authorization": f"Bearer {idp.token({'sub': f'svc-{i}', 'scope': 'research'})}"} for i in range(6)]

    bodies: list[str] = []

    async def burst(url: str, rounds: int) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(i: int, n: int) -> int:
                body = {"inputs": f"note {i}-{n}", "parameters": {"max_new_tokens": 4}}
                r = await client.post("/v1/inference/adapter/triage/1", json=body, headers=tokens[i])
                bodies.append(r.text[:300])
                return r.status_code

            out: list[int] = []
            for n in range(rounds):
                out += await asyncio.gather(*(one(i, n) for i in range(len(tokens))))
            return out

    try:
        with ServerThread(app) as gateway:
            assert asyncio.run(burst(gateway.url, 3)) == [200] * 18
            replicas = Counter(
                r["details"]["replica"] for r in audit_records(gw_settings.audit_dir) if r["type"] == "gateway.response"
            )
            assert set(replicas) == {"gpu-a", "gpu-b"}, replicas  # answered through both replicas

            code, out, err = cli("registry", "unpublish", "triage", "1", "--actor", "olga")
            assert code == 0, err
            assert "gpu-a" in out and "gpu-b" in out and out.count("loaded") == 2
            for engine in (a, b):  # refused on both, never run on the base model
                assert set(engine.holds()) == {"coding-v1"}
                body = {"inputs": "x", "parameters": {"adapter_id": "triage-v1", "max_new_tokens": 2}}
                assert httpx.post(engine.url + "/generate", json=body, timeout=30).status_code == 422
            assert set(asyncio.run(burst(gateway.url, 1))) == {404}

            b.stop()  # one replica down during the next publish
            started = time.monotonic()
            code, out, err = cli("registry", "publish", "triage", "1", "--actor", "olga", "--json")
            took = time.monotonic() - started
            assert code == 69, (out, err)
            outcomes = {r["replica"]: r for r in json.loads(out)["replicas"]}
            assert outcomes["gpu-a"]["outcome"] == "loaded" and outcomes["gpu-b"]["outcome"] == "failed"
            assert "BACKEND_UNAVAILABLE" in outcomes["gpu-b"]["reason"] and "REPLICA_RELOAD_FAILED" in err
            assert took < 20, took  # the replica that is down did not hold the other up
            assert a.holds()["triage-v1"] == fingerprint
            assert set(asyncio.run(burst(gateway.url, 1))) == {200}, bodies[-6:]  # served by gpu-a alone
            assert ADMIN_TOKEN not in out + err
    finally:
        asyncio.run(audit.close())
        catalog.close()

    registry_trail = audit_records(settings.audit_dir)
    reloads = [r for r in registry_trail if r["type"] == "registry.reload"]
    assert [r["details"]["change"] for r in reloads] == ["publish", "unpublish", "publish"]
    assert reloads[0]["outcome"]["status"] == "success" and reloads[0]["details"]["loaded"] == 2
    last = reloads[-1]
    assert last["outcome"] == {"status": "error", "http_status": None, "error_class": "REPLICA_RELOAD_FAILED"}
    assert last["details"]["failed_replicas"] == "gpu-b" and last["details"]["outcomes"] == "gpu-a=loaded|gpu-b=failed"
    assert [r["type"] for r in registry_trail].count("registry.publish") == 3  # each publication stays recorded
    assert ADMIN_TOKEN not in json.dumps(registry_trail)
    print(f"\npublish reached 2 replicas in {publish_s:.2f} s; with one down in {took:.2f} s; gateway by {replicas}")


def test_reach_records_each_replica_without_free_text(
    registry: Any, audit: RecordingAudit, make_run: RunFactory, data_dir: Path
) -> None:
    """Down replicas and a replica whose own list cannot be written fail alone; the registry.reload event names
    them within an audit identifier's cap and passes the audit schema; the publication itself stays."""
    from appliance.audit._schema import validate_event
    from appliance.registry import reach_replicas

    registry.add(make_run(ledger_db=registry.ledger_path), "triage", OPERATOR)
    for approver in APPROVERS:
        registry.approve("triage", 1, approver)
    registry.publish("triage", 1, "embedded", OPERATOR)
    (data_dir / "not-a-dir").write_text("")
    down = [{"url": f"http://127.0.0.1:{free_port()}", "name": f"gpu-node-{i:02d}.hospital.example"} for i in range(12)]
    blocked = {"url": f"http://127.0.0.1:{free_port()}", "name": "blocked", "list_path": str(data_dir / "not-a-dir/x")}
    settings = load_settings(
        data_dir=data_dir,
        policies_dir=REPO_ROOT / "policies",
        serving={"connect_timeout_s": 0.5, "connect_retries": 0, "replicas": [blocked, *down]},
    )
    report = reach_replicas(
        registry, settings, change="publish", name="triage", version=1, targets=["embedded"], actor=OPERATOR
    )
    assert len(report.failed) == 13 and report.replicas[0].replica == "blocked"
    assert (report.replicas[0].reason or "").startswith("cannot write its list")
    assert all("BACKEND_UNAVAILABLE" in (r.reason or "") for r in report.replicas[1:])
    event = audit.events[-1]
    assert event["type"] == "registry.reload" and event["outcome"]["error_class"] == "REPLICA_RELOAD_FAILED"
    details = event["details"]
    assert details["failed"] == 13 and details["loaded"] == 0 and details["replicas"] == 13
    assert len(details["outcomes"]) <= 128 and details["outcomes"].startswith("blocked=failed|gpu-node-00")
    assert details["outcomes"].rsplit("|", 1)[1].startswith("+")  # how many were left out
    validate_event(event)
    assert registry.show("triage", 1).status == "production"


def test_cli_publish_reports_each_replica_and_exits_69_when_one_failed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, make_run: RunFactory, data_dir: Path, tmp_path: Path
) -> None:
    """The table names each replica and why it failed, exit 69 with REPLICA_RELOAD_FAILED; --json is one document
    on stdout; --no-reload asks nobody and exits 0; the publication is recorded either way."""
    values = {
        "data_dir": str(data_dir),
        "policies_dir": str(REPO_ROOT / "policies"),
        "serving": {
            "connect_timeout_s": 0.5,
            "connect_retries": 0,
            "replicas": [{"url": f"http://127.0.0.1:{free_port()}", "name": "gpu-down"}],
        },
    }
    monkeypatch.setenv("APPLIANCE_CONFIG", str(_write_toml(tmp_path / "appliance.toml", values)))
    from appliance.registry import open_registry

    reg = open_registry(load_settings(**values))
    try:
        reg.grant(OPERATOR.subject, "admin", OPERATOR)
        for approver in APPROVERS:
            reg.grant(approver.subject, "approver", OPERATOR)
        reg.add(make_run(ledger_db=reg.ledger_path), "triage", OPERATOR)
        for approver in APPROVERS:
            reg.approve("triage", 1, approver)
    finally:
        reg.close()

    code, out, err = cli("registry", "publish", "triage", "1", "--actor", "olga")
    assert code == 69, (out, err)
    assert "published triage-v1 to embedded" in out and "gpu-down" in out and "BACKEND_UNAVAILABLE" in out
    assert "REPLICA_RELOAD_FAILED: not loaded on gpu-down" in err
    code, out, err = cli("registry", "list", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "production"  # the publication stays
    code, out, err = cli("registry", "unpublish", "triage", "1", "--actor", "olga", "--json")
    assert code == 69
    document = json.loads(out)  # log lines went to stderr
    assert document["change"] == "unpublish" and document["replicas"][0]["outcome"] == "failed"
    code, out, err = cli("registry", "publish", "triage", "1", "--actor", "olga", "--no-reload")
    assert code == 0, err
    assert "gpu-down" not in out
