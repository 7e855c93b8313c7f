"""A key service that refuses (local keystore at mode 0644, OpenBao sealed) fails every inference request closed:
before the first token, with a 503 whose ``X-Audit-Id`` names its record, on every inference route, streamed or
not; and a stream whose key service fails after it started ends with its error event and an outcome record.

The gateway runs over the real key service (the local keystore file, or a real OpenBao dev server that the test
seals) and the real audit writer on segment files; backend and catalog are the shipped fakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from appliance.config import Settings, load_settings
from appliance.protocols import GenerationParams, TokenEvent
from appliance.testing import FakeBackend, StaticCatalog
from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.openbao import OpenBaoServer
from tests.gateway.conftest import ADAPTERS, IdP, gateway_app

BODY = {"inputs": "a patient note", "parameters": {"max_new_tokens": 4}}
ROUTES: dict[str, dict[str, Any]] = {
    "/v1/inference/adapter/triage/production": BODY,
    "/v1/inference/adapter/triage/production/stream": BODY,
    "/v1/completions": {"model": "triage@production", "prompt": "a patient note", "max_tokens": 4},
    "/v1/chat/completions": {
        "model": "triage@production",
        "messages": [{"role": "user", "content": "a patient note"}],
        "max_tokens": 4,
        "stream": True,
    },
}


class FaultAfterFirstToken(FakeBackend):
    """The shipped fake backend, calling ``fault`` once it has sent its first token (a key service failing
    mid-stream)."""

    fault: Callable[[], None] | None = None

    async def stream(self, adapter_id: str, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        async for ev in super().stream(adapter_id, prompt, params):
            yield ev
            if ev.index == 0 and self.fault is not None:
                self.fault()


def _gateway(settings: Settings, idp: IdP) -> tuple[TestClient[Any], FaultAfterFirstToken]:
    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service

    keys = open_key_service(settings)
    audit = open_audit_log(settings, keys=keys)
    backend = FaultAfterFirstToken({a.served_id for a in ADAPTERS})
    app = gateway_app(settings, idp, backend=backend, audit=audit, registry=StaticCatalog(ADAPTERS), keys=keys)
    return TestClient(app, base_url="http://127.0.0.1"), backend


def _settings(data_dir: Path, tmp_path: Path, checkpoint_every: int = 100_000, **overrides: Any) -> Settings:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "access.yaml").write_text((REPO_ROOT / "policies" / "access.yaml").read_text())
    # by default no checkpoint falls due in the test: the refusals' own records do not need the key service
    audit = {"checkpoint_every": checkpoint_every, "checkpoint_interval_s": 3600}
    return load_settings(data_dir=data_dir, policies_dir=policies, audit=audit, **overrides)


def _records(settings: Settings) -> dict[str, dict[str, Any]]:
    return {r["event_id"]: r for r in audit_records(settings.audit_dir)}


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(p[5:]) for p in text.split("\n\n") if p.startswith("data:") and p[5:].strip() != "[DONE]"]


def _assert_refused_before_any_token(
    client: TestClient[Any], settings: Settings, backend: FakeBackend, bearer: dict[str, str], code: str
) -> None:
    calls = len(backend.calls)
    for path, body in ROUTES.items():
        r = client.post(path, json=body, headers=bearer)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.json()["error_type"] == code and "data:" not in r.text, (path, r.text)
        audit_id = r.headers["X-Audit-Id"]
        assert audit_id != "-", path
        record = _records(settings)[audit_id]
        assert record["type"] == "gateway.denied" and record["outcome"]["error_class"] == code, record
        assert record["outcome"]["http_status"] == 503 and record["adapter"]["name"] == "triage"
    assert len(backend.calls) == calls  # nothing reached the backend


def _assert_mid_stream_failure_ends_with_error_and_outcome(
    client: TestClient[Any], settings: Settings, bearer: dict[str, str], code: str
) -> None:
    r = client.post("/v1/inference/adapter/triage/production/stream", json=BODY, headers=bearer)
    assert r.status_code == 200  # it had started: the status line was out when the key service failed
    events = _events(r.text)
    assert events[0]["token"]["text"] and events[-1].get("error_type") == code, events
    assert all(e.get("generated_text") is None for e in events)  # the final event was never sent
    records = _records(settings)
    (outcome,) = [x for x in records.values() if x["details"].get("request_event") == r.headers["X-Audit-Id"]]
    assert outcome["type"] == "gateway.response" and outcome["outcome"]["error_class"] == code
    assert outcome["outcome"]["status"] == "error" and outcome["outcome"]["http_status"] == 503
    assert outcome["digests"]["prompt"] and outcome["digests"]["output"] is None  # made before the failure


@pytest.fixture
def local(data_dir: Path, tmp_path: Path, idp: IdP) -> Iterator[tuple[TestClient[Any], Settings, Any]]:
    settings = _settings(data_dir, tmp_path)
    client, backend = _gateway(settings, idp)
    with client:
        try:
            yield client, settings, backend
        finally:
            settings.keystore_path.chmod(0o600)  # before the writer closes: its audit.stop is signed


def test_local_keystore_at_0644_refuses_every_inference_before_a_token(
    local: tuple[TestClient[Any], Settings, FaultAfterFirstToken], idp: IdP
) -> None:
    """With the keystore readable by others, every inference route answers 503 KEYS_KEYSTORE_INSECURE with the id
    of its gateway.denied record, streams included (no 200, no token); at 0600 again it serves."""
    client, settings, backend = local
    bearer = {"Authorization": f"Bearer {idp.token()}"}
    assert client.post("/v1/inference/adapter/triage/production", json=BODY, headers=bearer).status_code == 200
    settings.keystore_path.chmod(0o644)
    _assert_refused_before_any_token(client, settings, backend, bearer, "KEYS_KEYSTORE_INSECURE")
    settings.keystore_path.chmod(0o600)
    r = client.post("/v1/inference/adapter/triage/production/stream", json=BODY, headers=bearer)
    assert r.status_code == 200 and _events(r.text)[-1]["generated_text"]


def test_a_checkpoint_that_cannot_be_signed_refuses_every_inference_before_a_token(
    data_dir: Path, tmp_path: Path, idp: IdP
) -> None:
    """The signing path: with a checkpoint due at every record and the keystore at 0644, no record can be made
    durable, so every inference route is a 503 (the key service's or the trail's code) and nothing is generated."""
    settings = _settings(data_dir, tmp_path, checkpoint_every=1)
    client, backend = _gateway(settings, idp)
    bearer = {"Authorization": f"Bearer {idp.token()}"}
    with client:
        try:
            settings.keystore_path.chmod(0o644)
            for path, body in ROUTES.items():
                r = client.post(path, json=body, headers=bearer)
                assert r.status_code == 503 and "data:" not in r.text, (path, r.text)
                assert r.json()["error_type"] in ("KEYS_KEYSTORE_INSECURE", "AUDIT_UNAVAILABLE"), r.text
            assert backend.calls == []
        finally:
            settings.keystore_path.chmod(0o600)


def test_local_keystore_turning_0644_mid_stream_ends_it_with_an_error_and_an_outcome(
    local: tuple[TestClient[Any], Settings, FaultAfterFirstToken], idp: IdP
) -> None:
    """The keystore made readable by others after the first token: the stream's last event is the error, and the
    outcome record says so (never a stream cut short without either)."""
    client, settings, backend = local
    backend.fault = lambda: settings.keystore_path.chmod(0o644)
    _assert_mid_stream_failure_ends_with_error_and_outcome(
        client, settings, {"Authorization": f"Bearer {idp.token()}"}, "KEYS_KEYSTORE_INSECURE"
    )


def test_local_keystore_turning_0644_during_a_generation_is_a_recorded_503(
    local: tuple[TestClient[Any], Settings, FaultAfterFirstToken], idp: IdP
) -> None:
    """Non-streamed: a key service failing between the prompt's digest and the output's is a 503 carrying the
    request's audit id, and the outcome record holds the error (the text is not answered)."""
    client, settings, backend = local
    real_generate = backend.generate

    async def generate(adapter_id: str, prompt: str, params: GenerationParams) -> Any:
        gen = await real_generate(adapter_id, prompt, params)
        settings.keystore_path.chmod(0o644)
        return gen

    backend.generate = generate  # type: ignore[method-assign]
    r = client.post(
        "/v1/inference/adapter/triage/production", json=BODY, headers={"Authorization": f"Bearer {idp.token()}"}
    )
    assert r.status_code == 503 and r.json()["error_type"] == "KEYS_KEYSTORE_INSECURE"
    assert "generated_text" not in r.text
    records = _records(settings)
    request = records[r.headers["X-Audit-Id"]]
    assert request["type"] == "gateway.request"
    (outcome,) = [x for x in records.values() if x["details"].get("request_event") == request["event_id"]]
    assert outcome["outcome"]["error_class"] == "KEYS_KEYSTORE_INSECURE"


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "code"), [("seal", "KEYS_VAULT_SEALED"), ("stop", "KEYS_VAULT_UNREACHABLE")])
def test_openbao_sealed_refuses_every_inference_and_ends_a_started_stream(
    openbao_private: OpenBaoServer, data_dir: Path, tmp_path: Path, idp: IdP, fault: str, code: str
) -> None:
    """Against a real OpenBao that is sealed (or stopped) during the test: sealed after a stream's first token, the
    stream ends with that error event and its outcome record; then every inference route answers 503
    KEYS_VAULT_SEALED (KEYS_VAULT_UNREACHABLE) with its record's id and no token."""
    keys = {"backend": "vault", "vault_addr": openbao_private.addr, "vault_token": openbao_private.root_token}
    settings = _settings(data_dir, tmp_path, keys=keys)
    client, backend = _gateway(settings, idp)
    bearer = {"Authorization": f"Bearer {idp.token()}"}
    with client:
        r = client.post("/v1/inference/adapter/triage/production/stream", json=BODY, headers=bearer)
        assert r.status_code == 200 and _events(r.text)[-1]["generated_text"]
        backend.fault = getattr(openbao_private, fault)
        _assert_mid_stream_failure_ends_with_error_and_outcome(client, settings, bearer, code)
        backend.fault = None
        _assert_refused_before_any_token(client, settings, backend, bearer, code)
