"""Server-side browser sessions: idle logoff, absolute lifetime, a new id at login, a CSRF token per session.

The cookie holds only a random 256-bit id; everything else stays on the server. A session past its idle timeout
(HIPAA automatic logoff, default 15 min) or its absolute lifetime is deleted when next seen or by the gateway's
sweeper (:meth:`SessionStore.sweep`), whichever comes first: exactly one of them reports it. ``handle`` is a short
hash of the id, safe to write into the audit log (the id itself never is).

Two stores behind one async seam (:class:`SessionStore`): :class:`MemorySessionStore` (this process; the default,
one gateway) and ``appliance.gateway.state_redis.RedisSessionStore`` (shared by every gateway, so a session made
on one is valid on the next; the idle timeout is the key's TTL).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Expiry = Literal["idle", "absolute"]


@dataclass
class Session:
    id: str
    created_at: float
    last_seen: float
    csrf: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def handle(self) -> str:
        return session_handle(self.id)

    @property
    def authenticated(self) -> bool:
        return "subject" in self.data

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


def session_handle(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Ended:
    """A signed-in session the sweeper found past its idle or absolute limit, and deleted."""

    reason: Expiry
    subject: str
    handle: str


@dataclass(frozen=True)
class Lookup:
    session: Session | None
    expired: Expiry | None = None
    expired_subject: str | None = None
    expired_handle: str | None = None


class SessionStore(Protocol):
    """Server-side sessions. Every method may raise StateStoreUnavailable (a shared store that cannot be reached)."""

    idle_timeout_s: float
    absolute_timeout_s: float

    async def create(self, data: dict[str, Any] | None = None) -> Session:
        """A new session with a fresh random id and CSRF token."""
        ...

    async def get(self, session_id: str | None, *, touch: bool = True) -> Lookup:
        """The live session (its idle clock restarted when ``touch``), or why it ended (deleted as it is seen; with
        its subject only if no sweep has reported it: the caller records what carries a subject)."""
        ...

    async def rotate(self, old: Session | None, data: dict[str, Any]) -> Session:
        """Session-fixation defence: drop the old id and issue a fresh one (and a fresh CSRF token)."""
        ...

    async def delete(self, session_id: str) -> None: ...

    async def sweep(self) -> list[Ended]:
        """Delete every session past its idle or absolute limit; the signed-in ones, each reported once (to the
        sweeper here or to :meth:`get`, never both, whichever deletes it first)."""
        ...


class MemorySessionStore:
    """In-memory session table (one gateway process)."""

    def __init__(
        self,
        *,
        idle_timeout_s: float,
        absolute_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = 100_000,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.absolute_timeout_s = absolute_timeout_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions
        self._unswept: list[Ended] = []  # expired sessions a full table's purge deleted: the next sweep reports them
        # id -> (reason, forget at) of a swept signed-in session: its cookie, back later, is told why (not re-audited)
        self._swept: dict[str, tuple[Expiry, float]] = {}

    async def create(self, data: dict[str, Any] | None = None) -> Session:
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), now, now, secrets.token_urlsafe(32), dict(data or {}))
        with self._lock:
            if len(self._sessions) >= self._max:
                self._purge(now)
            self._sessions[s.id] = s
        return s

    async def get(self, session_id: str | None, *, touch: bool = True) -> Lookup:
        if not session_id or len(session_id) > 128:
            return Lookup(None)
        now = self._clock()
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                swept = self._swept.pop(session_id, None)
                return Lookup(None, swept[0], None, session_handle(session_id)) if swept else Lookup(None)
            reason = self._expiry(s, now)
            if reason is not None:
                del self._sessions[session_id]
                return Lookup(None, reason, s.data.get("subject"), s.handle)
            if touch:
                s.last_seen = now
            return Lookup(s)

    async def rotate(self, old: Session | None, data: dict[str, Any]) -> Session:
        """Session-fixation defence: drop the old id and issue a fresh one (and a fresh CSRF token)."""
        if old is not None:
            await self.delete(old.id)
        return await self.create(data)

    async def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
            self._swept.pop(session_id, None)

    async def sweep(self) -> list[Ended]:
        now = self._clock()
        with self._lock:
            ended, self._unswept = self._unswept + self._take_expired(now), []
            for k in [k for k, (_, forget_at) in self._swept.items() if forget_at <= now]:
                del self._swept[k]
        return ended

    def _expiry(self, s: Session, now: float) -> Expiry | None:
        """Which limit the session is past, if any (the absolute lifetime first)."""
        if now - s.created_at > self.absolute_timeout_s:
            return "absolute"
        if now - s.last_seen > self.idle_timeout_s:
            return "idle"
        return None

    def _take_expired(self, now: float) -> list[Ended]:
        """Delete the sessions past a limit (the lock held); the signed-in ones, for the audit trail."""
        ended: list[Ended] = []
        for k, s in list(self._sessions.items()):
            reason = self._expiry(s, now)
            if reason is not None:
                del self._sessions[k]
                if "subject" in s.data:
                    ended.append(Ended(reason, str(s.data["subject"]), s.handle))
                    if len(self._swept) < self._max:  # bounded: without it the cookie just gets the plain login page
                        self._swept[k] = (reason, s.created_at + self.absolute_timeout_s + self.idle_timeout_s)
        return ended

    def _purge(self, now: float) -> None:
        self._unswept += self._take_expired(now)
        if len(self._sessions) >= self._max:  # still full: drop the oldest, sign-ins not yet completed first
            # (anyone can start a sign-in: a flood of them must not push signed-in users out)
            order = sorted(self._sessions, key=lambda k: (self._sessions[k].authenticated, self._sessions[k].last_seen))
            for k in order[: max(1, self._max // 10)]:
                del self._sessions[k]

    def __len__(self) -> int:
        return len(self._sessions)
