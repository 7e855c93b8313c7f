"""Who is asking: the result of authentication, before the policy decides what they may do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.audit import ActorFields, actor_fields

AuthMethod = Literal["oidc", "jwt", "api_key"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``groups`` come from the IdP; ``scopes`` from a token or an API key.

    Roles are not stored here: the policy in force maps groups and scopes to roles on every request, so a
    policy reload takes effect at once.
    """

    subject: str
    auth_method: AuthMethod
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    client_id: str | None = None
    session_id: str | None = None  # a short, non-secret handle of the session (never the cookie value)
    key_id: str | None = None  # API key id (never the secret)
    extra_roles: frozenset[str] = frozenset()  # roles granted by break-glass
    breakglass_id: str | None = None
    display_name: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def actor(self, roles: frozenset[str] | set[str] | None = None) -> ActorFields:
        """The ``actor`` object of an audit event (contracts.md)."""
        return actor_fields(
            self.subject, self.auth_method, client_id=self.client_id, session_id=self.session_id, roles=roles or ()
        )
