"""Appliance API keys for services: high-entropy, shown once, stored only as a SHA-256 digest, scoped, expiring.

A key reads ``apk_<id>_<secret>``: ``id`` (12 hex) finds the row, the SHA-256 of the whole key is compared with
``hmac.compare_digest``. A key with 256 bits of entropy needs no slow hash: nobody can guess one from its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.errors import NotFound, Unauthenticated, ValidationFailed
from appliance.gateway._db import GatewayDB

KEY_FORMAT = re.compile(r"^apk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# The create record holds a key's scopes as one audit identifier (appliance/audit/_schema.py Ident: no ',' or '*',
# at most 128 characters); a key whose scopes it could not hold would be stored while its record failed.
SCOPE_FORMAT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SCOPES_SEPARATOR = "|"
MAX_SCOPES_CHARS = 128
# The name is the key's client_id in audit records: an identifier the trail accepts (no space).
NAME_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_DUMMY_DIGEST = hashlib.sha256(b"apk-dummy").hexdigest()
MAX_TTL_S = 366 * 86_400


@dataclass(frozen=True)
class ApiKeyInfo:
    """What is known about a key (never its secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def scopes_detail(scopes: Iterable[str]) -> str:
    """A key's scopes as the create record holds them: sorted, joined with '|'."""
    return SCOPES_SEPARATOR.join(sorted(set(scopes)))


def check_new_key(name: str, scopes: Iterable[str], ttl_s: int) -> None:
    """ValidationFailed unless a key with this name, scopes and lifetime can be stored and its creation audited."""
    scope_list = set(scopes)
    if not NAME_FORMAT.match(name):
        raise ValidationFailed("key name: 1-64 letters, digits, _ . @ - (no spaces)")
    if not scope_list or not all(SCOPE_FORMAT.match(s) for s in scope_list):
        raise ValidationFailed("a key needs at least one scope (1-64 letters, digits, _ . : -)")
    if len(scopes_detail(scope_list)) > MAX_SCOPES_CHARS:
        raise ValidationFailed(
            f"a key's scopes, joined with '{SCOPES_SEPARATOR}', must fit {MAX_SCOPES_CHARS} characters"
        )
    if not 60 <= ttl_s <= MAX_TTL_S:
        raise ValidationFailed(f"key lifetime must be between 60 s and {MAX_TTL_S} s")


def key_subject(key_id: str) -> str:
    """The principal subject of a key, and so the ``created_by`` of the keys it creates."""
    return f"apikey:{key_id}"


class ApiKeyStore:
    """Create, list, revoke and verify API keys (backed by :class:`GatewayDB`).

    A verified key is remembered for ``cache_s`` seconds (keyed by its digest) so the hot path does not query
    SQLite on every request; a revocation through this store (the admin API) clears the cache at once, one
    through another process (the CLI) takes effect within ``cache_s``.
    """

    def __init__(self, db: GatewayDB, *, clock: Callable[[], float] = time.time, cache_s: float = 1.0) -> None:
        self.db = db
        self._clock = clock
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKeyInfo]] = {}

    def create(
        self, name: str, scopes: Iterable[str], *, ttl_s: int, created_by: str, creator_key_id: str | None = None
    ) -> tuple[str, ApiKeyInfo]:
        """A new key: (the key, shown once; its info).

        ``creator_key_id``: the API key creating it (then ``created_by`` is that key's subject). The new key
        expires no later than its creator and is refused once the creator is revoked or expired; the check and
        the insert are one transaction, so a key cannot slip in after its creator's revocation.
        """
        scope_list = tuple(sorted(set(scopes)))
        check_new_key(name, scope_list, ttl_s)
        key_id = secrets.token_hex(6)
        key = f"apk_{key_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        expires_at = now + ttl_s
        if creator_key_id is not None:
            created_by = key_subject(creator_key_id)
        with self.db.cursor(write=True) as cur:
            if creator_key_id is not None:
                creator = cur.execute(
                    "SELECT expires_at FROM api_keys WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
                    (creator_key_id, now),
                ).fetchone()
                if creator is None:
                    raise Unauthenticated("API key is revoked or expired")
                expires_at = min(expires_at, creator[0])
            info = ApiKeyInfo(key_id, name, scope_list, created_by, now, expires_at, None)
            cur.execute(
                "INSERT INTO api_keys (id, name, digest, scopes, created_by, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, _digest(key), json.dumps(scope_list), created_by, now, info.expires_at),
            )
        return key, info

    def list(self) -> list[ApiKeyInfo]:
        with self.db.cursor() as cur:
            rows = cur.execute(
                "SELECT id, name, scopes, created_by, created_at, expires_at, revoked_at FROM api_keys"
                " ORDER BY created_at"
            ).fetchall()
        return [ApiKeyInfo(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], r[6]) for r in rows]

    def get(self, key_id: str) -> ApiKeyInfo:
        for info in self.list():
            if info.id == key_id:
                return info
        raise NotFound(f"no API key with id {key_id!r}")

    def revoke(self, key_id: str, *, revoked_by: str) -> tuple[ApiKeyInfo, ...]:
        """Revoke a key and, transitively, every key created by it (one transaction).

        Returns the key's info first, then the info of each key revoked with it (not those revoked before)."""
        self._cache.clear()
        now = self._clock()
        with self.db.cursor(write=True) as cur:
            rows = cur.execute("SELECT id, created_by, revoked_at FROM api_keys").fetchall()
            if not any(row[0] == key_id for row in rows):
                raise NotFound(f"no API key with id {key_id!r}")
            created: dict[str, list[str]] = {}
            for row_id, created_by, _ in rows:
                created.setdefault(created_by, []).append(row_id)
            unrevoked = {row[0] for row in rows if row[2] is None}
            cascaded: list[str] = []  # the keys it created, transitively, not yet revoked
            seen, pending = {key_id}, [key_id]
            while pending:
                for child in created.get(key_subject(pending.pop()), []):
                    if child not in seen:
                        seen.add(child)
                        pending.append(child)
                        if child in unrevoked:
                            cascaded.append(child)
            for revoked_id in [key_id, *cascaded]:
                cur.execute(
                    "UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, revoked_by, revoked_id),
                )
        infos = {info.id: info for info in self.list()}
        return tuple(infos[i] for i in (key_id, *cascaded))

    def verify(self, key: str) -> ApiKeyInfo:
        """The key's info when it is genuine, active and unexpired; else Unauthenticated (one message)."""
        match = KEY_FORMAT.match(key)
        digest = _digest(key if match else "apk-dummy-mismatch")
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_s and cached[1].state(now) == "active":
            return cached[1]
        key_id = match.group(1) if match else "000000000000"
        with self.db.cursor() as cur:
            row = cur.execute(
                "SELECT id, name, digest, scopes, created_by, created_at, expires_at, revoked_at"
                " FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        stored = row[2] if row else _DUMMY_DIGEST
        genuine = hmac.compare_digest(digest, stored)
        if not (match and row and genuine):
            raise Unauthenticated("invalid API key")
        info = ApiKeyInfo(row[0], row[1], tuple(json.loads(row[3])), row[4], row[5], row[6], row[7])
        if info.state(now) != "active":
            raise Unauthenticated("API key is revoked or expired")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, info)
        return info
