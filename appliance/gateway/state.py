"""Where the gateway keeps its request state: rate limits, the extraction detector and browser sessions.

``gateway.state_store = "memory"`` (default) keeps it in this process: right for one gateway. ``"redis"`` keeps it
in a Redis that every gateway behind the load balancer shares (README.md in this package): one combined limit for
all of them, one detector, and a session made on one gateway is valid on the next
(:mod:`appliance.gateway.state_redis`). A Redis that cannot be reached fails closed: an inference request is
refused with StateStoreUnavailable (503) and audited like any other refusal; ``/readyz`` reports ``state``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.gateway.auth.sessions import MemorySessionStore, SessionStore
from appliance.gateway.limits import LimitStore, MemoryLimitStore
from appliance.protocols import KeyService

# Domain-separated input of the fingerprint salt: not valid UTF-8, so it can never be the audit digest of a text.
_SALT_LABEL = b"\xffappliance.gateway.state.fingerprint-salt.v1"


class State(Protocol):
    limits: LimitStore
    sessions: SessionStore

    async def ping(self) -> bool:
        """Whether the store answers (readiness)."""
        ...

    async def aclose(self) -> None: ...


class MemoryState:
    """This process only (one gateway)."""

    kind = "memory"

    def __init__(self, *, idle_timeout_s: float, absolute_timeout_s: float) -> None:
        self.limits: LimitStore = MemoryLimitStore()
        self.sessions: SessionStore = MemorySessionStore(
            idle_timeout_s=idle_timeout_s, absolute_timeout_s=absolute_timeout_s
        )

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def fingerprint_salt(keys: KeyService) -> bytes:
    """The salt of prompt fingerprints and principal names in a shared store: the same on every gateway (derived
    from the audit HMAC key, which they share), never stored. Rotating that key starts the windows afresh."""
    return keys.hmac("audit-hmac", _SALT_LABEL)[:32]


def check_production(settings: Settings) -> None:
    """In production a shared store is reached over TLS (rediss://) and with a password (Redis ACL)."""
    g = settings.gateway
    if settings.environment != "production" or g.state_store != "redis" or g.redis_url is None:
        return
    parts = urlsplit(g.redis_url.get_secret_value())
    if parts.scheme != "rediss":
        raise ConfigError("production requires gateway.redis_url with rediss:// (TLS to Redis)")
    if not parts.password:
        raise ConfigError("production requires a Redis password (ACL user) in gateway.redis_url")


def open_state(settings: Settings, keys: KeyService, *, clock: Callable[[], float] | None = None) -> State:
    """The store named by ``gateway.state_store``; a Redis store needs ``gateway.redis_url``."""
    g = settings.gateway
    if g.state_store == "memory":
        return MemoryState(idle_timeout_s=g.session_idle_timeout_s, absolute_timeout_s=g.session_absolute_timeout_s)
    check_production(settings)
    from appliance.gateway.state_redis import RedisState  # here: the memory store never imports redis

    return RedisState(g, salt=fingerprint_salt(keys), clock=clock)
