"""People (CLI identities) and their roles: grant, revoke, list, authenticate; personal tokens generated, shown once,
stored only as a scrypt hash, checked in constant time.

The CLI runs as the operator on the appliance, so ``--actor alice`` alone proves nothing. An approval through the
CLI needs alice's personal token as well; two approvals need two people's tokens. See README.md, "Trust model".
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from appliance.errors import Conflict, NotFound, PermissionDenied, Unauthenticated, ValidationFailed
from appliance.registry._context import Context, aware
from appliance.registry._models import Person, PersonRole
from appliance.registry._types import ROLES, Actor

__all__ = ["MIN_TOKEN_LENGTH", "People", "check_subject", "hash_token", "new_token", "verify_token"]

MIN_TOKEN_LENGTH = 20
_N, _R, _P = 2**14, 8, 1  # ~16 MiB, tens of milliseconds per check
_DUMMY = "scrypt$16384$8$1$" + base64.b64encode(b"\0" * 16).decode() + "$" + base64.b64encode(b"\0" * 32).decode()


def new_token() -> str:
    """A fresh personal token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    """The scrypt hash of a token, in a self-describing string."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValidationFailed(f"a personal token must be at least {MIN_TOKEN_LENGTH} characters")
    salt = os.urandom(16)
    derived = Scrypt(salt=salt, length=32, n=_N, r=_R, p=_P).derive(token.encode())
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def verify_token(stored: str | None, token: str) -> bool:
    """Whether token matches the stored hash; takes the same time whether or not the person exists."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = (stored or _DUMMY).split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        kdf = Scrypt(salt=salt, length=len(expected), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    try:
        kdf.verify(token.encode(), expected)
    except InvalidKey:
        return False
    return stored is not None and scheme == "scrypt"


class People:
    """The people table: roles granted and revoked by admins, personal tokens checked at authentication."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def grant(self, subject: str, role: str, actor: Actor, token: str | None = None) -> str | None:
        """Give ``subject`` a role, creating the person with a new personal token (returned once) if needed.

        Only an admin may grant; the very first grant of ``admin`` on an empty people table bootstraps the
        first admin (an audit event says so).
        """
        check_subject(subject)
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        with self.ctx.db.session("granting a role") as s:
            bootstrap = role == "admin" and s.scalar(select(func.count()).select_from(PersonRole)) == 0
            if not bootstrap and "admin" not in actor.roles:
                raise PermissionDenied(f"{actor.subject} does not hold the admin role needed to grant roles")
            person = s.get(Person, subject)
            issued: str | None = None
            if person is None:
                issued = token or new_token()
                person = Person(subject=subject, token_hash=hash_token(issued), created_by=actor.subject)
                s.add(person)
            elif person.disabled_at is not None:
                raise Conflict(f"{subject} is disabled")
            if any(r.role == role for r in person.roles):
                raise Conflict(f"{subject} already holds the {role} role")
            person.roles.append(PersonRole(role=role, granted_by=actor.subject))
            s.flush()
            self.ctx.record(
                "registry.grant",
                "grant",
                actor,
                None,
                details={"subject": subject, "role": role, "bootstrap": bootstrap, "new_person": issued is not None},
            )
        return issued if token is None else None

    def needs_bootstrap(self) -> bool:
        """Whether no one holds any role yet (the first grant of ``admin`` needs no admin)."""
        with self.ctx.db.session("counting roles") as s:
            return not s.scalar(select(func.count()).select_from(PersonRole))

    def revoke(self, subject: str, role: str, actor: Actor) -> None:
        """Take a role away from a person (an admin's act)."""
        if "admin" not in actor.roles:
            raise PermissionDenied(f"{actor.subject} does not hold the admin role needed to revoke roles")
        with self.ctx.db.session("revoking a role") as s:
            held = s.get(PersonRole, (subject, role))
            if held is None:
                raise NotFound(f"{subject} does not hold the {role} role")
            s.delete(held)
            s.flush()
            self.ctx.record("registry.revoke", "revoke", actor, None, details={"subject": subject, "role": role})

    def people(self) -> list[dict[str, Any]]:
        """Every person with their roles (never their token hash)."""
        with self.ctx.db.session("listing people") as s:
            return [
                {
                    "subject": p.subject,
                    "roles": sorted(r.role for r in p.roles),
                    "created_by": p.created_by,
                    "created_at": aware(p.created_at).isoformat(),
                    "disabled": p.disabled_at is not None,
                }
                for p in s.scalars(select(Person).options(selectinload(Person.roles)).order_by(Person.subject))
            ]

    def authenticate(self, subject: str, token: str) -> Actor:
        """The CLI actor for a person whose personal token matches (constant time; same error for every miss)."""
        with self.ctx.db.session("authenticating a person") as s:
            person = s.get(Person, subject)
            stored = person.token_hash if person is not None and person.disabled_at is None else None
            roles = frozenset(r.role for r in person.roles) if person is not None else frozenset()
        if not verify_token(stored, token):
            raise Unauthenticated(f"unknown person or wrong personal token for {subject!r}")
        return Actor(subject=subject, roles=roles, auth_method="cli")


_SUBJECT = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def check_subject(subject: str) -> str:
    """A person's subject itself when valid (an identifier the audit trail accepts), else ValidationFailed."""
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise ValidationFailed(
            f"invalid person {subject!r}: use 1-128 of letters, digits and . _ : @ + - (e.g. alice@hospital.example)"
        )
    return subject
