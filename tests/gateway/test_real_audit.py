"""Every event the gateway writes is accepted by the real audit trail (file sink, real local key service), and
nothing in the trail carries the prompt, the output, a token or a key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from appliance.config import Settings, load_settings
from appliance.gateway._service import SESSION_COOKIE
from appliance.testing import FakeBackend, StaticCatalog
from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.gateway.conftest import ADAPTERS, IdP, gateway_app

PROMPT = "ZEBRA-PROMPT-MARKER patient note text"


@pytest.fixture
def real(data_dir: Path, idp: IdP, tmp_path: Path) -> Iterator[tuple[TestClient[Any], Settings, Any]]:
    """A gateway over the real key service and audit writer (backend and catalog are the shipped fakes)."""
    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "access.yaml").write_text((REPO_ROOT / "policies" / "access.yaml").read_text())
    settings = load_settings(data_dir=data_dir, policies_dir=policies)
    keys = open_key_service(settings)
    audit = open_audit_log(settings, keys=keys)
    backend = FakeBackend({a.served_id for a in ADAPTERS}, word="ZEBRA-OUTPUT")
    app = gateway_app(settings, idp, backend=backend, audit=audit, registry=StaticCatalog(ADAPTERS), keys=keys)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, settings, app.state.gateway


def _records(settings: Settings) -> list[dict[str, Any]]:
    return audit_records(settings.audit_dir)


def test_all_gateway_events_accepted_and_phi_free(real: tuple[TestClient[Any], Settings, Any], idp: IdP) -> None:
    """Requests, denials, throttles, admin changes, break-glass and policy reloads all land in the real trail."""
    client, settings, gw = real
    bearer = {"Authorization": f"Bearer {idp.token()}"}
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin', 'sub': 'adam'})}"}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}
    assert client.post("/v1/inference/adapter/triage/production", json=body, headers=bearer).status_code == 200
    r = client.post("/v1/inference/adapter/triage/production/stream", json=body, headers=bearer)
    assert r.status_code == 200 and "generated_text" in r.text
    assert client.post("/v1/inference/adapter/oncology/1", json=body, headers=bearer).status_code == 403
    assert client.post("/v1/inference/adapter/triage/production", json=body).status_code == 401
    r = client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["admin"]}, headers=admin)
    assert r.status_code == 201
    key, key_id = r.json()["key"], r.json()["id"]
    assert client.delete(f"/v1/admin/keys/{key_id}", headers=admin).status_code == 200
    grant = {"subject": "alice", "role": "emergency-clinician", "reason": "Mass casualty incident, ED overflow"}
    r = client.post("/v1/admin/breakglass", json=grant, headers=admin)
    assert r.status_code == 201, r.text
    alice = {"Authorization": f"Bearer {idp.token({'sub': 'alice', 'scope': 'none'})}"}
    r = client.post("/v1/inference/adapter/oncology/production", json=body, headers=alice)
    assert r.status_code == 200, r.text
    (settings.policies_dir / "access.yaml").write_text("roles: {broken: {routes: [nope]}}\n")
    r = client.post("/v1/admin/policy/reload", headers=admin)
    assert r.status_code == 422 and r.json()["applied"] is False
    assert client.post("/v1/inference/adapter/triage/production", json=body, headers=bearer).status_code == 200
    session = client.blocking_portal.call(
        gw.sessions.create, {"subject": "alice", "name": "Alice", "groups": ["analysts"]}
    )
    client.cookies.set(SESSION_COOKIE, session.id)
    r = client.post(
        "/console/generate",
        json={"model": "triage@production", "prompt": PROMPT},
        headers={"X-CSRF-Token": session.csrf},
    )
    assert r.status_code == 200 and '"done": true' in r.text

    records = _records(settings)
    types = {r["type"] for r in records}
    assert {
        "gateway.request",
        "gateway.response",
        "gateway.denied",
        "admin.apikey.create",
        "admin.apikey.revoke",
        "admin.breakglass.grant",
        "policy.reload",
    } <= types
    flagged = [r for r in records if r["type"] == "gateway.request" and r["details"].get("breakglass")]
    assert flagged and flagged[0]["details"]["review_required"] is True
    blob = json.dumps(records)
    for secret in ("ZEBRA", key, idp.token().split(".")[2], session.id, session.csrf):
        assert secret not in blob
    digests = [r["digests"] for r in records if r["type"] == "gateway.response"]
    assert digests and all(len(d["prompt"]) == 64 and d["key_version"] == 1 for d in digests)


def test_breakglass_subject_the_trail_cannot_hold_is_refused(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP
) -> None:
    """A grant for a subject no IdP issues (a control character, a bidi override) is refused (422, audited)
    instead of being stored in force while its audit record fails."""
    client, settings, gw = real
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin', 'sub': 'adam'})}"}
    for subject in ("Dr\nAlice", "\u202eAlice"):
        grant = {"subject": subject, "role": "emergency-clinician", "reason": "Mass casualty incident, ED overflow"}
        r = client.post("/v1/admin/breakglass", json=grant, headers=admin)
        assert r.status_code == 422 and r.json()["error_type"] == "VALIDATION_FAILED", r.text
    assert gw.breakglass.list() == []
    denied = [r for r in _records(settings) if r["type"] == "gateway.denied"]
    assert len(denied) == 2 and all(r["action"] == "grant" for r in denied)


def test_breakglass_for_an_accented_subject_is_granted_recorded_and_in_force(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP
) -> None:
    """A grant for 'José García' (typed precomposed) is recorded with that subject and is in force for the IdP's
    token whatever Unicode form its sub uses."""
    client, settings, _ = real
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin', 'sub': 'adam'})}"}
    grant = {"subject": "José García", "role": "emergency-clinician", "reason": "Mass casualty incident, ED overflow"}
    r = client.post("/v1/admin/breakglass", json=grant, headers=admin)
    assert r.status_code == 201, r.text
    (granted,) = [x for x in _records(settings) if x["type"] == "admin.breakglass.grant"]
    assert granted["details"]["subject"] == "José García"
    nfd = "Jose\u0301 Garci\u0301a"  # what an IdP on another platform may send
    jose = {"Authorization": f"Bearer {idp.token({'sub': nfd, 'scope': 'none'})}"}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    r = client.post("/v1/inference/adapter/oncology/production", json=body, headers=jose)
    assert r.status_code == 200, r.text
    request = _records(settings)[-2]
    assert request["type"] == "gateway.request" and request["details"]["breakglass"] == granted["details"]["grant_id"]
    assert request["actor"]["subject"] == "José García"


def test_api_key_name_the_trail_cannot_hold_is_refused(real: tuple[TestClient[Any], Settings, Any], idp: IdP) -> None:
    """A key's name is its client_id in every audit record: a name the trail refuses (a space) would make every
    audited request with the key a 503, so it is refused at creation; an accepted name works end to end."""
    client, _, gw = real
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin', 'sub': 'adam'})}"}
    r = client.post("/v1/admin/keys", json={"name": "lab feed", "scopes": ["admin"]}, headers=admin)
    assert r.status_code == 422 and gw.apikeys.list() == []
    r = client.post("/v1/admin/keys", json={"name": "lab-feed", "scopes": ["admin"]}, headers=admin)
    assert r.status_code == 201
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.post("/v1/admin/policy/reload", headers=key).status_code == 200


def test_policy_with_role_names_the_trail_cannot_hold_is_refused(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP
) -> None:
    """Role names are written into every audit record (actor.roles): a policy naming a role the trail refuses
    (a space) is an invalid reload, and the last good policy keeps serving instead of every request failing."""
    client, settings, _ = real
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin', 'sub': 'adam'})}"}
    path = settings.policies_dir / "access.yaml"
    path.write_text(path.read_text().replace("  analyst:\n", "  clinical analyst:\n"))
    r = client.post("/v1/admin/policy/reload", headers=admin)
    assert r.status_code == 422 and r.json()["applied"] is False and "role name" in r.json()["message"]
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
    bearer = {"Authorization": f"Bearer {idp.token()}"}
    assert client.post("/v1/inference/adapter/triage/production", json=body, headers=bearer).status_code == 200


@pytest.mark.parametrize("query", ["since=0001-01-01T00:00:00%2B01:00", "until=9999-12-31T23:59:59-01:00"])
def test_compliance_time_outside_utc_range_is_422_not_500(
    real: tuple[TestClient[Any], Settings, Any], query: str
) -> None:
    """A search or export time whose UTC equivalent does not exist is refused as a bad filter, not a crash."""
    client, _, gw = real
    session = client.blocking_portal.call(gw.sessions.create, {"subject": "carol", "groups": ["compliance"]})
    client.cookies.set(SESSION_COOKIE, session.id)
    assert client.get(f"/compliance?search=1&{query}").status_code == 422
    r = client.get(f"/compliance/export?fmt=csv&{query}")
    assert r.status_code == 422 and r.json()["error_type"] == "VALIDATION_FAILED"
    r = client.get("/compliance/export?fmt=csv&since=2020-01-01T02:00:00%2B02:00")
    assert r.status_code == 200


def test_api_key_scopes_the_trail_cannot_hold_are_refused_before_the_key_is_stored(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP
) -> None:
    """The create record carries the key's scopes as one audit identifier: scopes it cannot hold ('*', too long
    joined) are a 422 (audited) with no key stored, instead of a stored key whose record failed (503) and whose
    secret nobody received. Several scopes are recorded and the key works."""
    client, settings, gw = real
    admin = {"Authorization": f"Bearer {idp.token({'scope': 'admin research', 'sub': 'adam'})}"}
    for scopes in (["admin", "*"], ["admin", "research", *(f"{c}" * 64 for c in "xy")]):
        r = client.post("/v1/admin/keys", json={"name": "svc", "scopes": scopes}, headers=admin)
        assert r.status_code == 422 and r.json()["error_type"] == "VALIDATION_FAILED", r.text
    assert gw.apikeys.list() == []
    denied = [r for r in _records(settings) if r["type"] == "gateway.denied" and r["action"] == "create"]
    assert len(denied) == 2
    r = client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["research", "admin"]}, headers=admin)
    assert r.status_code == 201, r.text
    created = [r for r in _records(settings) if r["type"] == "admin.apikey.create"]
    assert [c["details"]["key_id"] for c in created] == [r.json()["id"]]
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.post("/v1/admin/policy/reload", headers=key).status_code == 200


def test_swept_logoff_is_accepted_by_the_real_trail(real: tuple[TestClient[Any], Settings, Any]) -> None:
    """The sweeper's auth.logout (no request: no route, no source address) is a valid record of the real trail and
    holds neither the session id nor its CSRF token."""
    client, settings, gw = real
    gw.sessions.idle_timeout_s = 0.2  # the memory store reads it at each check
    session = client.blocking_portal.call(gw.sessions.create, {"subject": "alice", "groups": ["analysts"]})
    time.sleep(0.3)
    assert client.blocking_portal.call(gw.sweep_sessions) == 1
    (logout,) = [r for r in _records(settings) if r["type"] == "auth.logout"]
    assert logout["details"]["reason"] == "idle" and logout["actor"]["session_id"] == session.handle
    assert session.id not in json.dumps(logout) and session.csrf not in json.dumps(logout)


@pytest.mark.parametrize("subject", ["josé.garcía", "er-doc ", "Dr Alice Müller", "line\nbreak\u202e"])
def test_any_identity_the_idp_signs_is_recorded_not_an_outage(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP, subject: str
) -> None:
    """A validly signed token whose sub (and azp) has spaces, accents or control characters is served on an allowed
    adapter (plain and streamed) and refused on another with an audited 403, each record naming the subject in the
    trail's escaped form: never a 503 AUDIT_UNAVAILABLE, which stays for storage faults."""
    from appliance.audit import recordable_identity

    client, settings, _ = real
    bearer = {"Authorization": f"Bearer {idp.token({'sub': subject, 'azp': 'Ward PC ünit 7', 'client_id': None})}"}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    r = client.post("/v1/inference/adapter/triage/production", json=body, headers=bearer)
    assert r.status_code == 200, r.text
    served = r.headers["X-Audit-Id"]
    r = client.post("/v1/inference/adapter/triage/production/stream", json=body, headers=bearer)
    assert r.status_code == 200 and "generated_text" in r.text and "error_type" not in r.text
    r = client.post("/v1/inference/adapter/oncology/1", json=body, headers=bearer)
    assert r.status_code == 403 and r.headers["X-Audit-Id"] != "-", r.text
    records = {rec["event_id"]: rec for rec in _records(settings)}
    denied = records[r.headers["X-Audit-Id"]]
    assert denied["type"] == "gateway.denied" and denied["outcome"]["http_status"] == 403
    for rec in (records[served], denied):
        assert rec["actor"]["subject"] == recordable_identity(subject)
        assert rec["actor"]["client_id"] == "Ward PC ünit 7"
    mine = [x for x in records.values() if x["actor"]["subject"] == recordable_identity(subject)]
    assert sorted(x["type"] for x in mine) == sorted(["gateway.denied"] + ["gateway.request", "gateway.response"] * 2)


def test_a_session_of_an_accented_subject_is_recorded_and_found(
    real: tuple[TestClient[Any], Settings, Any], idp: IdP
) -> None:
    """The browser path: a session whose subject is 'José García' (as the login stored it) uses the console and signs
    out, each recorded under that name; the compliance page finds those records by it."""
    client, settings, gw = real
    session = client.blocking_portal.call(
        gw.sessions.create, {"subject": "José García", "name": "José", "groups": ["analysts", "compliance"]}
    )
    client.cookies.set(SESSION_COOKIE, session.id)
    r = client.post(
        "/console/generate",
        json={"model": "triage@production", "prompt": PROMPT},
        headers={"X-CSRF-Token": session.csrf},
    )
    assert r.status_code == 200 and '"done": true' in r.text, r.text
    page = client.get("/compliance", params={"actor": "José García", "search": "1"})
    assert page.status_code == 200 and "gateway.response" in page.text, page.text[:500]
    r = client.post("/auth/logout", data={"_csrf": session.csrf}, follow_redirects=False)
    assert r.status_code == 303
    mine = [x for x in _records(settings) if x["actor"]["subject"] == "José García"]
    assert {"gateway.request", "gateway.response", "auth.logout", "audit.search"} <= {x["type"] for x in mine}
    (search,) = [x for x in mine if x["type"] == "audit.search"]
    assert search["details"]["actor"] == "José García"  # who was searched for, as the trail records an identity
