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
import json
import os
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from appliance.config import GatewaySettings
from appliance.errors import ConfigError, StateStoreUnavailable
from appliance.gateway.auth.sessions import Ended, Expiry, Lookup, Session, SessionStore, session_handle
from appliance.gateway.limits import ExtractionFlag, LimitStore, prompt_fingerprint, rate_limited, throttled
from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile

log = structlog.get_logger("appliance.gateway")

_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
_SESSION_LABEL = b"appliance.gateway.session.v1\x00"
_SWEEP_LABEL = b"appliance.gateway.session-sweep.v1\x00"
_SWEEP_BATCH = 256

# KEYS: 1 throttle, 2-5 buckets (pr pt ar at), 6 burst zset, 7 prompt zset.
# ARGV: 1 now ('' = Redis TIME), 2-5 per-minute capacities, 6 prompt fingerprint, 7 unique member,
#       8 burst_window_s, 9 burst_max_requests, 10 distinct_window_s, 11 distinct_max_prompts, 12 throttle_s.
ADMIT_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local flagged = tonumber(redis.call('GET', KEYS[1]))
if flagged and flagged > now then
  return {'throttled', string.format('%.6f', flagged - now)}
end
local kinds = {'principal.requests', 'principal.tokens', 'adapter.requests', 'adapter.tokens'}
local needs = {1, 0, 1, 0}
local levels = {}
local kind, wait = false, 0
for i = 1, 4 do
  local cap = tonumber(ARGV[i + 1])
  local b = redis.call('HMGET', KEYS[i + 1], 'l', 's', 'c')
  local level = tonumber(b[1])
  if level == nil then
    level = cap
  else
    -- refilled at the rate it was sized for; another profile resizes it, balance (or debt) kept, never refilled
    local old = tonumber(b[3]) or cap
    level = math.min(cap, old, level + math.max(0, now - tonumber(b[2])) * old / 60)
  end
  levels[i] = level
  local w = (needs[i] - level) * 60 / cap
  if w > wait then
    kind, wait = kinds[i], w
  end
end
if kind then
  return {'limited', kind, string.format('%.6f', wait)}
end
for i = 1, 4 do
  local cap = tonumber(ARGV[i + 1])
  local level = levels[i] - needs[i]
  local fmt = string.format
  redis.call('HSET', KEYS[i + 1], 'l', fmt('%.17g', level), 's', fmt('%.17g', now), 'c', ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], math.ceil((cap - level) * 60000 / cap) + 1000)
end
local bw, bmax = tonumber(ARGV[8]), tonumber(ARGV[9])
local dw, dmax = tonumber(ARGV[10]), tonumber(ARGV[11])
local thr = tonumber(ARGV[12])
redis.call('ZADD', KEYS[6], now, ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. string.format('%.17g', now - bw))
redis.call('PEXPIRE', KEYS[6], math.ceil(bw * 1000) + 1000)
redis.call('ZADD', KEYS[7], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. string.format('%.17g', now - dw))
local n = redis.call('ZCARD', KEYS[7])
if n > dmax + 1 then
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, n - dmax - 2)
end
redis.call('PEXPIRE', KEYS[7], math.ceil(dw * 1000) + 1000)
local bursts = redis.call('ZCARD', KEYS[6])
local distinct = redis.call('ZCARD', KEYS[7])
local reason, count = false, 0
if bursts > bmax then
  reason, count = 'burst', bursts
elseif distinct > dmax then
  reason, count = 'distinct_prompts', distinct
end
if reason then
  redis.call('SET', KEYS[1], string.format('%.17g', now + thr), 'PX', math.max(1, math.ceil(thr * 1000)))
  redis.call('DEL', KEYS[6], KEYS[7])
  return {'flag', reason, count}
end
return {'ok'}
"""

# KEYS: 1-2 token buckets (pt at). ARGV: 1 now ('' = Redis TIME), 2 tokens. A bucket that does not exist is full.
CHARGE_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tokens = tonumber(ARGV[2])
for i = 1, 2 do
  local b = redis.call('HMGET', KEYS[i], 'l', 's', 'c')
  local level, cap = tonumber(b[1]), tonumber(b[3])
  if level ~= nil and cap ~= nil then
    level = math.min(cap, level + math.max(0, now - tonumber(b[2])) * cap / 60) - tokens
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level), 's', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * 60000 / cap) + 1000)
  end
end
return 1
"""

# KEYS: 1 session, 2 marker, 3 sweep index. ARGV: 1 sealed data, 2 sealed subject, 3 session TTL ms, 4 marker TTL ms,
# 5 subject and handle sealed for the sweeper ('' = not signed in: not indexed), 6 the session's name.
CREATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local created = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'c', created, 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'c', created, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'w', ARGV[5])
  redis.call('ZADD', KEYS[3], string.format('%.6f', now + tonumber(ARGV[3]) / 1000), ARGV[6])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[3], ARGV[4])
  end
end
return created
"""

# KEYS: 1 sweep index. ARGV: 1 at most this many. The names of sessions due to be checked.
DUE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now), 'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: 1 session, 2 marker, 3 sweep index. ARGV: 1 the session's name, 2 absolute lifetime s.
# Still live: re-indexed at its key's expiry, false. Ended: {'expired', reason, w} to the first of GET_LUA and this
# script to find the marker unreported, false to everyone else. The marker keeps only 'c' and the reason ('r') for
# the cookie, should it come back.
SWEEP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local absolute = tonumber(ARGV[2])
local c = redis.call('HMGET', KEYS[1], 'c')[1]
if c then
  local age = now - tonumber(c)
  if age < absolute then
    local ttl = redis.call('PTTL', KEYS[1])
    local due = now + ttl / 1000
    if ttl < 0 then
      due = tonumber(c) + absolute
    end
    redis.call('ZADD', KEYS[3], string.format('%.6f', due), ARGV[1])
    return false
  end
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'c', 'w', 'r')
if not m[1] or m[3] then
  return false
end
local reason = 'idle'
if now - tonumber(m[1]) >= absolute then
  reason = 'absolute'
end
redis.call('HDEL', KEYS[2], 'd', 'w')
redis.call('HSET', KEYS[2], 'r', reason)
return {'expired', reason, m[2] or ''}
"""

# KEYS: 1 session, 2 marker. ARGV: 1 idle timeout ms, 2 absolute lifetime s, 3 touch ('1' or '0').
# A live session: {'ok', created, sealed, now}; an ended one (marker left): {'expired', reason, sealed subject};
# one the sweeper already reported: {'swept', reason}.
GET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local absolute = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'c', 'd')
if s[1] then
  local age = now - tonumber(s[1])
  if age < absolute then
    if ARGV[3] == '1' then
      redis.call('PEXPIRE', KEYS[1], math.max(1, math.min(tonumber(ARGV[1]), math.floor((absolute - age) * 1000))))
    end
    return {'ok', s[1], s[2], string.format('%.6f', now)}
  end
  redis.call('DEL', KEYS[1])
end
local m = redis.call('HMGET', KEYS[2], 'c', 'd', 'r')
if m[1] then
  redis.call('DEL', KEYS[2])
  if m[3] then
    return {'swept', m[3]}
  end
  local reason = 'idle'
  if now - tonumber(m[1]) >= absolute then
    reason = 'absolute'
  end
  return {'expired', reason, m[2]}
end
return false
"""


def unavailable(op: str, exc: BaseException) -> StateStoreUnavailable:
    """The 503 for a failed Redis call; logs the operation and the error class (never the URL or a value)."""
    log.error("state.unavailable", op=op, error_class=type(exc).__name__)
    return StateStoreUnavailable("the shared state store cannot be reached; try again shortly")


def connect(g: GatewaySettings) -> Redis:
    """A Redis client from gateway settings: short timeouts, one retry (a stale pooled connection), no backoff,
    and a bounded pool that makes a request wait (up to the timeout) for a free connection rather than fail."""
    if g.redis_url is None:
        raise ConfigError("gateway.state_store = 'redis' needs gateway.redis_url")
    url = g.redis_url.get_secret_value()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise ConfigError("gateway.redis_url must be a redis:// or rediss:// (TLS) URL")
    tls: dict[str, Any] = {}
    if scheme == "rediss" and g.redis_ca_cert:
        tls["ssl_ca_certs"] = g.redis_ca_cert
    if (g.redis_client_cert is None) != (g.redis_client_key is None):
        raise ConfigError("set gateway.redis_client_cert and gateway.redis_client_key together, or neither")
    if g.redis_client_cert is not None:
        if scheme != "rediss":
            raise ConfigError("a Redis client certificate needs a rediss:// (TLS) gateway.redis_url")
        tls["ssl_certfile"], tls["ssl_keyfile"] = g.redis_client_cert, g.redis_client_key
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=g.redis_max_connections,
            timeout=g.redis_timeout_s,
            socket_timeout=g.redis_timeout_s,
            socket_connect_timeout=g.redis_timeout_s,
            retry=Retry(NoBackoff(), 1),
            client_name="appliance-gateway",
            **tls,
        )
    except ValueError:  # the message may quote the URL
        raise ConfigError("gateway.redis_url is not a valid Redis URL") from None
    return Redis.from_pool(pool)


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
