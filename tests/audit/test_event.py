"""The audit event constructor and its actors (``appliance.audit._event``)."""

from __future__ import annotations

import getpass
import json

import pytest

from appliance.audit import (
    actor_fields,
    adapter_fields,
    anonymous_actor,
    audit_event,
    cli_actor,
    invoking_user,
    system_actor,
)
from appliance.audit._schema import AuditEvent, validate_event


def test_invoking_user_is_the_person_behind_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under sudo the login name is the service account; the actor is $SUDO_USER."""
    monkeypatch.setenv("LOGNAME", "appliance")
    monkeypatch.setenv("SUDO_USER", "alice")
    assert invoking_user() == "alice"
    assert cli_actor()["subject"] == "alice"


def test_invoking_user_without_sudo_is_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sudo (or with an empty $SUDO_USER) the login name is the actor."""
    monkeypatch.setenv("SUDO_USER", "")
    monkeypatch.setenv("LOGNAME", "bob")
    assert invoking_user() == "bob"


def test_invoking_user_with_no_name_at_all_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container with no passwd entry and no $LOGNAME records ``unknown`` instead of failing the command."""
    monkeypatch.delenv("SUDO_USER", raising=False)

    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert invoking_user() == "unknown"


def test_cli_actor_takes_an_explicit_subject_and_sorts_roles() -> None:
    """``--actor`` wins over the OS name; roles are recorded sorted, the other keys present and None."""
    assert cli_actor("olga", roles=["operator", "admin"]) == {
        "subject": "olga",
        "client_id": None,
        "auth_method": "cli",
        "session_id": None,
        "roles": ["admin", "operator"],
    }


def test_every_constructed_event_validates_and_has_every_field() -> None:
    """What the constructor builds passes the schema, with the same canonical body as a hand-built record."""
    for who in (
        cli_actor("alice"),
        system_actor("gateway"),
        anonymous_actor("api_key"),
        actor_fields("bob", "oidc", client_id="portal", session_id="s-1", roles={"analyst"}),
    ):
        event = audit_event(
            "registry.approve",
            actor=who,
            action="approve",
            status="denied",
            error_class="PERMISSION_DENIED",
            adapter=adapter_fields("triage", 2, "abc"),
            details={"reason": "same_person"},
        )
        assert set(event) == set(AuditEvent.model_fields)
        body = json.loads(validate_event(event))
        assert body["actor"] == dict(who)
        assert body["outcome"] == {"error_class": "PERMISSION_DENIED", "http_status": None, "status": "denied"}
        assert body["adapter"] == {"fingerprint": "abc", "name": "triage", "version": 2}
        sparse = {"type": "registry.approve", "actor": dict(who), "action": "approve", "outcome": event["outcome"]}
        sparse |= {"adapter": event["adapter"], "details": event["details"]}
        assert validate_event(sparse) == validate_event(event)  # absent fields and None fields are the same record


_SYSTEM = '"actor":{"auth_method":"system","client_id":null,"roles":[],"session_id":null,"subject":"audit"}'
_EMPTY_TAIL = '"request_id":null,"route":null,"source":null,"tokens":null'
_SUCCESS = '"outcome":{"error_class":null,"http_status":null,"status":"success"}'


def test_the_writers_own_records_keep_their_bytes() -> None:
    """Checkpoints and start records are the same bytes as before the constructor (old chains still verify)."""
    from appliance.audit._checkpoint import checkpoint_body
    from appliance.audit._writer import system_event

    signed = "a" * 64
    assert checkpoint_body("node-1", 7, signed, "ed25519:v1:AAAA", "audit-signing-gateway").decode() == (
        '{"action":"checkpoint",' + _SYSTEM + ',"adapter":null,"details":{"key":"audit-signing-gateway",'
        '"signature":"ed25519:v1:AAAA","signed_hash":"' + signed + '","signed_seq":7},"digests":null,'
        '"latency_ms":null,' + _SUCCESS + "," + _EMPTY_TAIL + ',"type":"audit.checkpoint"}'
    )
    assert system_event("audit.start", "start", {"version": "1.0", "pid": 12}).decode() == (
        '{"action":"start",' + _SYSTEM + ',"adapter":null,"details":{"pid":12,"version":"1.0"},"digests":null,'
        '"latency_ms":null,' + _SUCCESS + "," + _EMPTY_TAIL + ',"type":"audit.start"}'
    )
