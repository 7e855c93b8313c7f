"""The audit event: NIST SP 800-53 AU-3 content as identifiers, enums and numbers, never free text.

Every string field has a character class and a length cap (the actor's subject and client id, which the IdP
names, are recorded escaped and bounded instead: ``_identity``), so a prompt, an output or a clinical note cannot be
smuggled into the log: they have spaces and punctuation, and the only way to record them is their HMAC digest
(:func:`appliance.audit.digest`). The user agent is the one client-controlled string AU-3 wants; it is reduced to
its ``product/version`` tokens. A configuration may add top-level fields (``audit.extra_fields``), each of a kind
from :data:`FieldKind`; there is no text kind.

Fields are declared in sorted order so that the JSON pydantic writes is canonical (see ``_canonical``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from appliance.audit._identity import recordable_identity
from appliance.errors import ValidationFailed

__all__ = [
    "RESERVED_FIELDS",
    "RESERVED_TYPES",
    "AuditEvent",
    "FieldKind",
    "check_extra_fields",
    "validate_event",
]

# Identifiers: subjects, client ids, request ids, error classes, key versions, base64 signatures.
_IDENT = r"^[A-Za-z0-9_.:@/+=|#~-]*$"
Ident = Annotated[str, StringConstraints(pattern=_IDENT, min_length=1, max_length=128)]
# Who acted, as the IdP or the key store names them: any text, recorded escaped and bounded (``_identity``).
Identity = Annotated[str, AfterValidator(recordable_identity)]  # at most IDENTITY_MAX_CHARS once recorded
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}$")]
Verb = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Route = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./{}:-]{0,199}$")]
AdapterName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
DetailKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
DetailValue = Ident | int | float | bool | None

FieldKind = Literal["identifier", "integer", "number", "boolean"]

# Names the writer adds; an event or a configured extra field may not use them.
RESERVED_FIELDS = frozenset({"seq", "prev_hash", "hash", "writer_id", "event_id", "time"})
# Types only the writer records: a caller's would pass for its own (an unsigned "checkpoint" fails verification).
RESERVED_TYPES = frozenset({"audit.checkpoint", "audit.start", "audit.stop", "audit.recovered"})

_UA_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,39}/[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # an IPv6 zone: an interface name or number
_MAX_DETAILS = 32
# Details that name a person or client (a break-glass grantee, a searched actor): recorded like actor.subject.
IDENTITY_DETAILS = frozenset({"subject", "actor"})
_DETAIL_VALUE: TypeAdapter[Any] = TypeAdapter(DetailValue, config=ConfigDict(allow_inf_nan=False))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Actor(_Strict):
    """Who acted: the authenticated principal (``system`` for the appliance itself)."""

    auth_method: Literal["oidc", "jwt", "api_key", "cli", "system"]
    client_id: Identity | None = None
    roles: list[Ident] = Field(default_factory=list, max_length=32)
    session_id: Ident | None = None
    subject: Identity


class Source(_Strict):
    """Where the request came from: address and the user agent's product tokens."""

    ip: str | None = None
    user_agent: str | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IP address") from None
        scope = getattr(address, "scope_id", None)  # ip_address takes any text after '%' as the IPv6 zone
        if scope is not None and not _SCOPE_ID.fullmatch(scope):
            raise ValueError("not an IP address")
        return str(address)

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        tokens = _UA_TOKEN.findall(value[:1024])[:8]
        return " ".join(tokens) or None


class Adapter(_Strict):
    """The adapter a request was served with, or a registry event is about."""

    fingerprint: Ident | None = None
    name: AdapterName
    version: int | None = Field(default=None, ge=0)


class Outcome(_Strict):
    """How it ended."""

    error_class: Ident | None = None
    http_status: int | None = Field(default=None, ge=100, le=599)
    status: Literal["success", "denied", "error"]


class Tokens(_Strict):
    """Token counts of a generation."""

    generated: int = Field(ge=0)
    prompt: int = Field(ge=0)


class Digests(_Strict):
    """HMAC-SHA256 digests (``appliance.audit.digests``) of the prompt and the output, never the text, and the
    version of the audit HMAC key they were made under (absent in records from before it was recorded)."""

    key_version: int | None = Field(default=None, ge=1)
    output: Hex64 | None = None
    prompt: Hex64 | None = None


class AuditEvent(_Strict):
    """One event as a caller passes it (the writer adds ``seq``, ``prev_hash``, ``hash``, ids and time)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    action: Verb
    actor: Actor
    adapter: Adapter | None = None
    details: dict[DetailKey, Any] = Field(default_factory=dict)  # DetailValue, or an identity (IDENTITY_DETAILS)
    digests: Digests | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    outcome: Outcome
    request_id: Ident | None = None
    route: Route | None = None
    source: Source | None = None
    tokens: Tokens | None = None
    type: EventType

    @field_validator("details")
    @classmethod
    def _details(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > _MAX_DETAILS:
            raise ValueError(f"at most {_MAX_DETAILS} details")
        checked: dict[str, Any] = {}
        for key, item in value.items():
            if key in IDENTITY_DETAILS and isinstance(item, str):
                checked[key] = recordable_identity(item)
                continue
            try:
                checked[key] = _DETAIL_VALUE.validate_python(item)
            except ValidationError:
                raise ValueError(f"{key}: an identifier, a number, a boolean or null") from None
        return dict(sorted(checked.items()))


_KIND_TYPES: dict[str, Any] = {"identifier": Ident, "integer": int, "number": float, "boolean": bool}
_EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_extra_fields(extra_fields: Mapping[str, str]) -> dict[str, str]:
    """The configured extra fields when each has a valid name and kind; a ValidationFailed otherwise."""
    builtin = set(AuditEvent.model_fields) | RESERVED_FIELDS
    for name, kind in extra_fields.items():
        if not _EXTRA_NAME.match(name) or name in builtin:
            raise ValidationFailed(f"audit extra field {name!r}: not a valid name or collides with a built-in field")
        if kind not in _KIND_TYPES:
            raise ValidationFailed(f"audit extra field {name!r}: kind must be one of {sorted(_KIND_TYPES)}")
    return dict(extra_fields)


class _ExtraCheck:
    """Validates the configured extra fields of an event (a small pydantic model built once per writer)."""

    def __init__(self, extra_fields: Mapping[str, str]) -> None:
        from pydantic import create_model

        fields: dict[str, Any] = {name: (_KIND_TYPES[kind] | None, None) for name, kind in extra_fields.items()}
        self._model = create_model("ExtraFields", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)
        self.names = frozenset(extra_fields)

    def validate(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        return dict(sorted(self._model.model_validate(extras).model_dump().items()))


_NO_EXTRAS = _ExtraCheck({})


def validate_event(event: Mapping[str, Any], extras: _ExtraCheck | None = None) -> bytes:
    """The event's canonical JSON body (sorted keys, compact, UTF-8), or ValidationFailed saying which field."""
    checker = extras or _NO_EXTRAS
    if not isinstance(event, Mapping):
        raise ValidationFailed("an audit event is a mapping")
    reserved = RESERVED_FIELDS.intersection(event)
    if reserved:
        raise ValidationFailed(f"audit event sets writer fields: {sorted(reserved)}")
    if isinstance(event.get("type"), str) and event["type"] in RESERVED_TYPES:
        raise ValidationFailed(f"audit event type {event['type']!r} is recorded by the writer alone")
    try:
        model = AuditEvent.model_validate(event)
        unknown = set(model.model_extra or {}) - checker.names
        if unknown:
            raise ValidationFailed(f"audit event has unknown fields: {sorted(unknown)}")
        if not model.model_extra:
            return model.model_dump_json().encode()
        body = model.model_dump(mode="json", exclude=set(model.model_extra))
        body.update(checker.validate(model.model_extra))
    except ValidationError as exc:
        raise ValidationFailed(f"invalid audit event: {_problems(exc)}") from None
    from appliance.audit._canonical import canonical_json

    return canonical_json(body)


def _problems(exc: ValidationError) -> str:
    # Never echo the rejected value: it may be the very text the schema keeps out of the log.
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
