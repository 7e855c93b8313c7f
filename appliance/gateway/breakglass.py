"""Break-glass (HIPAA emergency access, 164.312(a)(2)(ii)): a time-boxed role elevation with a written reason.

An admin grants a role from the policy's ``breakglass.grantable_roles`` to a subject for at most
``max_duration_s``. The grant expires by itself (every lookup compares with the clock; nothing has to run).
Every request that uses a grant is audited with ``details.breakglass`` and ``details.review_required``.
"""

from __future__ import annotations

import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import NotFound, PolicyViolation, ValidationFailed
from appliance.gateway._db import GatewayDB
from appliance.gateway.policy import BreakGlassRules


@dataclass(frozen=True)
class Grant:
    id: str
    subject: str
    role: str
    reason: str
    granted_by: str
    granted_at: float
    expires_at: float
    revoked_at: float | None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at


_COLUMNS = "id, subject, role, reason, granted_by, granted_at, expires_at, revoked_at"
MAX_SUBJECT_CHARS = 256  # what the audit trail records of an identity in full (appliance/audit/_identity.py)


def subject_key(subject: str) -> str:
    """The form grants are stored and looked up under: NFC, so a name typed precomposed matches the IdP's."""
    return unicodedata.normalize("NFC", subject)


class BreakGlass:
    """Grants, lookups and revocations of emergency access."""

    def __init__(self, db: GatewayDB, *, clock: Callable[[], float] = time.time, cache_s: float = 1.0) -> None:
        self.db = db
        self._clock = clock
        self.cache_s = cache_s  # grants made by another process (the CLI) are seen within this many seconds
        self._active: tuple[float, dict[str, list[Grant]]] | None = None

    def grant(
        self, subject: str, role: str, reason: str, duration_s: int, *, granted_by: str, rules: BreakGlassRules
    ) -> Grant:
        reason = " ".join(reason.split())
        if role not in rules.grantable_roles:
            raise PolicyViolation(
                f"role {role!r} cannot be granted by break-glass (policy: breakglass.grantable_roles)"
            )
        if len(reason) < rules.min_reason_chars:
            raise ValidationFailed(f"a written reason of at least {rules.min_reason_chars} characters is required")
        if len(reason) > 500:
            raise ValidationFailed("the reason must be at most 500 characters")
        if not 60 <= duration_s <= rules.max_duration_s:
            raise ValidationFailed(f"duration must be between 60 and {rules.max_duration_s} seconds")
        subject = subject_key(subject)
        if not subject or len(subject) > MAX_SUBJECT_CHARS or not subject.isprintable():
            raise ValidationFailed(f"subject must be 1-{MAX_SUBJECT_CHARS} printable characters (the IdP's 'sub')")
        now = self._clock()
        self._active = None
        g = Grant(f"bg_{secrets.token_hex(8)}", subject, role, reason, granted_by, now, now + duration_s, None)
        with self.db.cursor(write=True) as cur:
            cur.execute(
                f"INSERT INTO breakglass ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (g.id, g.subject, g.role, g.reason, g.granted_by, g.granted_at, g.expires_at, None),
            )
        return g

    def active_for(self, subject: str) -> list[Grant]:
        """The subject's grants in force now (all active grants are read at most once per ``cache_s``)."""
        now = self._clock()
        if self._active is None or now - self._active[0] >= self.cache_s:
            with self.db.cursor() as cur:
                rows = cur.execute(
                    f"SELECT {_COLUMNS} FROM breakglass WHERE expires_at > ? AND revoked_at IS NULL",  # noqa: S608
                    (now,),
                ).fetchall()
            table: dict[str, list[Grant]] = {}
            for r in rows:
                g = Grant(*r)
                table.setdefault(g.subject, []).append(g)
            self._active = (now, table)
        return [g for g in self._active[1].get(subject_key(subject), []) if g.active(now)]

    def list(self, *, limit: int = 200) -> list[Grant]:
        with self.db.cursor() as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM breakglass ORDER BY granted_at DESC LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        return [Grant(*r) for r in rows]

    def revoke(self, grant_id: str, *, revoked_by: str) -> Grant:
        self._active = None
        with self.db.cursor(write=True) as cur:
            cur.execute(
                "UPDATE breakglass SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
                (self._clock(), revoked_by, grant_id),
            )
            row = cur.execute(f"SELECT {_COLUMNS} FROM breakglass WHERE id = ?", (grant_id,)).fetchone()  # noqa: S608
        if row is None:
            raise NotFound(f"no break-glass grant {grant_id!r}")
        return Grant(*row)
