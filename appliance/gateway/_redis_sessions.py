"""Sessions in Redis (layout in :mod:`appliance.gateway.state_redis`): stored under a name derived from the id,
sealed under a key derived from it, the idle timeout as the key's TTL, expiries reported once by whoever deletes
the marker."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from appliance.gateway._redis_client import FAILURES as _FAILURES
from appliance.gateway._redis_client import unavailable
from appliance.gateway._redis_lua import CREATE_LUA, DUE_LUA, GET_LUA, SWEEP_LUA
from appliance.gateway.auth.sessions import Ended, Expiry, Lookup, Session, session_handle

log = structlog.get_logger("appliance.gateway")


_SESSION_LABEL = b"appliance.gateway.session.v1\x00"
_SWEEP_LABEL = b"appliance.gateway.session-sweep.v1\x00"
_SWEEP_BATCH = 256


def _derive(session_id: str) -> tuple[bytes, str]:
    """The sealing key and the Redis name of a session, both from its id (which Redis never sees)."""
    h = hashlib.sha512(_SESSION_LABEL + session_id.encode()).digest()
    return h[:32], h[32:].hex()


def _seal(key: bytes, name: str, value: dict[str, Any]) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, json.dumps(value, separators=(",", ":")).encode(), name.encode())


def _open(key: bytes, name: str, blob: bytes) -> dict[str, Any] | None:
    if len(blob) < 13:
        return None
    try:
        value = json.loads(AESGCM(key).decrypt(blob[:12], blob[12:], name.encode()))
    except (InvalidTag, ValueError):
        return None
    return value if isinstance(value, dict) else None


class RedisSessionStore:
    """Server-side sessions in Redis: valid on every gateway; TTL = idle timeout, capped by the absolute lifetime."""

    def __init__(
        self, client: Redis, *, prefix: str, idle_timeout_s: float, absolute_timeout_s: float, salt: bytes
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.absolute_timeout_s = absolute_timeout_s
        self._prefix = prefix
        self._client = client
        self._index = f"{prefix}sx"
        self._sweep_key = hashlib.sha256(_SWEEP_LABEL + salt).digest()  # the same on every gateway, never stored
        self._create = client.register_script(CREATE_LUA)
        self._get = client.register_script(GET_LUA)
        self._due = client.register_script(DUE_LUA)
        self._sweep = client.register_script(SWEEP_LUA)

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self._prefix}s:{name}", f"{self._prefix}st:{name}"

    async def create(self, data: dict[str, Any] | None = None) -> Session:
        sid, csrf, data = secrets.token_urlsafe(32), secrets.token_urlsafe(32), dict(data or {})
        key, name = _derive(sid)
        subject = data.get("subject")
        sealed = _seal(key, name, {"csrf": csrf, "data": data})
        marker = _seal(key, name, {"subject": subject}) if subject is not None else b""
        swept = (
            _seal(self._sweep_key, name, {"subject": subject, "handle": session_handle(sid)})
            if subject is not None
            else b""
        )
        ttl_ms = max(1, int(min(self.idle_timeout_s, self.absolute_timeout_s) * 1000))
        marker_ms = max(1, int((self.absolute_timeout_s + self.idle_timeout_s) * 1000))
        try:
            created = await self._create(
                keys=(*self._keys(name), self._index), args=(sealed, marker, ttl_ms, marker_ms, swept, name)
            )
        except _FAILURES as exc:
            raise unavailable("session.create", exc) from exc
        now = float(created)
        return Session(sid, now, now, csrf, data)

    async def get(self, session_id: str | None, *, touch: bool = True) -> Lookup:
        if not session_id or len(session_id) > 128:
            return Lookup(None)
        key, name = _derive(session_id)
        args = (int(self.idle_timeout_s * 1000), self.absolute_timeout_s, "1" if touch else "0")
        try:
            out = await self._get(keys=self._keys(name), args=args)
        except _FAILURES as exc:
            raise unavailable("session.get", exc) from exc
        if not out:
            return Lookup(None)
        if out[0] == b"ok":
            value = _open(key, name, out[2])
            if value is None:  # not sealed under this id: never trust it
                return Lookup(None)
            return Lookup(Session(session_id, float(out[1]), float(out[3]), str(value["csrf"]), dict(value["data"])))
        reason: Expiry = "absolute" if out[1] == b"absolute" else "idle"
        if out[0] == b"swept":  # reported by a sweeper: only why, for the login page
            return Lookup(None, reason, None, session_handle(session_id))
        marker = _open(key, name, out[2]) if out[2] else None
        subject = marker.get("subject") if marker else None
        return Lookup(None, reason, str(subject) if subject is not None else None, session_handle(session_id))

    async def rotate(self, old: Session | None, data: dict[str, Any]) -> Session:
        if old is not None:
            await self.delete(old.id)
        return await self.create(data)

    async def delete(self, session_id: str) -> None:
        _, name = _derive(session_id)
        try:
            await self._client.delete(*self._keys(name))
        except _FAILURES as exc:
            raise unavailable("session.delete", exc) from exc

    async def sweep(self) -> list[Ended]:
        """Check the sessions whose key was due to expire (the index ``sx``); a live one is re-indexed, an ended one
        deleted with its marker. A Redis failure part-way is logged and returns what was already deleted (theirs
        are reported nowhere else); the next sweep goes on from there."""
        ended: list[Ended] = []
        try:
            while True:
                names = await self._due(keys=(self._index,), args=(_SWEEP_BATCH,))
                for raw in names:
                    name = raw.decode()
                    out = await self._sweep(keys=(*self._keys(name), self._index), args=(name, self.absolute_timeout_s))
                    if out:
                        ended.extend(self._ended(name, out))
                if len(names) < _SWEEP_BATCH:
                    return ended
        except _FAILURES as exc:
            unavailable("session.sweep", exc)
            return ended

    def _ended(self, name: str, out: list[bytes]) -> list[Ended]:
        value = _open(self._sweep_key, name, out[2]) if out[2] else None
        if value is None or not isinstance(value.get("subject"), str) or not isinstance(value.get("handle"), str):
            log.warning("session.sweep_unreadable")  # not sealed under this deployment's salt: nothing to report
            return []
        reason: Expiry = "absolute" if out[1] == b"absolute" else "idle"
        return [Ended(reason, value["subject"], value["handle"])]
