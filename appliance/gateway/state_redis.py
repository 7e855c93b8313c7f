"""Gateway state in Redis, shared by every gateway behind the load balancer (``gateway.state_store = "redis"``).

Token buckets and the extraction detector are Lua scripts run with EVALSHA (``register_script``), so each step is
atomic across gateways: one round trip admits a request (throttle check, four buckets, the detector's
observation), one more charges the generation's tokens. Sessions live under a name derived from the cookie's id,
with the idle timeout as the key's TTL (refreshed on use, capped by the absolute lifetime). Times come from Redis's
own clock (``TIME``), so gateways whose clocks drift still agree.

Keys (under ``gateway.redis_key_prefix``, default ``appliance:gw:``; every key has a TTL):

=====================  ===========================================  ==============================================
key                    holds                                        expires
=====================  ===========================================  ==============================================
``rl:pr|pt:<who>``     principal's request/token bucket (l, s, c)   when the bucket would be full again
``rl:ar|at:<adapter>`` adapter's request/token bucket               same
``xt:<who>``           throttled-until time of a flagged principal  after ``throttle_s``
``xb:<who>``           zset of request times (burst window)         after ``burst_window_s``
``xp:<who>``           zset prompt fingerprint -> last time         after ``distinct_window_s``
``s:<name>``           live session: c (created), d (sealed)        idle timeout, capped by the absolute lifetime
``st:<name>``          ended-session marker: c, d (sealed subject), absolute lifetime + idle timeout
                       w (subject and handle sealed for the sweeper)
``sx``                 zset signed-in session name -> when it is    absolute lifetime + idle timeout after the
                       due to be checked (the sweeper's index)      newest sign-in
=====================  ===========================================  ==============================================

``<who>`` is a keyed BLAKE2b of the principal's subject and a prompt fingerprint a keyed BLAKE2b of the prompt,
both under a salt derived once from the key service (the same for every gateway, never stored in Redis): a copy
of Redis holds no prompt text and no user name. ``<name>`` and the AES-256-GCM key of ``d`` are both derived from
the session id (SHA-512, domain-separated): without the cookie a copy of Redis yields neither a usable session id,
the CSRF token, the OIDC flow's state/nonce/verifier nor the user's name or groups. Nothing from the IdP's
tokens is kept, as in the in-memory store. The sweeper, which has no session id, reads the subject and the audit
handle of an expired session from the marker's ``w``, sealed under a key derived from the fingerprint salt
(never in Redis either). Whoever deletes the marker (a request's GET script or the sweeper's, both atomic)
reports the expiry: once, whichever gateway comes first.

Every Redis failure becomes :class:`~appliance.errors.StateStoreUnavailable` (503): the gateway fails closed.
The URL (it may carry a password) is never logged; log lines carry the operation and the error class only.
Not for Redis Cluster: an admission touches a principal's and an adapter's keys in one script.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from appliance.config import GatewaySettings
from appliance.gateway._redis_client import FAILURES as _FAILURES
from appliance.gateway._redis_client import connect, unavailable
from appliance.gateway._redis_lua import ADMIT_LUA, CHARGE_LUA
from appliance.gateway._redis_sessions import RedisSessionStore
from appliance.gateway.auth.sessions import SessionStore
from appliance.gateway.limits import ExtractionFlag, LimitStore, prompt_fingerprint, rate_limited, throttled
from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile

log = structlog.get_logger("appliance.gateway")


__all__ = ["RedisLimitStore", "RedisSessionStore", "RedisState", "connect", "unavailable"]


class RedisLimitStore:
    """Token buckets and the extraction detector in Redis (see the module docstring for the layout)."""

    def __init__(self, client: Redis, *, prefix: str, salt: bytes, clock: Callable[[], float] | None = None) -> None:
        self._prefix = prefix
        self._salt = salt
        self._clock = clock  # tests only; None: Redis's clock
        self._admit = client.register_script(ADMIT_LUA)
        self._charge = client.register_script(CHARGE_LUA)

    def _who(self, principal: str) -> str:
        return hashlib.blake2b(principal.encode(), key=self._salt, digest_size=16, person=b"principal").hexdigest()

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def admit(
        self,
        principal: str,
        profile: LimitProfile,
        adapter: str,
        adapter_limits: AdapterLimits,
        prompt: str,
        rules: ExtractionRules,
    ) -> ExtractionFlag | None:
        p, who = self._prefix, self._who(principal)
        keys = (
            f"{p}xt:{who}",
            f"{p}rl:pr:{who}",
            f"{p}rl:pt:{who}",
            f"{p}rl:ar:{adapter}",
            f"{p}rl:at:{adapter}",
            f"{p}xb:{who}",
            f"{p}xp:{who}",
        )
        args = (
            self._now(),
            profile.requests_per_minute,
            profile.tokens_per_minute,
            adapter_limits.requests_per_minute,
            adapter_limits.tokens_per_minute,
            prompt_fingerprint(self._salt, prompt),
            os.urandom(8),
            rules.burst_window_s,
            rules.burst_max_requests,
            rules.distinct_window_s,
            rules.distinct_max_prompts,
            rules.throttle_s,
        )
        try:
            out = await self._admit(keys=keys, args=args)
        except _FAILURES as exc:
            raise unavailable("admit", exc) from exc
        tag = out[0]
        if tag == b"ok":
            return None
        if tag == b"limited":
            raise rate_limited(out[1].decode(), float(out[2]))
        if tag == b"throttled":
            raise throttled(float(out[1]))
        return ExtractionFlag(out[1].decode(), int(out[2]), rules.throttle_s)

    async def charge_tokens(self, principal: str, adapter: str, tokens: int) -> None:
        p, who = self._prefix, self._who(principal)
        try:
            await self._charge(keys=(f"{p}rl:pt:{who}", f"{p}rl:at:{adapter}"), args=(self._now(), tokens))
        except _FAILURES as exc:  # the generation is done; the next admission fails closed if Redis is still away
            log.warning("state.charge_failed", error_class=type(exc).__name__)


class RedisState:
    """The Redis client shared by the limit and session stores; readiness and shutdown."""

    kind = "redis"

    def __init__(self, g: GatewaySettings, *, salt: bytes, clock: Callable[[], float] | None = None) -> None:
        self.client = connect(g)
        self.limits: LimitStore = RedisLimitStore(self.client, prefix=g.redis_key_prefix, salt=salt, clock=clock)
        self.sessions: SessionStore = RedisSessionStore(
            self.client,
            prefix=g.redis_key_prefix,
            idle_timeout_s=g.session_idle_timeout_s,
            absolute_timeout_s=g.session_absolute_timeout_s,
            salt=salt,
        )
        self._timeout = g.redis_timeout_s

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), self._timeout + 0.5))
        except Exception as exc:
            log.warning("state.ping_failed", error_class=type(exc).__name__)
            return False

    async def aclose(self) -> None:
        await self.client.aclose()
