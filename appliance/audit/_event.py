"""The one constructor of audit events (the shape of ``_schema.AuditEvent`` and contracts.md), and its actors.

Every stage builds its records here, so a record has every field, an actor is always the same five keys, and the
CLI names the person at the keyboard by one rule (:func:`invoking_user`). The schema still validates what is
built (identifiers, lengths); these types only keep callers from misspelling a field.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict

__all__ = [
    "ActorFields",
    "AdapterFields",
    "AuditEventFields",
    "AuthMethod",
    "CheckpointDetails",
    "OutcomeFields",
    "OutcomeStatus",
    "SourceFields",
    "actor_fields",
    "adapter_fields",
    "anonymous_actor",
    "audit_event",
    "cli_actor",
    "invoking_user",
    "system_actor",
]

AuthMethod = Literal["oidc", "jwt", "api_key", "cli", "system"]
OutcomeStatus = Literal["success", "denied", "error"]
WRITER_SUBJECT = "audit"  # the actor of the records the writer makes about itself (start, stop, checkpoints)
UNKNOWN_USER = "unknown"  # the CLI's actor when the OS names nobody (no passwd entry, no $LOGNAME)


class ActorFields(TypedDict):
    """Who acted (``_schema.Actor``)."""

    subject: str
    client_id: str | None
    auth_method: AuthMethod
    session_id: str | None
    roles: list[str]


class AdapterFields(TypedDict):
    """The adapter an event is about (``_schema.Adapter``)."""

    name: str
    version: int | None
    fingerprint: str | None


class OutcomeFields(TypedDict):
    """How it ended (``_schema.Outcome``)."""

    status: OutcomeStatus
    http_status: int | None
    error_class: str | None


class SourceFields(TypedDict):
    """Where the request came from (``_schema.Source``)."""

    ip: str | None
    user_agent: str | None


class CheckpointDetails(TypedDict):
    """The details of an ``audit.checkpoint``: what was signed (``signed_seq``, ``signed_hash``), by which key."""

    key: str
    signature: str
    signed_hash: str
    signed_seq: int


class AuditEventFields(TypedDict):
    """One event as a caller passes it to ``AuditLog.record`` (the writer adds seq, hashes, ids and time)."""

    type: str
    actor: ActorFields
    source: SourceFields | None
    action: str
    route: str | None
    adapter: AdapterFields | None
    outcome: OutcomeFields
    tokens: dict[str, int] | None
    latency_ms: float | None
    request_id: str | None
    digests: dict[str, Any] | None
    details: dict[str, Any]


def actor_fields(
    subject: str,
    auth_method: AuthMethod,
    *,
    client_id: str | None = None,
    session_id: str | None = None,
    roles: Iterable[str] = (),
) -> ActorFields:
    """An authenticated principal; roles are recorded sorted."""
    return {
        "subject": subject,
        "client_id": client_id,
        "auth_method": auth_method,
        "session_id": session_id,
        "roles": sorted(roles),
    }


def invoking_user() -> str:
    """Who runs a CLI command: the person behind sudo (``$SUDO_USER``), else the login name, else ``unknown``.

    Under ``sudo -u appliance`` the login name is the service account, never the person: one rule for every command
    (audit actor, ``trained_by``, registry actor), so the same person is recorded the same way everywhere.
    """
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry and no $LOGNAME (containers)
        return UNKNOWN_USER


def cli_actor(subject: str | None = None, roles: Iterable[str] = ()) -> ActorFields:
    """An operator at the command line: ``subject`` as given (``--actor``), else :func:`invoking_user`."""
    return actor_fields(subject if subject is not None else invoking_user(), "cli", roles=roles)


def system_actor(subject: str) -> ActorFields:
    """The appliance itself acting (``audit``: the writer's own records; ``gateway``: its housekeeping)."""
    return actor_fields(subject, "system")


def anonymous_actor(auth_method: AuthMethod = "oidc") -> ActorFields:
    """The actor of a refused, unauthenticated request: who is unknown, the method is the one attempted."""
    return actor_fields("anonymous", auth_method)


def adapter_fields(name: str, version: int | None, fingerprint: str | None = None) -> AdapterFields:
    """The adapter an event is about."""
    return {"name": name, "version": version, "fingerprint": fingerprint}


def audit_event(
    type_: str,
    *,
    actor: ActorFields,
    action: str,
    status: OutcomeStatus = "success",
    http_status: int | None = None,
    error_class: str | None = None,
    source: SourceFields | None = None,
    route: str | None = None,
    adapter: AdapterFields | None = None,
    tokens: Mapping[str, int] | None = None,
    latency_ms: float | None = None,
    request_id: str | None = None,
    digests: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEventFields:
    """One audit event with every field of the schema (absent ones None)."""
    return {
        "type": type_,
        "actor": actor,
        "source": source,
        "action": action,
        "route": route,
        "adapter": adapter,
        "outcome": {"status": status, "http_status": http_status, "error_class": error_class},
        "tokens": dict(tokens) if tokens is not None else None,
        "latency_ms": latency_ms,
        "request_id": request_id,
        "digests": dict(digests) if digests is not None else None,
        "details": dict(details or {}),
    }
