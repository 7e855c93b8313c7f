"""One authenticated request (``Ctx``), where it came from, and the helpers every collaborator shares."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from litestar import Request

from appliance.audit import ActorFields, SourceFields
from appliance.errors import ApplianceError
from appliance.gateway.auth.principal import Principal
from appliance.gateway.auth.sessions import Session
from appliance.gateway.policy import AccessPolicy, AdmissionDecision
from appliance.gateway.ports import AdapterRef
from appliance.ids import random_uuid
from appliance.protocols import WrittenRecord

SESSION_COOKIE = "appliance_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Ctx:
    """One authenticated, route-authorised request, with the policy it was admitted under (asked once per request)."""

    principal: Principal
    roles: frozenset[str]
    route: str  # the policy route name
    path: str  # the HTTP route template
    ip: str | None
    user_agent: str | None
    policy: AccessPolicy  # the policy in force when the request was authorised: every later question asks this one
    request_id: str = field(default_factory=lambda: random_uuid().hex)
    session: Session | None = None
    prompt_digest: tuple[int | None, str] | None = None  # (audit key version, hex), made by admission

    @property
    def actor(self) -> ActorFields:
        return self.principal.actor(self.roles)

    @property
    def source(self) -> SourceFields:
        return {"ip": self.ip, "user_agent": self.user_agent}


@dataclass(frozen=True)
class Admitted:
    """A generation the admission allowed: who asks, which adapter, the prompt, its request record (written into
    the chain; the inference waits for it to be durable before it answers anything) and the policy's decision it
    was admitted under (what the answer may carry, e.g. logprobs, is read from it)."""

    ctx: Ctx
    ref: AdapterRef
    prompt: str
    record: WrittenRecord
    decision: AdmissionDecision

    @property
    def audit_id(self) -> str:
        """The request record's id, sent back in ``X-Audit-Id``."""
        return self.record.receipt.event_id


def user_agent_of(request: Request[Any, Any, Any]) -> str | None:
    ua = request.headers.get("user-agent")
    return ua[:200] if ua else None


def client_ip(request: Request[Any, Any, Any]) -> str | None:
    return _canonical_ip(request.client.host) if request.client else None


@functools.lru_cache(maxsize=4096)
def _canonical_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:  # e.g. a unix socket or a test client's placeholder name
        return None


def attempted_method(request: Request[Any, Any, Any] | None) -> Literal["oidc", "api_key", "jwt"]:
    """The scheme an unauthenticated request tried, for its denial record."""
    header = request.headers.get("authorization", "") if request is not None else ""
    if not header:
        return "oidc"
    return "api_key" if header.partition(" ")[2].strip().startswith("apk_") else "jwt"


def refusal(exc: ApplianceError, audit_id: str | None = None) -> ApplianceError:
    """Attach the audit id of the denial record, for the error handler's ``X-Audit-Id``."""
    if audit_id is not None:
        exc.audit_id = audit_id
    return exc


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())
